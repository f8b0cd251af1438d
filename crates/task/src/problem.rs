//! The problem model: one CloudEval-YAML problem, its question variants, and the rows built from them.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One phrasing of a problem's question. CloudEval scores all three and pools them.
///
/// Serde names are lowercase (`"original"`, `"simplified"`, `"translated"`), as in CloudEval's
/// `question_types`. The order (`Original < Simplified < Translated`) is the order rows are listed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// The original English question (`question.txt`).
    Original,
    /// A shorter English rewrite (`question_simplified.txt`).
    Simplified,
    /// A Chinese translation of the original (`question_translated.txt`).
    Translated,
}

impl Variant {
    /// All variants, in row order.
    pub const ALL: [Variant; 3] = [Variant::Original, Variant::Simplified, Variant::Translated];

    /// The serde / CLI name: `original`, `simplified` or `translated`.
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Original => "original",
            Variant::Simplified => "simplified",
            Variant::Translated => "translated",
        }
    }

    /// The file that holds this variant inside a problem folder.
    pub fn file_name(self) -> &'static str {
        match self {
            Variant::Original => "question.txt",
            Variant::Simplified => "question_simplified.txt",
            Variant::Translated => "question_translated.txt",
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a string that names no [`Variant`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown question variant `{0}` (expected original, simplified or translated)")]
pub struct UnknownVariant(pub String);

impl FromStr for Variant {
    type Err = UnknownVariant;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Variant::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnknownVariant(s.to_owned()))
    }
}

/// One CloudEval-YAML problem: up to three phrasings of a question and one labelled reference answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// `"<Lib>_<mode>_q<N>"`, e.g. `Kubernetes_pod_q12` (CloudEval's problem key).
    pub id: String,
    /// The library folder: `Kubernetes`, `Envoy`, `Istio`, …
    pub lib: String,
    /// The mode folder: `pod`, `deployment`, … for Kubernetes; `all` for Envoy.
    pub mode: String,
    /// The problem number `N` of the `q<N>` folder.
    pub number: u32,
    /// The reporting category. Equal to `mode` for every CloudEval lib (Kubernetes `pod`, Envoy `all`, Istio
    /// `gateway`, …); JSONL data may set its own.
    pub category: String,
    /// The question text per variant, verbatim. `Original` is always present in loaded data unless a variant
    /// filter removed it.
    pub questions: BTreeMap<Variant, String>,
    /// `labeled_code.yaml` verbatim (line endings as Python text mode reads them), `# *` wildcard labels kept
    /// (CloudEval's text metrics score against this).
    pub reference: String,
    /// `unit_test.sh` verbatim, when the problem has one.
    pub unit_test: Option<String>,
}

impl Problem {
    /// Builds CloudEval's problem key `"<Lib>_<mode>_q<N>"`.
    pub fn make_id(lib: &str, mode: &str, number: u32) -> String {
        format!("{lib}_{mode}_q{number}")
    }

    /// The rows of this problem for the given variants (all variants when `variants` is empty), in variant
    /// order; variants the problem lacks are skipped.
    pub fn rows(&self, variants: &[Variant]) -> Vec<Row> {
        self.questions
            .iter()
            .filter(|(variant, _)| variants.is_empty() || variants.contains(variant))
            .map(|(&variant, question)| Row {
                row_id: Row::make_id(&self.id, variant),
                problem_id: self.id.clone(),
                variant,
                lib: self.lib.clone(),
                category: self.category.clone(),
                question: question.clone(),
                reference: self.reference.clone(),
            })
            .collect()
    }
}

/// All rows of `problems` for `variants` (all when empty), in problem order then variant order.
pub fn rows_of(problems: &[Problem], variants: &[Variant]) -> Vec<Row> {
    problems.iter().flat_map(|p| p.rows(variants)).collect()
}

