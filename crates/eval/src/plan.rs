//! What one evaluation is — saved as `results/<run>/eval.json`, so scoring and merging never need the model or the
//! command line again.
//!
//! An [`EvalSpec`] holds the run plan (`task::TrainPlan` as resolved TOML: data, split, prompt, eval settings), the
//! system being evaluated and, for models, the generation settings. The rows it evaluates are the split's test rows
//! in `task`'s order (problems in CloudEval order, then variants) — the *canonical row order* that sharding and the
//! final predictions file use — optionally cut to the first `limit` rows.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use task::{Row, TrainPlan};

use crate::EvalError;

/// The identity and settings of one evaluation (`results/<run>/eval.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSpec {
    /// The results directory name (`results/<run>/`).
    pub run: String,
    /// Legend name for plots.
    pub label: String,
    /// `vanilla`, `lora`, `full` or `baseline-<name>`.
    pub system: String,
    /// Where the plan came from (`out/<run>/run.toml` or a config path), for messages.
    pub plan_origin: String,
    /// The resolved run plan (`TrainPlan::to_toml`): data, split, prompt, eval settings.
    pub plan: String,
    /// Only the first `limit` rows of the split were evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// How predictions were generated; absent for baselines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<GenerationSpec>,
}

/// Generation settings of a model evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationSpec {
    /// The base model source as given (HF repo id, directory or `.gguf`).
    pub base_model: String,
    /// The run directory whose LoRA adapter or full weights are evaluated; absent for a vanilla model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<PathBuf>,
    /// Most new tokens per row.
    pub max_new_tokens: usize,
    /// Stop strings besides EOS.
    pub stop: Vec<String>,
    /// Whether prompts were wrapped in the model's chat template.
    pub chat_template: bool,
    /// Weight dtype (`f32`, `bf16`, `f16`).
    pub dtype: String,
    /// Rows per batch (does not change outputs: batched generation equals one-at-a-time).
    pub batch_size: usize,
    /// Device (does not define the evaluation; a resumed run may use another).
    pub device: String,
}

/// The rows of an evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitRows {
    /// Split manifest name and unit, e.g. `sample/problem`.
    pub split: String,
    /// The evaluated (test) rows, canonical order.
    pub test: Vec<Row>,
    /// The training rows (for the `nearest` baseline), canonical order.
    pub train: Vec<Row>,
}

impl EvalSpec {
    /// The `eval.json` path inside a results directory.
    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join("eval.json")
    }

    /// Reads `dir/eval.json`.
    pub fn load(dir: &Path) -> Result<Self, EvalError> {
        let path = Self::path_in(dir);
        if !path.is_file() {
            return Err(EvalError::MissingEvalSpec { path });
        }
        Ok(task::read_json(&path)?)
    }

    /// Writes `dir/eval.json` (atomically). When the directory already holds predictions, an existing
    /// `eval.json` must describe the same evaluation, so predictions of two evaluations never mix; without
    /// predictions (e.g. a first attempt that failed to load its model) it is simply replaced.
    pub fn save(&self, dir: &Path) -> Result<(), EvalError> {
        let path = Self::path_in(dir);
        if path.is_file() && holds_predictions(dir)? {
            let existing: EvalSpec = task::read_json(&path)?;
            if let Some(difference) = self.differs_from(&existing) {
                return Err(EvalError::Usage(format!(
                    "{} describes a different evaluation ({difference}); its predictions cannot be resumed by this \
                     one: choose another --run-name or remove that directory",
                    path.display()
                )));
            }
        }
        Ok(task::write_json(&path, self)?)
    }

    /// What makes `self` a different evaluation from `other`, ignoring batch size and device.
    fn differs_from(&self, other: &EvalSpec) -> Option<String> {
        let same_generation = match (&self.generation, &other.generation) {
            (Some(a), Some(b)) => {
                a.base_model == b.base_model
                    && a.weights == b.weights
                    && a.max_new_tokens == b.max_new_tokens
                    && a.stop == b.stop
                    && a.chat_template == b.chat_template
                    && a.dtype == b.dtype
            }
            (None, None) => true,
            _ => false,
        };
        if self.system != other.system {
            Some(format!("system {} vs {}", other.system, self.system))
        } else if self.plan != other.plan {
            Some("another run plan (data, split or prompt)".to_owned())
        } else if self.limit != other.limit {
            Some(format!("row limit {:?} vs {:?}", other.limit, self.limit))
        } else if !same_generation {
            Some("other generation settings (model, weights, max_new_tokens, stop, chat template or dtype)".to_owned())
        } else {
            None
        }
    }

    /// Parses the saved plan.
    pub fn plan(&self) -> Result<TrainPlan, EvalError> {
        Ok(TrainPlan::from_str(
            &self.plan,
            &format!("{} (as saved in eval.json)", self.plan_origin),
        )?)
    }

    /// Loads the data and split of the plan; the test rows are cut to `limit`.
    pub fn rows(&self, zip_password: Option<String>) -> Result<SplitRows, EvalError> {
        let plan = self.plan()?;
        let mut rows = split_rows(&plan, zip_password)?;
        if let Some(limit) = self.limit {
            rows.test.truncate(limit);
        }
        Ok(rows)
    }
}

