//! `train`: fine-tune a model (full or LoRA) from a run config; see `train --help`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use task::config::DeviceSpec;
use train::{Event, Outcome, RunOptions};

/// Fine-tunes a Llama-family model (full or LoRA, as the config says) on CloudEval-YAML.
///
/// Writes the model, tokenizer, resolved `run.toml` and split manifest to `<out_dir>/<run>/`, a resumable
/// checkpoint to `<out_dir>/<run>/checkpoint/` after every epoch (and on Ctrl-C / SIGTERM), and one record per
/// epoch to `<results_dir>/<run>/train_log.jsonl` plus `train_summary.json`.
#[derive(Debug, Parser)]
#[command(name = "train", version)]
struct Args {
    /// The run config (TOML; schema in task::config, e.g. configs/mistral_lora.toml).
    #[arg(long)]
    config: PathBuf,
    /// Continue the run from its last checkpoint instead of starting afresh.
    #[arg(long)]
    resume: bool,
    /// Stop after this many optimiser steps in total (overrides optim.max_steps).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Device: auto, cpu, cuda or cuda:N (overrides model.device; cuda needs a --features cuda build).
    #[arg(long)]
    device: Option<DeviceSpec>,
    /// Checkpoint root (overrides output.out_dir).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Results root (overrides output.results_dir).
    #[arg(long)]
    results_dir: Option<PathBuf>,
    /// Also write a checkpoint every N optimiser steps.
    #[arg(long, value_name = "N")]
    checkpoint_every: Option<u64>,
    /// Password of an encrypted CloudEval data.zip. Never written anywhere.
    #[arg(long, env = "CLOUDEVAL_ZIP_PASSWORD", hide_env_values = true)]
    zip_password: Option<String>,
    /// Append every step's token rows to this JSONL file (for replaying the same batches in a benchmark).
    #[arg(long, value_name = "PATH")]
    dump_batches: Option<PathBuf>,
    /// No progress bar; print one line per epoch only.
    #[arg(long)]
    quiet: bool,
}

#[allow(unsafe_code)]
fn main() -> ExitCode {
    // SAFETY: the first statement of main, before any thread is started.
    unsafe { model::device::set_cpu_runtime_defaults() };
    let args = Args::parse();
    match model::device::on_compute_pool(|| run(args)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    let stop = train::install_stop_flag().context("installing the SIGINT/SIGTERM handler")?;
    let opts = RunOptions {
        config: args.config,
        resume: args.resume,
        max_steps: args.max_steps,
        device: args.device,
        out_dir: args.out_dir,
        results_dir: args.results_dir,
        checkpoint_every: args.checkpoint_every,
        zip_password: args.zip_password,
        stop,
        dump_batches: args.dump_batches,
    };
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if args.quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} steps  {msg}",
        )
        .context("progress bar template")?,
    );
    let outcome = train::run(&opts, &mut |event| match event {
        Event::Started {
            run,
            out_dir,
            results_dir,
            train_rows,
            val_rows,
            rows_shortened,
            rows_skipped,
            total_steps,
            start_step,
            trainable_params,
            total_params,
            device,
        } => {
            bar.set_length(total_steps);
            bar.set_position(start_step);
            bar.set_prefix(run.to_owned());
            let line = format!(
                "{run}: {train_rows} train / {val_rows} validation rows ({rows_shortened} shortened, {rows_skipped} skipped), \
                 {trainable_params} of {total_params} parameters trainable, {device}; model → {}, records → {}",
                out_dir.display(),
                results_dir.display()
            );
            if args.quiet {
                eprintln!("{line}")
            } else {
                bar.println(line)
            }
        }
        Event::Step {
            step,
            epoch,
            loss,
            lr,
            tokens_per_second,
            ..
        } => {
            bar.set_position(step);
            bar.set_message(format!(
                "epoch {epoch}  loss {loss:.4}  lr {lr:.2e}  {tokens_per_second:.0} tok/s"
            ));
        }
        Event::Validating { epoch } => bar.set_message(format!("epoch {epoch}  validating")),
        Event::EpochFinished(record) => {
            let val = record
                .val_loss
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.4}"));
            let line = format!(
                "epoch {}: train loss {:.4}, val loss {val}, {:.1} s, {:.0} tok/s, peak {:.1} MiB ({})",
                record.epoch,
                record.train_loss,
                record.wall_seconds,
                record.tokens_per_second,
                record.peak_memory_bytes as f64 / (1024.0 * 1024.0),
                record.memory_definition
            );
            if args.quiet {
                eprintln!("{line}")
            } else {
                bar.println(line)
            }
        }
        Event::CheckpointSaved { .. } => {}
    });
    bar.finish_and_clear();
    match outcome? {
        Outcome::Finished {
            out_dir,
            results_dir,
            epochs,
        } => {
            eprintln!(
                "done: {} epoch(s); model in {}, records in {}",
                epochs.len(),
                out_dir.display(),
                results_dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Interrupted { checkpoint, step } => {
            eprintln!(
                "stopped after step {step}; checkpoint in {} (continue with --resume)",
                checkpoint.display()
            );
            Ok(ExitCode::from(130))
        }
    }
}
