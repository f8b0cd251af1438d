//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while configuring, loading, running or saving a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed (shape mismatch, unsupported dtype on a device, ...).
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// A file could not be read, written or renamed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A JSON file could not be parsed or written.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The JSON file.
        path: PathBuf,
        /// The parser's error, with line and column.
        source: serde_json::Error,
    },
    /// A configuration field is missing, has the wrong type or an unsupported value.
    #[error("{path}: field `{field}`: {reason}")]
    Config {
        /// The configuration file (or `<in memory>`).
        path: PathBuf,
        /// The offending field.
        field: String,
        /// Why it is rejected.
        reason: String,
    },
    /// A weight file lacks a tensor the configuration requires, or it has the wrong shape.
    #[error("{path}: tensor `{name}`: {reason}")]
    Weights {
        /// The weight file or directory.
        path: PathBuf,
        /// The tensor name (HF or PEFT naming).
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A LoRA target module name matches no linear layer of the model.
    #[error(
        "LoRA target module `{0}` matches no linear layer (known: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)"
    )]
    UnknownLoraTarget(String),
    /// The requested operation does not fit the model's current state (e.g. saving an adapter without one).
    #[error("invalid model state: {0}")]
    State(String),
    /// A device string could not be parsed or the device is not available in this build.
    #[error("device `{spec}`: {reason}")]
    Device {
        /// The string the caller passed (`auto`, `cpu`, `cuda`, `cuda:N`).
        spec: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// Bad arguments to forward or generate (empty batch, mismatched shapes, ...).
    #[error("invalid input: {0}")]
    Input(String),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
