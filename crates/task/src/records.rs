//! Every on-disk record another step reads (`results/<run>/…`), and the helpers that read and write them.
//!
//! Readers tolerate unknown fields (no `deny_unknown_fields` here, only on configs), so a writer may add a
//! field without breaking older readers. Whole-file writes are atomic: a temp file in the same directory, then a
//! rename.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::problem::Variant;

/// Fine-tuning method of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Every weight is trained.
    Full,
    /// Only LoRA adapters are trained.
    Lora,
}

impl Method {
    /// `"full"` or `"lora"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Full => "full",
            Method::Lora => "lora",
        }
    }
}

/// Which memory levers produced a training row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Levers {
    /// Weights held in bf16.
    pub bf16_weights: bool,
    /// The optimizer steps each parameter inside backward, freeing its gradient at once.
    pub optimizer_in_backward: bool,
    /// Adam moment storage: `"f32"`, `"bf16"` or `"int8"`.
    pub moments: String,
    /// Adam moments kept in host memory.
    pub moments_on_host: bool,
    /// Activation recomputation.
    pub recompute: bool,
}

/// One line of `results/<run>/train_log.jsonl`, written by `train` after each epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainEpochRecord {
    /// Run name.
    pub run: String,
    /// Base model source as given in the config.
    pub model: String,
    /// Model family: `llama`, `mistral`, …
    pub family: String,
    /// Full or LoRA.
    pub method: Method,
    /// 1-based epoch number.
    pub epoch: u32,
    /// Optimizer steps taken so far (cumulative).
    pub steps: u64,
    /// Wall-clock seconds of this epoch.
    pub wall_seconds: f64,
    /// Completion (loss-bearing) tokens this epoch.
    pub target_tokens: u64,
    /// Non-padding tokens (prompt + completion) this epoch.
    pub non_padding_tokens: u64,
    /// `non_padding_tokens / wall_seconds`.
    pub tokens_per_second: f64,
    /// Mean training loss over the epoch.
    pub train_loss: f64,
    /// Validation loss after the epoch, when there is a validation slice.
    pub val_loss: Option<f64>,
    /// Peak memory, in bytes, as defined by `memory_definition`.
    pub peak_memory_bytes: u64,
    /// What `peak_memory_bytes` measures, e.g. `"process peak RSS (VmHWM)"` or `"device memory used (NVML)"`.
    pub memory_definition: String,
    /// Device, e.g. `"cpu"` or `"cuda:0 (NVIDIA H200)"`.
    pub device: String,
    /// Compute precision: `"f32"` or `"bf16"`.
    pub precision: String,
    /// Optimizer description, e.g. `"AdamW"`.
    pub optimizer: String,
    /// Memory levers in force.
    pub levers: Levers,
    /// Trainable parameter count.
    pub trainable_params: u64,
    /// Total parameter count.
    pub total_params: u64,
    /// Rows truncated to `max_seq_len`.
    pub rows_shortened: u64,
    /// Rows skipped (e.g. prompt alone exceeds `max_seq_len`).
    pub rows_skipped: u64,
    /// Training seed.
    pub seed: u64,
}

/// `results/<run>/train_summary.json`. Writers may add fields: they land in `extra` and survive a round trip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Run name.
    pub run: String,
    /// Base model source as given.
    pub model: String,
    /// Full or LoRA.
    pub method: Method,
    /// Every epoch's record, in order.
    pub epochs: Vec<TrainEpochRecord>,
    /// Mean of the epochs' `wall_seconds`.
    pub mean_epoch_seconds: f64,
    /// Maximum of the epochs' `peak_memory_bytes`.
    pub peak_memory_bytes: u64,
    /// What the memory number measures.
    pub memory_definition: String,
    /// Any further fields a writer added.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl TrainSummary {
    /// Builds a summary from epoch records: mean epoch time, max peak memory, the first record's identity fields.
    /// `None` when `epochs` is empty.
    pub fn from_epochs(epochs: Vec<TrainEpochRecord>) -> Option<Self> {
        let first = epochs.first()?.clone();
        let mean_epoch_seconds =
            epochs.iter().map(|e| e.wall_seconds).sum::<f64>() / epochs.len() as f64;
        let peak_memory_bytes = epochs
            .iter()
            .map(|e| e.peak_memory_bytes)
            .max()
            .unwrap_or(0);
        Some(TrainSummary {
            run: first.run,
            model: first.model,
            method: first.method,
            epochs,
            mean_epoch_seconds,
            peak_memory_bytes,
            memory_definition: first.memory_definition,
            extra: BTreeMap::new(),
        })
    }
}

