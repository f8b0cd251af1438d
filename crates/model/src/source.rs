//! Where a base model comes from: a Hugging Face directory, a repository in the local hub cache, or a GGUF file.
//! [`ModelSource::resolve`] turns each into an HF-layout directory (`config.json`, safetensors, tokenizer files)
//! that `CausalLm::load` and [`crate::text::TextCodec::from_dir`] read. Nothing is downloaded.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::gguf::{self, GgufError};
use crate::hub::{self, HubError};

/// A model location as given on a command line or in a run config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A Hugging Face-layout directory, used as is.
    Dir(PathBuf),
    /// A repository in the local Hugging Face hub cache.
    HfCache {
        /// `org/name`.
        repo_id: String,
        /// Branch, tag or commit hash (`main` unless given as `org/name@revision`).
        revision: String,
    },
    /// A `.gguf` file, converted once into a cached HF directory.
    Gguf(PathBuf),
}

/// Errors from resolving a [`ModelSource`] to a directory.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The directory does not exist (and, for a bare `org/name`-looking string, neither does the cache entry).
    #[error("model directory {0} does not exist")]
    NoDirectory(PathBuf),
    /// The directory exists but is not a model directory.
    #[error("{0} is not a Hugging Face model directory: it has no config.json")]
    NoConfig(PathBuf),
    /// The GGUF file does not exist.
    #[error("GGUF file {0} does not exist")]
    NoGguf(PathBuf),
    /// The hub-cache lookup failed.
    #[error(transparent)]
    Hub(#[from] HubError),
    /// The GGUF conversion failed.
    #[error(transparent)]
    Gguf(#[from] GgufError),
}

/// Options for [`ModelSource::resolve`].
#[derive(Debug, Clone, Default)]
pub struct ResolveOptions {
    /// Hub cache root; `None` = `$HF_HUB_CACHE`, then `$HF_HOME/hub`, then `~/.cache/huggingface/hub`.
    pub hf_cache_dir: Option<PathBuf>,
    /// Where GGUF conversions are cached; `None` = [`default_converted_dir`].
    pub converted_dir: Option<PathBuf>,
    /// A `tokenizer.json` to use for a GGUF instead of the one built from its metadata.
    pub gguf_tokenizer: Option<PathBuf>,
}

impl ModelSource {
    /// Classifies a string:
    /// 1. a name ending in `.gguf` is a GGUF file;
    /// 2. an existing path is a directory (so a relative `out/run` is never mistaken for a repository id);
    /// 3. `hf:org/name[@revision]`, or anything shaped like `org/name[@revision]`, is a hub-cache repository;
    /// 4. anything else is a directory (resolving it reports that it does not exist).
    pub fn parse(s: &str) -> ModelSource {
        let path = Path::new(s);
        if s.to_ascii_lowercase().ends_with(".gguf") {
            return ModelSource::Gguf(path.to_owned());
        }
        if path.exists() {
            return ModelSource::Dir(path.to_owned());
        }
        let repo = s.strip_prefix("hf:").unwrap_or(s);
        let (repo_id, revision) = match repo.split_once('@') {
            Some((id, rev)) if !rev.is_empty() => (id, rev),
            _ => (repo, "main"),
        };
        if looks_like_repo_id(repo_id) && (s.starts_with("hf:") || repo_id.contains('/')) {
            return ModelSource::HfCache {
                repo_id: repo_id.to_owned(),
                revision: revision.to_owned(),
            };
        }
        ModelSource::Dir(path.to_owned())
    }

    /// An HF-layout directory for this source: a directory as is (it must hold `config.json`), a cached
    /// repository's snapshot directory, or the (cached) conversion of a GGUF file.
    pub fn resolve(&self, opts: &ResolveOptions) -> Result<PathBuf, SourceError> {
        match self {
            ModelSource::Dir(dir) => {
                if !dir.is_dir() {
                    return Err(SourceError::NoDirectory(dir.clone()));
                }
                if !dir.join("config.json").is_file() {
                    return Err(SourceError::NoConfig(dir.clone()));
                }
                Ok(dir.clone())
            }
            ModelSource::HfCache { repo_id, revision } => {
                let cache = match &opts.hf_cache_dir {
                    Some(dir) => dir.clone(),
                    None => hub::default_cache_dir()?,
                };
                Ok(hub::snapshot_dir(&cache, repo_id, revision)?)
            }
            ModelSource::Gguf(file) => {
                if !file.is_file() {
                    return Err(SourceError::NoGguf(file.clone()));
                }
                let converted = opts
                    .converted_dir
                    .clone()
                    .unwrap_or_else(default_converted_dir);
                Ok(gguf::convert_cached(
                    file,
                    &converted,
                    opts.gguf_tokenizer.as_deref(),
                )?)
            }
        }
    }
}

/// `<workspace>/.cache/converted`, where `<workspace>` is the nearest ancestor of the current directory holding a
/// `Cargo.lock` or `.git` (so `cargo test` in a member crate, whose working directory is the crate, still uses the
/// repository's git-ignored cache); the current directory when there is none.
pub fn default_converted_dir() -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let root = cwd
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file() || dir.join(".git").exists())
        .unwrap_or(&cwd);
    root.join(".cache").join("converted")
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSource::Dir(dir) => write!(f, "{}", dir.display()),
            ModelSource::HfCache { repo_id, revision } if revision == "main" => {
                write!(f, "hf:{repo_id}")
            }
            ModelSource::HfCache { repo_id, revision } => write!(f, "hf:{repo_id}@{revision}"),
            ModelSource::Gguf(file) => write!(f, "{}", file.display()),
        }
    }
}

