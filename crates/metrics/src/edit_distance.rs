//! The harness's "edit distance" (spec §3.2): a line diff by `difflib.Differ` over stripped lines, scored as
//! `max(1 − (#'+ ' + #'- ' lines) / len(reference lines), 0)`.
//!
//! This is a port of CPython's (≤ 3.13) `difflib.SequenceMatcher` (including the autojunk heuristic for sequences of
//! 200 or more elements) and of `Differ._fancy_replace`, which can find extra common lines inside `replace` blocks.
//! Only the count of lines marked common matters, so no diff text is built.

use std::hash::Hash;

use crate::fasthash::{FxHashMap as HashMap, FxHashSet as HashSet};

use crate::pystr;

/// Why a metric could not be computed, where the harness itself raises (and aborts its run).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricError {
    /// The reference has no lines after stripping, which makes the harness divide by zero.
    #[error(
        "edit distance is undefined for an empty reference (the harness raises ZeroDivisionError)"
    )]
    EmptyReference,
}

/// Edit-distance score of `candidate` against `reference` (both already extracted), in `[0, 1]`.
pub fn edit_distance(candidate: &str, reference: &str) -> Result<f64, MetricError> {
    EditReference::new(reference).score(candidate)
}

/// A reference split into stripped lines and indexed (difflib's `b2j`) once, for scoring many candidates.
#[derive(Debug, Clone)]
pub struct EditReference<'r> {
    lines: Vec<&'r str>,
    b2j: HashMap<&'r str, Vec<usize>>,
}

impl<'r> EditReference<'r> {
    /// `[l.strip() for l in reference.strip().splitlines()]`, indexed.
    pub fn new(reference: &'r str) -> Self {
        let lines: Vec<&str> = stripped_lines(reference);
        let (b2j, _) = build_b2j(&lines, None::<fn(&&str) -> bool>);
        EditReference { lines, b2j }
    }

    /// The edit-distance score of `candidate` against this reference.
    pub fn score(&self, candidate: &str) -> Result<f64, MetricError> {
        let b = &self.lines;
        if b.is_empty() {
            return Err(MetricError::EmptyReference);
        }
        let a = stripped_lines(candidate);
        let no_junk = HashSet::default();
        let matcher = SequenceMatcher {
            a: &a,
            b,
            b2j: &self.b2j,
            bjunk: &no_junk,
        };
        let common = common_lines(&matcher);
        let changed = a.len() + b.len() - 2 * common;
        let score = 1.0 - changed as f64 / b.len() as f64;
        Ok(if score < 0.0 { 0.0 } else { score })
    }
}

fn stripped_lines(text: &str) -> Vec<&str> {
    pystr::splitlines(pystr::strip(text))
        .into_iter()
        .map(pystr::strip)
        .collect()
}

/// Number of lines `difflib.Differ().compare(a, b)` marks `'  '` (common to both sides).
pub fn differ_common_lines(a: &[&str], b: &[&str]) -> usize {
    let (b2j, bjunk) = build_b2j(b, None::<fn(&&str) -> bool>);
    common_lines(&SequenceMatcher {
        a,
        b,
        b2j: &b2j,
        bjunk: &bjunk,
    })
}

fn common_lines(matcher: &SequenceMatcher<'_, &str>) -> usize {
    let (a, b) = (matcher.a, matcher.b);
    let mut common = 0;
    for op in matcher.opcodes() {
        match op.tag {
            OpTag::Equal => common += op.a_hi - op.a_lo,
            OpTag::Replace => {
                common += fancy_replace_common(a, op.a_lo, op.a_hi, b, op.b_lo, op.b_hi)
            }
            OpTag::Delete | OpTag::Insert => {}
        }
    }
    common
}

