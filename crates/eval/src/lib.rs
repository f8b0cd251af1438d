//! Evaluation: predictions for a split's test rows (a fine-tuned run, a vanilla base model or a model-free baseline),
//! then CloudEval-YAML scores.
//!
//! - [`run`] is the whole program behind the `eval` binary ([`cli::Cli`]): predict → `results/<run>/predictions.jsonl`,
//!   score → `scores.json` + `scores.csv`; `eval score` rescores a predictions file, `eval merge` combines shards.
//! - [`plan::EvalSpec`] (`results/<run>/eval.json`) records what was evaluated — the run plan (data, split, prompt)
//!   and generation settings — so scoring and merging need neither the model nor the original command line.
//! - [`predictions`]: the resumable predictions file (append one flushed line per finished row; a torn last line
//!   from a kill is cut off and redone) and shard merging; [`shard`]: `--shard i/n` owns rows `index mod n == i`.
//! - [`generate`]: the model path — prompts rendered by `task::Template` (the one place), tokenized by
//!   `model::text::TextCodec::encode_prompt`, sorted by length, batched greedy decoding with `model::generate`.
//! - [`baseline`]: `echo`, `nearest` (TF-IDF cosine over word unigrams + bigrams, [`similarity`]) and
//!   `echo-or-nearest`, written and scored exactly like a model.
//! - [`score`]: `metrics` over every prediction, aggregated per variant, category and problem into
//!   `task::records::ScoreReport`, plus extras (YAML parse rate, schema validity, label-stripped scores).
//!
//! Design: `eval` depends on `task`, `model` and `metrics`, never on `train`; it meets train only through the run
//! directory `out/<run>/` (its `run.toml` and weights) and meets `plot` only through `results/<run>/` records.
//! The library never prints: progress goes to a [`progress::Progress`] observer the binary supplies.

#![warn(missing_docs)]

pub mod baseline;
pub mod cli;
mod error;
pub mod generate;
pub mod jsonl;
pub mod plan;
pub mod predictions;
pub mod progress;
pub mod score;
pub mod shard;
pub mod similarity;

use std::path::{Path, PathBuf};

pub use error::EvalError;

use baseline::{Baseline, NearestNeighbours};
use cli::{Cli, Command, PredictArgs};
use plan::{EvalSpec, GenerationSpec, SplitRows};
use predictions::{Finished, TornLine, in_row_order, read_finished, shard_rows};
use progress::Progress;
use score::{ReportHeader, SchemaStatus};
use shard::Shard;
use task::records::{Prediction, ScoreReport};
use task::{Row, TrainPlan};

/// The schema directory below the assets root (`scripts/fetch-assets.sh` puts it there).
pub const SCHEMA_SUBDIR: &str = "k8s-schemas/v1.37.0-local-strict";

/// What a run of the program did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Predictions are complete and scored.
    Scored {
        /// The results directory.
        dir: PathBuf,
        /// The report written to `scores.json` (boxed: it is large).
        report: Box<ScoreReport>,
        /// Whether schema validity was computed.
        schemas: SchemaStatus,
        /// Rows predicted by this invocation (the rest were resumed from disk or merged).
        predicted_now: usize,
    },
    /// One shard's predictions are complete; `eval merge` scores them once every shard is done.
    ShardDone {
        /// The shard file.
        path: PathBuf,
        /// Rows in the shard.
        rows: usize,
        /// Rows predicted by this invocation.
        predicted_now: usize,
    },
}

/// Runs the command line: predict (and score), `score`, or `merge`.
pub fn run(cli: Cli, progress: &mut dyn Progress) -> Result<Outcome, EvalError> {
    match cli.command {
        Some(Command::Score(args)) => rescore(
            &args.predictions,
            args.scoring.schemas.as_deref(),
            args.scoring.zip_password,
        ),
        Some(Command::Merge(args)) => merge(
            &args.run,
            args.scoring.schemas.as_deref(),
            args.scoring.zip_password,
        ),
        None => predict(cli.predict, progress),
    }
}