/// One line of `results/<run>/predictions.jsonl`, written by `eval`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// `"<problem_id>#<variant>"`.
    pub row_id: String,
    /// The problem id.
    pub problem_id: String,
    /// The question variant.
    pub variant: Variant,
    /// The problem's lib.
    pub lib: String,
    /// The problem's category.
    pub category: String,
    /// The exact prompt given to the model (after any chat template).
    pub prompt: String,
    /// The model's raw generated text.
    pub raw_output: String,
    /// The YAML extracted from `raw_output` (CloudEval's post-processing).
    pub extracted: String,
    /// Prompt length in tokens.
    pub prompt_tokens: u32,
    /// Generated tokens.
    pub generated_tokens: u32,
    /// Seconds spent generating this row (its share of the batch).
    pub seconds: f64,
    /// Generation hit EOS or a stop string (rather than `max_new_tokens`).
    pub stopped: bool,
}

/// The five CloudEval text scores over `n` rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Rows averaged.
    pub n: usize,
    /// Mean sentence BLEU (NLTK method3).
    pub bleu: f64,
    /// Mean CloudEval edit-distance score.
    pub edit_distance: f64,
    /// Mean exact match.
    pub exact_match: f64,
    /// Mean key-value exact match.
    pub kv_exact_match: f64,
    /// Mean key-value wildcard match (can exceed 1 on single rows).
    pub kv_wildcard_match: f64,
}

/// Scores beyond CloudEval's five.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Extras {
    /// Fraction of outputs PyYAML-parseable.
    pub yaml_parse_rate: f64,
    /// Fraction of outputs valid against the Kubernetes schemas.
    pub schema_valid_rate: f64,
    /// Fraction of outputs whose kind has no known schema.
    pub schema_unknown_kind_rate: f64,
    /// The five scores against the label-stripped reference.
    pub stripped_reference: Scores,
}

/// `results/<run>/scores.json`, written by `eval`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreReport {
    /// Run name.
    pub run: String,
    /// Legend name, e.g. `"SmolLM2-135M"`.
    pub label: String,
    /// `"vanilla"`, `"lora"`, `"full"`, `"baseline-echo"`, `"baseline-nearest"` or `"baseline-echo-or-nearest"`.
    pub system: String,
    /// Reproducibility signature of the metrics.
    pub signature: String,
    /// Split manifest name + unit, e.g. `"sample/problem"`.
    pub split: String,
    /// Rows scored.
    pub n: usize,
    /// Over all rows.
    pub overall: Scores,
    /// Per variant name.
    pub per_variant: BTreeMap<String, Scores>,
    /// Per category.
    pub per_category: BTreeMap<String, Scores>,
    /// Per problem id.
    pub per_problem: BTreeMap<String, Scores>,
    /// Extra scores.
    pub extras: Extras,
    /// Generated tokens per second over the whole run, when measured.
    pub generation_tokens_per_second: Option<f64>,
}

/// Why a record file could not be read or written. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Reading or writing failed.
    #[error("cannot access {path}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSONL line is not a valid record.
    #[error("{path}:{line}: invalid record")]
    JsonLine {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A JSON file is not a valid record.
    #[error("{path}: invalid JSON record")]
    Json {
        /// The file.
        path: String,
        /// The parser's or serializer's error.
        source: serde_json::Error,
    },
}

