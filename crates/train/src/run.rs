//! The training run: config → data → model → epochs of steps → checkpoints, records and the exported model.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::Device;
use task::config::{DeviceSpec, TrainPlan};
use task::records::{Levers, Method, TrainEpochRecord, TrainSummary};

use crate::batch::{self, Fit, PromptFrame, TokenRow};
use crate::checkpoint::{self, CheckpointPaths, EpochProgress, StepLoss, TrainState};
use crate::engine::{Engine, StepStats};
use crate::error::{TensorContext, TrainError};
use crate::memory::PeakMemory;
use crate::optim::{AdamW, AdamWConfig, MomentFormat};
use crate::schedule::{Decay, Schedule};

/// What the caller asks for besides the config file (the binary's flags).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The run config (`configs/<run>.toml`).
    pub config: PathBuf,
    /// Continue from `out/<run>/checkpoint/` instead of starting afresh.
    pub resume: bool,
    /// Overrides `optim.max_steps`.
    pub max_steps: Option<u64>,
    /// Overrides `model.device`.
    pub device: Option<DeviceSpec>,
    /// Overrides `output.out_dir`.
    pub out_dir: Option<PathBuf>,
    /// Overrides `output.results_dir`.
    pub results_dir: Option<PathBuf>,
    /// Also checkpoint every this many optimiser steps (besides every epoch end and on a stop request).
    pub checkpoint_every: Option<u64>,
    /// Password of an encrypted CloudEval `data.zip` (never written anywhere).
    pub zip_password: Option<String>,
    /// Set (e.g. by a SIGINT/SIGTERM handler) to stop after the current step with a checkpoint.
    pub stop: Arc<AtomicBool>,
    /// Append every step's rows (`{"step", "micro_batches": [[{"id", "ids", "prompt_len"}]]}`) to this JSONL
    /// file, so a benchmark can replay exactly the same batches in another framework.
    pub dump_batches: Option<PathBuf>,
}

/// Progress reports for the caller (the binary draws them; tests may collect them).
#[derive(Debug)]
pub enum Event<'a> {
    /// Data and model are ready.
    Started {
        /// Run name.
        run: &'a str,
        /// Where the model goes.
        out_dir: &'a Path,
        /// Where the records go.
        results_dir: &'a Path,
        /// Training rows after fitting.
        train_rows: usize,
        /// Validation rows after fitting.
        val_rows: usize,
        /// Rows whose prompt was shortened to fit `max_seq_len`.
        rows_shortened: u64,
        /// Rows skipped because the completion cannot fit.
        rows_skipped: u64,
        /// Optimiser steps of the whole run.
        total_steps: u64,
        /// Steps already done (resume).
        start_step: u64,
        /// Trainable parameters.
        trainable_params: u64,
        /// All parameters.
        total_params: u64,
        /// Device label.
        device: &'a str,
    },
    /// One optimiser step finished.
    Step {
        /// Steps done, 1-based.
        step: u64,
        /// Steps of the run.
        total_steps: u64,
        /// Epoch, 1-based.
        epoch: u32,
        /// Mean loss per target token of this step.
        loss: f64,
        /// Learning rate used.
        lr: f64,
        /// Non-padding tokens per second of this step.
        tokens_per_second: f64,
    },
    /// Computing the validation loss of an epoch.
    Validating {
        /// Epoch, 1-based.
        epoch: u32,
    },
    /// An epoch finished and its record was written.
    EpochFinished(&'a TrainEpochRecord),
    /// A checkpoint was written.
    CheckpointSaved {
        /// The checkpoint directory.
        path: &'a Path,
        /// Steps done.
        step: u64,
    },
}

/// How a run ended (errors aside).
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// All epochs (or `max_steps`) done; the model is exported.
    Finished {
        /// `out/<run>/`.
        out_dir: PathBuf,
        /// `results/<run>/`.
        results_dir: PathBuf,
        /// The epoch records.
        epochs: Vec<TrainEpochRecord>,
    },
    /// A stop was requested; a checkpoint was written and `--resume` continues.
    Interrupted {
        /// The checkpoint directory.
        checkpoint: PathBuf,
        /// Steps done.
        step: u64,
    },
}

