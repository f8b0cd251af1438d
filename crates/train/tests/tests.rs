//! Integration tests of the `train` crate, on the tiny random Llama fixture of the `model` crate and a small
//! JSONL dataset (`tests/fixtures/tiny.jsonl`).
//!
//! - `support`: config writing and run helpers shared by the tests below;
//! - `overfit`: full and LoRA training overfit one batch (the paper's LoRA also on SmolLM2's real weights, a fetched
//!   asset); LoRA leaves every base tensor bit-identical;
//! - `levers`: every memory lever reproduces the plain run's loss curve within tolerance;
//! - `cli`: `--help`, bad configs give clear errors and a non-zero exit, NaN losses stop the run;
//! - `resume`: a run killed with SIGKILL and resumed gives the uninterrupted run's losses bit for bit.

mod cli;
mod levers;
mod overfit;
mod resume;
mod support;
