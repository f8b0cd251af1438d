//! The predictions file: resume, validation against the evaluation's rows, canonical rewrite, shard merge.
//!
//! Rules (also in ARCHITECTURE.md, "eval"):
//! - one `task::records::Prediction` per line, appended and flushed as each row finishes;
//! - on a rerun, rows already in the file are skipped; a torn last line (the writer was killed mid-write) is cut
//!   off and that row is generated again; any other malformed line, a repeated row, or a row that is not part of
//!   this evaluation is an error naming the file and line;
//! - once every row is done the file is rewritten atomically in the split's row order, so the file's bytes do not
//!   depend on batch order or on how often the run was interrupted (timings aside).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use task::Row;
use task::records::Prediction;

use crate::EvalError;
use crate::jsonl::{read_append_log, truncate_to};
use crate::shard::Shard;

/// How one row's answer was produced: token counts (0 for a baseline), time, and whether it stopped by itself.
#[derive(Debug, Clone, Copy)]
pub struct Decoding {
    /// Prompt tokens given to the model.
    pub prompt_tokens: u32,
    /// Tokens generated (EOS excluded).
    pub generated_tokens: u32,
    /// Seconds spent on the row.
    pub seconds: f64,
    /// The model emitted EOS or a stop string.
    pub stopped: bool,
}

/// The record of one answered row; the YAML is extracted from the raw output as the CloudEval harness does.
pub fn prediction_for(
    row: &Row,
    prompt: String,
    raw_output: String,
    decoding: Decoding,
) -> Prediction {
    Prediction {
        row_id: row.row_id.clone(),
        problem_id: row.problem_id.clone(),
        variant: row.variant,
        lib: row.lib.clone(),
        category: row.category.clone(),
        prompt,
        extracted: metrics::extract::extract(&raw_output),
        raw_output,
        prompt_tokens: decoding.prompt_tokens,
        generated_tokens: decoding.generated_tokens,
        seconds: decoding.seconds,
        stopped: decoding.stopped,
    }
}

/// Predictions found in a file, keyed by row id, each with its line number.
#[derive(Debug, Clone, Default)]
pub struct Finished {
    /// Row id → (1-based line, prediction).
    pub by_row: HashMap<String, (usize, Prediction)>,
}

impl Finished {
    /// How many rows are finished.
    pub fn len(&self) -> usize {
        self.by_row.len()
    }

    /// Whether no row is finished.
    pub fn is_empty(&self) -> bool {
        self.by_row.is_empty()
    }

    /// Whether `row_id` has a prediction.
    pub fn contains(&self, row_id: &str) -> bool {
        self.by_row.contains_key(row_id)
    }
}

/// How strictly to read a predictions file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TornLine {
    /// Resuming: cut a torn last line off the file so appending can continue.
    Repair,
    /// Scoring or merging: a torn last line means the run is unfinished, which is an error.
    Reject,
}

/// Reads `path` (missing = empty) and checks every prediction is for one of `rows`, at most once.
pub fn read_finished(
    path: &Path,
    rows: &[Row],
    expected: &str,
    torn: TornLine,
) -> Result<Finished, EvalError> {
    let log = read_append_log::<Prediction>(path)?;
    if let Some(tail) = log.torn_tail {
        match torn {
            TornLine::Repair => truncate_to(path, tail.good_len)?,
            TornLine::Reject => {
                return Err(EvalError::TornPredictions {
                    path: path.to_path_buf(),
                    line: tail.line,
                });
            }
        }
    }
    let known: HashMap<&str, ()> = rows.iter().map(|row| (row.row_id.as_str(), ())).collect();
    let mut finished = Finished::default();
    for (line, prediction) in log.records {
        if !known.contains_key(prediction.row_id.as_str()) {
            return Err(EvalError::ForeignRow {
                path: path.to_path_buf(),
                line,
                row_id: prediction.row_id,
                expected: expected.to_owned(),
            });
        }
        if let Some((first_line, _)) = finished.by_row.get(&prediction.row_id) {
            return Err(EvalError::DuplicateRow {
                path: path.to_path_buf(),
                line,
                first_line: *first_line,
                row_id: prediction.row_id,
            });
        }
        finished
            .by_row
            .insert(prediction.row_id.clone(), (line, prediction));
    }
    Ok(finished)
}