/// Registers SIGINT and SIGTERM to set the returned flag (a second SIGINT exits at once). Pass it as
/// [`RunOptions::stop`].
pub fn install_stop_flag() -> std::io::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Registered first, so it sees the flag as it was before this signal: a second signal exits (code 1).
        signal_hook::flag::register_conditional_shutdown(signal, 1, flag.clone())?;
        signal_hook::flag::register(signal, flag.clone())?;
    }
    Ok(flag)
}

/// The resolved plan with CLI overrides applied, plus everything derived from it.
struct Setup {
    plan: TrainPlan,
    plan_toml: String,
    origin: String,
    device: Device,
    device_label: String,
    model_dir: PathBuf,
    family: String,
    out_dir: PathBuf,
    results_dir: PathBuf,
}

fn plan_err(setup_origin: &str, key: &str, reason: impl Into<String>) -> TrainError {
    TrainError::Plan {
        path: PathBuf::from(setup_origin),
        key: key.to_owned(),
        reason: reason.into(),
    }
}

fn io_err(path: &Path, source: std::io::Error) -> TrainError {
    TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn model_err(context: impl Into<String>) -> impl FnOnce(model::Error) -> TrainError {
    let context = context.into();
    move |source| TrainError::Model { context, source }
}

/// Picks the candle device for a spec; CUDA needs the `cuda` feature.
pub(crate) fn select_device(spec: DeviceSpec) -> Result<(Device, String), TrainError> {
    match spec {
        DeviceSpec::Cpu => Ok((Device::Cpu, "cpu".to_owned())),
        DeviceSpec::Auto => {
            if cfg!(feature = "cuda") {
                match Device::new_cuda(0) {
                    Ok(device) => Ok((device, "cuda:0".to_owned())),
                    Err(_) => Ok((Device::Cpu, "cpu".to_owned())),
                }
            } else {
                Ok((Device::Cpu, "cpu".to_owned()))
            }
        }
        DeviceSpec::Cuda(n) => {
            if !cfg!(feature = "cuda") {
                return Err(TrainError::Device {
                    spec: spec.to_string(),
                    reason: "this binary was built without CUDA; rebuild with `--features cuda`"
                        .to_owned(),
                });
            }
            let device = Device::new_cuda(n).map_err(|e| TrainError::Device {
                spec: spec.to_string(),
                reason: e.to_string(),
            })?;
            Ok((device, format!("cuda:{n}")))
        }
    }
}

fn prepare(opts: &RunOptions) -> Result<Setup, TrainError> {
    let origin = opts.config.display().to_string();
    let mut plan = TrainPlan::load(&opts.config)?;
    if let Some(steps) = opts.max_steps {
        if steps == 0 {
            return Err(plan_err(&origin, "--max-steps", "must be ≥ 1"));
        }
        plan.optim.max_steps = Some(steps);
    }
    if let Some(device) = opts.device {
        plan.model.device = device;
    }
    if let Some(dir) = &opts.out_dir {
        plan.output.out_dir = dir.clone();
    }
    if let Some(dir) = &opts.results_dir {
        plan.output.results_dir = dir.clone();
    }
    check_levers(&plan, &origin)?;
    let plan_toml = plan.to_toml()?;
    let (device, device_label) = select_device(plan.model.device)?;
    if plan.model.dtype == task::config::DType::F16 {
        return Err(plan_err(
            &origin,
            "model.dtype",
            "f16 training is not supported (no loss scaling); use f32 or bf16",
        ));
    }
    let model_dir = resolve_model(&plan, &origin)?;
    let config_path = model_dir.join("config.json");
    let family = model::ModelConfig::from_file(&config_path)
        .map_err(model_err(format!(
            "{origin}: model.source `{}`",
            plan.model.source
        )))?
        .model_type
        .as_str()
        .to_owned();
    let out_dir = plan.run_dir();
    let results_dir = plan.results_dir();
    Ok(Setup {
        plan,
        plan_toml,
        origin,
        device,
        device_label,
        model_dir,
        family,
        out_dir,
        results_dir,
    })
}

/// The HF-layout directory of `model.source`: a directory, a repository in the offline HF cache, or a GGUF file
/// (converted once into `.cache/converted/`).
fn resolve_model(plan: &TrainPlan, origin: &str) -> Result<PathBuf, TrainError> {
    let opts = model::source::ResolveOptions {
        gguf_tokenizer: plan.model.tokenizer.clone(),
        ..Default::default()
    };
    model::source::ModelSource::parse(&plan.model.source)
        .resolve(&opts)
        .map_err(|e| {
            plan_err(
                origin,
                "model.source",
                format!("`{}`: {e}", plan.model.source),
            )
        })
}

/// Lever combinations the trainer cannot honour, reported against their config keys.
fn check_levers(plan: &TrainPlan, origin: &str) -> Result<(), TrainError> {
    if let Some(lora) = &plan.lora {
        let known = model::llama::linear_module_names();
        if let Some(bad) = lora.targets.iter().find(|t| !known.contains(&t.as_str())) {
            return Err(plan_err(
                origin,
                "lora.targets",
                format!(
                    "`{bad}` matches no linear layer of the model (known: {})",
                    known.join(", ")
                ),
            ));
        }
    }
    if plan.memory.optimizer_in_backward {
        if plan.optim.grad_accum > 1 {
            return Err(plan_err(
                origin,
                "memory.optimizer_in_backward",
                format!(
                    "needs optim.grad_accum = 1 (each gradient is applied as soon as it exists), got {}",
                    plan.optim.grad_accum
                ),
            ));
        }
        if plan.optim.max_grad_norm.is_some() {
            return Err(plan_err(
                origin,
                "memory.optimizer_in_backward",
                "cannot be combined with optim.max_grad_norm (the global norm needs every gradient at once)",
            ));
        }
    }
    Ok(())
}

fn to_candle_dtype(dtype: task::config::DType) -> candle_core::DType {
    match dtype {
        task::config::DType::F32 => candle_core::DType::F32,
        task::config::DType::Bf16 => candle_core::DType::BF16,
        task::config::DType::F16 => candle_core::DType::F16,
    }
}

fn trainable_of(plan: &TrainPlan) -> model::Trainable {
    match &plan.lora {
        Some(lora) => model::Trainable::Lora(model::LoraConfig {
            r: lora.r,
            alpha: lora.alpha,
            dropout: lora.dropout,
            target_modules: lora.targets.clone(),
        }),
        None => model::Trainable::Full,
    }
}

/// Tokenized, fitted train and validation rows.
struct Data {
    train: Vec<TokenRow>,
    val: Vec<TokenRow>,
    rows_shortened: u64,
    rows_skipped: u64,
    manifest: task::SplitManifest,
}

fn load_data(
    setup: &Setup,
    codec: &model::text::TextCodec,
    zip_password: Option<String>,
) -> Result<Data, TrainError> {
    let plan = &setup.plan;
    let data_ctx = format!("{}: data.path `{}`", setup.origin, plan.data.path.display());
    let problems = task::load(&plan.data.path, &plan.load_options(zip_password)).map_err(|e| {
        TrainError::Data {
            context: data_ctx.clone(),
            reason: e.to_string(),
        }
    })?;
    let manifest = plan
        .resolve_split(&problems)
        .map_err(|e| TrainError::Data {
            context: format!("{}: data.split", setup.origin),
            reason: e.to_string(),
        })?;
    let (train_rows, val_rows) = manifest.train_validation_rows(
        &problems,
        &plan.data.variants,
        plan.data.validation_fraction,
        manifest.seed,
    );
    if train_rows.is_empty() {
        return Err(TrainError::Data {
            context: data_ctx,
            reason: "the split leaves no training rows".to_owned(),
        });
    }
    let text_err = |context: String| {
        move |e: model::text::TextError| TrainError::Data {
            context,
            reason: e.to_string(),
        }
    };
    let use_chat = plan.prompt.chat_template && codec.chat_template().is_some();
    // Prompt ids exactly as eval builds them: the template's prompt, wrapped in the model's chat template when
    // `prompt.chat_template` is set and the tokenizer has one (the chat text carries its own BOS).
    let prompt_ids = |question: &str, variant: task::Variant| -> Result<Vec<u32>, TrainError> {
        let prompt = plan.prompt.template.render(question, variant);
        if use_chat {
            let ids = codec
                .encode_chat_prompt(&prompt)
                .map_err(text_err("rendering the chat template".to_owned()))?;
            Ok(ids.unwrap_or_default())
        } else {
            codec
                .encode_prompt(&prompt)
                .map_err(text_err("encoding a prompt".to_owned()))
        }
    };
    // The template's frame: what prompts for two unrelated questions share at the start and the end.
    let frame = PromptFrame::from_renders(
        &prompt_ids("alpha", task::Variant::Original)?,
        &prompt_ids("Zebra 42 quokka?", task::Variant::Original)?,
    );
    let max_len = plan.optim.max_seq_len;
    let mut shortened = 0u64;
    let mut skipped = 0u64;
    let mut fit_all = |rows: &[task::Row]| -> Result<Vec<TokenRow>, TrainError> {
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let mut ids = prompt_ids(&row.question, row.variant)?;
            let prompt_len = ids.len();
            let completion = task::prompt::completion_target_of(&row.reference);
            ids.extend(codec.encode_raw(&completion).map_err(text_err(format!(
                "encoding the reference of {}",
                row.row_id
            )))?);
            ids.push(codec.eos_id());
            let token_row = TokenRow {
                id: row.row_id.clone(),
                ids,
                prompt_len,
            };
            match batch::fit_row(token_row, frame, max_len) {
                Fit::Kept(r) => out.push(r),
                Fit::Shortened { row, .. } => {
                    shortened += 1;
                    out.push(row);
                }
                Fit::Skipped => skipped += 1,
            }
        }
        Ok(out)
    };
    let train = fit_all(&train_rows)?;
    let val = fit_all(&val_rows)?;
    if train.is_empty() {
        return Err(TrainError::Data {
            context: format!("{}: optim.max_seq_len", setup.origin),
            reason: format!(
                "all {} training rows are longer than {max_len} tokens even with the prompt shortened",
                train_rows.len()
            ),
        });
    }
    Ok(Data {
        train,
        val,
        rows_shortened: shortened,
        rows_skipped: skipped,
        manifest,
    })
}

