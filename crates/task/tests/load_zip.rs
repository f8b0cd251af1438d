//! Password-protected zips, read in memory.

use std::io::{Cursor, Write};
use std::path::Path;

use task::{LoadError, LoadOptions, load};
use zip::write::SimpleFileOptions;

use crate::common::{STANDARD_IDS, write_standard_tree};

#[derive(Clone, Copy)]
enum Encryption {
    None,
    ZipCrypto,
    Aes,
}

/// Packs every file under `root` into an in-memory zip, each entry named `<prefix><relative path>`.
fn zip_tree(root: &Path, prefix: &str, encryption: Encryption, password: &str) -> Vec<u8> {
    let mut files = Vec::new();
    collect(root, root, &mut files);
    files.sort();
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let base = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for rel in files {
        let options = match encryption {
            Encryption::None => base,
            Encryption::ZipCrypto => {
                zip::unstable::write::FileOptionsExt::with_deprecated_encryption(
                    base,
                    password.as_bytes(),
                )
                .expect("non-empty password")
            }
            Encryption::Aes => base.with_aes_encryption(zip::AesMode::Aes256, password),
        };
        writer
            .start_file(format!("{prefix}{rel}"), options)
            .expect("start entry");
        writer
            .write_all(&std::fs::read(root.join(&rel)).expect("read"))
            .expect("write entry");
    }
    writer.finish().expect("finish zip").into_inner()
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            collect(root, &path, out);
        } else {
            let rel = path.strip_prefix(root).expect("under root");
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

fn write_zip(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("data.zip");
    std::fs::write(&path, bytes).expect("write zip");
    (dir, path)
}

fn with_password(password: &str) -> LoadOptions {
    LoadOptions {
        zip_password: Some(password.to_owned()),
        ..Default::default()
    }
}

#[test]
fn zipcrypto_and_aes_zips_load_like_the_directory() {
    let tree = tempfile::tempdir().expect("tempdir");
    write_standard_tree(tree.path());
    let from_dir = load(tree.path(), &LoadOptions::default()).expect("dir loads");
    for encryption in [Encryption::ZipCrypto, Encryption::Aes, Encryption::None] {
        // CloudEval's zip holds everything under a top-level data/ folder; detect it.
        let (_keep, path) = write_zip(&zip_tree(tree.path(), "data/", encryption, "s3cret"));
        let from_zip = load(&path, &with_password("s3cret")).expect("zip loads");
        assert_eq!(from_zip, from_dir);
        assert_eq!(
            task::inputs_sha256(&from_zip),
            task::inputs_sha256(&from_dir)
        );
    }
    let (_keep, path) = write_zip(&zip_tree(tree.path(), "", Encryption::None, "unused"));
    let problems = load(&path, &LoadOptions::default()).expect("plain zip without prefix loads");
    assert_eq!(
        problems.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        STANDARD_IDS
    );
}

#[test]
fn wrong_or_missing_password_is_a_clear_error() {
    let tree = tempfile::tempdir().expect("tempdir");
    write_standard_tree(tree.path());
    for encryption in [Encryption::ZipCrypto, Encryption::Aes] {
        let (_keep, path) = write_zip(&zip_tree(tree.path(), "data/", encryption, "right"));
        let err = load(&path, &with_password("wrong")).expect_err("wrong password");
        assert!(matches!(err, LoadError::WrongPassword { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains("data.zip") && message.contains("wrong zip password"),
            "{message}"
        );
        assert!(
            !message.contains("wrong\""),
            "the password never appears: {message}"
        );
        let err = load(&path, &LoadOptions::default()).expect_err("no password");
        assert!(matches!(err, LoadError::PasswordRequired { .. }), "{err:?}");
        assert!(err.to_string().contains("CLOUDEVAL_ZIP_PASSWORD"), "{err}");
    }
}

#[test]
fn corrupt_zip_is_reported_with_its_path() {
    let (_keep, path) = write_zip(b"PK\x03\x04 this is not really a zip");
    let err = load(&path, &LoadOptions::default()).expect_err("corrupt");
    assert!(matches!(err, LoadError::CorruptZip { .. }), "{err:?}");
    assert!(err.to_string().contains("data.zip"), "{err}");

    // A valid zip truncated in the middle of its entries.
    let tree = tempfile::tempdir().expect("tempdir");
    write_standard_tree(tree.path());
    let bytes = zip_tree(tree.path(), "data/", Encryption::ZipCrypto, "pw");
    let (_keep, path) = write_zip(&bytes[..bytes.len() / 2]);
    let err = load(&path, &with_password("pw")).expect_err("truncated");
    assert!(matches!(err, LoadError::CorruptZip { .. }), "{err:?}");
}

/// `fixtures/zipcrypto-infozip.zip` was made by Info-ZIP `zip -P` (see `fixtures/make_zipcrypto_fixture.sh`),
/// the tool family CloudEval's `data.zip` comes from, so the reader is checked against a foreign writer too.
#[test]
fn infozip_zipcrypto_fixture_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/zipcrypto-infozip.zip");
    let problems = load(&path, &with_password("kubetune-fixture")).expect("fixture loads");
    let ids: Vec<_> = problems.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "Kubernetes_pod_q1",
            "Kubernetes_pod_q2",
            "Kubernetes_service_q1",
            "Envoy_all_q1"
        ]
    );
    assert_eq!(
        problems[0].reference,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web # *\n"
    );
    assert_eq!(problems[0].questions.len(), 3);
    let err = load(&path, &with_password("not-it")).expect_err("wrong password");
    assert!(matches!(err, LoadError::WrongPassword { .. }), "{err:?}");
}
