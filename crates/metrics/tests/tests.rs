//! Integration tests of the `metrics` crate.
//!
//! - `golden`: agreement with the Python reference pipeline (`scripts/golden_metrics.py`) on every committed pair
//!   and YAML case.
//! - `cli`: the `score-pairs` binary end to end.

mod cli;
mod golden;