/// Steps per epoch: one per group of `batch_size · grad_accum` rows (the last group may be smaller).
fn steps_per_epoch(rows: usize, plan: &TrainPlan) -> u64 {
    rows.div_ceil(plan.optim.batch_size * plan.optim.grad_accum) as u64
}

fn optimizer_config(plan: &TrainPlan) -> AdamWConfig {
    AdamWConfig {
        beta1: plan.optim.betas[0],
        beta2: plan.optim.betas[1],
        eps: plan.optim.eps,
        weight_decay: plan.optim.weight_decay,
        moments: match plan.memory.moments {
            task::config::Moments::F32 => MomentFormat::F32,
            task::config::Moments::Bf16 => MomentFormat::Bf16,
            task::config::Moments::Int8 => MomentFormat::Int8,
        },
        moments_on_host: plan.memory.moments_on_host,
    }
}

fn optimizer_label(plan: &TrainPlan) -> String {
    let o = &plan.optim;
    let clip = o
        .max_grad_norm
        .map_or_else(String::new, |n| format!(", clip {n}"));
    format!(
        "AdamW(betas=[{}, {}], eps={:e}, weight_decay={}, moments={}{}{})",
        o.betas[0],
        o.betas[1],
        o.eps,
        o.weight_decay,
        plan.memory.moments.as_str(),
        if plan.memory.moments_on_host {
            " on host"
        } else {
            ""
        },
        clip
    )
}

