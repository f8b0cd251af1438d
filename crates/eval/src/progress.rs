//! How the library reports progress without printing: the binary passes an observer (a progress bar).

/// Receives progress of prediction. All methods default to doing nothing.
pub trait Progress {
    /// Prediction starts: `total` rows in this evaluation (or shard), of which `already_done` were found on disk.
    fn start(&mut self, total: usize, already_done: usize) {
        let _ = (total, already_done);
    }

    /// `rows` more rows finished, with `generated_tokens` new tokens in `seconds` of generation.
    fn advance(&mut self, rows: usize, generated_tokens: u64, seconds: f64) {
        let _ = (rows, generated_tokens, seconds);
    }

    /// Prediction is over (scoring may follow).
    fn finish(&mut self) {}
}

/// An observer that ignores everything (tests, library callers that do not care).
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {}
