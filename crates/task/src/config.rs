//! Run configs: `configs/<run>.toml` → a validated [`TrainPlan`], saved back as `out/<run>/run.toml`.
//!
//! Every table is `#[serde(deny_unknown_fields)]`, so a typo is an error naming the key. Required fields have no
//! default; every optional field documents its default. Parsing is two steps: toml + serde (syntax, unknown or
//! missing keys, wrong types, unknown enum names; toml reports line, column and key), then [`TrainPlan::validate`]
//! (semantic checks that name the key path, e.g. `optim.lr: must be > 0`). Errors also name the file.
//!
//! The parsed plan is already the resolved form: defaults are filled in, and when no split manifest is given
//! `data.split_params` is filled with its defaults. [`TrainPlan::to_toml`] writes every field out, so
//! `out/<run>/run.toml` is self-contained and parses back to an equal plan.
//!
//! Paths (`model.source` when it is a path, `model.tokenizer`, `data.path`, `data.split`, `output.*_dir`) are
//! kept as written. Relative ones resolve against the current directory of the process that reads the plan; all
//! our commands run from the repository root.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::load::LoadOptions;
use crate::problem::{Problem, Variant};
use crate::prompt::Template;
use crate::records::Method;
use crate::split::{Split, SplitError, SplitManifest, SplitParams};

/// A validated training (and evaluation) plan: the whole content of a run config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainPlan {
    /// `[model]`: what to fine-tune.
    pub model: ModelSection,
    /// `[data]`: which problems and split.
    pub data: DataSection,
    /// `[prompt]`: how questions become prompts.
    pub prompt: PromptSection,
    /// `[optim]`: optimizer and schedule.
    pub optim: OptimSection,
    /// `[memory]`: memory levers. Optional; default all off, moments f32.
    #[serde(default)]
    pub memory: MemorySection,
    /// `[lora]`: LoRA settings. Optional; absent means full fine-tuning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraSection>,
    /// `[eval]`: generation settings. Optional; defaults as documented on [`EvalSection`].
    #[serde(default)]
    pub eval: EvalSection,
    /// `[output]`: where results go.
    pub output: OutputSection,
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Required. A Hugging Face repo id (resolved offline in the HF cache), a model directory, or a `.gguf` file.
    pub source: String,
    /// Optional `tokenizer.json` path (needed for GGUF files without usable tokenizer metadata). Default: none,
    /// the tokenizer comes from `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<PathBuf>,
    /// Weight / compute dtype: `f32`, `bf16` or `f16`. Default `f32`.
    #[serde(default)]
    pub dtype: DType,
    /// `auto`, `cpu`, `cuda` or `cuda:N`. Default `auto` (CUDA device 0 when built with CUDA and present, else CPU).
    #[serde(default)]
    pub device: DeviceSpec,
}

/// Weight / compute dtype.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// 32-bit float.
    #[default]
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE half.
    F16,
}

impl DType {
    /// `"f32"`, `"bf16"` or `"f16"`.
    pub fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
            DType::F16 => "f16",
        }
    }
}

/// Where to run. Written `auto`, `cpu`, `cuda` (device 0) or `cuda:N`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    /// CUDA device 0 when available, else CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// A CUDA device by ordinal.
    Cuda(usize),
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(0) => f.write_str("cuda"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| {
                    format!("unknown device `{other}` (expected auto, cpu, cuda or cuda:N)")
                }),
        }
    }
}

impl Serialize for DeviceSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Required. A CloudEval directory, a `data.zip`, or a `.jsonl` file.
    pub path: PathBuf,
    /// Question variants to use. Default all three: `["original", "simplified", "translated"]`.
    #[serde(default = "all_variants")]
    pub variants: Vec<Variant>,
    /// Libs to keep. Default `[]` (all).
    #[serde(default)]
    pub libs: Vec<String>,
    /// Categories to keep. Default `[]` (all).
    #[serde(default)]
    pub categories: Vec<String>,
    /// A split manifest (`data/splits/<name>.json`). Default: none, the split is computed from `split_params`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<PathBuf>,
    /// Fraction of the train side's problems held out for validation loss, in [0, 1). Default 0.1.
    #[serde(default = "default_validation_fraction")]
    pub validation_fraction: f64,
    /// `[data.split_params]`: how to compute the split when `split` is absent (not allowed with `split`).
    /// Default: seed 42, unit "problem", test_ratio 0.25 (filled in when `split` is absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_params: Option<SplitParams>,
}

fn all_variants() -> Vec<Variant> {
    Variant::ALL.to_vec()
}

