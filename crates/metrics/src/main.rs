//! `metrics` command line: score (candidate, reference) pairs as the CloudEval-YAML harness does.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// CloudEval-YAML-exact scoring.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Score a JSONL file of {candidate, reference, ...} objects; writes JSONL with the five scores (after
    /// extraction) and a `raw` object (without extraction) to stdout. Bad lines are reported on stderr with their
    /// line number; the exit status is 1 if any line failed.
    ScorePairs {
        /// Input JSONL file.
        input: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::ScorePairs { input } => {
            let text = std::fs::read_to_string(&input)
                .with_context(|| format!("reading {}", input.display()))?;
            let (outputs, failures) = metrics::jsonl::score_pairs(&text);
            let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
            for line in &outputs {
                writeln!(stdout, "{line}").context("writing stdout")?;
            }
            stdout.flush().context("writing stdout")?;
            for failure in &failures {
                eprintln!("{}:{failure}", input.display());
            }
            Ok(if failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
