//! Integration tests of the `eval` crate: one test binary, one module per area.
//!
//! - `support`: absolute-path copies of `configs/tiny.toml`, hand-built run directories (LoRA adapter and full
//!   weights written with `model`'s save functions — eval never depends on train), in-process and binary runners;
//! - `baselines`: the model-free path end to end — scores.json fields, schema validity, resume, rescoring, shards;
//! - `model_runs`: the tiny-llama fixture end to end — vanilla, LoRA and full runs, resume after a simulated kill,
//!   rescoring equals scoring, sharded equals unsharded, batched equals one-at-a-time;
//! - `errors`: bad input through the binary — clear messages naming the path, exit status 2.

mod baselines;
mod errors;
mod model_runs;
mod support;
