//! Key-value wildcard match (spec §3.5): leaves of the candidate against leaves of the `# *`-labelled reference.
//!
//! Kept exactly as the harness behaves: candidate leaves are not consumed (so scores can exceed 1), lists of
//! mappings are bags of `(path, value)` leaves, values compare under Python `==`, and every failure (unparsable
//! YAML, a non-mapping document, a non-string key, a labelled line without `:`) scores 0.

use crate::kv_match::Loaded;
use crate::pystr;
use crate::yaml::{self, Mapping, Value, python_eq};

/// Why the harness's wildcard computation raises (which its evaluator turns into a score of 0).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WildcardError {
    /// A labelled reference line has no `:` to put the `*` before.
    #[error("labelled reference line {line} has no ':'")]
    LabelWithoutColon {
        /// The 1-based line number.
        line: usize,
    },
    /// The candidate or the labelled reference failed to load.
    #[error("{side} YAML failed to load: {source}")]
    Yaml {
        /// `"candidate"` or `"reference"`.
        side: &'static str,
        /// The loader's error.
        source: yaml::YamlError,
    },
    /// A document (or a list item under a list of mappings) is not a mapping.
    #[error("a document or list item is not a mapping")]
    NotAMapping,
    /// A mapping key is not a string (`80:`, `on:`), so `key.rstrip('*')` fails.
    #[error("a mapping key is not a string")]
    NonStringKey,
    /// No leaves on either side.
    #[error("no leaves on either side (division by zero)")]
    EmptyUnion,
}

/// The wildcard score, 0 on any failure (as the harness's evaluator does).
pub fn kv_wildcard(candidate: &str, reference: &str) -> f64 {
    kv_wildcard_checked(candidate, reference).unwrap_or(0.0)
}

/// The wildcard score, or why the harness would have raised.
pub fn kv_wildcard_checked(candidate: &str, reference: &str) -> Result<f64, WildcardError> {
    let labelled = label_reference(reference)?;
    kv_wildcard_loaded(&yaml::load_all(candidate), &yaml::load_all(&labelled))
}

/// The wildcard score on already loaded documents: the candidate's, and those of the reference after
/// [`label_reference`].
pub fn kv_wildcard_loaded(
    candidate: &Loaded,
    labelled_reference: &Loaded,
) -> Result<f64, WildcardError> {
    let candidate_docs = candidate.as_ref().map_err(|source| WildcardError::Yaml {
        side: "candidate",
        source: source.clone(),
    })?;
    let reference_docs = labelled_reference
        .as_ref()
        .map_err(|source| WildcardError::Yaml {
            side: "reference",
            source: source.clone(),
        })?;
    let empty = Value::Map(Mapping::default());
    let pairs = candidate_docs.len().max(reference_docs.len());
    let (mut intersection, mut union) = (0_usize, 0_usize);
    for index in 0..pairs {
        let candidate_leaves = leaves(candidate_docs.get(index).unwrap_or(&empty))?;
        let reference_leaves = leaves(reference_docs.get(index).unwrap_or(&empty))?;
        let matched = reference_leaves
            .iter()
            .filter(|reference_leaf| {
                candidate_leaves.iter().any(|candidate_leaf| {
                    candidate_leaf.path == reference_leaf.path
                        && (reference_leaf.wildcard
                            || python_eq(candidate_leaf.value, reference_leaf.value))
                })
            })
            .count();
        intersection += matched;
        union += candidate_leaves.len() + reference_leaves.len() - matched;
    }
    if union == 0 {
        return Err(WildcardError::EmptyUnion);
    }
    Ok(intersection as f64 / union as f64)
}

/// Rewrites each labelled line (`'#' in line` and it ends in `*` after `rstrip()`) from `k: v` to `k*: v`.
pub fn label_reference(reference: &str) -> Result<String, WildcardError> {
    let mut lines = Vec::new();
    for (index, line) in pystr::splitlines(reference).into_iter().enumerate() {
        if line.contains('#') && pystr::rstrip(line).ends_with('*') {
            let (key, value) = line
                .split_once(':')
                .ok_or(WildcardError::LabelWithoutColon { line: index + 1 })?;
            lines.push(format!("{}*:{}", pystr::rstrip(key), value));
        } else {
            lines.push(line.to_string());
        }
    }
    let mut labelled = lines.join("\n");
    if reference.ends_with('\n') {
        labelled.push('\n');
    }
    Ok(labelled)
}

/// One leaf: the key path (labels removed), the value, and whether the reference marked it `*`.
struct Leaf<'v> {
    path: Vec<&'v str>,
    value: &'v Value,
    wildcard: bool,
}

fn leaves(document: &Value) -> Result<Vec<Leaf<'_>>, WildcardError> {
    let Value::Map(mapping) = document else {
        return Err(WildcardError::NotAMapping);
    };
    let mut out = Vec::new();
    collect(mapping, &mut Vec::new(), &mut out)?;
    Ok(out)
}

fn collect<'v>(
    mapping: &'v Mapping,
    prefix: &mut Vec<&'v str>,
    out: &mut Vec<Leaf<'v>>,
) -> Result<(), WildcardError> {
    for (key, value) in mapping.entries() {
        let Value::Str(key) = key else {
            return Err(WildcardError::NonStringKey);
        };
        let name = key.trim_end_matches('*');
        prefix.push(name);
        match value {
            Value::Map(child) => collect(child, prefix, out)?,
            Value::Seq(items) if matches!(items.first(), Some(Value::Map(_))) => {
                for item in items {
                    let Value::Map(child) = item else {
                        return Err(WildcardError::NotAMapping);
                    };
                    collect(child, prefix, out)?;
                }
            }
            _ => out.push(Leaf {
                path: prefix.clone(),
                value,
                wildcard: key.ends_with('*'),
            }),
        }
        prefix.pop();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_labels_accept_any_value() {
        let reference = "a: 1\nname: web # *\n";
        assert_eq!(kv_wildcard("a: 1\nname: other", reference), 1.0);
        assert_eq!(kv_wildcard("a: 2\nname: other", reference), 1.0 / 3.0);
    }

    #[test]
    fn candidate_leaves_are_not_consumed() {
        // Spec §3.5 example: 3 reference leaves, 2 candidate leaves, intersection 3 → 3 / (2 + 3 - 3) = 1.5.
        let reference = "c:\n- name: x\n  image: i\n- name: x\n";
        let candidate = "c:\n- name: x\n  image: i\n";
        assert_eq!(kv_wildcard(candidate, reference), 1.5);
    }

    #[test]
    fn failures_score_zero() {
        assert_eq!(kv_wildcard("- a", "a: 1"), 0.0);
        assert_eq!(kv_wildcard("a: 1\n---\n", "a: 1"), 0.0);
        assert_eq!(kv_wildcard("80: 1", "a: 1"), 0.0);
        assert_eq!(kv_wildcard("a: 1", "a # *"), 0.0);
        assert_eq!(
            label_reference("x: 1 # *\ny: 2\n"),
            Ok("x*: 1 # *\ny: 2\n".to_string())
        );
    }
}