/// Predicts every (shard's) row that is not yet in the predictions file, then scores unless sharded.
pub fn predict(args: PredictArgs, progress: &mut dyn Progress) -> Result<Outcome, EvalError> {
    let (plan, plan_origin, run_dir) = read_plan(&args)?;
    let rows = plan::split_rows(&plan, args.scoring.zip_password.clone())?;
    let spec = eval_spec(&args, &plan, plan_origin, run_dir, &rows)?;
    let results_root = args
        .results_dir
        .clone()
        .unwrap_or_else(|| plan.output.results_dir.clone());
    let dir = results_root.join(&spec.run);
    std::fs::create_dir_all(&dir).map_err(|source| EvalError::Io {
        path: dir.clone(),
        source,
    })?;
    spec.save(&dir)?;

    let mut test_rows = rows.test.clone();
    if let Some(limit) = spec.limit {
        test_rows.truncate(limit);
    }
    let owned = shard_rows(&test_rows, args.shard);
    let path = dir.join(
        args.shard
            .map_or_else(|| "predictions.jsonl".to_owned(), |shard| shard.file_name()),
    );
    let expected = describe_rows(&rows.split, args.shard);
    let finished = read_finished(&path, &owned, &expected, TornLine::Repair)?;
    let pending: Vec<Row> = owned
        .iter()
        .filter(|row| !finished.contains(&row.row_id))
        .cloned()
        .collect();
    progress.start(owned.len(), finished.len());
    let mut append = |prediction: &Prediction| -> Result<(), EvalError> {
        Ok(task::append_jsonl(&path, prediction)?)
    };
    if !pending.is_empty() {
        // eval_spec gives every non-baseline evaluation generation settings.
        if let Some(baseline) = args.baseline {
            predict_baseline(
                baseline,
                &plan,
                &rows.train,
                &pending,
                &mut append,
                progress,
            )?;
        } else if let Some(generation) = &spec.generation {
            let mut generator = generate::Generator::load(generation, &plan)?;
            generator.predict(&plan, &pending, &mut append, progress)?;
        }
    }
    progress.finish();

    // Every row is done: rewrite the file in canonical row order, so its bytes do not depend on batching or resumes.
    let finished = read_finished(&path, &owned, &expected, TornLine::Reject)?;
    let predictions = in_row_order(&path, &owned, finished)?;
    task::write_jsonl(&path, &predictions)?;
    match args.shard {
        Some(_) => Ok(Outcome::ShardDone {
            path,
            rows: owned.len(),
            predicted_now: pending.len(),
        }),
        None => {
            let (report, schemas) = score_and_write(
                &dir,
                &spec,
                &rows.split,
                &test_rows,
                &predictions,
                args.scoring.schemas.as_deref(),
            )?;
            Ok(Outcome::Scored {
                dir,
                report: Box::new(report),
                schemas,
                predicted_now: pending.len(),
            })
        }
    }
}

/// Rescores a complete predictions file; `scores.json` and `scores.csv` go beside it.
pub fn rescore(
    predictions_path: &Path,
    schemas: Option<&Path>,
    zip_password: Option<String>,
) -> Result<Outcome, EvalError> {
    if !predictions_path.is_file() {
        return Err(EvalError::Io {
            path: predictions_path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "predictions file not found"),
        });
    }
    let dir = predictions_path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let dir = if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    };
    let spec = EvalSpec::load(&dir)?;
    let rows = spec.rows(zip_password)?;
    let expected = describe_rows(&rows.split, None);
    let finished = read_finished(predictions_path, &rows.test, &expected, TornLine::Reject)?;
    let predictions = in_row_order(predictions_path, &rows.test, finished)?;
    let (report, schemas) =
        score_and_write(&dir, &spec, &rows.split, &rows.test, &predictions, schemas)?;
    Ok(Outcome::Scored {
        dir,
        report: Box::new(report),
        schemas,
        predicted_now: 0,
    })
}

