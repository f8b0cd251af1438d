//! Paths shared by the model-io tests: committed fixtures and fetched assets.

use std::path::{Path, PathBuf};

/// `crates/model/tests/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

/// A fetched artefact under `$KUBETUNE_ASSETS` (default `<repo>/.cache/assets`). Panics (the test FAILS, it is
/// never skipped) with the command to run when the artefact is absent.
pub fn asset(relative: &str) -> PathBuf {
    let root = match std::env::var_os("KUBETUNE_ASSETS") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/assets"),
    };
    let path = root.join(relative);
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-assets.sh (or point KUBETUNE_ASSETS at the assets root)",
        path.display()
    );
    path
}

/// Reads and parses a JSON file, naming it on failure.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// A JSON array of integers as token ids.
pub fn ids(value: &serde_json::Value) -> Vec<u32> {
    value
        .as_array()
        .expect("an array of ids")
        .iter()
        .map(|v| u32::try_from(v.as_u64().expect("a non-negative id")).expect("id fits u32"))
        .collect()
}
