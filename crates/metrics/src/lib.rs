//! CloudEval-YAML-exact scoring for generated Kubernetes (and Envoy, Istio) YAML.
//!
//! Every metric is a pure `&str → score` function that reproduces the CloudEval-YAML harness (commit `78b22ff`)
//! to 1e-12, quirks included (see `/work/shared/docs/cloudeval-metrics.md`, which is the specification):
//!
//! - [`extract::extract`]: the harness's post-processing of a model output, run before scoring;
//! - [`bleu::bleu`], [`edit_distance::edit_distance`], [`exact_match::exact_match`] (text metrics, against the raw
//!   labelled reference), [`kv_match::kv_match`] and [`kv_wildcard::kv_wildcard`] (YAML metrics);
//! - [`yaml::load_all`]: a loader with PyYAML `SafeLoader` semantics (YAML 1.1 resolution), on which the two YAML
//!   metrics rest, built on the event-level `saphyr-parser`;
//! - [`score_all`] / [`score_all_raw`]: the five scores of one pair as the harness reports them, in [`Scores`];
//! - [`aggregate`]: per-problem, per-category, per-variant and overall means, each with the [`SIGNATURE`];
//! - extras that are never mixed into the five: [`yaml_parses`], [`score_all_unlabelled`] and
//!   [`schema::SchemaValidator`] (Kubernetes JSON-schema validity).
//!
//! The metric set is closed, so it is the [`Metric`] enum with `match` dispatch. The library does no file I/O, except
//! [`schema::SchemaValidator::from_dir`], which reads the schema directory once.

#![warn(missing_docs)]

pub mod aggregate;
pub mod bleu;
pub mod edit_distance;
pub mod exact_match;
pub mod extract;
mod fasthash;
pub mod jsonl;
pub mod kv_match;
pub mod kv_wildcard;
pub mod pystr;
pub mod schema;
pub mod yaml;

pub use edit_distance::MetricError;

/// Version of this crate's scoring contract; bump it whenever a score could change.
pub const METRICS_VERSION: u32 = 1;

/// The CloudEval-YAML harness commit whose behaviour the metrics reproduce.
pub const HARNESS_COMMIT: &str = "78b22ff";

/// Signature of scores computed after extraction (what the harness reports).
pub const SIGNATURE: &str = "kubetune-metrics:1|cloudeval-harness:78b22ff|extract:yes";

/// Signature of scores computed on the raw output, without extraction.
pub const SIGNATURE_RAW: &str = "kubetune-metrics:1|cloudeval-harness:78b22ff|extract:no";

/// Signature of the extra scores against the reference with its `# *` labels stripped.
pub const SIGNATURE_UNLABELLED: &str =
    "kubetune-metrics:1|cloudeval-harness:78b22ff|extract:yes|reference:unlabelled";

/// The five CloudEval text and YAML scores of one (candidate, reference) pair. Exact match is 0.0 or 1.0, KV exact
/// match too; KV wildcard can exceed 1.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Scores {
    /// NLTK sentence BLEU (method3 smoothing).
    pub bleu: f64,
    /// Differ-based line score, `1 − changed lines / reference lines`, floored at 0.
    pub edit_distance: f64,
    /// Stripped texts identical.
    pub exact_match: f64,
    /// All documents DeepDiff-equal.
    pub kv_exact_match: f64,
    /// Leaf intersection over union with `# *` wildcards.
    pub kv_wildcard_match: f64,
}

impl Scores {
    /// The score of one metric.
    pub fn get(&self, metric: Metric) -> f64 {
        match metric {
            Metric::Bleu => self.bleu,
            Metric::EditDistance => self.edit_distance,
            Metric::ExactMatch => self.exact_match,
            Metric::KvExactMatch => self.kv_exact_match,
            Metric::KvWildcardMatch => self.kv_wildcard_match,
        }
    }

    /// Sets the score of one metric.
    pub fn set(&mut self, metric: Metric, value: f64) {
        match metric {
            Metric::Bleu => self.bleu = value,
            Metric::EditDistance => self.edit_distance = value,
            Metric::ExactMatch => self.exact_match = value,
            Metric::KvExactMatch => self.kv_exact_match = value,
            Metric::KvWildcardMatch => self.kv_wildcard_match = value,
        }
    }
}

