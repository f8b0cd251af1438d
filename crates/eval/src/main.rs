//! `eval`: predictions for the test split and CloudEval-YAML scores. See `eval --help` and the `eval` library.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;
use eval::Outcome;
use eval::cli::Cli;
use eval::progress::Progress;
use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar over rows, showing generated tokens per second.
struct Bar {
    bar: Option<ProgressBar>,
    tokens: u64,
    seconds: f64,
}

impl Progress for Bar {
    fn start(&mut self, total: usize, already_done: usize) {
        let bar = ProgressBar::new(total as u64);
        let style = ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} rows, eta {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_position(already_done as u64);
        if already_done > 0 {
            bar.println(format!(
                "resuming: {already_done} of {total} rows already predicted"
            ));
        }
        self.bar = Some(bar);
    }

    fn advance(&mut self, rows: usize, generated_tokens: u64, seconds: f64) {
        self.tokens += generated_tokens;
        self.seconds += seconds;
        if let Some(bar) = &self.bar {
            bar.inc(rows as u64);
            if self.seconds > 0.0 && self.tokens > 0 {
                bar.set_message(format!("{:.1} tokens/s", self.tokens as f64 / self.seconds));
            }
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }
}

#[allow(unsafe_code)]
fn main() -> ExitCode {
    // SAFETY: the first statement of main, before any thread is started.
    unsafe { model::device::set_cpu_runtime_defaults() };
    model::device::on_compute_pool(run)
}

fn run() -> ExitCode {
    let cli = Cli::parse();
    let mut bar = Bar {
        bar: None,
        tokens: 0,
        seconds: 0.0,
    };
    match eval::run(cli, &mut bar) {
        Ok(outcome) => {
            report(&outcome);
            ExitCode::SUCCESS
        }
        Err(error) => {
            bar.finish();
            eprintln!("error: {}", chain(&anyhow::Error::new(error)));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, like anyhow's `{:#}`, minus causes whose text the message already quotes (several
/// library errors print their source inside their own message).
fn chain(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !message.contains(&text) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&text);
        }
    }
    message
}

/// Prints the summary; a closed stdout (e.g. piped into `head`) is not an error worth a panic.
fn report(outcome: &Outcome) {
    let mut text = String::new();
    match outcome {
        Outcome::Scored {
            dir,
            report,
            schemas,
            predicted_now,
        } => {
            let o = &report.overall;
            let _ = writeln!(
                text,
                "{} ({}, {}): {} rows, {predicted_now} predicted now",
                report.run, report.system, report.label, report.n
            );
            let _ = writeln!(
                text,
                "  bleu {:.4}  edit_distance {:.4}  exact_match {:.4}  kv_exact_match {:.4}  kv_wildcard_match {:.4}",
                o.bleu, o.edit_distance, o.exact_match, o.kv_exact_match, o.kv_wildcard_match
            );
            let _ = writeln!(
                text,
                "  yaml parse rate {:.4}; schema validity {}",
                report.extras.yaml_parse_rate,
                schemas.describe()
            );
            if let Some(rate) = report.generation_tokens_per_second {
                let _ = writeln!(text, "  generation {rate:.1} tokens/s");
            }
            let _ = writeln!(
                text,
                "  wrote {}/{{predictions.jsonl, scores.json, scores.csv}}",
                dir.display()
            );
        }
        Outcome::ShardDone {
            path,
            rows,
            predicted_now,
        } => {
            let _ = writeln!(
                text,
                "{}: {rows} rows ({predicted_now} predicted now); run `eval merge` once every shard is done",
                path.display()
            );
        }
    }
    let _ = std::io::stdout().write_all(text.as_bytes());
}
