//! The harness's output post-processing (`query.strip_generated_code`), step for step (spec §2 step 2).
//!
//! It runs on every model output before scoring. Its quirks are kept on purpose: it cuts at the first
//! `apiVersion:` anywhere (so a `kind:` written first is lost), it matches the literal `\begin\{code\}` (so real
//! LaTeX never matches), and it strips the trailing newline.

use crate::pystr;

/// Applies the harness's extraction to one model output and returns the text that gets scored.
pub fn extract(output: &str) -> String {
    let mut s = after_last_here_line(output);
    if s.contains("```") {
        s = nth_piece(s, "```", 1);
    }
    if s.contains("<code>") {
        s = nth_piece(s, "<code>", 1);
    }
    if s.contains("START SOLUTION") {
        s = nth_piece(s, "START SOLUTION", 1);
    }
    // The harness writes these with backslashes before the braces, so they are 14-character literals.
    const BEGIN_CODE: &str = r"\begin\{code\}";
    const END_CODE: &str = r"\end\{code\}";
    if s.contains(BEGIN_CODE) {
        s = nth_piece(s, BEGIN_CODE, 1);
    }
    s = nth_piece(s, END_CODE, 0);
    s = nth_piece(s, "END SOLUTION", 0);
    s = nth_piece(s, "</code>", 0);
    let s = pystr::strip(s);
    for anchor in ["apiVersion:", "static_resources:"] {
        if let Some(at) = s.find(anchor) {
            return s[at..].to_string();
        }
    }
    s.to_string()
}

/// Python `s.split(sep)[n]`; only called where the piece exists (`sep in s` for `n == 1`).
fn nth_piece<'a>(s: &'a str, sep: &str, n: usize) -> &'a str {
    s.split(sep).nth(n).unwrap_or(s)
}

/// `re.split(r'.*?\bHere\b.*?\n', s)[-1]`: the text after the last newline-terminated line that contains the
/// word `Here` (case-sensitive, Unicode word boundaries; `.` does not cross `\n`, so a match is one line).
fn after_last_here_line(s: &str) -> &str {
    let mut keep_from = 0;
    let mut line_start = 0;
    while let Some(offset) = s[line_start..].find('\n') {
        let line_end = line_start + offset;
        if contains_word_here(s, line_start, line_end) {
            keep_from = line_end + 1;
        }
        line_start = line_end + 1;
    }
    &s[keep_from..]
}

/// Whether `s[start..end]` holds `Here` with a word boundary on both sides (judged on the whole of `s`).
fn contains_word_here(s: &str, start: usize, end: usize) -> bool {
    let line = &s[start..end];
    line.match_indices("Here").any(|(at, _)| {
        let at = start + at;
        let before_ok = !s[..at].chars().next_back().is_some_and(is_word_char);
        let after_ok = !s[at + 4..].chars().next().is_some_and(is_word_char);
        before_ok && after_ok
    })
}

/// Python `re`'s Unicode `\w`: alphanumeric or underscore.
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

#[cfg(test)]
mod tests {
    use super::extract;

    fn check(output: &str, expected: &str) {
        assert_eq!(extract(output), expected, "extract({output:?})");
    }

    #[test]
    fn here_lines_are_dropped_up_to_the_last() {
        check("Here is it:\nfoo: 1\nHere's more\nbar: 2", "bar: 2");
        check("Where\nThere\nfoo", "Where\nThere\nfoo");
        check("x\nfoo Here", "x\nfoo Here");
        check("Heres\nfoo", "Heres\nfoo");
        check("_Here\nfoo", "_Here\nfoo");
    }

    #[test]
    fn fences_keep_the_info_string_unless_api_version_cuts() {
        check("text\n```yaml\napiVersion: v1\n```\nbye", "apiVersion: v1");
        check("```yaml\nadmin: {}\n```", "yaml\nadmin: {}");
        check("```\nonly after a lone fence", "only after a lone fence");
    }

    #[test]
    fn api_version_cut_drops_a_leading_kind() {
        check("kind: Pod\napiVersion: v1\n", "apiVersion: v1");
        check(
            "node: {}\nstatic_resources:\n  a: 1\n",
            "static_resources:\n  a: 1",
        );
    }

    #[test]
    fn latex_markers_are_literal_with_backslashed_braces() {
        check(
            "\\begin{code}\nx: 1\n\\end{code}",
            "\\begin{code}\nx: 1\n\\end{code}",
        );
        check("a\\begin\\{code\\}b: 1\\end\\{code\\}c", "b: 1");
        check("<code>x: 1</code> tail", "x: 1");
        check("START SOLUTION\nx: 1\nEND SOLUTION", "x: 1");
    }
}