/// One (problem, variant) phrasing: the unit that is prompted, trained on and scored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// `"<problem_id>#<variant>"`, e.g. `Kubernetes_pod_q12#simplified`.
    pub row_id: String,
    /// The problem's id.
    pub problem_id: String,
    /// Which phrasing this row is.
    pub variant: Variant,
    /// The problem's lib.
    pub lib: String,
    /// The problem's category.
    pub category: String,
    /// The question text of this variant, verbatim.
    pub question: String,
    /// The problem's labelled reference, verbatim (see [`strip_labels`] for the training target).
    pub reference: String,
}

impl Row {
    /// Builds a row id `"<problem_id>#<variant>"`.
    pub fn make_id(problem_id: &str, variant: Variant) -> String {
        format!("{problem_id}#{variant}")
    }

    /// Splits a row id into its problem id and variant; `None` when it is not of the form
    /// `"<problem_id>#<variant>"`.
    pub fn parse_id(row_id: &str) -> Option<(&str, Variant)> {
        let (problem_id, variant) = row_id.rsplit_once('#')?;
        Some((problem_id, variant.parse().ok()?))
    }
}

/// Removes CloudEval's `# *` wildcard labels from a labelled reference, giving the training target.
///
/// CloudEval's rule for a labelled line: it contains `#` and ends in `*` after `rstrip()`. On such a line the
/// comment (from the last `#` on) is removed and the remaining YAML is right-stripped. A line that was nothing but
/// a label (only whitespace before the `#`) is dropped entirely. Every other line, and the line terminators, are
/// kept byte for byte.
pub fn strip_labels(reference: &str) -> String {
    let mut out = String::with_capacity(reference.len());
    for line in reference.split_inclusive('\n') {
        let (body, terminator) = match line.strip_suffix("\r\n") {
            Some(body) => (body, "\r\n"),
            None => match line.strip_suffix('\n') {
                Some(body) => (body, "\n"),
                None => (line, ""),
            },
        };
        let is_label = body.contains('#') && body.trim_end().ends_with('*');
        if !is_label {
            out.push_str(line);
            continue;
        }
        // The label is the last comment on the line: YAML values may themselves contain '#'.
        let yaml = match body.rfind('#') {
            Some(at) => body[..at].trim_end(),
            None => body.trim_end(),
        };
        if yaml.trim().is_empty() {
            continue;
        }
        out.push_str(yaml);
        out.push_str(terminator);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_strip(input: &str, expected: &str) {
        assert_eq!(strip_labels(input), expected, "input: {input:?}");
    }

    #[test]
    fn strip_labels_removes_wildcard_comments_only() {
        check_strip("a: 1 # *\nb: 2\n", "a: 1\nb: 2\n");
        check_strip("  name: web   # *   \n", "  name: web\n");
        check_strip("x: \"a#b\" # *\n", "x: \"a#b\"\n");
        // A comment that is not a wildcard label stays.
        check_strip("a: 1 # keep me\n", "a: 1 # keep me\n");
        // A '*' with no '#' is YAML (an alias-like value), not a label.
        check_strip("a: *anchor\n", "a: *anchor\n");
        // A line that is only a label disappears.
        check_strip("a: 1\n   # *\nb: 2", "a: 1\nb: 2");
        check_strip("a: 1 # *\r\nb: 2\r\n", "a: 1\r\nb: 2\r\n");
        check_strip("last: x # *", "last: x");
        check_strip("", "");
    }

    #[test]
    fn variant_names_round_trip() {
        for v in Variant::ALL {
            assert_eq!(v.as_str().parse::<Variant>(), Ok(v));
            let json = serde_json::to_string(&v).expect("serialises");
            assert_eq!(json, format!("\"{}\"", v.as_str()));
        }
        assert!("Original".parse::<Variant>().is_err());
    }

    #[test]
    fn row_ids_parse_back() {
        let id = Row::make_id("Kubernetes_pod_q12", Variant::Simplified);
        assert_eq!(id, "Kubernetes_pod_q12#simplified");
        assert_eq!(
            Row::parse_id(&id),
            Some(("Kubernetes_pod_q12", Variant::Simplified))
        );
        assert_eq!(Row::parse_id("Kubernetes_pod_q12"), None);
        assert_eq!(Row::parse_id("x#bogus"), None);
    }
}
