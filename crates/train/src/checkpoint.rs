//! The resumable checkpoint directory `out/<run>/checkpoint/` and how it is swapped in atomically.
//!
//! Layout (documented in ARCHITECTURE.md, "train"):
//! - `state.json`: [`TrainState`] (step, epoch, data cursor, RNG state, per-epoch accumulators, loss history,
//!   finished epoch records, the resolved plan it belongs to);
//! - `optimizer.safetensors`: AdamW moments (`<param>.exp_avg`, `<param>.exp_avg_sq`, int8 codes + absmax);
//! - `weights/`: the trainable state as `model` saves it: a PEFT adapter (LoRA) or HF safetensors + config.json
//!   (full).
//!
//! A new checkpoint is written into `checkpoint.tmp/`, then `checkpoint/` is renamed to `checkpoint.old/`,
//! `checkpoint.tmp/` to `checkpoint/`, and `checkpoint.old/` is removed. A crash at any point leaves either
//! `checkpoint/` or `checkpoint.old/` complete; [`find_latest`] picks whichever exists.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use task::records::TrainEpochRecord;

use crate::error::TrainError;

/// Version of the `state.json` layout; bumped when a field changes meaning.
pub const STATE_FORMAT: u32 = 1;

/// Running sums of the epoch in progress, so a resumed epoch reports the same averages.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochProgress {
    /// Σ token NLL over the completed optimiser steps of this epoch.
    pub loss_sum: f64,
    /// Target tokens of those steps.
    pub target_tokens: u64,
    /// Non-padding tokens of those steps.
    pub non_padding_tokens: u64,
    /// Optimiser steps completed in this epoch.
    pub steps: u64,
    /// Wall seconds spent on this epoch before the last interruption(s).
    pub wall_seconds: f64,
    /// Peak memory seen in earlier segments of this epoch (bytes).
    pub peak_memory_bytes: u64,
}

/// One optimiser step's mean loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLoss {
    /// Optimiser step, 1-based.
    pub step: u64,
    /// Epoch, 1-based.
    pub epoch: u32,
    /// Mean NLL per target token of the step.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Target tokens of the step.
    pub target_tokens: u64,
    /// Non-padding tokens of the step.
    pub non_padding_tokens: u64,
    /// Wall seconds of the step (forward, backward, update).
    pub seconds: f64,
    /// CPU seconds of the process during the step (all threads; 0 where unavailable).
    #[serde(default)]
    pub cpu_seconds: f64,
}

/// Everything besides tensors that a resumed run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// [`STATE_FORMAT`] at write time.
    pub format: u32,
    /// The resolved plan (`TrainPlan::to_toml()`) the checkpoint belongs to; resume refuses a different one.
    pub plan_toml: String,
    /// Optimiser steps completed.
    pub step: u64,
    /// The epoch in progress, 1-based.
    pub epoch: u32,
    /// Optimiser steps (batch groups) of `epoch` already consumed: the data cursor into the epoch's order.
    pub cursor: u64,
    /// State of the dropout RNG, as the model reports it.
    pub dropout_rng: u64,
    /// Sums of the epoch in progress.
    pub progress: EpochProgress,
    /// Every optimiser step's loss so far.
    pub loss_history: Vec<StepLoss>,
    /// Records of the finished epochs (also in `train_log.jsonl`, which is rewritten from these on resume).
    pub epochs: Vec<TrainEpochRecord>,
    /// True once the last epoch finished and the final weights were exported.
    pub finished: bool,
}

/// Paths of the checkpoint directories of a run.
#[derive(Debug, Clone)]
pub struct CheckpointPaths {
    /// `out/<run>/checkpoint`.
    pub current: PathBuf,
    /// `out/<run>/checkpoint.tmp`.
    pub staging: PathBuf,
    /// `out/<run>/checkpoint.old`.
    pub previous: PathBuf,
}

impl CheckpointPaths {
    /// The checkpoint paths under a run's output directory.
    pub fn under(out_dir: &Path) -> Self {
        Self {
            current: out_dir.join("checkpoint"),
            staging: out_dir.join("checkpoint.tmp"),
            previous: out_dir.join("checkpoint.old"),
        }
    }
}

/// The complete checkpoint to resume from, if any: `checkpoint/`, or `checkpoint.old/` when a crash hit between
/// the two renames.
pub fn find_latest(paths: &CheckpointPaths) -> Option<PathBuf> {
    [&paths.current, &paths.previous]
        .into_iter()
        .find(|p| p.join("state.json").is_file())
        .cloned()
}

