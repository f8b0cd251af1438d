//! Deterministic sharding of the evaluation rows across processes.
//!
//! Shard `i/n` (0-based `i < n`) owns the rows whose index in the canonical row order (the order of the split's test
//! rows, before any sorting by prompt length) is `i` modulo `n`. Every shard writes
//! `predictions.shard-<i>-of-<n>.jsonl`; `eval merge` checks that the `n` files together cover every row exactly once.

use std::fmt;
use std::str::FromStr;

use crate::EvalError;

/// One of `count` disjoint slices of the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 0-based shard number, below `count`.
    pub index: usize,
    /// Number of shards.
    pub count: usize,
}

impl Shard {
    /// Whether the row at `row_index` (canonical order) belongs to this shard.
    pub fn owns(&self, row_index: usize) -> bool {
        row_index % self.count == self.index
    }

    /// The predictions file this shard writes, e.g. `predictions.shard-0-of-4.jsonl`.
    pub fn file_name(&self) -> String {
        format!("predictions.shard-{}-of-{}.jsonl", self.index, self.count)
    }

    /// Parses a shard file name written by [`Shard::file_name`]; `None` for any other name.
    pub fn from_file_name(name: &str) -> Option<Self> {
        let middle = name
            .strip_prefix("predictions.shard-")?
            .strip_suffix(".jsonl")?;
        let (index, count) = middle.split_once("-of-")?;
        let shard = Self {
            index: index.parse().ok()?,
            count: count.parse().ok()?,
        };
        (shard.count > 0 && shard.index < shard.count && shard.file_name() == name).then_some(shard)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = EvalError;

    /// Parses `i/n` with `0 ≤ i < n`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| EvalError::BadShard {
            spec: text.to_owned(),
            reason: reason.to_owned(),
        };
        let (index, count) = text
            .split_once('/')
            .ok_or_else(|| bad("expected i/n, e.g. 0/4"))?;
        let index: usize = index
            .trim()
            .parse()
            .map_err(|_| bad("i is not a non-negative integer"))?;
        let count: usize = count
            .trim()
            .parse()
            .map_err(|_| bad("n is not a non-negative integer"))?;
        if count == 0 {
            return Err(bad("n must be at least 1"));
        }
        if index >= count {
            return Err(bad("i must be below n (shards are numbered from 0)"));
        }
        Ok(Self { index, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_owns_rows_modulo_n() {
        let shard: Shard = "1/3".parse().expect("valid shard");
        assert_eq!(shard, Shard { index: 1, count: 3 });
        let owned: Vec<usize> = (0..8).filter(|&i| shard.owns(i)).collect();
        assert_eq!(owned, [1, 4, 7]);
    }

    #[test]
    fn rejects_bad_specs_with_reasons() {
        for spec in ["3", "3/3", "1/0", "a/2", "-1/2"] {
            let message = spec.parse::<Shard>().expect_err(spec).to_string();
            assert!(message.contains(spec), "{message}");
        }
    }

    #[test]
    fn file_names_round_trip() {
        let shard = Shard { index: 2, count: 5 };
        assert_eq!(shard.file_name(), "predictions.shard-2-of-5.jsonl");
        assert_eq!(Shard::from_file_name(&shard.file_name()), Some(shard));
        assert_eq!(Shard::from_file_name("predictions.jsonl"), None);
        assert_eq!(
            Shard::from_file_name("predictions.shard-5-of-5.jsonl"),
            None
        );
        assert_eq!(
            Shard::from_file_name("predictions.shard-01-of-5.jsonl"),
            None
        );
    }
}
