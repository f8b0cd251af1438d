//! Integration tests of the `plot` crate, run against record files written into temp directories.
//!
//! - `fixtures`: builders for typed records and a results tree writer.
//! - `render`: figures (PNG + SVG) and summary.md from a full matrix and from partial results.
//! - `errors`: corrupt or inconsistent records give errors naming the file (and line).
//! - `cli`: the `plot` binary's exit codes and output.

mod cli;
mod errors;
mod fixtures;
mod render;