fn io_err(path: &Path, source: std::io::Error) -> TrainError {
    TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a checkpoint: `write_weights` fills `<staging>/weights/`, then the optimiser tensors and the state are
/// written and the directory is swapped in.
pub fn save(
    paths: &CheckpointPaths,
    state: &TrainState,
    optimizer: Vec<(String, Tensor)>,
    write_weights: impl FnOnce(&Path) -> Result<(), TrainError>,
) -> Result<(), TrainError> {
    if paths.staging.exists() {
        std::fs::remove_dir_all(&paths.staging).map_err(|e| io_err(&paths.staging, e))?;
    }
    let weights = paths.staging.join("weights");
    std::fs::create_dir_all(&weights).map_err(|e| io_err(&weights, e))?;
    write_weights(&weights)?;
    let optimizer_path = paths.staging.join("optimizer.safetensors");
    let tensors: HashMap<String, Tensor> = optimizer.into_iter().collect();
    candle_core::safetensors::save(&tensors, &optimizer_path).map_err(|source| {
        TrainError::Tensor {
            context: format!("writing {}", optimizer_path.display()),
            source,
        }
    })?;
    let state_path = paths.staging.join("state.json");
    let json = serde_json::to_vec_pretty(state).map_err(|e| TrainError::Json {
        path: state_path.clone(),
        source: e,
    })?;
    std::fs::write(&state_path, json).map_err(|e| io_err(&state_path, e))?;
    // Only when a complete `checkpoint/` exists may the older `checkpoint.old/` go: otherwise it is the only
    // complete checkpoint left (a crash hit between the renames of the previous save).
    if paths.current.exists() {
        if paths.previous.exists() {
            std::fs::remove_dir_all(&paths.previous).map_err(|e| io_err(&paths.previous, e))?;
        }
        std::fs::rename(&paths.current, &paths.previous).map_err(|e| io_err(&paths.current, e))?;
    }
    std::fs::rename(&paths.staging, &paths.current).map_err(|e| io_err(&paths.staging, e))?;
    if paths.previous.exists() {
        std::fs::remove_dir_all(&paths.previous).map_err(|e| io_err(&paths.previous, e))?;
    }
    Ok(())
}

/// Reads `state.json` of a checkpoint directory.
pub fn load_state(dir: &Path) -> Result<TrainState, TrainError> {
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
    let state: TrainState = serde_json::from_str(&text).map_err(|e| TrainError::Json {
        path: path.clone(),
        source: e,
    })?;
    if state.format != STATE_FORMAT {
        return Err(TrainError::Resume {
            path,
            reason: format!(
                "state format {} is not the supported {STATE_FORMAT}",
                state.format
            ),
        });
    }
    Ok(state)
}

/// Reads `optimizer.safetensors` of a checkpoint directory onto `device`.
pub fn load_optimizer(dir: &Path, device: &Device) -> Result<HashMap<String, Tensor>, TrainError> {
    let path = dir.join("optimizer.safetensors");
    candle_core::safetensors::load(&path, device).map_err(|source| TrainError::Tensor {
        context: format!("reading {}", path.display()),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: u64) -> TrainState {
        TrainState {
            format: STATE_FORMAT,
            plan_toml: "x = 1\n".into(),
            step,
            epoch: 1,
            cursor: step,
            dropout_rng: 42,
            progress: EpochProgress {
                loss_sum: 0.1 + 0.2,
                ..EpochProgress::default()
            },
            loss_history: vec![StepLoss {
                step,
                epoch: 1,
                loss: 1.0 / 3.0,
                lr: 1e-4,
                target_tokens: 3,
                non_padding_tokens: 7,
                seconds: 0.25,
                cpu_seconds: 0.5,
            }],
            epochs: Vec::new(),
            finished: false,
        }
    }

    #[test]
    fn save_swaps_in_a_complete_directory_and_floats_round_trip_exactly() -> Result<(), TrainError>
    {
        let dir = tempfile::tempdir().map_err(|e| io_err(Path::new("tempdir"), e))?;
        let paths = CheckpointPaths::under(dir.path());
        for step in 1..=2 {
            let t = Tensor::new(&[step as f32, 0.5], &Device::Cpu).map_err(|source| {
                TrainError::Tensor {
                    context: "test tensor".into(),
                    source,
                }
            })?;
            save(
                &paths,
                &state(step),
                vec![("w.exp_avg".into(), t)],
                |weights| {
                    std::fs::write(weights.join("marker"), step.to_string())
                        .map_err(|e| io_err(weights, e))
                },
            )?;
        }
        let latest = find_latest(&paths).expect("a checkpoint");
        assert_eq!(latest, paths.current);
        assert!(!paths.staging.exists() && !paths.previous.exists());
        assert_eq!(load_state(&latest)?, state(2));
        let optimizer = load_optimizer(&latest, &Device::Cpu)?;
        assert_eq!(
            optimizer["w.exp_avg"].to_vec1::<f32>().expect("vec"),
            vec![2.0, 0.5]
        );
        assert_eq!(
            std::fs::read_to_string(latest.join("weights/marker")).expect("marker"),
            "2"
        );
        Ok(())
    }

    #[test]
    fn a_crash_between_the_renames_leaves_the_old_checkpoint() -> Result<(), TrainError> {
        let dir = tempfile::tempdir().map_err(|e| io_err(Path::new("tempdir"), e))?;
        let paths = CheckpointPaths::under(dir.path());
        save(&paths, &state(1), Vec::new(), |_| Ok(()))?;
        std::fs::rename(&paths.current, &paths.previous).map_err(|e| io_err(&paths.current, e))?;
        assert_eq!(find_latest(&paths), Some(paths.previous.clone()));
        // The next save cleans up and leaves only `checkpoint/`.
        save(&paths, &state(2), Vec::new(), |_| Ok(()))?;
        assert_eq!(find_latest(&paths), Some(paths.current.clone()));
        assert!(!paths.previous.exists());
        Ok(())
    }
}