/// The predictions for `rows`, in their order; an error naming `path` when some row has none.
pub fn in_row_order(
    path: &Path,
    rows: &[Row],
    mut finished: Finished,
) -> Result<Vec<Prediction>, EvalError> {
    let missing: Vec<&Row> = rows
        .iter()
        .filter(|row| !finished.contains(&row.row_id))
        .collect();
    if let Some(first) = missing.first() {
        return Err(EvalError::IncompletePredictions {
            path: path.to_path_buf(),
            missing: missing.len(),
            total: rows.len(),
            first: first.row_id.clone(),
        });
    }
    Ok(rows
        .iter()
        .filter_map(|row| {
            finished
                .by_row
                .remove(&row.row_id)
                .map(|(_, prediction)| prediction)
        })
        .collect())
}

/// The rows shard `shard` owns (by index in `rows`' order).
pub fn shard_rows(rows: &[Row], shard: Option<Shard>) -> Vec<Row> {
    rows.iter()
        .enumerate()
        .filter(|(index, _)| shard.is_none_or(|shard| shard.owns(*index)))
        .map(|(_, row)| row.clone())
        .collect()
}

/// Finds the shard files of `dir`: all must have the same shard count and every shard must be present.
pub fn find_shards(dir: &Path) -> Result<Vec<(Shard, PathBuf)>, EvalError> {
    let io = |source| EvalError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut shards: BTreeMap<usize, (Shard, PathBuf)> = BTreeMap::new();
    let mut counts: Vec<usize> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(shard) = Shard::from_file_name(&name) {
            if !counts.contains(&shard.count) {
                counts.push(shard.count);
            }
            shards.insert(shard.index, (shard, entry.path()));
        }
    }
    let shards_error = |reason: String| EvalError::Shards {
        dir: dir.to_path_buf(),
        reason,
    };
    match counts.as_slice() {
        [] => Err(shards_error(
            "no predictions.shard-<i>-of-<n>.jsonl files to merge".to_owned(),
        )),
        [count] => {
            let missing: Vec<String> = (0..*count)
                .filter(|index| !shards.contains_key(index))
                .map(|index| {
                    Shard {
                        index,
                        count: *count,
                    }
                    .file_name()
                })
                .collect();
            if missing.is_empty() {
                Ok(shards.into_values().collect())
            } else {
                Err(shards_error(format!(
                    "missing shard files: {}",
                    missing.join(", ")
                )))
            }
        }
        several => {
            let mut several = several.to_vec();
            several.sort_unstable();
            Err(shards_error(format!(
                "shard files of different shard counts {several:?}; keep one set"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str) -> Row {
        let (problem_id, variant) = Row::parse_id(id).expect("valid id");
        Row {
            row_id: id.to_owned(),
            problem_id: problem_id.to_owned(),
            variant,
            lib: "Kubernetes".to_owned(),
            category: "pod".to_owned(),
            question: "q".to_owned(),
            reference: "kind: Pod\n".to_owned(),
        }
    }

    fn prediction(row: &Row) -> Prediction {
        prediction_for(
            row,
            "p".to_owned(),
            "kind: Pod".to_owned(),
            Decoding {
                prompt_tokens: 1,
                generated_tokens: 2,
                seconds: 0.1,
                stopped: true,
            },
        )
    }

    fn line(prediction: &Prediction) -> String {
        serde_json::to_string(prediction).expect("serialisable") + "\n"
    }

    #[test]
    fn resume_repairs_a_torn_tail_and_scoring_rejects_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("predictions.jsonl");
        let rows = [
            row("Kubernetes_pod_q1#original"),
            row("Kubernetes_pod_q2#original"),
        ];
        let first = line(&prediction(&rows[0]));
        let torn = &line(&prediction(&rows[1]))[..20];
        std::fs::write(&path, format!("{first}{torn}")).expect("write fixture");
        let error = read_finished(&path, &rows, "test rows", TornLine::Reject)
            .expect_err("torn is an error");
        assert!(
            error.to_string().contains("line 2 is incomplete"),
            "{error}"
        );
        let finished =
            read_finished(&path, &rows, "test rows", TornLine::Repair).expect("repaired");
        assert_eq!(finished.len(), 1);
        assert_eq!(std::fs::read_to_string(&path).expect("read back"), first);
        let error = in_row_order(&path, &rows, finished).expect_err("one row missing");
        assert!(error.to_string().contains("1 of 2 rows"), "{error}");
    }

    #[test]
    fn foreign_and_duplicate_rows_name_the_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("predictions.jsonl");
        let rows = [row("Kubernetes_pod_q1#original")];
        let other = row("Kubernetes_pod_q9#original");
        std::fs::write(
            &path,
            line(&prediction(&rows[0])) + &line(&prediction(&other)),
        )
        .expect("write fixture");
        let error = read_finished(&path, &rows, "the test split", TornLine::Reject)
            .expect_err("foreign row");
        assert!(
            error
                .to_string()
                .contains("line 2: row Kubernetes_pod_q9#original"),
            "{error}"
        );
        std::fs::write(&path, line(&prediction(&rows[0])).repeat(2)).expect("write fixture");
        let error = read_finished(&path, &rows, "the test split", TornLine::Reject)
            .expect_err("duplicate row");
        assert!(
            error.to_string().contains("already predicted on line 1"),
            "{error}"
        );
    }

    #[test]
    fn row_order_and_shards() {
        let rows: Vec<Row> = (1..=5)
            .map(|n| row(&format!("Kubernetes_pod_q{n}#original")))
            .collect();
        let owned = shard_rows(&rows, Some(Shard { index: 1, count: 2 }));
        let ids: Vec<&str> = owned.iter().map(|row| row.row_id.as_str()).collect();
        assert_eq!(
            ids,
            ["Kubernetes_pod_q2#original", "Kubernetes_pod_q4#original"]
        );
        assert_eq!(shard_rows(&rows, None).len(), 5);

        let mut finished = Finished::default();
        for (i, row) in rows.iter().enumerate().rev() {
            finished
                .by_row
                .insert(row.row_id.clone(), (i + 1, prediction(row)));
        }
        let ordered = in_row_order(Path::new("p"), &rows, finished).expect("complete");
        assert_eq!(ordered[0].row_id, rows[0].row_id);
        assert_eq!(ordered[4].row_id, rows[4].row_id);
    }

    #[test]
    fn shard_discovery_requires_a_complete_set() {
        let dir = tempfile::tempdir().expect("temp dir");
        let error = find_shards(dir.path()).expect_err("no shards");
        assert!(
            error.to_string().contains("no predictions.shard"),
            "{error}"
        );
        std::fs::write(dir.path().join("predictions.shard-0-of-3.jsonl"), "").expect("write");
        std::fs::write(dir.path().join("predictions.shard-2-of-3.jsonl"), "").expect("write");
        let error = find_shards(dir.path()).expect_err("missing shard 1");
        assert!(
            error.to_string().contains("predictions.shard-1-of-3.jsonl"),
            "{error}"
        );
        std::fs::write(dir.path().join("predictions.shard-1-of-3.jsonl"), "").expect("write");
        assert_eq!(find_shards(dir.path()).expect("complete").len(), 3);
        std::fs::write(dir.path().join("predictions.shard-0-of-2.jsonl"), "").expect("write");
        let error = find_shards(dir.path()).expect_err("mixed counts");
        assert!(
            error.to_string().contains("different shard counts"),
            "{error}"
        );
    }
}
