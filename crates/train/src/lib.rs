//! Supervised fine-tuning (full or LoRA) of kubetune's Llama-family models from a TOML run config.
//!
//! [`run`] turns a `configs/<run>.toml` ([`task::TrainPlan`]) into a trained model in `out/<run>/` (HF safetensors
//! or a PEFT adapter, the tokenizer, `run.toml`, the split manifest) and records in `results/<run>/`
//! (`train_log.jsonl`, one [`task::TrainEpochRecord`] per epoch, and `train_summary.json`). The `train` binary is a
//! thin clap wrapper that draws a progress bar from the [`Event`]s this library emits; the library never prints.
//!
//! Pieces, each usable and tested on its own:
//! - [`batch`]: rows → fitted rows (the completion and its EOS are never cut; long prompts lose their oldest
//!   question tokens) → deterministic epoch order → padded batches with length-derived masks;
//! - [`loss`]: masked next-token cross-entropy as a sum over target tokens (the trainer divides by the target
//!   tokens of the whole gradient-accumulation group);
//! - [`optim`]: AdamW with f32 / bf16 / int8 moments on the device or the host, per-parameter stepping for
//!   optimizer-in-backward, gradient clipping, state to safetensors;
//! - [`schedule`]: warm-up + constant / linear / cosine learning rate as a function of the step;
//! - [`checkpoint`]: the resumable `out/<run>/checkpoint/` directory, swapped in atomically;
//! - [`memory`]: peak-memory sampling with its definition (VmHWM on CPU, nvidia-smi on CUDA);
//!
//! Design decisions: resuming is bit-exact on CPU because every source of randomness is a function of the seed
//! and state saved in the checkpoint (data order from seed + epoch, dropout from a saved RNG state, optimizer
//! moments saved losslessly); the memory levers run the model block by block (see [`engine`]) so gradients can be
//! applied and freed per block and activations recomputed instead of stored.

#![warn(missing_docs)]

pub mod batch;
pub mod checkpoint;
pub mod engine;
pub mod error;
pub mod loss;
pub mod memory;
pub mod optim;
mod run;
pub mod schedule;

pub use error::TrainError;
pub use run::{Event, Outcome, RunOptions, install_stop_flag, run};
