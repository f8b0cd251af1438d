//! Scoring predictions into `scores.json` (a `task::records::ScoreReport`) and `scores.csv` (one row per prediction).
//!
//! Every prediction is scored from its `raw_output` exactly as the CloudEval harness does: the harness's extraction,
//! then the five metrics against the *labelled* reference (`metrics::score_all`). Extras, never mixed into the five:
//! - `stripped_reference`: the five against the reference with its `# *` labels removed (the training target);
//! - YAML parse rate: the extracted text loads with the PyYAML-exact loader *and* at least one document is a
//!   mapping or a sequence. Plain prose loads as one string scalar and an empty output as zero documents; counting
//!   those as parsed would flatter answers that hold no YAML at all;
//! - schema validity: every document of the extracted text validates against the strict Kubernetes schemas
//!   (`schema_valid_rate`), or none is invalid but at least one has a kind the schemas do not know
//!   (`schema_unknown_kind_rate`). Without the schema directory both rates are 0 and `scores.json` says so in
//!   `extras.schema_validity` (`"not computed: …"`), since the record's rates are plain numbers.
//!
//! Aggregates are `metrics::aggregate`'s plain means over the rows of each group (variant, category, problem,
//! overall), as the harness pools its question types.

use std::collections::BTreeMap;
use std::path::Path;

use metrics::aggregate::{ScoredSample, Summary};
use metrics::schema::{DocValidity, SchemaValidator};
use metrics::yaml::Value;
use task::records::{Extras, Prediction, ScoreReport, Scores};

use crate::EvalError;

/// Whether a prediction's YAML validates against the Kubernetes schemas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaVerdict {
    /// The schema directory was absent, so validity was not computed.
    NotComputed,
    /// The text holds no YAML document (or does not parse), so there is nothing to validate.
    NoDocument,
    /// Every document validates.
    Valid,
    /// At least one document's kind has no schema (and none is invalid).
    UnknownKind,
    /// A document fails validation: the first error's path and message.
    Invalid(String),
}

impl SchemaVerdict {
    /// The short name written to `scores.csv`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::NotComputed => "not-computed",
            Self::NoDocument => "no-document",
            Self::Valid => "valid",
            Self::UnknownKind => "unknown-kind",
            Self::Invalid(_) => "invalid",
        }
    }
}

/// Everything computed for one prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct RowScores {
    /// Against the labelled reference (the CloudEval numbers).
    pub labelled: metrics::Scores,
    /// Against the label-stripped reference.
    pub stripped: metrics::Scores,
    /// Whether the extracted text loads as YAML with at least one mapping or sequence document.
    pub yaml_parses: bool,
    /// Schema validity of the extracted text.
    pub schema: SchemaVerdict,
}

/// Scores one prediction against its problem's labelled reference.
pub fn score_prediction(
    prediction: &Prediction,
    reference: &str,
    schemas: Option<&SchemaValidator>,
) -> Result<RowScores, EvalError> {
    let metric_error = |source| EvalError::Metric {
        row_id: prediction.row_id.clone(),
        source,
    };
    let labelled = metrics::score_all(&prediction.raw_output, reference).map_err(metric_error)?;
    let stripped =
        metrics::score_all_unlabelled(&prediction.raw_output, reference).map_err(metric_error)?;
    let extracted = metrics::extract::extract(&prediction.raw_output);
    let documents = metrics::yaml::load_all(&extracted).unwrap_or_default();
    let yaml_parses = documents
        .iter()
        .any(|document| matches!(document, Value::Map(_) | Value::Seq(_)));
    let schema = match schemas {
        None => SchemaVerdict::NotComputed,
        Some(_) if !yaml_parses => SchemaVerdict::NoDocument,
        Some(validator) => schema_verdict(
            &documents
                .iter()
                .map(|d| validator.validate_document(d))
                .collect::<Vec<_>>(),
        ),
    };
    Ok(RowScores {
        labelled,
        stripped,
        yaml_parses,
        schema,
    })
}

fn schema_verdict(documents: &[DocValidity]) -> SchemaVerdict {
    if let Some(message) = documents.iter().find_map(|document| match document {
        DocValidity::Invalid { path, message } => Some(format!("{path}: {message}")),
        _ => None,
    }) {
        return SchemaVerdict::Invalid(message);
    }
    if documents
        .iter()
        .any(|document| matches!(document, DocValidity::UnknownKind { .. }))
    {
        return SchemaVerdict::UnknownKind;
    }
    SchemaVerdict::Valid
}

/// The identity of a report: who was evaluated on what.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportHeader {
    /// The results directory name.
    pub run: String,
    /// Legend name.
    pub label: String,
    /// `vanilla`, `lora`, `full` or `baseline-<name>`.
    pub system: String,
    /// Split manifest name and unit.
    pub split: String,
}

/// Whether schema validity was computed, and against what (recorded in `scores.json` as
/// `extras.schema_validity`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaStatus {
    /// Validated against the schemas in this directory.
    Computed(String),
    /// Not computed, with the reason (e.g. the schema directory is absent).
    NotComputed(String),
}

