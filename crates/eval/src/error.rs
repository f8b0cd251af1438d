//! The one error type of the eval library; every variant names the file, row or value it is about.

use std::path::PathBuf;

/// What can go wrong while predicting, merging or scoring.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },
    /// `--model` names a directory that does not exist.
    #[error(
        "run directory {path} does not exist (expected a training run directory such as out/<run>)"
    )]
    MissingRunDir {
        /// The directory given.
        path: PathBuf,
    },
    /// A run directory lacks the `run.toml` that train writes.
    #[error(
        "{path} not found: {dir} is not a training run directory (train writes run.toml there)"
    )]
    MissingRunToml {
        /// The expected `run.toml`.
        path: PathBuf,
        /// The directory given.
        dir: PathBuf,
    },
    /// A run directory has neither an adapter nor full weights.
    #[error(
        "{dir} holds no weights: expected adapter_config.json (LoRA) or config.json + model.safetensors (full)"
    )]
    MissingWeights {
        /// The run directory.
        dir: PathBuf,
    },
    /// The command line does not describe one evaluation.
    #[error("{0}")]
    Usage(String),
    /// A run config or `run.toml` is invalid.
    #[error(transparent)]
    Config(#[from] task::config::ConfigError),
    /// Loading problems failed.
    #[error(transparent)]
    Load(#[from] task::LoadError),
    /// The split manifest could not be read or does not fit the data.
    #[error(transparent)]
    Split(#[from] task::split::SplitError),
    /// Reading or writing a record file failed.
    #[error(transparent)]
    Record(#[from] task::records::RecordError),
    /// A complete line of a JSON-lines file is not a valid record.
    #[error("{path}: line {line}: {reason}")]
    CorruptLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What the JSON parser said.
        reason: String,
    },
    /// A predictions file has two lines for one row.
    #[error("{path}: line {line}: row {row_id} was already predicted on line {first_line}")]
    DuplicateRow {
        /// The file.
        path: PathBuf,
        /// 1-based line of the repeat.
        line: usize,
        /// 1-based line of the first prediction.
        first_line: usize,
        /// The repeated row.
        row_id: String,
    },
    /// A predictions file has a row this evaluation does not contain (another split, data set or shard).
    #[error(
        "{path}: line {line}: row {row_id} is not among the rows of this evaluation ({expected})"
    )]
    ForeignRow {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The unexpected row.
        row_id: String,
        /// Which rows were expected, in words.
        expected: String,
    },
    /// A predictions file to score ends in a partial line (its writer was killed).
    #[error("{path}: line {line} is incomplete (the run was interrupted); rerun eval to resume it")]
    TornPredictions {
        /// The file.
        path: PathBuf,
        /// 1-based line number of the partial line.
        line: usize,
    },
    /// Scoring needs a prediction for every row.
    #[error(
        "{path}: {missing} of {total} rows have no prediction (first: {first}); finish or resume the run first"
    )]
    IncompletePredictions {
        /// The predictions file (or shard directory).
        path: PathBuf,
        /// Rows without a prediction.
        missing: usize,
        /// Rows expected.
        total: usize,
        /// The first missing row id.
        first: String,
    },
    /// `--shard` is not `i/n` with `i < n`.
    #[error("bad shard `{spec}`: {reason}")]
    BadShard {
        /// The text given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `eval merge` found no shard files, shards of different counts, or missing shards.
    #[error("{dir}: {reason}")]
    Shards {
        /// The results directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Scoring a results directory needs the `eval.json` that prediction writes.
    #[error(
        "{path} not found: it records the data, split and prompt the predictions were made for"
    )]
    MissingEvalSpec {
        /// The expected `eval.json`.
        path: PathBuf,
    },
    /// The evaluation selects no row.
    #[error("no rows to evaluate: {0}")]
    NoRows(String),
    /// A metric failed on a prediction (e.g. an empty reference).
    #[error("row {row_id}: {source}")]
    Metric {
        /// The row being scored.
        row_id: String,
        /// The metric's error.
        source: metrics::MetricError,
    },
    /// Loading the Kubernetes schemas failed although their directory exists.
    #[error("schemas {path}: {source}")]
    Schemas {
        /// The schema directory.
        path: PathBuf,
        /// The validator's error.
        source: metrics::schema::SchemaError,
    },
    /// Writing the per-row CSV failed.
    #[error("{path}: {source}")]
    Csv {
        /// The CSV file.
        path: PathBuf,
        /// The CSV writer's error.
        source: csv::Error,
    },
    /// Loading the model, tokenizing or generating failed.
    #[error("{context}: {source}")]
    Model {
        /// What was being done, naming the model directory.
        context: String,
        /// The model crate's error.
        source: Box<model::Error>,
    },
    /// The tokenizer could not be loaded or failed on a text.
    #[error("{context}: {source}")]
    Text {
        /// What was being done, naming the tokenizer directory or the row.
        context: String,
        /// The tokenizer's error.
        source: Box<model::text::TextError>,
    },
    /// A model source (HF repo id, directory or `.gguf`) could not be resolved to a model directory.
    #[error("model source `{source_text}`: {source}")]
    ModelSource {
        /// The source as given.
        source_text: String,
        /// Why it could not be resolved.
        source: Box<model::source::SourceError>,
    },
}