fn io_err(path: &Path, source: std::io::Error) -> RecordError {
    RecordError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Reads a JSONL file: one `T` per non-blank line. Errors name the file and the 1-based line.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, RecordError> {
    let file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| io_err(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(&line).map_err(|source| RecordError::JsonLine {
            path: path.display().to_string(),
            line: i + 1,
            source,
        })?;
        out.push(record);
    }
    Ok(out)
}

/// Reads a JSONL file that an interrupted writer may have left behind, for resuming: a missing file is empty,
/// and a final line without its `\n` (a write cut short) is ignored. Any other bad line is an error.
pub fn read_jsonl_for_resume<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, RecordError> {
    let text = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(path, e)),
    };
    let complete = match text.iter().rposition(|&b| b == b'\n') {
        Some(last) => &text[..=last],
        None => &text[..0],
    };
    let mut out = Vec::new();
    for (i, line) in complete.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let record = serde_json::from_slice(line).map_err(|source| RecordError::JsonLine {
            path: path.display().to_string(),
            line: i + 1,
            source,
        })?;
        out.push(record);
    }
    Ok(out)
}

/// Reads one JSON file into a `T`.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, RecordError> {
    let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    serde_json::from_str(&text).map_err(|source| RecordError::Json {
        path: path.display().to_string(),
        source,
    })
}

/// Writes `value` as pretty JSON with a trailing newline, atomically. Field order is the struct's.
pub fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<(), RecordError> {
    let mut text = serde_json::to_string_pretty(value).map_err(|source| RecordError::Json {
        path: path.display().to_string(),
        source,
    })?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// Writes records as JSONL (one compact JSON object per line, each ending in `\n`), atomically.
pub fn write_jsonl<T: Serialize>(path: &Path, records: &[T]) -> Result<(), RecordError> {
    let mut text = Vec::new();
    for record in records {
        serde_json::to_writer(&mut text, record).map_err(|source| RecordError::Json {
            path: path.display().to_string(),
            source,
        })?;
        text.push(b'\n');
    }
    write_atomic(path, &text)
}

/// Appends one record as a JSONL line (created if missing). The line goes out in a single write, so a crash
/// leaves at most one unterminated last line, which [`read_jsonl_for_resume`] ignores.
pub fn append_jsonl<T: Serialize>(path: &Path, record: &T) -> Result<(), RecordError> {
    let mut line = serde_json::to_vec(record).map_err(|source| RecordError::Json {
        path: path.display().to_string(),
        source,
    })?;
    line.push(b'\n');
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| io_err(path, e))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io_err(path, e))?;
    file.write_all(&line).map_err(|e| io_err(path, e))?;
    file.flush().map_err(|e| io_err(path, e))
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` atomically: a temp file `.<name>.<pid>.<n>.tmp` in the same directory (created if
/// missing), synced, then renamed over `path`. Readers see the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RecordError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io_err(path, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if let Err(e) = result {
        // Best effort: the temp file is ours and useless now; the original error is what matters.
        let _ = std::fs::remove_file(&temp);
        return Err(io_err(path, e));
    }
    Ok(())
}

/// Pretty JSON with every object's keys sorted (recursively) and a trailing newline: a canonical form whose
/// bytes depend only on the value.
pub fn to_sorted_pretty_json<T: Serialize + ?Sized>(
    value: &T,
) -> Result<String, serde_json::Error> {
    fn sort(value: serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => {
                let sorted: BTreeMap<String, serde_json::Value> =
                    map.into_iter().map(|(k, v)| (k, sort(v))).collect();
                serde_json::Value::Object(sorted.into_iter().collect())
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.into_iter().map(sort).collect())
            }
            other => other,
        }
    }
    let mut text = serde_json::to_string_pretty(&sort(serde_json::to_value(value)?))?;
    text.push('\n');
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_json_orders_keys_recursively() {
        let value = serde_json::json!({"b": 1, "a": {"d": 2, "c": [ {"z": 0, "y": 1} ]}});
        let text = to_sorted_pretty_json(&value).expect("serialises");
        let a = text.find("\"a\"").expect("a");
        let b = text.find("\"b\"").expect("b");
        let c = text.find("\"c\"").expect("c");
        let d = text.find("\"d\"").expect("d");
        let y = text.find("\"y\"").expect("y");
        let z = text.find("\"z\"").expect("z");
        assert!(a < b && c < d && y < z, "{text}");
        assert!(text.ends_with("}\n"));
    }
}
