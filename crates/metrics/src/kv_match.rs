//! Key-value exact match (spec §3.4): every document of the candidate equals the reference's document at the same
//! position under `deepdiff.DeepDiff` with default settings (typed, key-order-insensitive equality).

use crate::yaml::{self, Value, YamlError, python_eq};

/// The result of [`yaml::load_all`].
pub type Loaded = Result<Vec<Value>, YamlError>;

/// 1.0 when both sides load, the reference has documents, the counts agree and each pair is DeepDiff-equal.
pub fn kv_match(candidate: &str, reference: &str) -> f64 {
    kv_match_loaded(&yaml::load_all(candidate), &yaml::load_all(reference))
}

/// [`kv_match`] on already loaded documents (so one load serves several metrics).
pub fn kv_match_loaded(candidate: &Loaded, reference: &Loaded) -> f64 {
    let Ok(candidate_docs) = candidate else {
        return 0.0;
    };
    let Ok(reference_docs) = reference else {
        return 0.0;
    };
    if reference_docs.is_empty() || candidate_docs.len() != reference_docs.len() {
        return 0.0;
    }
    let all_equal = candidate_docs
        .iter()
        .zip(reference_docs)
        .all(|(c, r)| deepdiff_equal(c, r));
    if all_equal { 1.0 } else { 0.0 }
}

/// Whether `DeepDiff(left, right)` is empty.
///
/// Types must match (`1`, `1.0`, `True` and `"1"` all differ), except inside a list whose items are all scalars:
/// DeepDiff diffs such lists with `difflib`, which pairs items by Python `==`, so `[1]` equals `[True]` there.
/// Dict keys match under Python key equality. Every `.nan` PyYAML builds is one object, and DeepDiff skips identical
/// objects, so NaN equals NaN here.
pub fn deepdiff_equal(left: &Value, right: &Value) -> bool {
    use Value::*;
    match (left, right) {
        (Null, Null) => true,
        (Bool(a), Bool(b)) => a == b,
        (Int(_), Int(_)) | (Str(_), Str(_)) | (Date(_), Date(_)) | (DateTime(_), DateTime(_)) => {
            python_eq(left, right)
        }
        (Float(a), Float(b)) => a == b || (a.is_nan() && b.is_nan()),
        (Seq(a), Seq(b)) => {
            let scalars_only = a
                .iter()
                .chain(b)
                .all(|item| !matches!(item, Seq(_) | Map(_)));
            a.len() == b.len()
                && if scalars_only {
                    python_eq(left, right)
                } else {
                    a.iter().zip(b).all(|(x, y)| deepdiff_equal(x, y))
                }
        }
        (Map(a), Map(b)) => {
            a.len() == b.len()
                && a.entries().iter().all(|(key, value)| {
                    b.get(key).is_some_and(|other| deepdiff_equal(value, other))
                })
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::kv_match;

    #[test]
    fn typed_equality_and_key_order() {
        assert_eq!(kv_match("b: 2\na: 1", "a: 1\nb: 2  # *"), 1.0);
        assert_eq!(kv_match("a: 1.0", "a: 1"), 0.0);
        assert_eq!(kv_match("a: yes", "a: true"), 1.0);
        assert_eq!(kv_match("a: [1, 2]", "a: [true, 2]"), 1.0);
        assert_eq!(kv_match("a: [{x: 1}]", "a: [{x: true}]"), 0.0);
    }

    #[test]
    fn document_counts_and_failures() {
        assert_eq!(kv_match("a: 1\n---\n", "a: 1"), 0.0);
        assert_eq!(kv_match("a: 1", ""), 0.0);
        assert_eq!(kv_match("a: =", "a: 1"), 0.0);
    }
}