fn default_validation_fraction() -> f64 {
    0.1
}

/// `[prompt]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptSection {
    /// Required. `"paper-role"` or `"cloudeval-zero-shot"`.
    pub template: Template,
    /// Wrap the rendered prompt in the model's chat template when it has one. Default false.
    #[serde(default)]
    pub chat_template: bool,
}

/// Learning-rate schedule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Constant after warmup.
    #[default]
    Constant,
    /// Linear decay to 0 after warmup.
    Linear,
    /// Cosine decay to 0 after warmup.
    Cosine,
}

/// `[optim]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSection {
    /// Required. Peak learning rate, > 0.
    pub lr: f64,
    /// AdamW betas, each in [0, 1). Default `[0.9, 0.999]`.
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    /// AdamW epsilon, > 0. Default 1e-8.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Decoupled weight decay, ≥ 0. Default 0.0.
    #[serde(default)]
    pub weight_decay: f64,
    /// Required. Passes over the train rows, ≥ 1.
    pub epochs: u32,
    /// Required. Rows per micro-batch, ≥ 1.
    pub batch_size: usize,
    /// Micro-batches per optimizer step, ≥ 1. Default 1.
    #[serde(default = "one")]
    pub grad_accum: usize,
    /// `constant`, `linear` or `cosine`. Default `constant`.
    #[serde(default)]
    pub schedule: Schedule,
    /// Linear warmup steps from 0 to `lr`. Default 0.
    #[serde(default)]
    pub warmup_steps: u64,
    /// Clip the global gradient norm to this, > 0. Default: no clipping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_grad_norm: Option<f64>,
    /// Longest tokenized row (prompt + completion), ≥ 2. Default 1024.
    #[serde(default = "default_max_seq_len")]
    pub max_seq_len: usize,
    /// Seed for shuffling, dropout and initialisation. Default 42.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Stop after this many optimizer steps, ≥ 1 (tests, quick runs). Default: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u64>,
}

fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}

fn default_eps() -> f64 {
    1e-8
}

fn one() -> usize {
    1
}

fn default_max_seq_len() -> usize {
    1024
}

fn default_seed() -> u64 {
    42
}

/// Storage of Adam's moment estimates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Moments {
    /// 32-bit floats.
    #[default]
    F32,
    /// bfloat16.
    Bf16,
    /// 8-bit blockwise-quantised.
    Int8,
}

impl Moments {
    /// `"f32"`, `"bf16"` or `"int8"` (the string stored in [`crate::records::Levers::moments`]).
    pub fn as_str(self) -> &'static str {
        match self {
            Moments::F32 => "f32",
            Moments::Bf16 => "bf16",
            Moments::Int8 => "int8",
        }
    }
}

/// `[memory]`: levers that trade speed for memory. All default off.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemorySection {
    /// Step each parameter during backward and drop its gradient at once. Default false.
    #[serde(default)]
    pub optimizer_in_backward: bool,
    /// Adam moment storage: `f32`, `bf16` or `int8`. Default `f32`.
    #[serde(default)]
    pub moments: Moments,
    /// Keep Adam moments in host memory. Default false.
    #[serde(default)]
    pub moments_on_host: bool,
    /// Recompute activations in backward instead of storing them. Default false.
    #[serde(default)]
    pub recompute: bool,
}

/// `[lora]`: present means LoRA fine-tuning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSection {
    /// Required. Adapter rank, ≥ 1.
    pub r: usize,
    /// Required. Scaling numerator (scale = alpha / r), > 0.
    pub alpha: f64,
    /// Dropout on the adapter input, in [0, 1). Default 0.0.
    #[serde(default)]
    pub dropout: f64,
    /// Required. Linear layer names to adapt (PEFT `target_modules`), e.g. `["q_proj", "v_proj"]`; non-empty.
    pub targets: Vec<String>,
}

/// `[eval]`: generation settings for `eval`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// Most tokens generated per row, ≥ 1. Default 512.
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// Rows per generation batch, ≥ 1. Default 8.
    #[serde(default = "default_eval_batch_size")]
    pub batch_size: usize,
    /// Extra stop strings besides EOS. Default `[]`.
    #[serde(default)]
    pub stop: Vec<String>,
}

fn default_max_new_tokens() -> usize {
    512
}

fn default_eval_batch_size() -> usize {
    8
}

impl Default for EvalSection {
    fn default() -> Self {
        EvalSection {
            max_new_tokens: default_max_new_tokens(),
            batch_size: default_eval_batch_size(),
            stop: Vec::new(),
        }
    }
}

