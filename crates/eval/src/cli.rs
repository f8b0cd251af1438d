//! The command line (clap derive; the doc comments are the `--help` text).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::baseline::Baseline;
use crate::shard::Shard;

/// Evaluate a fine-tuned run, a vanilla base model or a baseline on the test split, and score it CloudEval's way.
///
/// Writes results/<run>/{predictions.jsonl, scores.json, scores.csv, eval.json}. Prediction is resumable: rerun the
/// same command after an interruption and only the missing rows are generated.
#[derive(Debug, Parser)]
#[command(name = "eval", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Rescore or merge instead of predicting.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// What to evaluate (when no subcommand is given).
    #[command(flatten)]
    pub predict: PredictArgs,
}

/// Subcommands that need no model.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Rescore a predictions file (no model needed); writes scores.json and scores.csv beside it.
    Score(ScoreArgs),
    /// Combine predictions.shard-<i>-of-<n>.jsonl files into predictions.jsonl and score it.
    Merge(MergeArgs),
}

/// The options every scoring command takes.
#[derive(Debug, Args)]
pub struct ScoringArgs {
    /// Kubernetes schema directory for the schema-validity extra
    /// [default: $KUBETUNE_ASSETS or .cache/assets, then k8s-schemas/v1.37.0-local-strict].
    #[arg(long, value_name = "DIR")]
    pub schemas: Option<PathBuf>,
    /// Password of a CloudEval data.zip named by the plan's data.path (never written anywhere).
    #[arg(
        long,
        env = "CLOUDEVAL_ZIP_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    pub zip_password: Option<String>,
}

/// Arguments of `eval score`.
#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// The predictions file (its directory must hold the eval.json written with it).
    #[arg(long, value_name = "FILE")]
    pub predictions: PathBuf,
    /// Schema directory and data password, shared by every subcommand that scores.
    #[command(flatten)]
    pub scoring: ScoringArgs,
}

/// Arguments of `eval merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The results directory holding the shard files and eval.json, e.g. results/<run>.
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,
    /// Schema directory and data password, shared by every subcommand that scores.
    #[command(flatten)]
    pub scoring: ScoringArgs,
}

/// What to evaluate and how.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// A training run directory (out/<run>): its run.toml gives the base model, prompt, data and split, and it holds
    /// the LoRA adapter or the full weights. With --base or --baseline it only supplies data, split and prompt.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Evaluate this base model as is (HF repo id in the offline cache, HF-layout directory, or .gguf file), with
    /// the prompt and split of --config or --model. Results go to results/<run>-vanilla unless --run-name is given.
    #[arg(long, value_name = "SOURCE", conflicts_with = "baseline")]
    pub base: Option<String>,
    /// Evaluate a model-free baseline; results go to results/baseline-<name>-<split>.
    #[arg(long, value_enum, value_name = "NAME")]
    pub baseline: Option<Baseline>,
    /// Run config (TOML, as for train) giving data, split, prompt and eval settings when there is no run directory.
    #[arg(long, value_name = "TOML", conflicts_with = "model")]
    pub config: Option<PathBuf>,
    /// Name of the results directory (results/<name>), overriding the default.
    #[arg(long, value_name = "NAME")]
    pub run_name: Option<String>,
    /// Legend name in scores.json [default: derived from the model source, e.g. the .gguf or repo name].
    #[arg(long, value_name = "TEXT")]
    pub label: Option<String>,
    /// Root for results [default: the plan's output.results_dir, normally `results`].
    #[arg(long, value_name = "DIR")]
    pub results_dir: Option<PathBuf>,
    /// Maximum new tokens per row [default: the plan's eval.max_new_tokens].
    #[arg(long, value_name = "N")]
    pub max_new_tokens: Option<usize>,
    /// Rows generated together [default: the plan's eval.batch_size].
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,
    /// Device: auto, cpu, cuda or cuda:N [default: the plan's model.device].
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
    /// Evaluate only rows whose index in the split's order is i modulo n (0 ≤ i < n); writes
    /// predictions.shard-<i>-of-<n>.jsonl, to be combined by `eval merge`.
    #[arg(long, value_name = "i/n")]
    pub shard: Option<Shard>,
    /// Evaluate only the first N rows of the split (quick checks and benchmarks).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Schema directory and data password, shared by every subcommand that scores.
    #[command(flatten)]
    pub scoring: ScoringArgs,
}
