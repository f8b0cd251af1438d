//! Shared helpers: absolute fixture paths, config files in temp dirs, running the library.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use train::{Outcome, RunOptions};

/// The tiny random Llama checkpoint of the model crate.
pub fn tiny_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/tiny-llama")
}

/// The small JSONL dataset of this crate.
pub fn tiny_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny.jsonl")
}

/// A run config for the tiny model: `lora` adds a `[lora]` table, `extra_optim` and `memory` are spliced into
/// `[optim]` and `[memory]`. Output roots point into `dir`.
pub fn write_config(
    dir: &Path,
    run: &str,
    lora: Option<&str>,
    extra_optim: &str,
    memory: &str,
) -> PathBuf {
    let lora = lora.map_or_else(String::new, |body| format!("[lora]\n{body}\n"));
    let text = format!(
        r#"[model]
source = "{model}"
dtype = "f32"
device = "cpu"

[data]
path = "{data}"
variants = ["original", "simplified"]
validation_fraction = 0.2

[data.split_params]
seed = 1
unit = "problem"
test_ratio = 0.2

[prompt]
template = "paper-role"

[optim]
lr = 1e-3
epochs = 2
batch_size = 2
max_seq_len = 320
seed = 7
{extra_optim}

[memory]
{memory}

{lora}
[output]
run = "{run}"
out_dir = "{out}"
results_dir = "{results}"
"#,
        model = tiny_model().display(),
        data = tiny_data().display(),
        out = dir.join("out").display(),
        results = dir.join("results").display(),
    );
    let path = dir.join(format!("{run}.toml"));
    std::fs::write(&path, text).expect("write config");
    path
}

/// Runs the library on `config` and returns the outcome.
pub fn run_lib(config: &Path) -> Result<Outcome, train::TrainError> {
    let opts = RunOptions {
        config: config.to_path_buf(),
        stop: Arc::new(AtomicBool::new(false)),
        ..RunOptions::default()
    };
    train::run(&opts, &mut |_| {})
}

/// The per-step losses of a finished run, from its `train_summary.json`.
pub fn step_losses(results: &Path) -> Vec<f64> {
    let text =
        std::fs::read_to_string(results.join("train_summary.json")).expect("train_summary.json");
    let summary: serde_json::Value = serde_json::from_str(&text).expect("summary JSON");
    summary["loss_history"]
        .as_array()
        .expect("loss_history")
        .iter()
        .map(|s| s["loss"].as_f64().expect("loss"))
        .collect()
}

/// The epoch records of a run.
pub fn epochs(results: &Path) -> Vec<task::TrainEpochRecord> {
    task::read_jsonl(&results.join("train_log.jsonl")).expect("train_log.jsonl")
}
