//! Python `str` primitives the harness relies on: the whitespace set of `str.split()` / `str.strip()`,
//! and the line breaks of `str.splitlines()`.
//!
//! Rust's `char::is_whitespace` and `str::lines` differ from Python (`\x1c`–`\x1f` are Python whitespace;
//! `splitlines` breaks at `\r`, `\x0b`, `\x0c`, `\x1c`–`\x1e`, `\x85`, `\u2028`, `\u2029` too), so every
//! metric goes through these instead.

/// Whether Python's `str.isspace()` holds for `c` (the set `str.split()` and `str.strip()` use).
pub fn is_py_whitespace(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n'
            | '\x0b'
            | '\x0c'
            | '\r'
            | '\x1c'
            | '\x1d'
            | '\x1e'
            | '\x1f'
            | ' '
            | '\u{85}'
            | '\u{a0}'
            | '\u{1680}'
            | '\u{2000}'
            ..='\u{200a}' | '\u{2028}' | '\u{2029}' | '\u{202f}' | '\u{205f}' | '\u{3000}'
    )
}

/// Python `s.split()`: tokens separated by runs of Python whitespace, never empty.
pub fn split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_whitespace).filter(|token| !token.is_empty())
}

/// Python `s.strip()`.
pub fn strip(s: &str) -> &str {
    s.trim_matches(is_py_whitespace)
}

/// Python `s.rstrip()`.
pub fn rstrip(s: &str) -> &str {
    s.trim_end_matches(is_py_whitespace)
}

/// Whether `c` ends a line for Python's `str.splitlines()` (`\r\n` is handled by [`splitlines`]).
pub fn is_py_line_break(c: char) -> bool {
    matches!(
        c,
        '\n' | '\r'
            | '\x0b'
            | '\x0c'
            | '\x1c'
            | '\x1d'
            | '\x1e'
            | '\u{85}'
            | '\u{2028}'
            | '\u{2029}'
    )
}

/// Python `s.splitlines()` (without `keepends`): a final line break adds no empty line, `""` gives no lines.
pub fn splitlines(s: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut chars = s.char_indices().peekable();
    while let Some((index, c)) = chars.next() {
        if is_py_line_break(c) {
            lines.push(&s[start..index]);
            let mut end = index + c.len_utf8();
            if c == '\r' && matches!(chars.peek(), Some((_, '\n'))) {
                chars.next();
                end += 1;
            }
            start = end;
        }
    }
    if start < s.len() {
        lines.push(&s[start..]);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_uses_python_whitespace() {
        let tokens: Vec<&str> = split(" a\x1cb\u{3000}c \t\n").collect();
        assert_eq!(tokens, ["a", "b", "c"]);
        assert_eq!(split("").count(), 0);
        assert_eq!(split(" \x1f ").count(), 0);
    }

    #[test]
    fn strip_uses_python_whitespace() {
        assert_eq!(strip("\x1c a b \x1f\u{85}"), "a b");
        assert_eq!(rstrip("  a \u{2029}"), "  a");
    }

    #[test]
    fn splitlines_matches_python() {
        // Python: 'a\r\nb\rc\x1cd\n\ne\n'.splitlines() == ['a', 'b', 'c', 'd', '', 'e']
        assert_eq!(
            splitlines("a\r\nb\rc\x1cd\n\ne\n"),
            ["a", "b", "c", "d", "", "e"]
        );
        assert!(splitlines("").is_empty());
        assert_eq!(splitlines("\n"), [""]);
        assert_eq!(splitlines("x\x1f"), ["x\x1f"]);
        assert_eq!(splitlines("\r\r\n"), ["", ""]);
    }
}
