//! Reading an append-only JSON-lines file that a killed process may have left with a torn last line.
//!
//! Predictions are appended one line per finished row (line + `\n` in one write), so a kill can leave at most one
//! partial line, at the very end and without its newline. That tail is tolerated: the caller learns how many bytes
//! are good and truncates before appending again. Any other malformed line — one that ends in a newline, or is not
//! the last — is corruption, reported with the file and its 1-based line number.
//!
//! `task::read_jsonl_for_resume` also skips a torn tail, but does not say where it starts; appending after it would
//! glue the next record onto the fragment, so resuming needs the offset to truncate at (and line numbers for
//! duplicate-row errors), which this reader returns.

use std::fs::OpenOptions;
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::EvalError;

/// The records of a JSON-lines file, plus where a torn last line starts (if there is one).
#[derive(Debug, Clone, PartialEq)]
pub struct AppendLog<T> {
    /// The complete records, in file order, each with its 1-based line number.
    pub records: Vec<(usize, T)>,
    /// A partial last line (no trailing newline, not valid JSON) left by a killed writer.
    pub torn_tail: Option<TornTail>,
}

/// A partial last line: everything from byte `good_len` on is garbage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TornTail {
    /// 1-based line number of the partial line.
    pub line: usize,
    /// Length in bytes of the file's good prefix (up to and including the last newline).
    pub good_len: u64,
}

/// Reads every record of `path`; a missing file reads as empty.
pub fn read_append_log<T: DeserializeOwned>(path: &Path) -> Result<AppendLog<T>, EvalError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(EvalError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut records = Vec::new();
    let mut torn_tail = None;
    let mut start = 0usize;
    let mut line_number = 0usize;
    while start < bytes.len() {
        line_number += 1;
        let (end, complete) = match bytes[start..].iter().position(|&b| b == b'\n') {
            Some(offset) => (start + offset, true),
            None => (bytes.len(), false),
        };
        let line = &bytes[start..end];
        let next = if complete { end + 1 } else { end };
        if line.iter().all(u8::is_ascii_whitespace) {
            start = next;
            continue;
        }
        if !complete {
            // The writer died before the newline; even if the fragment parses, that row is redone.
            torn_tail = Some(TornTail {
                line: line_number,
                good_len: start as u64,
            });
        } else {
            let record =
                serde_json::from_slice::<T>(line).map_err(|error| EvalError::CorruptLine {
                    path: path.to_path_buf(),
                    line: line_number,
                    reason: error.to_string(),
                })?;
            records.push((line_number, record));
        }
        start = next;
    }
    Ok(AppendLog { records, torn_tail })
}

/// Cuts `path` back to its first `good_len` bytes, dropping a torn last line before appending again.
pub fn truncate_to(path: &Path, good_len: u64) -> Result<(), EvalError> {
    let io = |source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new().write(true).open(path).map_err(io)?;
    file.set_len(good_len).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Row {
        id: u32,
    }

    fn read(text: &str) -> Result<AppendLog<Row>, EvalError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("log.jsonl");
        std::fs::write(&path, text).expect("write fixture");
        read_append_log(&path)
    }

    #[test]
    fn complete_lines_are_records() {
        let log = read("{\"id\":1}\n{\"id\":2}\n").expect("valid log");
        assert_eq!(log.records, vec![(1, Row { id: 1 }), (2, Row { id: 2 })]);
        assert_eq!(log.torn_tail, None);
    }

    #[test]
    fn a_partial_last_line_is_a_torn_tail_even_when_it_parses() {
        let log = read("{\"id\":1}\n{\"id\":2").expect("torn tail tolerated");
        assert_eq!(log.records, vec![(1, Row { id: 1 })]);
        assert_eq!(
            log.torn_tail,
            Some(TornTail {
                line: 2,
                good_len: 9
            })
        );
        let log = read("{\"id\":1}\n{\"i").expect("torn tail tolerated");
        assert_eq!(
            log.torn_tail,
            Some(TornTail {
                line: 2,
                good_len: 9
            })
        );
    }

    #[test]
    fn a_bad_complete_line_is_corruption_naming_the_line() {
        let error = read("{\"id\":1}\nnot json\n{\"id\":3}\n").expect_err("corrupt line");
        let message = error.to_string();
        assert!(
            message.contains("log.jsonl") && message.contains("line 2"),
            "{message}"
        );
    }

    #[test]
    fn missing_file_and_blank_lines_read_as_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log: AppendLog<Row> =
            read_append_log(&dir.path().join("absent.jsonl")).expect("missing is empty");
        assert!(log.records.is_empty() && log.torn_tail.is_none());
        assert_eq!(
            read("\n\n{\"id\":7}\n").expect("blank lines").records,
            vec![(3, Row { id: 7 })]
        );
    }

    #[test]
    fn truncate_drops_the_tail() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("log.jsonl");
        std::fs::write(&path, "{\"id\":1}\n{\"id\":").expect("write fixture");
        let tail = read_append_log::<Row>(&path)
            .expect("readable")
            .torn_tail
            .expect("torn");
        truncate_to(&path, tail.good_len).expect("truncate");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read back"),
            "{\"id\":1}\n"
        );
    }
}