/// The CloudEval metrics (unit tests excepted: they need a cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// [`bleu::bleu`].
    Bleu,
    /// [`edit_distance::edit_distance`].
    EditDistance,
    /// [`exact_match::exact_match`].
    ExactMatch,
    /// [`kv_match::kv_match`].
    KvExactMatch,
    /// [`kv_wildcard::kv_wildcard`].
    KvWildcardMatch,
}

impl Metric {
    /// All metrics, in the harness's report order.
    pub const ALL: [Metric; 5] = [
        Metric::Bleu,
        Metric::EditDistance,
        Metric::ExactMatch,
        Metric::KvExactMatch,
        Metric::KvWildcardMatch,
    ];

    /// The field name used in records (`bleu`, `edit_distance`, …).
    pub fn name(self) -> &'static str {
        match self {
            Metric::Bleu => "bleu",
            Metric::EditDistance => "edit_distance",
            Metric::ExactMatch => "exact_match",
            Metric::KvExactMatch => "kv_exact_match",
            Metric::KvWildcardMatch => "kv_wildcard_match",
        }
    }

    /// Every CloudEval metric is a similarity: higher is better.
    pub fn higher_is_better(self) -> bool {
        match self {
            Metric::Bleu
            | Metric::EditDistance
            | Metric::ExactMatch
            | Metric::KvExactMatch
            | Metric::KvWildcardMatch => true,
        }
    }

    /// Scores `candidate` against `reference` as given (no extraction).
    pub fn score(self, candidate: &str, reference: &str) -> Result<f64, MetricError> {
        Ok(match self {
            Metric::Bleu => bleu::bleu(candidate, reference),
            Metric::EditDistance => edit_distance::edit_distance(candidate, reference)?,
            Metric::ExactMatch => exact_match::exact_match(candidate, reference),
            Metric::KvExactMatch => kv_match::kv_match(candidate, reference),
            Metric::KvWildcardMatch => kv_wildcard::kv_wildcard(candidate, reference),
        })
    }
}

/// The five scores as the harness computes them: the model output goes through [`extract::extract`] first, the
/// reference is used raw (labels included). Fails only where the harness aborts (an empty reference).
pub fn score_all(candidate: &str, reference: &str) -> Result<Scores, MetricError> {
    score_all_raw(&extract::extract(candidate), reference)
}

/// Score by metric through [`Metric::score`] (each metric loads what it needs); kept as the independent path the
/// shared-load functions are tested against.
pub fn score_all_by_metric(candidate: &str, reference: &str) -> Result<Scores, MetricError> {
    let mut scores = Scores::default();
    for metric in Metric::ALL {
        scores.set(metric, metric.score(candidate, reference)?);
    }
    Ok(scores)
}

/// The five scores without extraction.
pub fn score_all_raw(candidate: &str, reference: &str) -> Result<Scores, MetricError> {
    PreparedReference::new(reference).score(candidate, None)
}

/// The scores after extraction and without, as `score-pairs` reports them: `(score_all, score_all_raw)`.
/// The reference is loaded once, and the candidate once when extraction leaves it unchanged.
pub fn score_all_and_raw(
    candidate: &str,
    reference: &str,
) -> Result<(Scores, Scores), MetricError> {
    let prepared = PreparedReference::new(reference);
    let extracted = extract::extract(candidate);
    if extracted == candidate || only_trailing_blank_removed(candidate, &extracted) {
        let scores = prepared.score(&extracted, None)?;
        return Ok((scores, scores));
    }
    Ok((
        prepared.score(&extracted, None)?,
        prepared.score(candidate, None)?,
    ))
}

/// Whether extraction only dropped trailing spaces and line breaks from a text without block scalars. Then every
/// score is unchanged: BLEU, edit distance and exact match strip both sides anyway, and the YAML loads the same
/// (only a final `|`/`>` block scalar sees its trailing line breaks; a dropped tab could have changed the load, so
/// tabs do not qualify).
fn only_trailing_blank_removed(candidate: &str, extracted: &str) -> bool {
    candidate.strip_prefix(extracted).is_some_and(|suffix| {
        suffix.bytes().all(|b| matches!(b, b' ' | b'\n' | b'\r')) && !extracted.contains(['|', '>'])
    })
}

