//! `ModelSource` through a synthetic Hugging Face hub cache built in a temp dir (`refs/main` + `snapshots/`,
//! files as symlinks into `blobs/`, as the hub client writes them): the fixture loads from the cache, and a
//! missing repository fails with an error naming the repo and the cache path. No network is involved.

use model::source::{ModelSource, ResolveOptions};
use model::text::TextCodec;

use super::support::fixture;

#[test]
fn a_cached_repo_resolves_to_its_snapshot() {
    let cache = tempfile::tempdir().expect("temp dir");
    let repo = cache.path().join("models--kubetune--tiny-llama");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).expect("mkdir snapshot");
    std::fs::create_dir_all(repo.join("blobs")).expect("mkdir blobs");
    std::fs::create_dir_all(repo.join("refs")).expect("mkdir refs");
    std::fs::write(repo.join("refs").join("main"), commit).expect("write ref");
    for (i, file) in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    .iter()
    .enumerate()
    {
        let blob = repo.join("blobs").join(format!("blob{i}"));
        std::fs::copy(fixture("tiny-llama").join(file), &blob).expect("copy blob");
        std::os::unix::fs::symlink(format!("../../blobs/blob{i}"), snapshot.join(file))
            .expect("symlink");
    }

    let opts = ResolveOptions {
        hf_cache_dir: Some(cache.path().to_owned()),
        ..ResolveOptions::default()
    };
    let source = ModelSource::parse("kubetune/tiny-llama");
    assert_eq!(
        source,
        ModelSource::HfCache {
            repo_id: "kubetune/tiny-llama".into(),
            revision: "main".into()
        }
    );
    let dir = source.resolve(&opts).expect("resolves from the cache");
    assert_eq!(dir, snapshot);
    let codec = TextCodec::from_dir(&dir).expect("tokenizer loads through the symlinks");
    assert_eq!(codec.eos_id(), 1);

    let by_commit = ModelSource::parse(&format!("kubetune/tiny-llama@{commit}")).resolve(&opts);
    assert_eq!(by_commit.expect("resolves by commit"), snapshot);

    let err = ModelSource::parse("kubetune/absent")
        .resolve(&opts)
        .expect_err("not cached");
    let message = err.to_string();
    assert!(message.contains("kubetune/absent"), "{message}");
    assert!(
        message.contains(&cache.path().display().to_string()),
        "{message}"
    );
    assert!(message.contains("Nothing is downloaded"), "{message}");
}
