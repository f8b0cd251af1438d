//! Shared fixtures: absolute-path configs, hand-built run directories, runners.

use std::path::{Path, PathBuf};
use std::process::Output;

use candle_core::{DType, Device, Tensor};
use clap::Parser;
use eval::cli::Cli;
use eval::progress::Silent;
use eval::{EvalError, Outcome};
use model::{CausalLm, LoraConfig, Trainable};
use task::TrainPlan;
use task::records::{Prediction, ScoreReport};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root exists")
}

/// The tiny random Llama checkpoint that `configs/tiny.toml` names.
pub fn tiny_model_dir() -> PathBuf {
    root().join("crates/model/tests/fixtures/tiny-llama")
}

/// `configs/tiny.toml` with every relative path made absolute and outputs under `dir`.
pub fn tiny_plan(dir: &Path) -> TrainPlan {
    let root = root();
    let mut plan =
        TrainPlan::load(&root.join("configs/tiny.toml")).expect("configs/tiny.toml is valid");
    plan.model.source = tiny_model_dir().display().to_string();
    plan.data.path = root.join(&plan.data.path);
    plan.data.split = plan.data.split.map(|split| root.join(split));
    plan.output.out_dir = dir.join("out");
    plan.output.results_dir = dir.join("results");
    plan
}

/// Writes `plan` as `dir/tiny.toml` and returns its path.
pub fn write_config(dir: &Path, plan: &TrainPlan) -> PathBuf {
    let path = dir.join("tiny.toml");
    plan.save(&path).expect("config written");
    path
}

/// A schema directory that does not exist, so schema validity is "not computed" whatever the machine has.
pub fn no_schemas(dir: &Path) -> String {
    dir.join("no-schemas-here").display().to_string()
}

/// Runs the library as the binary would, silently.
pub fn run(args: &[&str]) -> Result<Outcome, EvalError> {
    let cli = Cli::try_parse_from(std::iter::once("eval").chain(args.iter().copied()))
        .expect("valid command line");
    eval::run(cli, &mut Silent)
}

/// The results directory and report of a scored outcome.
pub fn scored(outcome: Outcome) -> (PathBuf, ScoreReport, usize) {
    match outcome {
        Outcome::Scored {
            dir,
            report,
            predicted_now,
            ..
        } => (dir, *report, predicted_now),
        other => panic!("expected a scored outcome, got {other:?}"),
    }
}

/// Runs the `eval` binary in `cwd`.
pub fn binary(args: &[&str], cwd: &Path) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_eval"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("the eval binary runs")
}

/// Every prediction of a file.
pub fn read_predictions(path: &Path) -> Vec<Prediction> {
    task::read_jsonl(path).expect("predictions readable")
}

/// Reads `scores.json` of a results directory.
pub fn read_report(dir: &Path) -> ScoreReport {
    task::read_json(&dir.join("scores.json")).expect("scores.json readable")
}

/// `s` as a path argument.
pub fn arg(path: &Path) -> String {
    path.display().to_string()
}

/// Builds two run directories by hand, as train would leave them: `lora` (tiny-llama + a PEFT adapter whose `B`
/// is non-zero, so it changes the outputs; no tokenizer copy, so eval falls back to the base model's) and `full`
/// (the same adapter merged into full weights, with the tokenizer copied). Both evaluate to identical outputs.
pub fn lora_and_full_runs(dir: &Path) -> (PathBuf, PathBuf) {
    let base = tiny_plan(dir);
    let section = base
        .lora
        .clone()
        .expect("configs/tiny.toml is a LoRA config");
    let lora = LoraConfig {
        r: section.r,
        alpha: section.alpha,
        dropout: section.dropout,
        target_modules: section.targets.clone(),
    };
    let lm = CausalLm::load(
        &tiny_model_dir(),
        DType::F32,
        &Device::Cpu,
        &Trainable::Lora(lora),
        7,
    )
    .expect("tiny-llama loads with adapters");
    for (name, var) in lm.trainable_vars() {
        if name.ends_with("lora_B.weight") {
            // A fixed, non-zero pattern (a fresh adapter's B is zero, which would change nothing).
            let n = var.as_tensor().elem_count();
            let values: Vec<f32> = (0..n)
                .map(|i| ((i * 7919 % 101) as f32 / 101.0 - 0.5) * 0.8)
                .collect();
            let tensor =
                Tensor::from_vec(values, var.as_tensor().shape(), &Device::Cpu).expect("B tensor");
            var.set(&tensor).expect("B set");
        }
    }
    let lora_dir = dir.join("out/tiny-lora");
    lm.save_adapter(&lora_dir, &base.model.source)
        .expect("adapter saved");
    let mut lora_plan = base.clone();
    lora_plan.output.run = "tiny-lora".to_owned();
    lora_plan
        .save(&lora_dir.join("run.toml"))
        .expect("run.toml saved");

    let full_dir = dir.join("out/tiny-full");
    lm.save_full(&full_dir).expect("merged weights saved");
    for name in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tiny_model_dir().join(name), full_dir.join(name)).expect("tokenizer copied");
    }
    let mut full_plan = base;
    full_plan.lora = None;
    full_plan.output.run = "tiny-full".to_owned();
    full_plan
        .save(&full_dir.join("run.toml"))
        .expect("run.toml saved");
    (lora_dir, full_dir)
}