impl SchemaStatus {
    /// The sentence written to `extras.schema_validity`.
    pub fn describe(&self) -> String {
        match self {
            Self::Computed(dir) => format!("computed against {dir}"),
            Self::NotComputed(reason) => format!("not computed: {reason}"),
        }
    }
}

/// Aggregates per-row scores into the report. `predictions` and `rows` are parallel.
pub fn build_report(
    header: ReportHeader,
    predictions: &[Prediction],
    rows: &[RowScores],
) -> ScoreReport {
    let samples = |pick: fn(&RowScores) -> metrics::Scores| -> Vec<ScoredSample> {
        predictions
            .iter()
            .zip(rows)
            .map(|(prediction, row)| ScoredSample {
                problem: prediction.problem_id.clone(),
                category: prediction.category.clone(),
                variant: prediction.variant.to_string(),
                scores: pick(row),
            })
            .collect()
    };
    let labelled = metrics::aggregate::aggregate(&samples(|row| row.labelled), metrics::SIGNATURE);
    let stripped =
        metrics::aggregate::aggregate(&samples(|row| row.stripped), metrics::SIGNATURE_UNLABELLED);
    let groups = |summaries: BTreeMap<String, Summary>| -> BTreeMap<String, Scores> {
        summaries
            .into_iter()
            .map(|(key, summary)| (key, record_scores(&summary)))
            .collect()
    };
    let rate = |count: usize| {
        if rows.is_empty() {
            0.0
        } else {
            count as f64 / rows.len() as f64
        }
    };
    let generated: u64 = predictions
        .iter()
        .map(|p| u64::from(p.generated_tokens))
        .sum();
    let seconds: f64 = predictions.iter().map(|p| p.seconds).sum();
    ScoreReport {
        run: header.run,
        label: header.label,
        system: header.system,
        signature: labelled.overall.signature.clone(),
        split: header.split,
        n: rows.len(),
        overall: record_scores(&labelled.overall),
        per_variant: groups(labelled.per_variant),
        per_category: groups(labelled.per_category),
        per_problem: groups(labelled.per_problem),
        extras: Extras {
            yaml_parse_rate: rate(rows.iter().filter(|row| row.yaml_parses).count()),
            schema_valid_rate: rate(
                rows.iter()
                    .filter(|row| row.schema == SchemaVerdict::Valid)
                    .count(),
            ),
            schema_unknown_kind_rate: rate(
                rows.iter()
                    .filter(|row| row.schema == SchemaVerdict::UnknownKind)
                    .count(),
            ),
            stripped_reference: record_scores(&stripped.overall),
        },
        // Baselines generate no tokens; a model that generated nothing in no time has no rate either.
        generation_tokens_per_second: (generated > 0 && seconds > 0.0)
            .then(|| generated as f64 / seconds),
    }
}

fn record_scores(summary: &Summary) -> Scores {
    let mean = &summary.mean;
    Scores {
        n: summary.samples,
        bleu: mean.bleu,
        edit_distance: mean.edit_distance,
        exact_match: mean.exact_match,
        kv_exact_match: mean.kv_exact_match,
        kv_wildcard_match: mean.kv_wildcard_match,
    }
}

/// Writes `scores.json`: the report plus `extras.schema_validity` saying whether the schema rates mean anything.
pub fn write_report(
    path: &Path,
    report: &ScoreReport,
    schemas: &SchemaStatus,
) -> Result<(), EvalError> {
    let json_error = |source| task::RecordError::Json {
        path: path.display().to_string(),
        source,
    };
    let mut value = serde_json::to_value(report).map_err(json_error)?;
    if let Some(extras) = value
        .get_mut("extras")
        .and_then(serde_json::Value::as_object_mut)
    {
        extras.insert(
            "schema_validity".to_owned(),
            serde_json::Value::String(schemas.describe()),
        );
    }
    Ok(task::write_json(path, &value)?)
}

/// The columns of `scores.csv`, in order.
pub const CSV_HEADER: [&str; 22] = [
    "row_id",
    "problem_id",
    "variant",
    "lib",
    "category",
    "prompt_tokens",
    "generated_tokens",
    "seconds",
    "stopped",
    "bleu",
    "edit_distance",
    "exact_match",
    "kv_exact_match",
    "kv_wildcard_match",
    "stripped_bleu",
    "stripped_edit_distance",
    "stripped_exact_match",
    "stripped_kv_exact_match",
    "stripped_kv_wildcard_match",
    "yaml_parses",
    "schema",
    "schema_error",
];