fn levers_of(plan: &TrainPlan) -> Levers {
    Levers {
        bf16_weights: plan.model.dtype == task::config::DType::Bf16,
        optimizer_in_backward: plan.memory.optimizer_in_backward,
        moments: plan.memory.moments.as_str().to_owned(),
        moments_on_host: plan.memory.moments_on_host,
        recompute: plan.memory.recompute,
    }
}

fn schedule_of(plan: &TrainPlan, total_steps: u64) -> Schedule {
    Schedule {
        peak: plan.optim.lr,
        warmup_steps: plan.optim.warmup_steps,
        total_steps,
        decay: match plan.optim.schedule {
            task::config::Schedule::Constant => Decay::Constant,
            task::config::Schedule::Linear => Decay::Linear,
            task::config::Schedule::Cosine => Decay::Cosine,
        },
    }
}

/// The plan as resume compares it: step cap, device and output roots may change between sessions.
fn resume_key(plan_toml: &str, origin: &str) -> Result<String, TrainError> {
    let mut plan = TrainPlan::from_str(plan_toml, origin)?;
    plan.optim.max_steps = None;
    plan.model.device = DeviceSpec::Auto;
    plan.output.out_dir = PathBuf::new();
    plan.output.results_dir = PathBuf::new();
    Ok(plan.to_toml()?)
}