/// A reference loaded once (raw and `# *`-labelled) for scoring several candidates against it.
pub struct PreparedReference<'r> {
    text: &'r str,
    bleu: bleu::BleuReference<'r>,
    edit: edit_distance::EditReference<'r>,
    documents: kv_match::Loaded,
    /// `None`: labelling raised (a labelled line without `:`), so KV wildcard scores 0. `Some(None)`: labelling
    /// changed nothing, reuse `documents`.
    labelled: Option<Option<kv_match::Loaded>>,
}

impl<'r> PreparedReference<'r> {
    /// Loads `reference` (and its labelled form when labels change it).
    pub fn new(text: &'r str) -> Self {
        let documents = yaml::load_all(text);
        let labelled = match kv_wildcard::label_reference(text) {
            Err(_) => None,
            Ok(labelled) if labelled == text => Some(None),
            Ok(labelled) => Some(Some(yaml::load_all(&labelled))),
        };
        PreparedReference {
            text,
            bleu: bleu::BleuReference::new(text),
            edit: edit_distance::EditReference::new(text),
            documents,
            labelled,
        }
    }

    /// The five scores of `candidate` (used as given) against this reference. `candidate_docs` may carry the
    /// candidate's already loaded documents.
    pub fn score(
        &self,
        candidate: &str,
        candidate_docs: Option<&kv_match::Loaded>,
    ) -> Result<Scores, MetricError> {
        let loaded;
        let candidate_docs = match candidate_docs {
            Some(docs) => docs,
            None => {
                loaded = yaml::load_all(candidate);
                &loaded
            }
        };
        let kv_wildcard_match = match &self.labelled {
            None => 0.0,
            Some(None) => {
                kv_wildcard::kv_wildcard_loaded(candidate_docs, &self.documents).unwrap_or(0.0)
            }
            Some(Some(labelled)) => {
                kv_wildcard::kv_wildcard_loaded(candidate_docs, labelled).unwrap_or(0.0)
            }
        };
        Ok(Scores {
            bleu: self.bleu.score(candidate),
            edit_distance: self.edit.score(candidate)?,
            exact_match: exact_match::exact_match(candidate, self.text),
            kv_exact_match: kv_match::kv_match_loaded(candidate_docs, &self.documents),
            kv_wildcard_match,
        })
    }
}

/// Extra, never one of the five: the scores after extraction against the reference with its `# *` labels removed
/// (what a perfect unlabelled answer is compared with). Signature [`SIGNATURE_UNLABELLED`].
pub fn score_all_unlabelled(candidate: &str, reference: &str) -> Result<Scores, MetricError> {
    score_all(candidate, &strip_labels(reference))
}

/// Removes the `# *` label comment from each labelled line (a line containing `#` that ends in `*` after
/// `rstrip()`, the harness's test), keeping everything before the last `#` of the line, right-stripped.
pub fn strip_labels(reference: &str) -> String {
    let mut lines = Vec::new();
    for line in pystr::splitlines(reference) {
        if line.contains('#') && pystr::rstrip(line).ends_with('*') {
            let cut = line.rfind('#').unwrap_or(line.len());
            lines.push(pystr::rstrip(&line[..cut]));
        } else {
            lines.push(line);
        }
    }
    let mut text = lines.join("\n");
    if reference.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// Extra, never one of the five: whether the extracted output loads as YAML under PyYAML `safe_load_all` rules.
pub fn yaml_parses(candidate: &str) -> bool {
    yaml::load_all(&extract::extract(candidate)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_answer_scores_one_everywhere() {
        let reference = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web # *\n";
        let scores = score_all(
            &format!("Here is the YAML:\n```yaml\n{reference}```\n"),
            reference,
        )
        .expect("scores");
        assert_eq!(
            scores,
            Scores {
                bleu: 1.0,
                edit_distance: 1.0,
                exact_match: 1.0,
                kv_exact_match: 1.0,
                kv_wildcard_match: 1.0
            }
        );
    }

    #[test]
    fn metric_names_are_record_fields() {
        let names: Vec<_> = Metric::ALL.iter().map(|m| m.name()).collect();
        assert_eq!(
            names,
            [
                "bleu",
                "edit_distance",
                "exact_match",
                "kv_exact_match",
                "kv_wildcard_match"
            ]
        );
        assert!(Metric::ALL.iter().all(|m| m.higher_is_better()));
    }

    #[test]
    fn labels_strip() {
        assert_eq!(strip_labels("a: 1 # *\nb: 2\n"), "a: 1\nb: 2\n");
    }
}