/// Writes `scores.csv`: one row per prediction with every score (atomically: temp file + rename).
pub fn write_csv(
    path: &Path,
    predictions: &[Prediction],
    rows: &[RowScores],
) -> Result<(), EvalError> {
    let csv_error = |source| EvalError::Csv {
        path: path.to_path_buf(),
        source,
    };
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(CSV_HEADER).map_err(csv_error)?;
    for (prediction, row) in predictions.iter().zip(rows) {
        let (l, s) = (&row.labelled, &row.stripped);
        let schema_error = match &row.schema {
            SchemaVerdict::Invalid(message) => message.as_str(),
            _ => "",
        };
        writer
            .write_record([
                prediction.row_id.clone(),
                prediction.problem_id.clone(),
                prediction.variant.to_string(),
                prediction.lib.clone(),
                prediction.category.clone(),
                prediction.prompt_tokens.to_string(),
                prediction.generated_tokens.to_string(),
                prediction.seconds.to_string(),
                prediction.stopped.to_string(),
                l.bleu.to_string(),
                l.edit_distance.to_string(),
                l.exact_match.to_string(),
                l.kv_exact_match.to_string(),
                l.kv_wildcard_match.to_string(),
                s.bleu.to_string(),
                s.edit_distance.to_string(),
                s.exact_match.to_string(),
                s.kv_exact_match.to_string(),
                s.kv_wildcard_match.to_string(),
                row.yaml_parses.to_string(),
                row.schema.name().to_owned(),
                schema_error.to_owned(),
            ])
            .map_err(csv_error)?;
    }
    let bytes = writer.into_inner().map_err(|error| EvalError::Io {
        path: path.to_path_buf(),
        source: error.into_error(),
    })?;
    Ok(task::write_atomic(path, &bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prediction(row_id: &str, category: &str, raw_output: &str) -> Prediction {
        let (problem_id, variant) = task::Row::parse_id(row_id).expect("valid row id");
        Prediction {
            row_id: row_id.to_owned(),
            problem_id: problem_id.to_owned(),
            variant,
            lib: "Kubernetes".to_owned(),
            category: category.to_owned(),
            prompt: "prompt".to_owned(),
            raw_output: raw_output.to_owned(),
            extracted: metrics::extract::extract(raw_output),
            prompt_tokens: 10,
            generated_tokens: 4,
            seconds: 0.5,
            stopped: true,
        }
    }

    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web # *\nspec:\n  containers:\n  - name: nginx\n    image: nginx\n";

    #[test]
    fn a_copy_of_the_stripped_reference_is_perfect_against_it_and_kv_perfect_against_the_labels() {
        let stripped = task::strip_labels(POD);
        let scores = score_prediction(
            &prediction("Kubernetes_pod_q1#original", "pod", &stripped),
            POD,
            None,
        )
        .expect("scorable");
        assert_eq!(scores.stripped.exact_match, 1.0);
        assert_eq!(scores.stripped.bleu, 1.0);
        assert_eq!(scores.labelled.kv_exact_match, 1.0);
        assert_eq!(scores.labelled.kv_wildcard_match, 1.0);
        // The harness compares text against the labelled reference, so the missing label costs exact match.
        assert_eq!(scores.labelled.exact_match, 0.0);
        assert!(scores.yaml_parses);
        assert_eq!(scores.schema, SchemaVerdict::NotComputed);
    }

    #[test]
    fn prose_does_not_parse_and_scores_low() {
        let scores = score_prediction(
            &prediction("Kubernetes_pod_q1#original", "pod", "I cannot help."),
            POD,
            None,
        )
        .expect("scorable");
        assert_eq!(scores.labelled.kv_wildcard_match, 0.0);
        assert!(!scores.yaml_parses);
    }

    #[test]
    fn report_means_per_group_and_rates() {
        let predictions = [
            prediction("Kubernetes_pod_q1#original", "pod", POD),
            prediction("Kubernetes_pod_q1#simplified", "pod", "nothing"),
            prediction("Kubernetes_job_q1#original", "job", POD),
        ];
        let rows: Vec<RowScores> = predictions
            .iter()
            .map(|p| score_prediction(p, POD, None).expect("scorable"))
            .collect();
        let header = ReportHeader {
            run: "r".to_owned(),
            label: "L".to_owned(),
            system: "vanilla".to_owned(),
            split: "s".to_owned(),
        };
        let report = build_report(header, &predictions, &rows);
        assert_eq!(report.n, 3);
        assert_eq!(report.overall.exact_match, 2.0 / 3.0);
        assert_eq!(report.per_variant["original"].exact_match, 1.0);
        assert_eq!(report.per_variant["simplified"].n, 1);
        assert_eq!(report.per_category["pod"].exact_match, 0.5);
        assert_eq!(report.per_problem["Kubernetes_job_q1"].n, 1);
        assert_eq!(report.extras.yaml_parse_rate, 2.0 / 3.0);
        assert_eq!(report.extras.schema_valid_rate, 0.0);
        assert_eq!(report.generation_tokens_per_second, Some(12.0 / 1.5));
    }

    #[test]
    fn csv_has_a_header_and_one_line_per_prediction() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("scores.csv");
        let predictions = [prediction("Kubernetes_pod_q1#original", "pod", POD)];
        let rows = [score_prediction(&predictions[0], POD, None).expect("scorable")];
        write_csv(&path, &predictions, &rows).expect("written");
        let text = std::fs::read_to_string(&path).expect("read back");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], CSV_HEADER.join(","));
        assert!(lines[1].starts_with(
            "Kubernetes_pod_q1#original,Kubernetes_pod_q1,original,Kubernetes,pod,10,4,0.5,true,"
        ));
    }
}
