//! BLEU as the harness computes it (spec §3.1): NLTK `corpus_bleu` on one (hypothesis, reference) pair,
//! uniform 4-gram weights, smoothing `method3`, NLTK's brevity penalty, and `math.fsum` over the log precisions.
//!
//! Tokens are Python `str.split()` tokens, so punctuation stays attached and `#`/`*` labels are tokens too.

use crate::fasthash::FxHashMap;
use crate::pystr;

/// BLEU of `candidate` against `reference`, both already extracted, in `[0, 1]`.
///
/// Returns 0 when either side has fewer than 4 tokens (the harness's rule) or when no unigram matches.
pub fn bleu(candidate: &str, reference: &str) -> f64 {
    BleuReference::new(reference).score(candidate)
}

/// A reference tokenised and counted once (its n-gram counts for n = 1..4), for scoring many candidates.
#[derive(Debug, Clone)]
pub struct BleuReference<'r> {
    token_count: usize,
    /// Reference tokens interned to small integers.
    vocabulary: FxHashMap<&'r str, u32>,
    /// Count of each reference n-gram (packed ids), for n = 1..4.
    counts: [FxHashMap<u128, u32>; 4],
}

/// The id of a candidate token absent from the reference: no n-gram containing it can match.
const UNKNOWN_TOKEN: u32 = u32::MAX;

fn pack(gram: &[u32]) -> u128 {
    gram.iter().fold(0u128, |key, &id| (key << 32) | id as u128)
}

impl<'r> BleuReference<'r> {
    /// Tokenises (Python `str.split()`) and counts the reference.
    pub fn new(reference: &'r str) -> Self {
        let mut vocabulary: FxHashMap<&'r str, u32> = FxHashMap::default();
        let ids: Vec<u32> = pystr::split(reference)
            .map(|token| {
                let next = vocabulary.len() as u32;
                *vocabulary.entry(token).or_insert(next)
            })
            .collect();
        let counts = std::array::from_fn(|index| {
            let mut counts: FxHashMap<u128, u32> = FxHashMap::default();
            for gram in ids.windows(index + 1) {
                *counts.entry(pack(gram)).or_insert(0) += 1;
            }
            counts
        });
        BleuReference {
            token_count: ids.len(),
            vocabulary,
            counts,
        }
    }

    /// BLEU of `candidate` against this reference.
    pub fn score(&self, candidate: &str) -> f64 {
        let hypothesis: Vec<u32> = pystr::split(candidate)
            .map(|token| self.vocabulary.get(token).copied().unwrap_or(UNKNOWN_TOKEN))
            .collect();
        if self.token_count < 4 || hypothesis.len() < 4 {
            return 0.0;
        }
        let mut log_precisions = [0.0_f64; 4];
        let mut smoothing_exponent = 1_i32;
        for (index, order) in (1..=4_usize).enumerate() {
            let matches = self.clipped_matches(&hypothesis, order);
            let denominator = (hypothesis.len() + 1).saturating_sub(order).max(1);
            if order == 1 && matches == 0 {
                return 0.0;
            }
            let precision = if matches == 0 {
                // method3 ("NIST geometric sequence smoothing"): 1 / (2^k · d) for the k-th zero precision.
                let smoothed = 1.0 / (2.0_f64.powi(smoothing_exponent) * denominator as f64);
                smoothing_exponent += 1;
                smoothed
            } else {
                matches as f64 / denominator as f64
            };
            log_precisions[index] = 0.25 * precision.ln();
        }
        let hyp_len = hypothesis.len() as f64;
        let ref_len = self.token_count as f64;
        let brevity_penalty = if hypothesis.len() > self.token_count {
            1.0
        } else {
            (1.0 - ref_len / hyp_len).exp()
        };
        brevity_penalty * fsum(&log_precisions).exp()
    }

    /// Σ over distinct hypothesis n-grams of min(count in hypothesis, count in reference).
    fn clipped_matches(&self, hypothesis: &[u32], order: usize) -> usize {
        let reference_counts = &self.counts[order - 1];
        let mut used: FxHashMap<u128, u32> = FxHashMap::default();
        let mut matches = 0;
        for gram in hypothesis.windows(order) {
            if gram.contains(&UNKNOWN_TOKEN) {
                continue;
            }
            let key = pack(gram);
            if let Some(&available) = reference_counts.get(&key) {
                let taken = used.entry(key).or_insert(0);
                if *taken < available {
                    *taken += 1;
                    matches += 1;
                }
            }
        }
        matches
    }
}

/// Python's `math.fsum` (Shewchuk's exact partials plus CPython's final round-half-even correction), for finite
/// inputs.
pub fn fsum(values: &[f64]) -> f64 {
    let mut partials: Vec<f64> = Vec::with_capacity(values.len());
    for &value in values {
        let mut x = value;
        let mut kept = 0;
        for j in 0..partials.len() {
            let mut y = partials[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                partials[kept] = lo;
                kept += 1;
            }
            x = hi;
        }
        partials.truncate(kept);
        if x != 0.0 {
            partials.push(x);
        }
    }
    let mut n = partials.len();
    if n == 0 {
        return 0.0;
    }
    n -= 1;
    let mut hi = partials[n];
    let mut lo = 0.0;
    while n > 0 {
        let x = hi;
        n -= 1;
        let y = partials[n];
        hi = x + y;
        lo = y - (hi - x);
        if lo != 0.0 {
            break;
        }
    }
    if n > 0 && ((lo < 0.0 && partials[n - 1] < 0.0) || (lo > 0.0 && partials[n - 1] > 0.0)) {
        let y = lo * 2.0;
        let x = hi + y;
        if y == x - hi {
            hi = x;
        }
    }
    hi
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_sides_score_zero() {
        assert_eq!(bleu("a b c d", "a b c"), 0.0);
        assert_eq!(bleu("a b c", "a b c d"), 0.0);
    }

    #[test]
    fn identical_text_scores_one() {
        assert_eq!(bleu("a: 1\nb: 2\nc: 3", "a: 1 b: 2 c: 3"), 1.0);
    }

    #[test]
    fn python_whitespace_separates_tokens() {
        // Python: '\x1c' is whitespace for str.split(), so these tokenise identically.
        assert_eq!(bleu("a b\x1cc d e", "a b c d e"), 1.0);
    }

    #[test]
    fn no_unigram_match_scores_zero() {
        assert_eq!(bleu("w x y z", "a b c d"), 0.0);
    }

    #[test]
    fn fsum_is_exact() {
        // Python: math.fsum([1e100, 1.0, -1e100]) == 1.0; math.fsum([0.1]*10) == 1.0
        assert_eq!(fsum(&[1e100, 1.0, -1e100]), 1.0);
        assert_eq!(fsum(&[0.1; 10]), 1.0);
        assert_eq!(fsum(&[]), 0.0);
    }
}
