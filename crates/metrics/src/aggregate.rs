//! Aggregation as the harness does it (spec §2 step 4): per problem the sum over samples; per category, per
//! question variant and overall `Σ scores / Σ samples` (plain means; exact and KV matches count as 1/0; KV wildcard
//! values above 1 are kept). Every summary carries the signature of the scores it summarises.

use std::collections::BTreeMap;

use crate::{Metric, Scores};

/// One scored sample with the labels it is grouped by.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredSample {
    /// Problem key, e.g. `Kubernetes_pod_q1`.
    pub problem: String,
    /// Category, e.g. `pod`.
    pub category: String,
    /// Question variant, e.g. `original`, `simplified`, `translated`.
    pub variant: String,
    /// The sample's scores.
    pub scores: Scores,
}

/// Sums and means over a group of samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Number of samples.
    pub samples: usize,
    /// Σ scores (what the harness stores per problem).
    pub sum: Scores,
    /// Σ scores / samples.
    pub mean: Scores,
    /// Signature of the summarised scores (e.g. [`crate::SIGNATURE`]).
    pub signature: String,
}

/// The harness's summaries of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    /// Over every sample (all variants pooled).
    pub overall: Summary,
    /// Keyed by problem.
    pub per_problem: BTreeMap<String, Summary>,
    /// Keyed by category.
    pub per_category: BTreeMap<String, Summary>,
    /// Keyed by question variant.
    pub per_variant: BTreeMap<String, Summary>,
}

/// Summarises `samples`, labelling every summary with `signature`.
pub fn aggregate(samples: &[ScoredSample], signature: &str) -> Aggregate {
    let mut per_problem: BTreeMap<String, Vec<&Scores>> = BTreeMap::new();
    let mut per_category: BTreeMap<String, Vec<&Scores>> = BTreeMap::new();
    let mut per_variant: BTreeMap<String, Vec<&Scores>> = BTreeMap::new();
    for sample in samples {
        per_problem
            .entry(sample.problem.clone())
            .or_default()
            .push(&sample.scores);
        per_category
            .entry(sample.category.clone())
            .or_default()
            .push(&sample.scores);
        per_variant
            .entry(sample.variant.clone())
            .or_default()
            .push(&sample.scores);
    }
    let all: Vec<&Scores> = samples.iter().map(|sample| &sample.scores).collect();
    let summarise_groups = |groups: BTreeMap<String, Vec<&Scores>>| {
        groups
            .into_iter()
            .map(|(key, scores)| (key, summarise(&scores, signature)))
            .collect()
    };
    Aggregate {
        overall: summarise(&all, signature),
        per_problem: summarise_groups(per_problem),
        per_category: summarise_groups(per_category),
        per_variant: summarise_groups(per_variant),
    }
}

/// Sum and mean of a group; the mean of no samples is all zeros.
pub fn summarise(scores: &[&Scores], signature: &str) -> Summary {
    let mut sum = Scores::default();
    let mut mean = Scores::default();
    for metric in Metric::ALL {
        // Summed in sample order, as Python's `sum` over the harness's lists does.
        let total: f64 = scores
            .iter()
            .map(|s| s.get(metric))
            .fold(0.0, |acc, v| acc + v);
        sum.set(metric, total);
        mean.set(
            metric,
            if scores.is_empty() {
                0.0
            } else {
                total / scores.len() as f64
            },
        );
    }
    Summary {
        samples: scores.len(),
        sum,
        mean,
        signature: signature.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(problem: &str, category: &str, variant: &str, bleu: f64, exact: f64) -> ScoredSample {
        let scores = Scores {
            bleu,
            exact_match: exact,
            ..Scores::default()
        };
        ScoredSample {
            problem: problem.into(),
            category: category.into(),
            variant: variant.into(),
            scores,
        }
    }

    #[test]
    fn means_per_group_and_overall() {
        let samples = [
            sample("K_pod_q1", "pod", "original", 0.5, 1.0),
            sample("K_pod_q1", "pod", "simplified", 0.25, 0.0),
            sample("K_job_q1", "job", "original", 1.0, 1.0),
        ];
        let aggregate = aggregate(&samples, crate::SIGNATURE);
        assert_eq!(aggregate.overall.samples, 3);
        assert_eq!(aggregate.overall.mean.bleu, 1.75 / 3.0);
        assert_eq!(aggregate.overall.mean.exact_match, 2.0 / 3.0);
        assert_eq!(aggregate.per_problem["K_pod_q1"].sum.bleu, 0.75);
        assert_eq!(aggregate.per_category["pod"].mean.bleu, 0.375);
        assert_eq!(aggregate.per_variant["original"].mean.bleu, 0.75);
        assert_eq!(
            aggregate.per_variant["original"].signature,
            crate::SIGNATURE
        );
    }
}
