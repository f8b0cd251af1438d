//! The learning task: what a CloudEval-YAML problem is, how it is loaded and split, how it becomes a prompt and a
//! training target, how a run is configured, and every record the pipeline writes to disk.
//!
//! - [`problem`]: [`Problem`] (one `<Lib>/<mode>/q<N>` folder), [`Variant`] (original / simplified / translated),
//!   [`Row`] (one phrasing, id `"<problem_id>#<variant>"`), [`strip_labels`] (the `# *` wildcard labels off).
//! - [`mod@load`]: [`load()`](fn@load::load) dispatches on the path: a CloudEval directory, CloudEval's
//!   password-protected `data.zip` (read in memory, ZipCrypto or AES), or our JSONL. Problems come back in
//!   CloudEval's order.
//! - [`split`]: [`Split::compute`] — deterministic, seeded, stratified by (lib, category), with its own
//!   SplitMix64 so no dependency upgrade can move a problem; [`SplitManifest`] is `data/splits/<name>.json`.
//! - [`prompt`]: [`Template::render`], the one place a prompt is rendered; [`completion_target`].
//! - [`config`]: run configs (`configs/*.toml`) → validated [`TrainPlan`], saved back as `out/<run>/run.toml`.
//! - [`records`]: `train_log.jsonl`, `train_summary.json`, `predictions.jsonl`, `scores.json` types and atomic
//!   read/write helpers.
//!
//! Design: this crate is pure data (serde, toml, zip, sha2). It never links candle or tokenizers, so `plot` and
//! data tooling build in seconds, and every file format lives in one crate: a format change is one diff.

#![warn(missing_docs)]

pub mod config;
pub mod load;
pub mod problem;
pub mod prompt;
pub mod records;
pub mod split;

pub use config::{ConfigError, TrainPlan};
pub use load::{LoadError, LoadOptions, inputs_sha256, load};
pub use problem::{Problem, Row, Variant, rows_of, strip_labels};
pub use prompt::{Template, completion_target};
pub use records::{
    Extras, Levers, Method, Prediction, RecordError, ScoreReport, Scores, TrainEpochRecord,
    TrainSummary, append_jsonl, read_json, read_jsonl, read_jsonl_for_resume, write_atomic,
    write_json, write_jsonl,
};
pub use split::{Split, SplitError, SplitManifest, SplitParams, SplitUnit};