/// Copies the tokenizer files eval needs from the model directory into `out_dir`.
fn copy_tokenizer(model_dir: &Path, out_dir: &Path) -> Result<(), TrainError> {
    for name in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
        "chat_template.jinja",
    ] {
        let from = model_dir.join(name);
        if from.is_file() {
            let bytes = std::fs::read(&from).map_err(|e| io_err(&from, e))?;
            task::records::write_atomic(&out_dir.join(name), &bytes)?;
        }
    }
    Ok(())
}

/// Runs (or resumes) the training described by `opts.config`. Reports progress through `on_event`.
pub fn run(opts: &RunOptions, on_event: &mut dyn FnMut(Event<'_>)) -> Result<Outcome, TrainError> {
    let setup = prepare(opts)?;
    let plan = &setup.plan;
    let paths = CheckpointPaths::under(&setup.out_dir);
    let latest = checkpoint::find_latest(&paths);
    let resumed_state = match (&latest, opts.resume) {
        (Some(dir), true) => {
            let state = checkpoint::load_state(dir)?;
            if resume_key(&state.plan_toml, &dir.display().to_string())?
                != resume_key(&setup.plan_toml, &setup.origin)?
            {
                return Err(TrainError::Resume {
                    path: dir.clone(),
                    reason: format!(
                        "the checkpoint was made with a different plan than {} (only optim.max_steps, model.device \
                         and the output roots may change on resume); its plan is in {}",
                        setup.origin,
                        dir.join("state.json").display()
                    ),
                });
            }
            Some((dir.clone(), state))
        }
        (None, true) => {
            return Err(TrainError::Resume {
                path: paths.current.clone(),
                reason: "no checkpoint found (run without --resume to start)".to_owned(),
            });
        }
        (Some(dir), false) => {
            return Err(TrainError::Resume {
                path: dir.clone(),
                reason: format!(
                    "a checkpoint of run `{}` already exists; pass --resume to continue it or delete {} to start over",
                    plan.output.run,
                    setup.out_dir.display()
                ),
            });
        }
        (None, false) => None,
    };

    std::fs::create_dir_all(&setup.out_dir).map_err(|e| io_err(&setup.out_dir, e))?;
    std::fs::create_dir_all(&setup.results_dir).map_err(|e| io_err(&setup.results_dir, e))?;

    let codec =
        model::text::TextCodec::from_dir(&setup.model_dir).map_err(|e| TrainError::Data {
            context: format!("loading the tokenizer of {}", setup.model_dir.display()),
            reason: e.to_string(),
        })?;
    let data = load_data(&setup, &codec, opts.zip_password.clone())?;

    // Everything eval needs besides the weights, written up front so an interrupted run is inspectable.
    plan.save(&setup.out_dir.join("run.toml"))?;
    copy_tokenizer(&setup.model_dir, &setup.out_dir)?;
    data.manifest
        .save(&setup.out_dir.join("split.json"))
        .map_err(|e| TrainError::Data {
            context: format!("writing {}", setup.out_dir.join("split.json").display()),
            reason: e.to_string(),
        })?;

    let dtype = to_candle_dtype(plan.model.dtype);
    let trainable = trainable_of(plan);
    let mut lm = match (&resumed_state, plan.method()) {
        (Some((dir, _)), Method::Full) => {
            let weights = dir.join("weights");
            model::CausalLm::load(&weights, dtype, &setup.device, &trainable, plan.optim.seed)
                .map_err(model_err(format!(
                    "loading the checkpoint weights {}",
                    weights.display()
                )))?
        }
        _ => model::CausalLm::load(
            &setup.model_dir,
            dtype,
            &setup.device,
            &trainable,
            plan.optim.seed,
        )
        .map_err(model_err(format!(
            "{}: model.source `{}` ({})",
            setup.origin,
            plan.model.source,
            setup.model_dir.display()
        )))?,
    };
    if let (Some((dir, _)), Method::Lora) = (&resumed_state, plan.method()) {
        let weights = dir.join("weights");
        lm.load_adapter(&weights).map_err(model_err(format!(
            "loading the checkpoint adapter {}",
            weights.display()
        )))?;
    }
    let (trainable_params, total_params) = lm.param_counts();
    let (trainable_params, total_params) = (trainable_params as u64, total_params as u64);
    let mut optimizer =
        AdamW::new(lm.trainable_vars(), optimizer_config(plan)).ctx("creating the optimizer")?;
    let engine = Engine::new(&optimizer, &plan.memory, plan.optim.max_grad_norm);

    let steps_per_epoch = steps_per_epoch(data.train.len(), plan);
    let full_steps = steps_per_epoch * u64::from(plan.optim.epochs);
    let total_steps = plan
        .optim
        .max_steps
        .map_or(full_steps, |cap| cap.min(full_steps));
    let schedule = schedule_of(plan, total_steps);

    let mut state = match resumed_state {
        Some((dir, state)) => {
            let tensors = checkpoint::load_optimizer(&dir, &setup.device)?;
            optimizer
                .load_state(&tensors, state.step)
                .map_err(|e| TrainError::Resume {
                    path: dir.join("optimizer.safetensors"),
                    reason: e.to_string(),
                })?;
            lm.rng().set_state(state.dropout_rng);
            state
        }
        None => TrainState {
            format: checkpoint::STATE_FORMAT,
            plan_toml: setup.plan_toml.clone(),
            step: 0,
            epoch: 1,
            cursor: 0,
            dropout_rng: lm.rng().state(),
            progress: EpochProgress::default(),
            loss_history: Vec::new(),
            epochs: Vec::new(),
            finished: false,
        },
    };
    let log_path = setup.results_dir.join("train_log.jsonl");
    task::records::write_jsonl(&log_path, &state.epochs)?;

    on_event(Event::Started {
        run: &plan.output.run,
        out_dir: &setup.out_dir,
        results_dir: &setup.results_dir,
        train_rows: data.train.len(),
        val_rows: data.val.len(),
        rows_shortened: data.rows_shortened,
        rows_skipped: data.rows_skipped,
        total_steps,
        start_step: state.step,
        trainable_params,
        total_params,
        device: &setup.device_label,
    });

    let record_base = RecordBase {
        run: plan.output.run.clone(),
        model: plan.model.source.clone(),
        family: setup.family.clone(),
        method: plan.method(),
        device: setup.device_label.clone(),
        precision: plan.model.dtype.as_str().to_owned(),
        optimizer: optimizer_label(plan),
        levers: levers_of(plan),
        trainable_params,
        total_params,
        rows_shortened: data.rows_shortened,
        rows_skipped: data.rows_skipped,
        seed: plan.optim.seed,
    };
    let group_size = plan.optim.batch_size * plan.optim.grad_accum;
    let pad_id = codec.pad_id();
    let cuda = setup.device.is_cuda();
    let save_checkpoint = |state: &mut TrainState,
                           lm: &model::CausalLm,
                           optimizer: &AdamW|
     -> Result<(), TrainError> {
        state.dropout_rng = lm.rng().state();
        checkpoint::save(&paths, state, optimizer.state_tensors(), |dir| {
            match plan.method() {
                Method::Lora => {
                    lm.save_adapter(dir, &plan.model.source)
                        .map_err(model_err(format!(
                            "writing the adapter to {}",
                            dir.display()
                        )))
                }
                Method::Full => lm.save_full(dir).map_err(model_err(format!(
                    "writing the weights to {}",
                    dir.display()
                ))),
            }
        })
    };

    if state.finished && state.step < total_steps {
        // A run that ended on its step cap closed its last epoch record and ran its learning-rate schedule to that
        // cap; continuing it would not be the run a larger cap gives from the start.
        return Err(TrainError::Resume {
            path: paths.current.clone(),
            reason: format!(
                "run `{}` already finished at step {} (its step cap then); a finished run cannot be extended to \
                 {total_steps} steps: its last epoch record and learning-rate schedule were closed at that step. \
                 Start a new run (another output.run) with the larger cap",
                plan.output.run, state.step
            ),
        });
    }
    while !state.finished && state.epoch <= plan.optim.epochs && state.step < total_steps {
        let epoch = state.epoch;
        let order = batch::epoch_order(data.train.len(), plan.optim.seed, epoch, true);
        let peak = PeakMemory::start(cuda);
        let mut segment_start = Instant::now();
        while state.cursor < steps_per_epoch && state.step < total_steps {
            let start = state.cursor as usize * group_size;
            let rows: Vec<&TokenRow> = order[start..(start + group_size).min(order.len())]
                .iter()
                .map(|&i| &data.train[i])
                .collect();
            let micro_batches = rows
                .chunks(plan.optim.batch_size)
                .map(|chunk| batch::make_batch(chunk, pad_id, &setup.device))
                .collect::<candle_core::Result<Vec<_>>>()
                .ctx("building a batch")?;
            if let Some(path) = &opts.dump_batches {
                let micro: Vec<Vec<serde_json::Value>> = rows
                    .chunks(plan.optim.batch_size)
                    .map(|chunk| {
                        chunk.iter().map(|r| serde_json::json!({"id": r.id, "ids": r.ids, "prompt_len": r.prompt_len})).collect()
                    })
                    .collect();
                task::records::append_jsonl(
                    path,
                    &serde_json::json!({"step": state.step + 1, "micro_batches": micro}),
                )?;
            }
            let lr = schedule.lr(state.step);
            let step_start = Instant::now();
            let cpu_start = crate::memory::process_cpu_seconds();
            let stats: StepStats = engine.train_step(&lm, &mut optimizer, &micro_batches, lr)?;
            let step_seconds = step_start.elapsed().as_secs_f64();
            let cpu_seconds = match (cpu_start, crate::memory::process_cpu_seconds()) {
                (Some(start), Some(end)) => end - start,
                _ => 0.0,
            };
            let loss = stats.loss_sum / stats.target_tokens.max(1) as f64;
            if !stats.applied {
                return Err(TrainError::NonFiniteLoss {
                    loss,
                    epoch,
                    step: state.step + 1,
                    checkpoint: checkpoint::find_latest(&paths),
                });
            }
            state.step += 1;
            state.cursor += 1;
            state.progress.loss_sum += stats.loss_sum;
            state.progress.target_tokens += stats.target_tokens;
            state.progress.non_padding_tokens += stats.non_padding_tokens;
            state.progress.steps += 1;
            state.loss_history.push(StepLoss {
                step: state.step,
                epoch,
                loss,
                lr,
                target_tokens: stats.target_tokens,
                non_padding_tokens: stats.non_padding_tokens,
                seconds: step_seconds,
                cpu_seconds,
            });
            on_event(Event::Step {
                step: state.step,
                total_steps,
                epoch,
                loss,
                lr,
                tokens_per_second: stats.non_padding_tokens as f64 / step_seconds.max(1e-9),
            });
            let stop = opts.stop.load(Ordering::SeqCst);
            let periodic = opts
                .checkpoint_every
                .is_some_and(|n| n > 0 && state.step % n == 0);
            let epoch_done = state.cursor == steps_per_epoch || state.step == total_steps;
            if (stop || periodic) && !epoch_done {
                state.progress.wall_seconds += segment_start.elapsed().as_secs_f64();
                state.progress.peak_memory_bytes =
                    state.progress.peak_memory_bytes.max(peak.peak_bytes());
                save_checkpoint(&mut state, &lm, &optimizer)?;
                on_event(Event::CheckpointSaved {
                    path: &paths.current,
                    step: state.step,
                });
                segment_start = Instant::now();
                if stop {
                    return Ok(Outcome::Interrupted {
                        checkpoint: paths.current.clone(),
                        step: state.step,
                    });
                }
            }
        }
        // The epoch (or the run's step budget) is complete.
        let wall_seconds = state.progress.wall_seconds + segment_start.elapsed().as_secs_f64();
        let peak_memory_bytes = state.progress.peak_memory_bytes.max(peak.peak_bytes());
        on_event(Event::Validating { epoch });
        let val_loss =
            validation_loss(&lm, &data.val, plan.optim.batch_size, pad_id, &setup.device)?;
        let progress = std::mem::take(&mut state.progress);
        let record = record_base.record(
            epoch,
            state.step,
            wall_seconds,
            &progress,
            val_loss,
            peak_memory_bytes,
            peak.definition(),
        );
        state.epochs.push(record);
        state.epoch += 1;
        state.cursor = 0;
        let last = state.epoch > plan.optim.epochs || state.step >= total_steps;
        if last {
            export_model(&lm, plan, &setup.out_dir)?;
            state.finished = true;
        }
        save_checkpoint(&mut state, &lm, &optimizer)?;
        on_event(Event::CheckpointSaved {
            path: &paths.current,
            step: state.step,
        });
        write_records(&setup.results_dir, &state)?;
        on_event(Event::EpochFinished(
            state
                .epochs
                .last()
                .expect("an epoch record was just pushed"),
        ));
        if opts.stop.load(Ordering::SeqCst) && !last {
            return Ok(Outcome::Interrupted {
                checkpoint: paths.current.clone(),
                step: state.step,
            });
        }
    }
    if !state.finished {
        // Resumed a run whose step budget was already spent (e.g. a smaller --max-steps): export what there is.
        export_model(&lm, plan, &setup.out_dir)?;
        state.finished = true;
        save_checkpoint(&mut state, &lm, &optimizer)?;
    }
    write_records(&setup.results_dir, &state)?;
    Ok(Outcome::Finished {
        out_dir: setup.out_dir.clone(),
        results_dir: setup.results_dir.clone(),
        epochs: state.epochs,
    })
}

fn validation_loss(
    lm: &model::CausalLm,
    rows: &[TokenRow],
    batch_size: usize,
    pad_id: u32,
    device: &Device,
) -> Result<Option<f64>, TrainError> {
    if rows.is_empty() {
        return Ok(None);
    }
    let mut loss_sum = 0f64;
    let mut tokens = 0u64;
    let refs: Vec<&TokenRow> = rows.iter().collect();
    for chunk in refs.chunks(batch_size) {
        let batch = batch::make_batch(chunk, pad_id, device).ctx("building a validation batch")?;
        loss_sum += crate::engine::eval_loss_sum(lm, &batch)?;
        tokens += batch.target_tokens;
    }
    Ok(Some(loss_sum / tokens.max(1) as f64))
}

fn export_model(lm: &model::CausalLm, plan: &TrainPlan, out_dir: &Path) -> Result<(), TrainError> {
    match plan.method() {
        Method::Lora => lm
            .save_adapter(out_dir, &plan.model.source)
            .map_err(model_err(format!(
                "writing the adapter to {}",
                out_dir.display()
            ))),
        Method::Full => lm.save_full(out_dir).map_err(model_err(format!(
            "writing the weights to {}",
            out_dir.display()
        ))),
    }
}

fn write_records(results_dir: &Path, state: &TrainState) -> Result<(), TrainError> {
    task::records::write_jsonl(&results_dir.join("train_log.jsonl"), &state.epochs)?;
    if let Some(mut summary) = TrainSummary::from_epochs(state.epochs.clone()) {
        let extra = &mut summary.extra;
        extra.insert("steps".into(), serde_json::json!(state.step));
        extra.insert("finished".into(), serde_json::json!(state.finished));
        extra.insert(
            "wall_seconds_definition".into(),
            serde_json::json!("training steps only (validation and checkpoint writes excluded)"),
        );
        extra.insert(
            "loss_history".into(),
            serde_json::to_value(&state.loss_history).map_err(|e| TrainError::Json {
                path: results_dir.join("train_summary.json"),
                source: e,
            })?,
        );
        task::records::write_json(&results_dir.join("train_summary.json"), &summary)?;
    }
    Ok(())
}

/// The fields of a [`TrainEpochRecord`] that do not change between epochs.
struct RecordBase {
    run: String,
    model: String,
    family: String,
    method: Method,
    device: String,
    precision: String,
    optimizer: String,
    levers: Levers,
    trainable_params: u64,
    total_params: u64,
    rows_shortened: u64,
    rows_skipped: u64,
    seed: u64,
}

impl RecordBase {
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        epoch: u32,
        steps: u64,
        wall_seconds: f64,
        progress: &EpochProgress,
        val_loss: Option<f64>,
        peak_memory_bytes: u64,
        memory_definition: &str,
    ) -> TrainEpochRecord {
        TrainEpochRecord {
            run: self.run.clone(),
            model: self.model.clone(),
            family: self.family.clone(),
            method: self.method,
            epoch,
            steps,
            wall_seconds,
            target_tokens: progress.target_tokens,
            non_padding_tokens: progress.non_padding_tokens,
            tokens_per_second: progress.non_padding_tokens as f64 / wall_seconds.max(1e-9),
            train_loss: progress.loss_sum / progress.target_tokens.max(1) as f64,
            val_loss,
            peak_memory_bytes,
            memory_definition: memory_definition.to_owned(),
            device: self.device.clone(),
            precision: self.precision.clone(),
            optimizer: self.optimizer.clone(),
            levers: self.levers.clone(),
            trainable_params: self.trainable_params,
            total_params: self.total_params,
            rows_shortened: self.rows_shortened,
            rows_skipped: self.rows_skipped,
            seed: self.seed,
        }
    }
}