/// Common lines `Differ._fancy_replace` (CPython ≤ 3.13) emits for `a[alo..ahi]` against `b[blo..bhi]`.
fn fancy_replace_common(
    a: &[&str],
    alo: usize,
    ahi: usize,
    b: &[&str],
    blo: usize,
    bhi: usize,
) -> usize {
    let mut best_ratio = 0.74;
    let cutoff = 0.75;
    let mut best = (0, 0);
    let mut first_equal: Option<(usize, usize)> = None;
    let a_chars: Vec<Vec<char>> = a[alo..ahi]
        .iter()
        .map(|line| line.chars().collect())
        .collect();
    #[allow(clippy::needless_range_loop)] // Indices are part of the result, as in difflib.
    for j in blo..bhi {
        let b_line: Vec<char> = b[j].chars().collect();
        // `Differ()` passes `charjunk=None`, so the character matcher has no junk (only autojunk).
        let cruncher = CharMatcher::new(&b_line);
        for i in alo..ahi {
            if a[i] == b[j] {
                if first_equal.is_none() {
                    first_equal = Some((i, j));
                }
                continue;
            }
            let a_line = &a_chars[i - alo];
            if cruncher.real_quick_ratio(a_line) > best_ratio
                && cruncher.quick_ratio(a_line) > best_ratio
            {
                let ratio = cruncher.ratio(a_line);
                if ratio > best_ratio {
                    best_ratio = ratio;
                    best = (i, j);
                }
            }
        }
    }
    let same = if best_ratio < cutoff {
        match first_equal {
            None => return 0,
            Some(pair) => {
                best = pair;
                1
            }
        }
    } else {
        0
    };
    let (best_i, best_j) = best;
    same + fancy_helper_common(a, alo, best_i, b, blo, best_j)
        + fancy_helper_common(a, best_i + 1, ahi, b, best_j + 1, bhi)
}

fn fancy_helper_common(
    a: &[&str],
    alo: usize,
    ahi: usize,
    b: &[&str],
    blo: usize,
    bhi: usize,
) -> usize {
    if alo < ahi && blo < bhi {
        fancy_replace_common(a, alo, ahi, b, blo, bhi)
    } else {
        0
    }
}

/// A character-level matcher with its `b` side prepared once, as `_fancy_replace` reuses its cruncher.
struct CharMatcher<'b> {
    b: &'b [char],
    b2j: HashMap<char, Vec<usize>>,
    full_b_count: HashMap<char, usize>,
}

impl<'b> CharMatcher<'b> {
    fn new(b: &'b [char]) -> Self {
        let b2j = build_b2j(b, None::<fn(&char) -> bool>).0;
        let mut full_b_count = HashMap::default();
        for &c in b {
            *full_b_count.entry(c).or_insert(0) += 1;
        }
        CharMatcher {
            b,
            b2j,
            full_b_count,
        }
    }

    fn real_quick_ratio(&self, a: &[char]) -> f64 {
        calculate_ratio(a.len().min(self.b.len()), a.len() + self.b.len())
    }

    fn quick_ratio(&self, a: &[char]) -> f64 {
        let mut avail: HashMap<char, isize> = HashMap::default();
        let mut matches = 0;
        for &c in a {
            let numb = *avail
                .entry(c)
                .or_insert_with(|| *self.full_b_count.get(&c).unwrap_or(&0) as isize);
            avail.insert(c, numb - 1);
            if numb > 0 {
                matches += 1;
            }
        }
        calculate_ratio(matches, a.len() + self.b.len())
    }

    fn ratio(&self, a: &[char]) -> f64 {
        let no_junk = HashSet::default();
        let matcher = SequenceMatcher {
            a,
            b: self.b,
            b2j: &self.b2j,
            bjunk: &no_junk,
        };
        let matches: usize = matcher.matching_blocks().iter().map(|block| block.2).sum();
        calculate_ratio(matches, a.len() + self.b.len())
    }
}

/// `difflib._calculate_ratio`.
fn calculate_ratio(matches: usize, length: usize) -> f64 {
    if length > 0 {
        2.0 * matches as f64 / length as f64
    } else {
        1.0
    }
}

