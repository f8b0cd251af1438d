//! Integration tests of the `metrics` crate.
//!
//! - `golden`: agreement with the Python reference pipeline (`scripts/golden_metrics.py`) on every committed pair
//!   and YAML case.
//! - `properties`: proptest robustness properties and the long stable fuzz run (`fuzz_*`).
//! - `schema`: Kubernetes schema validity of the project's sample dataset (needs `scripts/fetch-assets.sh`).
//! - `cli`: the `score-pairs` binary end to end.

mod cli;
mod golden;
mod properties;
mod schema;
