//! Deterministic, seeded, stratified train/test split and its manifest (`data/splits/<name>.json`).
//!
//! # Algorithm
//! 1. Units are problems (`unit = "problem"`, the default: all variants of a problem land on one side) or rows
//!    (`unit = "row"`: each (problem, variant) phrasing independently). Row units are every question present in
//!    the loaded problems, so filter variants when loading.
//! 2. Units are grouped into strata by `(lib, category)`. Inside a stratum they start in load (CloudEval) order.
//! 3. Each stratum gets its own [`SplitMix64`] stream seeded with `seed ^ fnv1a64("<lib>/<category>")`, so adding
//!    or removing one stratum never changes another's assignment. A Fisher–Yates shuffle (from the last index
//!    down, `j = next_below(i + 1)`) orders the stratum.
//! 4. The first `n_test = floor(n · test_ratio + 0.5)` shuffled units go to test, the rest to train (round half
//!    up). Tiny strata: with the default ratio 0.25, a stratum of 1 puts 0 units on the test side, of 2 → 1
//!    (0.5 rounds up), of 3 → 1, of 4 → 1, of 5 → 1, of 6 → 2. So `|n_test − n·ratio| ≤ 0.5` in every stratum.
//! 5. The manifest lists train and test ids in load order (not shuffled order), so diffs stay readable.
//!
//! The PRNG is implemented here, not taken from a crate, so a dependency upgrade can never move a problem across
//! the split.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::load::inputs_sha256;
use crate::problem::{Problem, Row, Variant};

/// SplitMix64 (Steele, Lea & Flood 2014; the seeding generator of xoshiro): `state += 0x9E3779B97F4A7C15`, then
/// the output is the state mixed by two xor-shift-multiply rounds. Full period 2^64, passes BigCrush.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose first output is SplitMix64's first output for `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// A generator for one purpose and one index (e.g. the data order of epoch 3), independent of the others
    /// derived from the same seed.
    pub fn derive(seed: u64, purpose: &str, index: u64) -> Self {
        let mut mixer = Self::new(seed ^ 0x6B75_6265_7475_6E65);
        let mut acc = mixer.next_u64();
        for byte in purpose.bytes() {
            acc = Self::new(acc ^ u64::from(byte)).next_u64();
        }
        Self::new(Self::new(acc ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_u64())
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform integer in `0..bound` (`bound > 0`), by rejection sampling so there is no modulo bias.
    pub fn next_below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "next_below needs a positive bound");
        // Reject the top partial block of the u64 range: 2^64 mod bound values that would favour small results.
        let threshold = bound.wrapping_neg() % bound;
        loop {
            let x = self.next_u64();
            if x >= threshold {
                return x % bound;
            }
        }
    }

    /// Shuffles `items` in place (Fisher–Yates, from the last index down).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.next_below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// 64-bit FNV-1a of a string: mixes a stratum's name into its seed.
pub fn fnv1a64(text: &str) -> u64 {
    text.bytes().fold(0xCBF2_9CE4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// What one split id stands for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitUnit {
    /// A whole problem: all its variants share a side. Ids are problem ids.
    #[default]
    Problem,
    /// One (problem, variant) row. Ids are row ids `"<problem_id>#<variant>"`.
    Row,
}

impl SplitUnit {
    /// `"problem"` or `"row"`.
    pub fn as_str(self) -> &'static str {
        match self {
            SplitUnit::Problem => "problem",
            SplitUnit::Row => "row",
        }
    }
}

impl std::str::FromStr for SplitUnit {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "problem" => Ok(SplitUnit::Problem),
            "row" => Ok(SplitUnit::Row),
            other => Err(format!(
                "unknown split unit `{other}` (expected problem or row)"
            )),
        }
    }
}

/// How to split. Also the `[data.split_params]` section of a run config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitParams {
    /// PRNG seed. Default 42.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// What a split id stands for. Default `"problem"`.
    #[serde(default)]
    pub unit: SplitUnit,
    /// Fraction of each stratum put on the test side, in (0, 1). Default 0.25.
    #[serde(default = "default_test_ratio")]
    pub test_ratio: f64,
}

fn default_seed() -> u64 {
    42
}

fn default_test_ratio() -> f64 {
    0.25
}

impl Default for SplitParams {
    fn default() -> Self {
        SplitParams {
            seed: default_seed(),
            unit: SplitUnit::Problem,
            test_ratio: default_test_ratio(),
        }
    }
}