/// `name` or `org/name` with hub-legal characters (letters, digits, `-`, `_`, `.`), no part starting with `.`
/// or `-`, and no `..`.
fn looks_like_repo_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    !parts.is_empty()
        && parts.len() <= 2
        && !s.contains("..")
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with(['.', '-'])
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hf(repo_id: &str, revision: &str) -> ModelSource {
        ModelSource::HfCache {
            repo_id: repo_id.into(),
            revision: revision.into(),
        }
    }

    #[test]
    fn parse_classifies_each_form() {
        assert_eq!(
            ModelSource::parse("m/SmolLM2.Q4_1.GGUF"),
            ModelSource::Gguf("m/SmolLM2.Q4_1.GGUF".into())
        );
        assert_eq!(
            ModelSource::parse("HuggingFaceTB/SmolLM2-135M"),
            hf("HuggingFaceTB/SmolLM2-135M", "main")
        );
        assert_eq!(ModelSource::parse("org/name@v1.0"), hf("org/name", "v1.0"));
        assert_eq!(ModelSource::parse("hf:gpt2"), hf("gpt2", "main"));
        assert_eq!(
            ModelSource::parse("./missing/dir"),
            ModelSource::Dir("./missing/dir".into())
        );
        assert_eq!(
            ModelSource::parse("/abs/missing"),
            ModelSource::Dir("/abs/missing".into())
        );
        assert_eq!(
            ModelSource::parse("a/b/c"),
            ModelSource::Dir("a/b/c".into())
        );
        assert_eq!(
            ModelSource::parse("plainword"),
            ModelSource::Dir("plainword".into())
        );
    }

    #[test]
    fn an_existing_relative_directory_is_never_a_repo_id() {
        let dir = tempfile::tempdir().expect("temp dir");
        let nested = dir.path().join("out").join("run");
        std::fs::create_dir_all(&nested).expect("mkdir");
        let s = nested.to_str().expect("utf-8 path");
        assert_eq!(ModelSource::parse(s), ModelSource::Dir(nested.clone()));
    }

    #[test]
    fn display_round_trips_through_parse() {
        for s in ["hf:org/name", "hf:org/name@abc", "model.gguf"] {
            assert_eq!(ModelSource::parse(s).to_string(), s);
        }
    }

    #[test]
    fn conversions_default_to_the_workspace_cache() {
        // `cargo test` runs in crates/model: the default must climb to the workspace root (which has Cargo.lock).
        let dir = default_converted_dir();
        assert!(dir.ends_with(".cache/converted"), "{}", dir.display());
        let root = dir.parent().and_then(Path::parent).expect("root");
        assert!(
            root.join("Cargo.lock").is_file() || root.join(".git").exists(),
            "{}",
            root.display()
        );
        assert!(!root.ends_with("crates/model"), "{}", root.display());
    }

    #[test]
    fn directories_need_a_config() {
        let dir = tempfile::tempdir().expect("temp dir");
        let source = ModelSource::Dir(dir.path().to_owned());
        let err = source
            .resolve(&ResolveOptions::default())
            .expect_err("no config.json");
        assert!(matches!(err, SourceError::NoConfig(_)), "{err}");
        std::fs::write(dir.path().join("config.json"), "{}").expect("write");
        assert_eq!(
            source
                .resolve(&ResolveOptions::default())
                .expect("resolves"),
            dir.path()
        );
        let missing = ModelSource::Dir(dir.path().join("nope"));
        assert!(matches!(
            missing.resolve(&ResolveOptions::default()),
            Err(SourceError::NoDirectory(_))
        ));
    }
}
