//! Offline lookups in a Hugging Face hub cache (the `models--org--name/{refs,snapshots}` layout), through
//! hf-hub 0.5's `Cache`. Nothing here touches the network.
//!
//! Cache root, first match wins: an explicit directory, `$HF_HUB_CACHE`, `$HF_HOME/hub`,
//! `~/.cache/huggingface/hub` (transformers' order; hf-hub's own `Cache::from_env` skips `HF_HUB_CACHE`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use hf_hub::{Cache, Repo, RepoType};

/// Errors from looking a repository up in the local hub cache.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// No cache directory could be determined (no `HF_HUB_CACHE`, `HF_HOME` or home directory).
    #[error("no Hugging Face cache directory: set HF_HUB_CACHE or HF_HOME")]
    NoCacheDir,
    /// The repository, revision or file is not in the cache; the message says which part is missing.
    #[error(
        "model `{repo_id}` (revision `{revision}`) is not in the Hugging Face cache at {cache}: {detail}. \
         Nothing is downloaded: fill the cache, set HF_HUB_CACHE / HF_HOME, or pass a local directory"
    )]
    NotCached {
        /// The repository id, `org/name`.
        repo_id: String,
        /// The branch, tag or commit asked for.
        revision: String,
        /// The cache root searched.
        cache: PathBuf,
        /// Which part is missing.
        detail: String,
    },
}

/// The hub cache root from the environment (see the module docs for the order).
pub fn default_cache_dir() -> Result<PathBuf, HubError> {
    cache_dir_from(
        std::env::var_os("HF_HUB_CACHE"),
        std::env::var_os("HF_HOME"),
        std::env::var_os("HOME"),
    )
}

/// The resolution order of [`default_cache_dir`] on given values (empty values count as unset).
fn cache_dir_from(
    hf_hub_cache: Option<OsString>,
    hf_home: Option<OsString>,
    home: Option<OsString>,
) -> Result<PathBuf, HubError> {
    let set = |v: Option<OsString>| v.filter(|d| !d.is_empty()).map(PathBuf::from);
    if let Some(dir) = set(hf_hub_cache) {
        return Ok(dir);
    }
    if let Some(dir) = set(hf_home) {
        return Ok(dir.join("hub"));
    }
    let home = set(home).ok_or(HubError::NoCacheDir)?;
    Ok(home.join(".cache").join("huggingface").join("hub"))
}

/// The snapshot directory of `repo_id` at `revision` (a branch or tag under `refs/`, or a commit hash) that
/// holds `config.json`.
pub fn snapshot_dir(cache_dir: &Path, repo_id: &str, revision: &str) -> Result<PathBuf, HubError> {
    let repo = Repo::with_revision(repo_id.to_owned(), RepoType::Model, revision.to_owned());
    let cached = Cache::new(cache_dir.to_owned()).repo(repo.clone());
    if let Some(config) = cached.get("config.json")
        && let Some(dir) = config.parent()
    {
        return Ok(dir.to_owned());
    }
    // hf-hub reads `refs/<revision>` byte for byte; be lenient about a trailing newline, and accept a commit
    // hash given directly as the revision. Otherwise say precisely what is missing.
    let not_cached = |detail: String| HubError::NotCached {
        repo_id: repo_id.to_owned(),
        revision: revision.to_owned(),
        cache: cache_dir.to_owned(),
        detail,
    };
    let repo_dir = cache_dir.join(repo.folder_name());
    if !repo_dir.is_dir() {
        return Err(not_cached(format!("no directory {}", repo.folder_name())));
    }
    let ref_path = repo_dir.join("refs").join(revision);
    let commit = match std::fs::read_to_string(&ref_path) {
        Ok(text) => text.trim().to_owned(),
        Err(_) if repo_dir.join("snapshots").join(revision).is_dir() => revision.to_owned(),
        Err(_) => return Err(not_cached(format!("no ref file {}", ref_path.display()))),
    };
    let snapshot = cached.pointer_path(&commit);
    if !snapshot.is_dir() {
        return Err(not_cached(format!(
            "ref points at commit {commit}, but {} is absent",
            snapshot.display()
        )));
    }
    if !snapshot.join("config.json").is_file() {
        return Err(not_cached(format!(
            "snapshot {} has no config.json",
            snapshot.display()
        )));
    }
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds `models--org--name/{refs/main, snapshots/<commit>/config.json}` the way the hub client does.
    fn fake_cache(root: &Path, ref_text: &str) -> PathBuf {
        let repo = root.join("models--org--tiny");
        let snapshot = repo.join("snapshots").join("abc123");
        std::fs::create_dir_all(&snapshot).expect("mkdir");
        std::fs::create_dir_all(repo.join("refs")).expect("mkdir");
        std::fs::write(repo.join("refs").join("main"), ref_text).expect("write ref");
        std::fs::write(snapshot.join("config.json"), "{}").expect("write config");
        snapshot
    }

    #[test]
    fn cache_dir_order_is_hub_cache_then_hf_home_then_home() {
        let v = |s: &str| Some(OsString::from(s));
        assert_eq!(
            cache_dir_from(v("/a"), v("/b"), v("/h")).expect("set"),
            PathBuf::from("/a")
        );
        assert_eq!(
            cache_dir_from(None, v("/b"), v("/h")).expect("set"),
            PathBuf::from("/b/hub")
        );
        assert_eq!(
            cache_dir_from(v(""), None, v("/h")).expect("set"),
            PathBuf::from("/h/.cache/huggingface/hub")
        );
        assert!(matches!(
            cache_dir_from(None, None, None),
            Err(HubError::NoCacheDir)
        ));
    }

    #[test]
    fn finds_snapshot_by_ref_commit_and_tolerates_newline() {
        let dir = tempfile::tempdir().expect("temp dir");
        let snapshot = fake_cache(dir.path(), "abc123");
        assert_eq!(
            snapshot_dir(dir.path(), "org/tiny", "main").expect("by ref"),
            snapshot
        );
        assert_eq!(
            snapshot_dir(dir.path(), "org/tiny", "abc123").expect("by commit"),
            snapshot
        );
        std::fs::write(dir.path().join("models--org--tiny/refs/main"), "abc123\n")
            .expect("rewrite ref");
        assert_eq!(
            snapshot_dir(dir.path(), "org/tiny", "main").expect("ref with newline"),
            snapshot
        );
    }

    #[test]
    fn errors_name_repo_cache_and_missing_part() {
        let dir = tempfile::tempdir().expect("temp dir");
        let err = snapshot_dir(dir.path(), "org/absent", "main").expect_err("absent repo");
        let text = err.to_string();
        assert!(
            text.contains("org/absent") && text.contains(&dir.path().display().to_string()),
            "{text}"
        );
        assert!(text.contains("no directory models--org--absent"), "{text}");

        fake_cache(dir.path(), "abc123");
        let err = snapshot_dir(dir.path(), "org/tiny", "v2").expect_err("absent ref");
        assert!(err.to_string().contains("refs/v2"), "{err}");
        std::fs::write(dir.path().join("models--org--tiny/refs/main"), "def456")
            .expect("rewrite ref");
        let err = snapshot_dir(dir.path(), "org/tiny", "main").expect_err("dangling ref");
        assert!(err.to_string().contains("commit def456"), "{err}");
    }
}
