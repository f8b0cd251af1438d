//! `split`: load a CloudEval dataset and write a deterministic train/test split manifest.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use task::{LoadOptions, Split, SplitParams, SplitUnit, Variant};

/// Computes a seeded, stratified train/test split of CloudEval-YAML problems and writes
/// `OUT_DIR/NAME.json`, then prints the per-stratum counts.
#[derive(Parser)]
#[command(name = "split", version)]
struct Args {
    /// The data: a CloudEval directory, a (password-protected) data.zip, or a .jsonl file.
    #[arg(long)]
    data: PathBuf,
    /// Manifest name; the file is OUT_DIR/NAME.json.
    #[arg(long)]
    name: String,
    /// PRNG seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// What one split id stands for: `problem` (all variants on one side) or `row` (each phrasing alone).
    #[arg(long, default_value = "problem")]
    unit: SplitUnit,
    /// Fraction of each (lib, category) stratum put on the test side, in (0, 1).
    #[arg(long, default_value_t = 0.25)]
    test_ratio: f64,
    /// Question variants to load, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    variants: Vec<Variant>,
    /// Keep only these libs, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    libs: Vec<String>,
    /// Keep only these categories, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    categories: Vec<String>,
    /// Password of an encrypted data.zip. Never written anywhere.
    #[arg(long, env = "CLOUDEVAL_ZIP_PASSWORD", hide_env_values = true)]
    zip_password: Option<String>,
    /// Folder the manifest is written to.
    #[arg(long, default_value = "data/splits")]
    out_dir: PathBuf,
}

fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.test_ratio > 0.0 && args.test_ratio < 1.0,
        "--test-ratio must be in (0, 1), got {}",
        args.test_ratio
    );
    anyhow::ensure!(
        !args.name.is_empty() && !args.name.contains(['/', '\\']) && !args.name.starts_with('.'),
        "--name must be a plain file stem, got `{}`",
        args.name
    );
    let opts = LoadOptions {
        variants: args.variants,
        libs: args.libs,
        categories: args.categories,
        zip_password: args.zip_password,
    };
    let problems = task::load(&args.data, &opts)
        .with_context(|| format!("loading {}", args.data.display()))?;
    let params = SplitParams {
        seed: args.seed,
        unit: args.unit,
        test_ratio: args.test_ratio,
    };
    let manifest = Split::compute(&problems, &params)
        .with_origin(&args.name, &args.data.display().to_string());
    let path = args.out_dir.join(format!("{}.json", args.name));
    manifest
        .save(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    println!(
        "{} problems, {} rows; unit={} seed={} test_ratio={}",
        problems.len(),
        task::rows_of(&problems, &[]).len(),
        manifest.unit.as_str(),
        manifest.seed,
        manifest.test_ratio
    );
    print!("{}", manifest.counts_table());
    println!("wrote {}", path.display());
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