/// `SequenceMatcher.__chain_b`: positions of each element of `b`, minus junk, minus popular elements when `b` has
/// 200 or more elements (autojunk). Returns the index and the junk set.
fn build_b2j<T: Eq + Hash + Clone>(
    b: &[T],
    is_junk: Option<impl Fn(&T) -> bool>,
) -> (HashMap<T, Vec<usize>>, HashSet<T>) {
    let mut b2j: HashMap<T, Vec<usize>> = HashMap::default();
    for (index, element) in b.iter().enumerate() {
        b2j.entry(element.clone()).or_default().push(index);
    }
    let mut junk = HashSet::default();
    if let Some(is_junk) = is_junk {
        for element in b2j.keys() {
            if is_junk(element) {
                junk.insert(element.clone());
            }
        }
        for element in &junk {
            b2j.remove(element);
        }
    }
    if b.len() >= 200 {
        let popular_threshold = b.len() / 100 + 1;
        b2j.retain(|_, positions| positions.len() <= popular_threshold);
    }
    (b2j, junk)
}

/// The kind of a `get_opcodes()` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpTag {
    Replace,
    Delete,
    Insert,
    Equal,
}

/// One `get_opcodes()` entry.
#[derive(Debug, Clone, Copy)]
struct Opcode {
    tag: OpTag,
    a_lo: usize,
    a_hi: usize,
    b_lo: usize,
    b_hi: usize,
}

/// A port of `difflib.SequenceMatcher` (autojunk on), generic over the element type.
struct SequenceMatcher<'s, T> {
    a: &'s [T],
    b: &'s [T],
    b2j: &'s HashMap<T, Vec<usize>>,
    bjunk: &'s HashSet<T>,
}

impl<'s, T: Eq + Hash + Clone> SequenceMatcher<'s, T> {
    fn is_b_junk(&self, element: &T) -> bool {
        !self.bjunk.is_empty() && self.bjunk.contains(element)
    }

    /// `find_longest_match(alo, ahi, blo, bhi)`: ties keep the smallest `i`, then the smallest `j`.
    fn find_longest_match(
        &self,
        alo: usize,
        ahi: usize,
        blo: usize,
        bhi: usize,
    ) -> (usize, usize, usize) {
        let (a, b) = (self.a, self.b);
        let (mut best_i, mut best_j, mut best_size) = (alo, blo, 0);
        let mut j2len: HashMap<usize, usize> = HashMap::default();
        let mut new_j2len: HashMap<usize, usize> = HashMap::default();
        #[allow(clippy::needless_range_loop)] // Mirrors difflib's index arithmetic.
        for i in alo..ahi {
            new_j2len.clear();
            if let Some(positions) = self.b2j.get(&a[i]) {
                for &j in positions {
                    if j < blo {
                        continue;
                    }
                    if j >= bhi {
                        break;
                    }
                    let k = if j > 0 {
                        j2len.get(&(j - 1)).copied().unwrap_or(0)
                    } else {
                        0
                    } + 1;
                    new_j2len.insert(j, k);
                    if k > best_size {
                        best_i = i + 1 - k;
                        best_j = j + 1 - k;
                        best_size = k;
                    }
                }
            }
            std::mem::swap(&mut j2len, &mut new_j2len);
        }
        while best_i > alo
            && best_j > blo
            && !self.is_b_junk(&b[best_j - 1])
            && a[best_i - 1] == b[best_j - 1]
        {
            best_i -= 1;
            best_j -= 1;
            best_size += 1;
        }
        while best_i + best_size < ahi
            && best_j + best_size < bhi
            && !self.is_b_junk(&b[best_j + best_size])
            && a[best_i + best_size] == b[best_j + best_size]
        {
            best_size += 1;
        }
        while best_i > alo
            && best_j > blo
            && self.is_b_junk(&b[best_j - 1])
            && a[best_i - 1] == b[best_j - 1]
        {
            best_i -= 1;
            best_j -= 1;
            best_size += 1;
        }
        while best_i + best_size < ahi
            && best_j + best_size < bhi
            && self.is_b_junk(&b[best_j + best_size])
            && a[best_i + best_size] == b[best_j + best_size]
        {
            best_size += 1;
        }
        (best_i, best_j, best_size)
    }