/// Whether `dir` has a non-empty `predictions.jsonl` or shard file.
fn holds_predictions(dir: &Path) -> Result<bool, EvalError> {
    let io = |source| EvalError::Io {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_predictions =
            name == "predictions.jsonl" || crate::shard::Shard::from_file_name(&name).is_some();
        if is_predictions && entry.metadata().map_err(io)?.len() > 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Loads `plan`'s problems and resolves its split into test and train rows.
pub fn split_rows(plan: &TrainPlan, zip_password: Option<String>) -> Result<SplitRows, EvalError> {
    let problems = task::load(&plan.data.path, &plan.load_options(zip_password))?;
    let manifest = plan.resolve_split(&problems)?;
    let test = manifest.test_rows(&problems, &plan.data.variants);
    let train = manifest.train_rows(&problems, &plan.data.variants);
    if test.is_empty() {
        return Err(EvalError::NoRows(format!(
            "split {} has no test rows in {} (variants {:?})",
            manifest.name,
            plan.data.path.display(),
            plan.data.variants
        )));
    }
    Ok(SplitRows {
        split: format!("{}/{}", manifest.name, manifest.unit.as_str()),
        test,
        train,
    })
}

/// A legend name from a model source: the last path component, without a `.gguf` extension
/// (`mistralai/Mistral-7B-v0.1` → `Mistral-7B-v0.1`, `.cache/assets/smollm2-135m-instruct.gguf` →
/// `smollm2-135m-instruct`).
pub fn label_of_source(source: &str) -> String {
    let trimmed = source.trim_end_matches('/');
    let last = trimmed.rsplit('/').next().unwrap_or(trimmed);
    last.strip_suffix(".gguf").unwrap_or(last).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_the_last_path_component() {
        assert_eq!(
            label_of_source("mistralai/Mistral-7B-v0.1"),
            "Mistral-7B-v0.1"
        );
        assert_eq!(
            label_of_source(".cache/assets/smollm2-135m-instruct.gguf"),
            "smollm2-135m-instruct"
        );
        assert_eq!(
            label_of_source("crates/model/tests/fixtures/tiny-llama/"),
            "tiny-llama"
        );
    }

    fn spec() -> EvalSpec {
        EvalSpec {
            run: "r".to_owned(),
            label: "L".to_owned(),
            system: "vanilla".to_owned(),
            plan_origin: "configs/x.toml".to_owned(),
            plan: "plan".to_owned(),
            limit: None,
            generation: Some(GenerationSpec {
                base_model: "m".to_owned(),
                weights: None,
                max_new_tokens: 16,
                stop: Vec::new(),
                chat_template: false,
                dtype: "f32".to_owned(),
                batch_size: 8,
                device: "cpu".to_owned(),
            }),
        }
    }

    #[test]
    fn batch_size_and_device_do_not_change_the_evaluation() {
        let a = spec();
        let mut b = spec();
        let generation = b.generation.as_mut().expect("model spec");
        generation.batch_size = 1;
        generation.device = "cuda".to_owned();
        assert_eq!(a.differs_from(&b), None);
        b.generation.as_mut().expect("model spec").max_new_tokens = 17;
        assert!(a.differs_from(&b).is_some());
        let mut c = spec();
        c.limit = Some(3);
        assert!(a.differs_from(&c).expect("differs").contains("row limit"));
    }

    #[test]
    fn saving_over_a_different_evaluation_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        spec().save(dir.path()).expect("first save");
        spec().save(dir.path()).expect("same evaluation again");
        let mut other = spec();
        other.system = "lora".to_owned();
        // No predictions yet: a failed first attempt may be replaced by another evaluation.
        other
            .save(dir.path())
            .expect("replaces an eval.json without predictions");
        spec().save(dir.path()).expect("and back");
        std::fs::write(dir.path().join("predictions.shard-0-of-2.jsonl"), "{}\n")
            .expect("a prediction");
        let error = other.save(dir.path()).expect_err("different evaluation");
        assert!(
            error
                .to_string()
                .contains("eval.json describes a different evaluation"),
            "{error}"
        );
        assert_eq!(EvalSpec::load(dir.path()).expect("readable"), spec());
    }
}
