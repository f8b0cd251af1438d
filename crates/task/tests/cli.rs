//! The `split` binary, end to end.

use std::process::Command;

use crate::common::write_standard_tree;

fn split_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_split"))
}

#[test]
fn writes_a_manifest_and_prints_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_standard_tree(&dir.path().join("data"));
    let out_dir = dir.path().join("splits");
    let run = || {
        split_bin()
            .args([
                "--data",
                "data",
                "--name",
                "t",
                "--seed",
                "7",
                "--unit",
                "row",
                "--variants",
                "original,simplified",
            ])
            .arg("--out-dir")
            .arg(&out_dir)
            .current_dir(dir.path())
            .env_remove("CLOUDEVAL_ZIP_PASSWORD")
            .output()
            .expect("runs")
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        stdout.contains("Kubernetes/pod") && stdout.contains("total"),
        "{stdout}"
    );
    let bytes = std::fs::read(out_dir.join("t.json")).expect("manifest written");
    let second = run();
    assert!(second.status.success());
    assert_eq!(
        std::fs::read(out_dir.join("t.json")).expect("manifest"),
        bytes,
        "same inputs, same bytes"
    );
    let manifest = task::SplitManifest::load(&out_dir.join("t.json")).expect("loads");
    assert_eq!(
        (
            manifest.name.as_str(),
            manifest.source.as_str(),
            manifest.seed
        ),
        ("t", "data", 7)
    );
    assert!(
        manifest
            .train
            .iter()
            .chain(&manifest.test)
            .all(|id| !id.ends_with("#translated"))
    );
}

#[test]
fn errors_exit_2_with_a_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = split_bin()
        .args(["--data", "missing-dir", "--name", "x"])
        .current_dir(dir.path())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("missing-dir"), "{stderr}");
    let out = split_bin()
        .args(["--data", ".", "--name", "x", "--test-ratio", "1.5"])
        .current_dir(dir.path())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--test-ratio"));
}

#[test]
fn reads_a_password_protected_zip_via_the_environment_and_never_records_the_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let zip = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/zipcrypto-infozip.zip");
    let out = split_bin()
        .arg("--data")
        .arg(&zip)
        .args(["--name", "z", "--test-ratio", "0.5"])
        .arg("--out-dir")
        .arg(dir.path())
        .env("CLOUDEVAL_ZIP_PASSWORD", "kubetune-fixture")
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.path().join("z.json")).expect("manifest");
    assert!(
        !text.contains("kubetune-fixture"),
        "the password must not be recorded"
    );
    assert!(text.contains("zipcrypto-infozip.zip"));
    let wrong = split_bin()
        .arg("--data")
        .arg(&zip)
        .args(["--name", "z", "--zip-password", "nope"])
        .arg("--out-dir")
        .arg(dir.path())
        .output()
        .expect("runs");
    assert_eq!(wrong.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        stderr.contains("wrong zip password") && !stderr.contains("nope"),
        "{stderr}"
    );
}