    /// `get_matching_blocks()`, adjacent blocks collapsed, with the final `(la, lb, 0)` sentinel.
    fn matching_blocks(&self) -> Vec<(usize, usize, usize)> {
        let (la, lb) = (self.a.len(), self.b.len());
        let mut queue = vec![(0, la, 0, lb)];
        let mut blocks = Vec::new();
        while let Some((alo, ahi, blo, bhi)) = queue.pop() {
            let (i, j, k) = self.find_longest_match(alo, ahi, blo, bhi);
            if k > 0 {
                blocks.push((i, j, k));
                if alo < i && blo < j {
                    queue.push((alo, i, blo, j));
                }
                if i + k < ahi && j + k < bhi {
                    queue.push((i + k, ahi, j + k, bhi));
                }
            }
        }
        blocks.sort_unstable();
        let mut collapsed = Vec::with_capacity(blocks.len() + 1);
        let (mut i1, mut j1, mut k1) = (0, 0, 0);
        for (i2, j2, k2) in blocks {
            if i1 + k1 == i2 && j1 + k1 == j2 {
                k1 += k2;
            } else {
                if k1 > 0 {
                    collapsed.push((i1, j1, k1));
                }
                (i1, j1, k1) = (i2, j2, k2);
            }
        }
        if k1 > 0 {
            collapsed.push((i1, j1, k1));
        }
        collapsed.push((la, lb, 0));
        collapsed
    }

    /// `get_opcodes()`.
    fn opcodes(&self) -> Vec<Opcode> {
        let (mut i, mut j) = (0, 0);
        let mut answer = Vec::new();
        for (ai, bj, size) in self.matching_blocks() {
            let tag = if i < ai && j < bj {
                Some(OpTag::Replace)
            } else if i < ai {
                Some(OpTag::Delete)
            } else if j < bj {
                Some(OpTag::Insert)
            } else {
                None
            };
            if let Some(tag) = tag {
                answer.push(Opcode {
                    tag,
                    a_lo: i,
                    a_hi: ai,
                    b_lo: j,
                    b_hi: bj,
                });
            }
            i = ai + size;
            j = bj + size;
            if size > 0 {
                answer.push(Opcode {
                    tag: OpTag::Equal,
                    a_lo: ai,
                    a_hi: i,
                    b_lo: bj,
                    b_hi: j,
                });
            }
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_scores_one() {
        assert_eq!(edit_distance("a: 1\n  b: 2\n", "a: 1\nb: 2"), Ok(1.0));
    }

    #[test]
    fn one_changed_line_of_seven() {
        // difflib: one '-' and one '+' line over 7 reference lines → 1 - 2/7.
        let reference = "a\nb\nc\nd\ne\nf\ng";
        let candidate = "a\nb\nc\nX\ne\nf\ng";
        assert_eq!(edit_distance(candidate, reference), Ok(1.0 - 2.0 / 7.0));
    }

    #[test]
    fn empty_reference_is_an_error() {
        assert_eq!(edit_distance("a", " \n "), Err(MetricError::EmptyReference));
    }

    #[test]
    fn score_floors_at_zero() {
        assert_eq!(edit_distance("x\ny\nz", "a"), Ok(0.0));
    }

    #[test]
    fn matching_blocks_match_python() {
        // Python: SequenceMatcher(None, "abxcd", "abcd").get_matching_blocks()
        //   == [Match(a=0, b=0, size=2), Match(a=3, b=2, size=2), Match(a=5, b=4, size=0)]
        let a: Vec<char> = "abxcd".chars().collect();
        let b: Vec<char> = "abcd".chars().collect();
        let (b2j, bjunk) = build_b2j(&b, None::<fn(&char) -> bool>);
        let matcher = SequenceMatcher {
            a: &a,
            b: &b,
            b2j: &b2j,
            bjunk: &bjunk,
        };
        assert_eq!(matcher.matching_blocks(), [(0, 0, 2), (3, 2, 2), (5, 4, 0)]);
    }
}