/// `[output]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    /// Required. Run name: checkpoints go to `<out_dir>/<run>/`, records to `<results_dir>/<run>/`. Letters,
    /// digits, `-`, `_` and `.` only (it is a folder name), not starting with `.`.
    pub run: String,
    /// Checkpoint root. Default `"out"`.
    #[serde(default = "default_out_dir")]
    pub out_dir: PathBuf,
    /// Results root. Default `"results"`.
    #[serde(default = "default_results_dir")]
    pub results_dir: PathBuf,
}

fn default_out_dir() -> PathBuf {
    PathBuf::from("out")
}

fn default_results_dir() -> PathBuf {
    PathBuf::from("results")
}

/// Why a config could not be read, parsed or validated. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or written.
    #[error("cannot access {path}")]
    Io {
        /// The config path.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown or missing key, a wrong type or an unknown enum name (toml's message gives the
    /// line, column and key).
    #[error("{origin}: {message}")]
    Parse {
        /// The config path (or the origin given to [`TrainPlan::from_str`]).
        origin: String,
        /// toml's message, with location and snippet.
        message: String,
    },
    /// A value is well-typed but not allowed.
    #[error("{origin}: {key}: {reason}")]
    Invalid {
        /// The config path.
        origin: String,
        /// The key path, e.g. `optim.lr`.
        key: String,
        /// Why it is rejected.
        reason: String,
    },
    /// The plan could not be serialised back to TOML.
    #[error("cannot write the plan as TOML")]
    Serialize(#[from] toml::ser::Error),
}

impl TrainPlan {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_str(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn from_str(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let mut plan: TrainPlan = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        if plan.data.split.is_none() && plan.data.split_params.is_none() {
            plan.data.split_params = Some(SplitParams::default());
        }
        plan.validate(origin)?;
        Ok(plan)
    }

    /// The resolved, self-contained TOML (every field written out), saved as `out/<run>/run.toml`. It parses
    /// back through [`TrainPlan::from_str`] to an equal plan.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        Ok(toml::to_string(self)?)
    }

    /// Writes [`TrainPlan::to_toml`] to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let text = self.to_toml()?;
        crate::records::write_atomic(path, text.as_bytes()).map_err(|e| match e {
            crate::records::RecordError::Io { source, .. } => ConfigError::Io {
                path: path.display().to_string(),
                source,
            },
            other => ConfigError::Invalid {
                origin: path.display().to_string(),
                key: String::new(),
                reason: other.to_string(),
            },
        })
    }

    /// Semantic checks; each error names the key path.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let fail = |key: &str, reason: String| {
            Err(ConfigError::Invalid {
                origin: origin.to_owned(),
                key: key.to_owned(),
                reason,
            })
        };
        let positive = |key: &str, x: f64| {
            if x.is_finite() && x > 0.0 {
                Ok(())
            } else {
                fail(key, format!("must be a finite number > 0, got {x}"))
            }
        };
        let unit_interval = |key: &str, x: f64, lo_inclusive: bool| {
            let ok = x.is_finite() && x < 1.0 && if lo_inclusive { x >= 0.0 } else { x > 0.0 };
            let range = if lo_inclusive { "[0, 1)" } else { "(0, 1)" };
            if ok {
                Ok(())
            } else {
                fail(key, format!("must be in {range}, got {x}"))
            }
        };
        let at_least = |key: &str, x: u64, min: u64| {
            if x >= min {
                Ok(())
            } else {
                fail(key, format!("must be ≥ {min}, got {x}"))
            }
        };

        if self.model.source.trim().is_empty() {
            return fail("model.source", "must not be empty".to_owned());
        }
        let d = &self.data;
        if d.path.as_os_str().is_empty() {
            return fail("data.path", "must not be empty".to_owned());
        }
        if d.variants.is_empty() {
            return fail("data.variants", "must list at least one variant".to_owned());
        }
        for (i, v) in d.variants.iter().enumerate() {
            if d.variants[..i].contains(v) {
                return fail("data.variants", format!("`{v}` is listed twice"));
            }
        }
        unit_interval("data.validation_fraction", d.validation_fraction, true)?;
        match (&d.split, &d.split_params) {
            (Some(_), Some(_)) => {
                return fail(
                    "data.split_params",
                    "give either data.split (a manifest) or data.split_params, not both".to_owned(),
                );
            }
            (None, Some(params)) => {
                unit_interval("data.split_params.test_ratio", params.test_ratio, false)?
            }
            _ => {}
        }
        let o = &self.optim;
        positive("optim.lr", o.lr)?;
        for (i, beta) in o.betas.iter().enumerate() {
            unit_interval(&format!("optim.betas[{i}]"), *beta, true)?;
        }
        positive("optim.eps", o.eps)?;
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            return fail(
                "optim.weight_decay",
                format!("must be a finite number ≥ 0, got {}", o.weight_decay),
            );
        }
        at_least("optim.epochs", u64::from(o.epochs), 1)?;
        at_least("optim.batch_size", o.batch_size as u64, 1)?;
        at_least("optim.grad_accum", o.grad_accum as u64, 1)?;
        at_least("optim.max_seq_len", o.max_seq_len as u64, 2)?;
        if let Some(norm) = o.max_grad_norm {
            positive("optim.max_grad_norm", norm)?;
        }
        if let Some(steps) = o.max_steps {
            at_least("optim.max_steps", steps, 1)?;
        }
        if let Some(lora) = &self.lora {
            at_least("lora.r", lora.r as u64, 1)?;
            positive("lora.alpha", lora.alpha)?;
            unit_interval("lora.dropout", lora.dropout, true)?;
            if lora.targets.is_empty() {
                return fail("lora.targets", "must name at least one module".to_owned());
            }
            if let Some(bad) = lora
                .targets
                .iter()
                .find(|t| t.trim().is_empty() || t.contains(char::is_whitespace))
            {
                return fail("lora.targets", format!("`{bad}` is not a module name"));
            }
        }
        at_least("eval.max_new_tokens", self.eval.max_new_tokens as u64, 1)?;
        at_least("eval.batch_size", self.eval.batch_size as u64, 1)?;
        if self.eval.stop.iter().any(String::is_empty) {
            return fail("eval.stop", "stop strings must not be empty".to_owned());
        }
        let run = &self.output.run;
        let run_ok = !run.is_empty()
            && !run.starts_with('.')
            && run
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !run_ok {
            return fail(
                "output.run",
                format!(
                    "`{run}` must be a folder name of letters, digits, '-', '_' or '.', not starting with '.'"
                ),
            );
        }
        Ok(())
    }

    /// Full or LoRA: LoRA iff `[lora]` is present.
    pub fn method(&self) -> Method {
        if self.lora.is_some() {
            Method::Lora
        } else {
            Method::Full
        }
    }

    /// `<out_dir>/<run>`: the checkpoint directory.
    pub fn run_dir(&self) -> PathBuf {
        self.output.out_dir.join(&self.output.run)
    }

    /// `<results_dir>/<run>`: the records directory.
    pub fn results_dir(&self) -> PathBuf {
        self.output.results_dir.join(&self.output.run)
    }

    /// Loader options for `[data]` (variants, libs, categories) plus a zip password from the caller (never
    /// stored in the plan).
    pub fn load_options(&self, zip_password: Option<String>) -> LoadOptions {
        LoadOptions {
            variants: self.data.variants.clone(),
            libs: self.data.libs.clone(),
            categories: self.data.categories.clone(),
            zip_password,
        }
    }

    /// The split for `problems`: the manifest at `data.split`, or one computed from `data.split_params` and
    /// named after the run. A manifest is checked against the data's hash when `[data]` filters nothing (all
    /// variants, no lib or category filter); with filters the loaded content differs by design, and ids the
    /// manifest lists but the filters removed are simply absent from the rows.
    pub fn resolve_split(&self, problems: &[Problem]) -> Result<SplitManifest, SplitError> {
        match &self.data.split {
            Some(path) => {
                let manifest = SplitManifest::load(path)?;
                // A filter changes the loaded content, so the hash can only be checked on unfiltered data.
                let unfiltered = self.data.libs.is_empty()
                    && self.data.categories.is_empty()
                    && Variant::ALL.iter().all(|v| self.data.variants.contains(v));
                if unfiltered {
                    manifest.verify_inputs(problems)?;
                }
                Ok(manifest)
            }
            None => {
                let params = self.data.split_params.clone().unwrap_or_default();
                Ok(Split::compute(problems, &params)
                    .with_origin(&self.output.run, &self.data.path.display().to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_spec_parses_and_prints() {
        for (text, spec) in [
            ("auto", DeviceSpec::Auto),
            ("cpu", DeviceSpec::Cpu),
            ("cuda", DeviceSpec::Cuda(0)),
            ("cuda:3", DeviceSpec::Cuda(3)),
        ] {
            assert_eq!(text.parse::<DeviceSpec>(), Ok(spec));
            assert_eq!(spec.to_string(), text);
        }
        for bad in ["gpu", "cuda:", "cuda:x", "CPU"] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad}");
        }
    }
}
