//! `plot`: draws Fig. 3, Fig. 4 and the loss curves (PNG and SVG) and writes summary.md from results/.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;

/// Draw Fig. 3 (time per epoch, peak memory), Fig. 4 (BLEU, KV wildcard, edit distance) and the loss curves as
/// PNG and SVG, and write the same numbers as markdown tables, from the records under results/<run>/
/// (train_log.jsonl, train_summary.json, scores.json).
#[derive(Debug, Parser)]
#[command(name = "plot", version)]
struct Cli {
    /// Results root holding one directory per run.
    #[arg(long, value_name = "DIR", default_value = "results")]
    results: PathBuf,
    /// Directory for fig3, fig4 and loss (.png and .svg) [default: <results>/figures].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Markdown summary file [default: <results>/summary.md].
    #[arg(long, value_name = "FILE")]
    summary: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("plot: error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut options = plot::Options::for_results(&cli.results);
    if let Some(out) = cli.out {
        options.out = out;
    }
    if let Some(summary) = cli.summary {
        options.summary = summary;
    }
    let report = plot::run(&options)
        .with_context(|| format!("plotting the records under {}", cli.results.display()))?;
    println!(
        "read {} training runs and {} score reports from {}",
        report.train_runs,
        report.score_reports,
        cli.results.display()
    );
    for note in &report.notes {
        println!("note: {note}");
    }
    for path in &report.written {
        println!("wrote {}", path.display());
    }
    Ok(())
}