/// Train and test counts of one stratum, in split units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SideCounts {
    /// Units on the train side.
    pub train: usize,
    /// Units on the test side.
    pub test: usize,
}

/// The saved split: `data/splits/<name>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitManifest {
    /// The split's name (the file stem).
    pub name: String,
    /// PRNG seed used.
    pub seed: u64,
    /// What the ids are.
    pub unit: SplitUnit,
    /// Test fraction per stratum.
    pub test_ratio: f64,
    /// The data path as given on the command line (never resolved, never holding a password).
    pub source: String,
    /// [`inputs_sha256`] of the problems the split was computed from.
    pub inputs_sha256: String,
    /// Per stratum `"<lib>/<category>"` (e.g. `"Kubernetes/pod"`, `"Envoy/all"`): train and test unit counts.
    pub counts: BTreeMap<String, SideCounts>,
    /// Train ids in load order.
    pub train: Vec<String>,
    /// Test ids in load order.
    pub test: Vec<String>,
}

/// Why a split could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    /// The manifest file could not be read or written.
    #[error("cannot access {path}")]
    Io {
        /// The manifest path.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The manifest is not valid JSON of the right shape.
    #[error("{path}: invalid split manifest")]
    Json {
        /// The manifest path.
        path: String,
        /// The parser's error (with line and column).
        source: serde_json::Error,
    },
    /// The manifest's content breaks an invariant (overlap, duplicate, bad ratio, unknown id).
    #[error("{path}: {reason}")]
    Invalid {
        /// The manifest path (or `<computed>`).
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The data loaded now differs from the data the split was computed from.
    #[error(
        "split `{name}` was computed from data with sha256 {expected}, but the loaded data hashes to {actual}; \
         if the data change is intended, regenerate the manifest: {regenerate}"
    )]
    InputsChanged {
        /// The manifest name.
        name: String,
        /// Hash in the manifest.
        expected: String,
        /// Hash of the loaded problems.
        actual: String,
        /// The `split` command that rewrites the manifest with its own settings.
        regenerate: String,
    },
}

/// Namespace for computing splits.
pub struct Split;

impl Split {
    /// Computes the split of `problems` (see the module docs). `name` and `source` of the result are empty;
    /// set them (or use [`SplitManifest::with_origin`]) before saving.
    pub fn compute(problems: &[Problem], params: &SplitParams) -> SplitManifest {
        // Units in load order with their stratum key.
        let units: Vec<(String, String)> = match params.unit {
            SplitUnit::Problem => problems
                .iter()
                .map(|p| (p.id.clone(), stratum_key(p)))
                .collect(),
            SplitUnit::Row => problems
                .iter()
                .flat_map(|p| {
                    p.questions
                        .keys()
                        .map(move |&v| (Row::make_id(&p.id, v), stratum_key(p)))
                })
                .collect(),
        };
        let mut strata: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, (_, key)) in units.iter().enumerate() {
            strata.entry(key.as_str()).or_default().push(i);
        }
        let mut is_test = vec![false; units.len()];
        let mut counts = BTreeMap::new();
        for (key, mut members) in strata {
            let mut rng = SplitMix64::new(params.seed ^ fnv1a64(key));
            rng.shuffle(&mut members);
            let n_test = test_count(members.len(), params.test_ratio);
            for &i in &members[..n_test] {
                is_test[i] = true;
            }
            counts.insert(
                key.to_owned(),
                SideCounts {
                    train: members.len() - n_test,
                    test: n_test,
                },
            );
        }
        let mut train = Vec::new();
        let mut test = Vec::new();
        for ((id, _), test_side) in units.into_iter().zip(is_test) {
            if test_side {
                test.push(id)
            } else {
                train.push(id)
            }
        }
        SplitManifest {
            name: String::new(),
            seed: params.seed,
            unit: params.unit,
            test_ratio: params.test_ratio,
            source: String::new(),
            inputs_sha256: inputs_sha256(problems),
            counts,
            train,
            test,
        }
    }
}

/// `floor(n · ratio + 0.5)`, clamped to `0..=n`: round half up.
pub fn test_count(n: usize, ratio: f64) -> usize {
    let raw = (n as f64 * ratio + 0.5).floor();
    if raw <= 0.0 { 0 } else { (raw as usize).min(n) }
}

