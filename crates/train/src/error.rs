//! The crate's error type: every variant names the file, field or step it is about.

use std::path::PathBuf;

/// Why training could not start, continue or finish.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The run config could not be read or is invalid (the message names the file and key).
    #[error(transparent)]
    Config(#[from] task::config::ConfigError),
    /// A plan setting the trainer cannot honour (e.g. a lever combination), named by its config key.
    #[error("{path}: `{key}`: {reason}")]
    Plan {
        /// The config file.
        path: PathBuf,
        /// The offending key, e.g. `memory.optimizer_in_backward`.
        key: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The data, the split or the prompt could not be loaded.
    #[error("{context}: {reason}")]
    Data {
        /// What was being loaded (file or step).
        context: String,
        /// Why it failed.
        reason: String,
    },
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A JSON file could not be read or written.
    #[error("{}: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The serde error.
        source: serde_json::Error,
    },
    /// A record file (`train_log.jsonl`, `train_summary.json`) could not be written or read.
    #[error(transparent)]
    Record(#[from] task::records::RecordError),
    /// The model could not be resolved, loaded, run or saved.
    #[error("{context}: {source}")]
    Model {
        /// What was being done (e.g. "loading /path/to/model").
        context: String,
        /// The model crate's error.
        source: model::Error,
    },
    /// A tensor operation failed.
    #[error("{context}: {source}")]
    Tensor {
        /// What was being computed.
        context: String,
        /// candle's error.
        source: candle_core::Error,
    },
    /// The requested device is unknown or not compiled in.
    #[error("device `{spec}`: {reason}")]
    Device {
        /// The device as given (`cpu`, `cuda`, `cuda:1`).
        spec: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// `--resume` cannot continue from what is on disk.
    #[error("cannot resume from {}: {reason}", path.display())]
    Resume {
        /// The checkpoint directory or file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The loss became NaN or infinite; training stopped and the last good checkpoint was kept.
    #[error(
        "non-finite loss ({loss}) at epoch {epoch}, step {step}; training stopped, last good checkpoint: {}",
        checkpoint.as_ref().map_or_else(|| "none".to_owned(), |p| p.display().to_string())
    )]
    NonFiniteLoss {
        /// The loss value (NaN or ±inf).
        loss: f64,
        /// Epoch, 1-based.
        epoch: u32,
        /// The optimiser step that produced it, 1-based.
        step: u64,
        /// The checkpoint left on disk, if one was written before.
        checkpoint: Option<PathBuf>,
    },
}

/// Shorthand for mapping candle errors with a context string.
pub(crate) trait TensorContext<T> {
    /// Wraps a candle error with `context`.
    fn ctx(self, context: &str) -> Result<T, TrainError>;
}

impl<T> TensorContext<T> for candle_core::Result<T> {
    fn ctx(self, context: &str) -> Result<T, TrainError> {
        self.map_err(|source| TrainError::Tensor {
            context: context.to_owned(),
            source,
        })
    }
}
