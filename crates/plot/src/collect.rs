//! Scanning `results/` for run directories and reading their records.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use task::{Method, ScoreReport, TrainEpochRecord, TrainSummary};

use crate::Error;

/// One training run: the epochs of `results/<run>/train_summary.json`, or of `train_log.jsonl` while the run
/// has no summary yet.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainRun {
    /// The run directory, `results/<run>`.
    pub dir: PathBuf,
    /// Run name from the records.
    pub run: String,
    /// Base model source as given in the run's config.
    pub model: String,
    /// The model's display name: the `label` of `scores.json` in the same directory, else the last path segment
    /// of `model` without a `.gguf`/`.safetensors` extension.
    pub label: String,
    /// Full or LoRA.
    pub method: Method,
    /// The epochs, in epoch order, one per epoch number.
    pub epochs: Vec<TrainEpochRecord>,
    /// Whether `train_summary.json` exists, i.e. the run finished.
    pub finished: bool,
}

/// One `scores.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredRun {
    /// The file read.
    pub path: PathBuf,
    /// Its contents.
    pub report: ScoreReport,
}

/// Everything read from a results root.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Collected {
    /// Training runs, in run-directory name order.
    pub train_runs: Vec<TrainRun>,
    /// Score reports, in run-directory name order.
    pub scored_runs: Vec<ScoredRun>,
    /// What was skipped while reading, and why.
    pub notes: Vec<String>,
}

/// Reads every `<results>/<run>/` directory (hidden ones excepted) in name order.
pub fn collect(results: &Path) -> Result<Collected, Error> {
    let list_error = |source| Error::ListDir {
        path: results.to_path_buf(),
        source,
    };
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(results).map_err(list_error)? {
        let entry = entry.map_err(list_error)?;
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden && entry.path().is_dir() {
            dirs.push(entry.path());
        }
    }
    dirs.sort();

    let mut collected = Collected::default();
    for dir in dirs {
        read_run_dir(&dir, &mut collected)?;
    }
    Ok(collected)
}

fn read_run_dir(dir: &Path, collected: &mut Collected) -> Result<(), Error> {
    let scores_path = dir.join("scores.json");
    let scores: Option<ScoreReport> = if scores_path.is_file() {
        Some(task::read_json(&scores_path)?)
    } else {
        if dir.join("predictions.jsonl").is_file() {
            collected.notes.push(format!(
                "{} has predictions.jsonl but no scores.json (not yet scored); skipped",
                dir.display()
            ));
        }
        None
    };

    if let Some(train) = read_train(dir, scores.as_ref(), &mut collected.notes)? {
        collected.train_runs.push(train);
    }
    if let Some(report) = scores {
        collected.scored_runs.push(ScoredRun {
            path: scores_path,
            report,
        });
    }
    Ok(())
}

/// Reads a run directory's training records; `None` when it has none.
fn read_train(
    dir: &Path,
    scores: Option<&ScoreReport>,
    notes: &mut Vec<String>,
) -> Result<Option<TrainRun>, Error> {
    let summary_path = dir.join("train_summary.json");
    let log_path = dir.join("train_log.jsonl");
    let summary: Option<TrainSummary> = if summary_path.is_file() {
        Some(task::read_json(&summary_path)?)
    } else {
        None
    };
    let log: Option<Vec<TrainEpochRecord>> = if log_path.is_file() {
        Some(task::read_jsonl(&log_path)?)
    } else {
        None
    };

    let (source, records) = match (&summary, log) {
        (Some(summary), log) => {
            if let Some(log) = log
                && log.len() != summary.epochs.len()
            {
                notes.push(format!(
                    "{} lists {} epochs but {} has {} lines; used the summary",
                    summary_path.display(),
                    summary.epochs.len(),
                    log_path.display(),
                    log.len()
                ));
            }
            (summary_path.clone(), summary.epochs.clone())
        }
        (None, Some(log)) => {
            if !log.is_empty() {
                notes.push(format!(
                    "{} has no train_summary.json (run unfinished?); used its {} logged epochs",
                    dir.display(),
                    log.len()
                ));
            }
            (log_path.clone(), log)
        }
        (None, None) => return Ok(None),
    };
    let Some(first) = records.first().cloned() else {
        notes.push(format!("{} holds no epochs; skipped", source.display()));
        return Ok(None);
    };
    if let Some(summary) = &summary
        && (summary.run != first.run
            || summary.model != first.model
            || summary.method != first.method)
    {
        return Err(Error::Inconsistent {
            path: source,
            reason: format!(
                "summary is for run {:?} ({}, {}) but its first epoch is for run {:?} ({}, {})",
                summary.run,
                summary.model,
                summary.method.as_str(),
                first.run,
                first.model,
                first.method.as_str()
            ),
        });
    }

    let mut by_epoch: BTreeMap<u32, TrainEpochRecord> = BTreeMap::new();
    for (index, record) in records.into_iter().enumerate() {
        if record.run != first.run || record.model != first.model || record.method != first.method {
            return Err(Error::Inconsistent {
                path: source,
                reason: format!(
                    "epoch record {} is for run {:?} ({}, {}) but the first is for run {:?} ({}, {})",
                    index + 1,
                    record.run,
                    record.model,
                    record.method.as_str(),
                    first.run,
                    first.model,
                    first.method.as_str()
                ),
            });
        }
        if let Some(previous) = by_epoch.insert(record.epoch, record) {
            // A resumed run may log an epoch twice; the later line is the one that completed.
            notes.push(format!(
                "{} logs epoch {} more than once; used the last",
                source.display(),
                previous.epoch
            ));
        }
    }

    let label = match scores {
        Some(report) => report.label.clone(),
        None => short_model_name(&first.model),
    };
    Ok(Some(TrainRun {
        dir: dir.to_path_buf(),
        run: first.run,
        model: first.model,
        label,
        method: first.method,
        epochs: by_epoch.into_values().collect(),
        finished: summary.is_some(),
    }))
}

/// `"org/Model-7B"` → `"Model-7B"`, `".cache/assets/smollm2.gguf"` → `"smollm2"`.
pub(crate) fn short_model_name(source: &str) -> String {
    let trimmed = source.trim_end_matches(['/', '\\']);
    let last = trimmed.rsplit(['/', '\\']).next().unwrap_or(trimmed);
    let stem = [".gguf", ".safetensors"]
        .iter()
        .find_map(|extension| last.strip_suffix(extension))
        .unwrap_or(last);
    if stem.is_empty() {
        source.to_string()
    } else {
        stem.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_model_names() {
        for (source, expected) in [
            ("mistralai/Mistral-7B-v0.1", "Mistral-7B-v0.1"),
            (
                ".cache/assets/smollm2-135m-instruct.gguf",
                "smollm2-135m-instruct",
            ),
            ("/models/llama3/", "llama3"),
            ("plain", "plain"),
            ("", ""),
        ] {
            assert_eq!(short_model_name(source), expected, "{source}");
        }
    }
}
