//! Golden agreement with the Python reference (nltk 3.8.1, PyYAML 6.0.2, deepdiff 6.7.1, CPython 3.11 difflib).
//! Regenerate with `.cache/venv-metrics/bin/python scripts/golden_metrics.py` (see the script's docstring).

use std::path::Path;

use metrics::yaml::{self, Int, Value};
use metrics::{Metric, Scores};
use serde_json::Value as Json;

const TOLERANCE: f64 = 1e-12;

fn golden_lines(name: &str) -> Vec<Json> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("golden file is committed");
    let mut lines: Vec<Json> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("golden line is JSON"))
        .collect();
    let header = lines.remove(0);
    assert_eq!(
        header["generator"], "scripts/golden_metrics.py",
        "{name} names its generator"
    );
    assert!(lines.len() > 100, "{name} has too few cases");
    lines
}

fn expected_scores(record: &Json) -> Scores {
    let mut scores = Scores::default();
    for metric in Metric::ALL {
        scores.set(
            metric,
            record[metric.name()].as_f64().expect("score is a number"),
        );
    }
    scores
}

fn mismatches(case: &str, kind: &str, actual: &Scores, expected: &Scores) -> Vec<String> {
    Metric::ALL
        .iter()
        .filter(|&&metric| (actual.get(metric) - expected.get(metric)).abs() > TOLERANCE)
        .map(|&metric| {
            format!(
                "{case} [{kind}] {}: rust {} python {}",
                metric.name(),
                actual.get(metric),
                expected.get(metric)
            )
        })
        .collect()
}

#[test]
fn every_golden_pair_matches_python() {
    let mut failures = Vec::new();
    for record in golden_lines("pairs.jsonl") {
        let case = record["case"].as_str().expect("case");
        let candidate = record["candidate"].as_str().expect("candidate");
        let reference = record["reference"].as_str().expect("reference");
        let extracted = metrics::extract::extract(candidate);
        if extracted != record["extracted"].as_str().expect("extracted") {
            failures.push(format!("{case} [extract]: rust {extracted:?}"));
        }
        let scores =
            metrics::score_all(candidate, reference).expect("golden references are non-empty");
        failures.extend(mismatches(
            case,
            "extracted",
            &scores,
            &expected_scores(&record["scores"]),
        ));
        let raw =
            metrics::score_all_raw(candidate, reference).expect("golden references are non-empty");
        failures.extend(mismatches(
            case,
            "raw",
            &raw,
            &expected_scores(&record["raw"]),
        ));
        let (both_extracted, both_raw) = metrics::score_all_and_raw(candidate, reference)
            .expect("golden references are non-empty");
        failures.extend(mismatches(
            case,
            "shared extracted",
            &both_extracted,
            &scores,
        ));
        failures.extend(mismatches(case, "shared raw", &both_raw, &raw));
        let by_metric = metrics::score_all_by_metric(candidate, reference).expect("non-empty");
        failures.extend(mismatches(case, "by metric", &by_metric, &raw));
    }
    assert!(
        failures.is_empty(),
        "{} golden mismatches; first: {}\nall:\n{}",
        failures.len(),
        failures[0],
        failures.join("\n")
    );
}

/// Whether a loaded value equals the generator's typed encoding.
fn matches_encoding(value: &Value, json: &Json) -> bool {
    let Json::Object(object) = json else {
        return false;
    };
    let Some((tag, payload)) = object.iter().next() else {
        return false;
    };
    match (tag.as_str(), value) {
        ("null", Value::Null) => true,
        ("bool", Value::Bool(b)) => payload.as_bool() == Some(*b),
        ("int", Value::Int(int)) => {
            let text = match int {
                Int::Small(i) => i.to_string(),
                Int::Big(digits) => digits.clone(),
            };
            payload.as_str() == Some(text.as_str())
        }
        ("float", Value::Float(f)) => {
            let expected: f64 = payload
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("float repr");
            (expected.is_nan() && f.is_nan()) || expected == *f
        }
        ("str", Value::Str(s)) => payload.as_str() == Some(s.as_str()),
        ("date", Value::Date(d)) => *payload == serde_json::json!([d.year, d.month, d.day]),
        ("datetime", Value::DateTime(dt)) => {
            *payload
                == serde_json::json!([
                    dt.date.year,
                    dt.date.month,
                    dt.date.day,
                    dt.hour,
                    dt.minute,
                    dt.second,
                    dt.microsecond,
                    dt.utc_offset_minutes
                ])
        }
        ("seq", Value::Seq(items)) => {
            let expected = payload.as_array().expect("seq payload");
            expected.len() == items.len()
                && items
                    .iter()
                    .zip(expected)
                    .all(|(v, j)| matches_encoding(v, j))
        }
        ("map", Value::Map(mapping)) => {
            let expected = payload.as_array().expect("map payload");
            expected.len() == mapping.len()
                && mapping
                    .entries()
                    .iter()
                    .zip(expected)
                    .all(|((k, v), pair)| {
                        matches_encoding(k, &pair[0]) && matches_encoding(v, &pair[1])
                    })
        }
        _ => false,
    }
}

#[test]
fn every_golden_yaml_case_loads_as_pyyaml() {
    check_yaml_file("yaml.jsonl");
}

fn check_yaml_file(name: &str) {
    let mut failures = Vec::new();
    for record in golden_lines(name) {
        let case = record["case"].as_str().expect("case");
        let text = record["text"].as_str().expect("text");
        let expected_ok = record["ok"].as_bool().expect("ok");
        match (yaml::load_all(text), expected_ok) {
            (Ok(documents), true) => {
                let expected = record["documents"].as_array().expect("documents");
                let same = expected.len() == documents.len()
                    && documents
                        .iter()
                        .zip(expected)
                        .all(|(value, json)| matches_encoding(value, json));
                if !same {
                    failures.push(format!("{case}: rust {documents:?} python {expected:?}"));
                }
            }
            (Ok(documents), false) => failures.push(format!(
                "{case}: rust loads {documents:?}, python raises {}",
                record["error"]
            )),
            (Err(error), true) => {
                failures.push(format!("{case}: rust fails ({error}), python loads"))
            }
            (Err(_), false) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{} YAML mismatches; first: {}\nall:\n{}",
        failures.len(),
        failures[0],
        failures.join("\n")
    );
}