/// Combines `predictions.shard-<i>-of-<n>.jsonl` into `predictions.jsonl` (canonical row order) and scores it.
pub fn merge(
    dir: &Path,
    schemas: Option<&Path>,
    zip_password: Option<String>,
) -> Result<Outcome, EvalError> {
    if !dir.is_dir() {
        return Err(EvalError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "results directory not found",
            ),
        });
    }
    let spec = EvalSpec::load(dir)?;
    let rows = spec.rows(zip_password)?;
    let mut merged = Finished::default();
    for (shard, path) in predictions::find_shards(dir)? {
        let owned = shard_rows(&rows.test, Some(shard));
        let finished = read_finished(
            &path,
            &owned,
            &describe_rows(&rows.split, Some(shard)),
            TornLine::Reject,
        )?;
        merged.by_row.extend(finished.by_row);
    }
    let path = dir.join("predictions.jsonl");
    let predictions = in_row_order(dir, &rows.test, merged)?;
    task::write_jsonl(&path, &predictions)?;
    let (report, schemas) =
        score_and_write(dir, &spec, &rows.split, &rows.test, &predictions, schemas)?;
    Ok(Outcome::Scored {
        dir: dir.to_path_buf(),
        report: Box::new(report),
        schemas,
        predicted_now: 0,
    })
}

/// Reads the run plan from `--model <run dir>/run.toml` or `--config`.
fn read_plan(args: &PredictArgs) -> Result<(TrainPlan, String, Option<PathBuf>), EvalError> {
    match (&args.model, &args.config) {
        (Some(dir), _) => {
            if !dir.is_dir() {
                return Err(EvalError::MissingRunDir { path: dir.clone() });
            }
            let run_toml = dir.join("run.toml");
            if !run_toml.is_file() {
                return Err(EvalError::MissingRunToml { path: run_toml, dir: dir.clone() });
            }
            Ok((TrainPlan::load(&run_toml)?, run_toml.display().to_string(), Some(dir.clone())))
        }
        (None, Some(config)) => Ok((TrainPlan::load(config)?, config.display().to_string(), None)),
        (None, None) => Err(EvalError::Usage(
            "nothing to evaluate: give --model out/<run> (a fine-tuned run), or --config <toml> (or --model) with \
             --base <model source> (vanilla) or --baseline <name>"
                .to_owned(),
        )),
    }
}

/// Decides system, run name, label and generation settings from the command line and the plan.
fn eval_spec(
    args: &PredictArgs,
    plan: &TrainPlan,
    plan_origin: String,
    run_dir: Option<PathBuf>,
    rows: &SplitRows,
) -> Result<EvalSpec, EvalError> {
    let generation = |base_model: &str, weights: Option<PathBuf>| GenerationSpec {
        base_model: base_model.to_owned(),
        weights,
        max_new_tokens: args.max_new_tokens.unwrap_or(plan.eval.max_new_tokens),
        stop: plan.eval.stop.clone(),
        chat_template: plan.prompt.chat_template,
        dtype: plan.model.dtype.as_str().to_owned(),
        batch_size: args.batch_size.unwrap_or(plan.eval.batch_size),
        device: args
            .device
            .clone()
            .unwrap_or_else(|| plan.model.device.to_string()),
    };
    let (system, default_run, default_label, generation) = match (
        args.baseline,
        &args.base,
        run_dir,
    ) {
        (Some(baseline), _, _) => {
            let name = format!("baseline-{}", baseline.name());
            let split_name = rows.split.split('/').next().unwrap_or_default();
            (name.clone(), format!("{name}-{split_name}"), name, None)
        }
        (None, Some(base), _) => (
            "vanilla".to_owned(),
            format!("{}-vanilla", plan.output.run),
            plan::label_of_source(base),
            Some(generation(base, None)),
        ),
        (None, None, Some(run_dir)) => (
            plan.method().as_str().to_owned(),
            plan.output.run.clone(),
            plan::label_of_source(&plan.model.source),
            Some(generation(&plan.model.source, Some(run_dir))),
        ),
        (None, None, None) => {
            return Err(EvalError::Usage(
                "--config alone evaluates nothing: add --base <model source> (vanilla) or --baseline <name>; \
                 evaluate a fine-tuned run with --model out/<run>"
                    .to_owned(),
            ));
        }
    };
    if generation
        .as_ref()
        .is_some_and(|g| g.max_new_tokens == 0 || g.batch_size == 0)
    {
        return Err(EvalError::Usage(
            "--max-new-tokens and --batch-size must be at least 1".to_owned(),
        ));
    }
    if args.limit == Some(0) {
        return Err(EvalError::Usage("--limit must be at least 1".to_owned()));
    }
    let run = args.run_name.clone().unwrap_or(default_run);
    if run.is_empty() || run.starts_with('.') || run.contains(['/', '\\']) {
        return Err(EvalError::Usage(format!(
            "run name `{run}` is not a plain folder name"
        )));
    }
    Ok(EvalSpec {
        run,
        label: args.label.clone().unwrap_or(default_label),
        system,
        plan_origin,
        plan: plan.to_toml()?,
        limit: args.limit,
        generation,
    })
}

