//! The `score-pairs` record transform, as pure string functions (the binary does the file I/O).
//!
//! Each input line is a JSON object with at least `candidate` and `reference` (strings); other fields pass through
//! in order. The output object adds the five scores after extraction and a `raw` object with the five scores
//! without extraction.

use rayon::prelude::*;
use serde_json::{Map, Value};

use crate::{Metric, Scores, score_all_and_raw};

/// A line that could not be scored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct LineFailure {
    /// The 1-based line number in the input.
    pub line: usize,
    /// Why it failed.
    pub reason: String,
}

/// Scores every non-blank line in parallel, keeping input order. Returns the output lines and the failures.
pub fn score_pairs(input: &str) -> (Vec<String>, Vec<LineFailure>) {
    let lines: Vec<(usize, &str)> = input
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, l)| (i + 1, l))
        .collect();
    let results: Vec<Result<String, LineFailure>> = lines
        .par_iter()
        .map(|&(line, text)| score_pair_line(text).map_err(|reason| LineFailure { line, reason }))
        .collect();
    let mut outputs = Vec::with_capacity(results.len());
    let mut failures = Vec::new();
    for result in results {
        match result {
            Ok(output) => outputs.push(output),
            Err(failure) => failures.push(failure),
        }
    }
    (outputs, failures)
}

/// Scores one JSON line; the error names the reason.
pub fn score_pair_line(line: &str) -> Result<String, String> {
    let value: Value =
        serde_json::from_str(line).map_err(|error| format!("invalid JSON: {error}"))?;
    let Value::Object(mut record) = value else {
        return Err("not a JSON object".into());
    };
    let field = |name: &str| match record.get(name) {
        Some(Value::String(text)) => Ok(text.clone()),
        Some(_) => Err(format!("field `{name}` is not a string")),
        None => Err(format!("missing field `{name}`")),
    };
    let candidate = field("candidate")?;
    let reference = field("reference")?;
    let (extracted, raw) =
        score_all_and_raw(&candidate, &reference).map_err(|error| error.to_string())?;
    append_scores(&mut record, &extracted);
    let mut raw_record = Map::new();
    append_scores(&mut raw_record, &raw);
    record.insert("raw".into(), Value::Object(raw_record));
    serde_json::to_string(&record).map_err(|error| format!("cannot serialise: {error}"))
}

fn append_scores(record: &mut Map<String, Value>, scores: &Scores) {
    for metric in Metric::ALL {
        record.insert(metric.name().into(), Value::from(scores.get(metric)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_fields_through_and_reports_bad_lines() {
        let input = "{\"id\": \"p1\", \"candidate\": \"a: 1\", \"reference\": \"a: 1\"}\nnot json\n\n{\"candidate\": 1}\n";
        let (outputs, failures) = score_pairs(input);
        assert_eq!(outputs.len(), 1);
        assert!(outputs[0].starts_with(
            "{\"id\":\"p1\",\"candidate\":\"a: 1\",\"reference\":\"a: 1\",\"bleu\":0.0,"
        ));
        assert!(outputs[0].contains("\"raw\":{\"bleu\":0.0,\"edit_distance\":1.0,"));
        let lines: Vec<usize> = failures.iter().map(|f| f.line).collect();
        assert_eq!(lines, [2, 4]);
    }
}