fn stratum_key(p: &Problem) -> String {
    format!("{}/{}", p.lib, p.category)
}

impl SplitManifest {
    /// Sets the name and the data path (as given) recorded in the manifest.
    pub fn with_origin(mut self, name: &str, source: &str) -> Self {
        self.name = name.to_owned();
        self.source = source.to_owned();
        self
    }

    /// Reads and checks a manifest (disjoint sides, no duplicates, ratio in (0, 1)).
    pub fn load(path: &Path) -> Result<Self, SplitError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SplitError::Io {
            path: shown.clone(),
            source,
        })?;
        let manifest: SplitManifest =
            serde_json::from_str(&text).map_err(|source| SplitError::Json {
                path: shown.clone(),
                source,
            })?;
        manifest.check(&shown)?;
        Ok(manifest)
    }

    /// Checks the invariants; `origin` names the manifest in errors.
    pub fn check(&self, origin: &str) -> Result<(), SplitError> {
        let invalid = |reason: String| SplitError::Invalid {
            path: origin.to_owned(),
            reason,
        };
        if !(self.test_ratio > 0.0 && self.test_ratio < 1.0) {
            return Err(invalid(format!(
                "test_ratio {} is outside (0, 1)",
                self.test_ratio
            )));
        }
        let mut seen = BTreeSet::new();
        for id in self.train.iter().chain(&self.test) {
            if !seen.insert(id.as_str()) {
                return Err(invalid(format!(
                    "id `{id}` is listed twice (or on both sides)"
                )));
            }
            if self.unit == SplitUnit::Row && Row::parse_id(id).is_none() {
                return Err(invalid(format!(
                    "`{id}` is not a row id <problem_id>#<variant>"
                )));
            }
        }
        if self.unit == SplitUnit::Problem {
            // A problem listed by id can never also appear through a row id, but guard the file format anyway.
            if let Some(id) = seen.iter().find(|id| id.contains('#')) {
                return Err(invalid(format!(
                    "`{id}` is a row id in a unit=problem split"
                )));
            }
        }
        Ok(())
    }

    /// Writes the manifest atomically: pretty JSON, keys sorted, trailing newline. Same data + seed ⇒ same bytes.
    pub fn save(&self, path: &Path) -> Result<(), SplitError> {
        self.check(&path.display().to_string())?;
        let io = |source| SplitError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let text =
            crate::records::to_sorted_pretty_json(self).map_err(|source| SplitError::Json {
                path: path.display().to_string(),
                source,
            })?;
        crate::records::write_atomic(path, text.as_bytes()).map_err(|e| match e {
            crate::records::RecordError::Io { source, .. } => io(source),
            other => SplitError::Invalid {
                path: path.display().to_string(),
                reason: other.to_string(),
            },
        })
    }

    /// Fails with [`SplitError::InputsChanged`] unless `problems` hash to this manifest's `inputs_sha256`.
    pub fn verify_inputs(&self, problems: &[Problem]) -> Result<(), SplitError> {
        let actual = inputs_sha256(problems);
        if actual == self.inputs_sha256 {
            Ok(())
        } else {
            Err(SplitError::InputsChanged {
                name: self.name.clone(),
                expected: self.inputs_sha256.clone(),
                actual,
                regenerate: format!(
                    "cargo run -p task --bin split -- --data {} --name {} --seed {} --unit {} --test-ratio {}",
                    self.source,
                    self.name,
                    self.seed,
                    self.unit.as_str(),
                    self.test_ratio
                ),
            })
        }
    }

    /// Train rows of `problems` for `variants` (all when empty), in load order. Ids the manifest lists but
    /// `problems` lacks (e.g. filtered out by lib) are skipped; use [`SplitManifest::verify_inputs`] to insist on
    /// the exact data.
    pub fn train_rows(&self, problems: &[Problem], variants: &[Variant]) -> Vec<Row> {
        self.rows_on(&self.train, problems, variants)
    }

    /// Test rows of `problems` for `variants` (all when empty), in load order (see [`SplitManifest::train_rows`]).
    pub fn test_rows(&self, problems: &[Problem], variants: &[Variant]) -> Vec<Row> {
        self.rows_on(&self.test, problems, variants)
    }

    /// The train rows divided into (train, validation) for validation loss: `floor(n · fraction + 0.5)` of the
    /// train side's `n` problems (at least 1 when `fraction > 0` and `n ≥ 2`) are held out, chosen by a
    /// [`SplitMix64`] shuffle seeded with `seed ^ fnv1a64("validation")`. Always by problem, so no problem
    /// has rows on both sides, whatever the split unit.
    pub fn train_validation_rows(
        &self,
        problems: &[Problem],
        variants: &[Variant],
        fraction: f64,
        seed: u64,
    ) -> (Vec<Row>, Vec<Row>) {
        let rows = self.train_rows(problems, variants);
        // Rows come grouped by problem, in load order: consecutive dedup lists each problem once.
        let mut problem_ids: Vec<&str> = rows.iter().map(|r| r.problem_id.as_str()).collect();
        problem_ids.dedup();
        let n = problem_ids.len();
        let mut n_val = if fraction > 0.0 {
            test_count(n, fraction)
        } else {
            0
        };
        if fraction > 0.0 && n >= 2 {
            n_val = n_val.clamp(1, n - 1);
        }
        let mut order = problem_ids.clone();
        SplitMix64::new(seed ^ fnv1a64("validation")).shuffle(&mut order);
        let held: BTreeSet<String> = order[..n_val].iter().map(|s| (*s).to_owned()).collect();
        rows.into_iter()
            .partition(|row| !held.contains(&row.problem_id))
    }

    fn rows_on(&self, ids: &[String], problems: &[Problem], variants: &[Variant]) -> Vec<Row> {
        let ids: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
        let all = crate::problem::rows_of(problems, variants);
        match self.unit {
            SplitUnit::Problem => all
                .into_iter()
                .filter(|r| ids.contains(r.problem_id.as_str()))
                .collect(),
            SplitUnit::Row => all
                .into_iter()
                .filter(|r| ids.contains(r.row_id.as_str()))
                .collect(),
        }
    }

    /// A plain-text table of the per-stratum counts and totals, for the `split` binary to print.
    pub fn counts_table(&self) -> String {
        let width = self
            .counts
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(0)
            .max("stratum".len())
            .max("total".len());
        let mut out = format!("{:<width$}  {:>5}  {:>5}\n", "stratum", "train", "test");
        for (key, c) in &self.counts {
            out.push_str(&format!("{key:<width$}  {:>5}  {:>5}\n", c.train, c.test));
        }
        out.push_str(&format!(
            "{:<width$}  {:>5}  {:>5}\n",
            "total",
            self.train.len(),
            self.test.len()
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_reference_values() {
        // Reference: the C reference implementation (Vigna, splitmix64.c) seeded with 0 gives these outputs.
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(rng.next_u64(), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn derived_streams_are_independent_and_reproducible() {
        // The same seed, purpose and index give the same stream in a fresh generator (what an epoch's data order
        // relies on when a run resumes).
        let mut rng = SplitMix64::derive(7, "dropout", 0);
        let first: Vec<u64> = (0..5).map(|_| rng.next_u64()).collect();
        let mut again_rng = SplitMix64::derive(7, "dropout", 0);
        let again: Vec<u64> = (0..5).map(|_| again_rng.next_u64()).collect();
        assert_eq!(first, again);
        let mut other = SplitMix64::derive(7, "dropout", 1);
        assert_ne!(first[0], other.next_u64());
        let mut a: Vec<u32> = (0..50).collect();
        let mut b = a.clone();
        SplitMix64::derive(1, "order", 0).shuffle(&mut a);
        SplitMix64::derive(1, "order", 1).shuffle(&mut b);
        assert_ne!(a, b);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<u32>>());
    }

    #[test]
    fn next_below_stays_in_range_and_covers_it() {
        let mut rng = SplitMix64::new(7);
        let mut seen = [false; 5];
        for _ in 0..200 {
            let x = rng.next_below(5);
            assert!(x < 5);
            seen[x as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn test_count_rounds_half_up() {
        let cases = [
            (0, 0),
            (1, 0),
            (2, 1),
            (3, 1),
            (4, 1),
            (5, 1),
            (6, 2),
            (7, 2),
            (10, 3),
            (48, 12),
        ];
        for (n, expected) in cases {
            assert_eq!(test_count(n, 0.25), expected, "n={n}");
        }
        assert_eq!(test_count(3, 0.99), 3);
        assert_eq!(test_count(3, 0.01), 0);
    }
}
