//! Exact match (spec §3.3): `result.strip() == reference.strip()` with Python whitespace, as 1.0 or 0.0.

use crate::pystr;

/// 1.0 when the stripped texts are identical (labels and comments included), else 0.0.
pub fn exact_match(candidate: &str, reference: &str) -> f64 {
    if pystr::strip(candidate) == pystr::strip(reference) {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::exact_match;

    #[test]
    fn strips_python_whitespace_only_at_the_ends() {
        assert_eq!(exact_match("\x1ca: 1\n", "a: 1"), 1.0);
        assert_eq!(exact_match("a:  1", "a: 1"), 0.0);
    }
}