fn describe_rows(split: &str, shard: Option<Shard>) -> String {
    match shard {
        Some(shard) => format!("test rows of split {split}, shard {shard}"),
        None => format!("test rows of split {split}"),
    }
}

fn predict_baseline(
    baseline: Baseline,
    plan: &TrainPlan,
    training_rows: &[Row],
    pending: &[Row],
    append: &mut dyn FnMut(&Prediction) -> Result<(), EvalError>,
    progress: &mut dyn Progress,
) -> Result<(), EvalError> {
    let nearest = NearestNeighbours::new(training_rows);
    for row in pending {
        let started = std::time::Instant::now();
        let raw_output = baseline::answer(baseline, &row.question, &nearest);
        let prediction = predictions::prediction_for(
            row,
            plan.prompt.template.render(&row.question, row.variant),
            raw_output,
            predictions::Decoding {
                prompt_tokens: 0,
                generated_tokens: 0,
                seconds: started.elapsed().as_secs_f64(),
                stopped: false,
            },
        );
        append(&prediction)?;
        progress.advance(1, 0, prediction.seconds);
    }
    Ok(())
}

/// The schema directory to use: `--schemas`, else `$KUBETUNE_ASSETS/<SCHEMA_SUBDIR>`, else `.cache/assets/…`.
pub fn schema_dir(explicit: Option<&Path>) -> PathBuf {
    match explicit {
        Some(dir) => dir.to_path_buf(),
        None => {
            let root = std::env::var_os("KUBETUNE_ASSETS")
                .map_or_else(|| PathBuf::from(".cache/assets"), PathBuf::from);
            root.join(SCHEMA_SUBDIR)
        }
    }
}

fn score_and_write(
    dir: &Path,
    spec: &EvalSpec,
    split: &str,
    rows: &[Row],
    predictions: &[Prediction],
    schemas: Option<&Path>,
) -> Result<(ScoreReport, SchemaStatus), EvalError> {
    let schema_dir = schema_dir(schemas);
    let (validator, status) = if schema_dir.is_dir() {
        let validator =
            metrics::schema::SchemaValidator::from_dir(&schema_dir).map_err(|source| {
                EvalError::Schemas {
                    path: schema_dir.clone(),
                    source,
                }
            })?;
        (
            Some(validator),
            SchemaStatus::Computed(schema_dir.display().to_string()),
        )
    } else {
        let reason = format!(
            "{} not found (run scripts/fetch-assets.sh)",
            schema_dir.display()
        );
        (None, SchemaStatus::NotComputed(reason))
    };
    let references: std::collections::HashMap<&str, &str> = rows
        .iter()
        .map(|row| (row.row_id.as_str(), row.reference.as_str()))
        .collect();
    let row_scores = predictions
        .iter()
        .map(|prediction| {
            let reference = references
                .get(prediction.row_id.as_str())
                .copied()
                .unwrap_or_default();
            score::score_prediction(prediction, reference, validator.as_ref())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let header = ReportHeader {
        run: spec.run.clone(),
        label: spec.label.clone(),
        system: spec.system.clone(),
        split: split.to_owned(),
    };
    let report = score::build_report(header, predictions, &row_scores);
    score::write_report(&dir.join("scores.json"), &report, &status)?;
    score::write_csv(&dir.join("scores.csv"), predictions, &row_scores)?;
    Ok((report, status))
}
