//! Draws the paper's figures and a markdown summary from the records under `results/`.
//!
//! [`run`] scans every `results/<run>/` directory for `train_log.jsonl`, `train_summary.json` and `scores.json`
//! (the types of [`task::records`]), groups them, and writes, as PNG and SVG:
//! - `fig3` — (a) seconds per epoch (mean, with min–max whiskers) and (b) peak memory, LoRA vs full per model;
//! - `fig4` — (a) BLEU, (b) KV-wildcard, (c) edit distance, vanilla vs LoRA vs full per model, with the model-free
//!   baselines as labelled dashed reference lines;
//! - `loss` — train (solid) and validation (dashed) loss per epoch per run;
//!
//! and `results/summary.md` with the same numbers as tables, each headed by a line saying what its numbers are
//! (split and unit, memory definition, precision, device), taken from the records themselves.
//!
//! Key types: [`Options`] in, [`Report`] out, [`Error`] naming the file (and line) at fault.
//!
//! Design decisions:
//! - Grouping: a score report is keyed by (`label` → model, `system` → vanilla | lora | full | baseline-*); a
//!   training run by (`model`, `method`), shown under the `label` of the `scores.json` in the same run directory
//!   when there is one (so both figures name a model the same way), else under the model source's last path
//!   segment. A value that is missing is skipped and listed under "Notes" in `summary.md`; nothing is filled in.
//! - Text is rasterised with `ab_glyph` from a vendored DejaVu Sans (`assets/`), registered with
//!   `plotters::style::register_font`, so rendering needs no system font library (no fontconfig, no freetype).
//! - Figures are first described as plain data (module `figures`), then drawn by one backend-generic function,
//!   once for PNG and once for SVG, so both formats always show the same thing.
//! - Every output is written atomically (temp file in the same directory, then a rename).

#![warn(missing_docs)]

mod collect;
mod draw;
mod figures;
mod summary;

use std::path::{Path, PathBuf};

pub use collect::{Collected, ScoredRun, TrainRun, collect};

/// What to read and where to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The results root holding one directory per run (normally `results`).
    pub results: PathBuf,
    /// Where the figures go (normally `results/figures`).
    pub out: PathBuf,
    /// Where the markdown summary goes (normally `results/summary.md`).
    pub summary: PathBuf,
}

impl Options {
    /// The defaults for a results root: figures in `<results>/figures`, summary in `<results>/summary.md`.
    pub fn for_results(results: impl Into<PathBuf>) -> Self {
        let results = results.into();
        Options {
            out: results.join("figures"),
            summary: results.join("summary.md"),
            results,
        }
    }
}

/// What [`run`] found and wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Training runs read (one per run directory with a train log or summary).
    pub train_runs: usize,
    /// Score reports read.
    pub score_reports: usize,
    /// Every file written, in order.
    pub written: Vec<PathBuf>,
    /// What was skipped and why (also listed in `summary.md`).
    pub notes: Vec<String>,
}

/// Why the figures or the summary could not be produced. Every variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The results root or a run directory could not be listed.
    #[error("cannot list directory {path}")]
    ListDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A record file is unreadable or malformed; the record error names the file (and the line for JSONL).
    #[error(transparent)]
    Record(#[from] task::RecordError),
    /// A record parsed but contradicts itself, e.g. a train log mixing two runs.
    #[error("{path}: {reason}")]
    Inconsistent {
        /// The record file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The vendored font was rejected by the font rasteriser.
    #[error("the vendored font assets/DejaVuSans.ttf could not be registered")]
    Font,
    /// Drawing a figure failed.
    #[error("cannot draw {path}: {reason}")]
    Draw {
        /// The figure file being drawn.
        path: PathBuf,
        /// The drawing backend's message.
        reason: String,
    },
    /// Writing or renaming an output file failed.
    #[error("cannot write {path}")]
    Write {
        /// The output file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Reads every record under `options.results`, draws `fig3`, `fig4` and `loss` (PNG and SVG) into
/// `options.out`, and writes `options.summary`.
///
/// A figure with nothing to show is not drawn (the reason goes into the notes); the summary is always written.
pub fn run(options: &Options) -> Result<Report, Error> {
    let collected = collect(&options.results)?;
    let mut notes = collected.notes.clone();
    let fig3 = figures::fig3(&collected, &mut notes);
    let fig4 = figures::fig4(&collected, &mut notes);
    let loss = figures::loss(&collected, &mut notes);

    let mut written = Vec::new();
    if let Some(fig3) = &fig3 {
        written.extend(draw::write_both(&options.out, "fig3", fig3)?);
    }
    if let Some(fig4) = &fig4 {
        written.extend(draw::write_both(&options.out, "fig4", fig4)?);
    }
    if let Some(loss) = &loss {
        written.extend(draw::write_both(&options.out, "loss", loss)?);
    }

    let markdown = summary::render(&collected, &notes, &written, &options.summary);
    write_atomic(&options.summary, markdown.as_bytes())?;
    written.push(options.summary.clone());

    Ok(Report {
        train_runs: collected.train_runs.len(),
        score_reports: collected.scored_runs.len(),
        written,
        notes,
    })
}

/// Writes through `task`'s atomic writer, reporting failures as [`Error::Write`] on `path`.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    task::write_atomic(path, bytes).map_err(|error| match error {
        task::RecordError::Io { source, .. } => Error::Write {
            path: path.to_path_buf(),
            source,
        },
        other => Error::Record(other),
    })
}
