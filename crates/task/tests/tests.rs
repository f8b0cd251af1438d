//! Integration tests of the `task` crate, one binary for all of them.
//!
//! - `common`: builders for synthetic CloudEval trees in temp dirs.
//! - `load_dir`: the directory loader, filters, order, bad inputs, and `data/sample` when present.
//! - `load_zip`: password-protected zips (ZipCrypto and AES written here; an Info-ZIP `zip -P` fixture).
//! - `load_jsonl`: our JSONL format and its line-numbered errors.
//! - `split`: determinism, disjointness, per-stratum ratios, unit=problem integrity, manifest bytes.
//! - `config`: every file in `configs/` parses; round trip; unknown, missing and invalid keys.
//! - `records`: record round trips, JSONL errors with line numbers, resume reading, atomic writes.
//! - `cli`: the `split` binary end to end.

mod cli;
mod common;
mod config;
mod load_dir;
mod load_jsonl;
mod load_zip;
mod records;
mod split;
