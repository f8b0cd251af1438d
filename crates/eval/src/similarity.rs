//! Lexical similarity between questions, for the `nearest` baseline.
//!
//! TF-IDF cosine similarity over lowercase word unigrams and bigrams, the textbook retrieval baseline:
//! - a *word* is a maximal run of alphanumeric characters, lowercased; each CJK ideograph is a word on its own
//!   (Chinese has no spaces, so a whole translated sentence would otherwise be one "word");
//! - terms are the words plus each pair of adjacent words (`"readiness probe"`);
//! - term frequency is the raw count; inverse document frequency is scikit-learn's smoothed
//!   `ln((1 + N) / (1 + df)) + 1` over the indexed documents; vectors are L2-normalised;
//! - query terms that no indexed document contains carry no weight (they cannot make two questions similar).
//!
//! Ties go to the document indexed first, so the result is deterministic for a fixed document order.

use std::collections::HashMap;

/// A TF-IDF index over a fixed list of documents (the training questions).
#[derive(Debug, Clone)]
pub struct TfIdfIndex {
    /// Term → (column id, inverse document frequency).
    vocabulary: HashMap<String, (usize, f64)>,
    /// One L2-normalised sparse vector per document, sorted by column id.
    documents: Vec<Vec<(usize, f64)>>,
}

impl TfIdfIndex {
    /// Indexes `documents` in order; `nearest` answers with positions in this list.
    pub fn build<S: AsRef<str>>(documents: &[S]) -> Self {
        let term_lists: Vec<Vec<String>> = documents.iter().map(|d| terms(d.as_ref())).collect();
        let mut document_frequency: HashMap<&str, usize> = HashMap::new();
        for list in &term_lists {
            let mut seen: Vec<&str> = list.iter().map(String::as_str).collect();
            seen.sort_unstable();
            seen.dedup();
            for term in seen {
                *document_frequency.entry(term).or_default() += 1;
            }
        }
        let n = documents.len() as f64;
        // Column ids in sorted term order, so the index never depends on hash iteration order.
        let mut sorted_terms: Vec<(&str, usize)> = document_frequency.into_iter().collect();
        sorted_terms.sort_unstable();
        let vocabulary: HashMap<String, (usize, f64)> = sorted_terms
            .into_iter()
            .enumerate()
            .map(|(column, (term, df))| {
                let idf = ((1.0 + n) / (1.0 + df as f64)).ln() + 1.0;
                (term.to_owned(), (column, idf))
            })
            .collect();
        let documents = term_lists
            .iter()
            .map(|list| vectorise(list, &vocabulary))
            .collect();
        Self {
            vocabulary,
            documents,
        }
    }

    /// Number of indexed documents.
    pub fn len(&self) -> usize {
        self.documents.len()
    }

    /// Whether the index holds no document.
    pub fn is_empty(&self) -> bool {
        self.documents.is_empty()
    }

    /// Cosine similarity between `query` and every indexed document, in index order.
    pub fn similarities(&self, query: &str) -> Vec<f64> {
        let query = vectorise(&terms(query), &self.vocabulary);
        self.documents
            .iter()
            .map(|document| sparse_dot(&query, document))
            .collect()
    }

    /// The most similar document and its cosine similarity; `None` only for an empty index.
    ///
    /// A query sharing no term with any document scores 0 against all of them and gets document 0.
    pub fn nearest(&self, query: &str) -> Option<(usize, f64)> {
        let mut best: Option<(usize, f64)> = None;
        for (index, similarity) in self.similarities(query).into_iter().enumerate() {
            // Strictly greater: the first of equally similar documents wins.
            if best.is_none_or(|(_, best_similarity)| similarity > best_similarity) {
                best = Some((index, similarity));
            }
        }
        best
    }
}

/// Lowercase words of `text`: alphanumeric runs, with every CJK ideograph a word on its own.
pub fn words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    for ch in text.chars() {
        if is_cjk_ideograph(ch) {
            if !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
            words.push(ch.to_string());
        } else if ch.is_alphanumeric() {
            current.extend(ch.to_lowercase());
        } else if !current.is_empty() {
            words.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// The terms of `text`: its words, then each pair of adjacent words joined by a space.
pub fn terms(text: &str) -> Vec<String> {
    let words = words(text);
    let bigrams: Vec<String> = words
        .windows(2)
        .map(|pair| format!("{} {}", pair[0], pair[1]))
        .collect();
    let mut terms = words;
    terms.extend(bigrams);
    terms
}

fn is_cjk_ideograph(ch: char) -> bool {
    matches!(ch,
        '\u{3400}'..='\u{4DBF}' | '\u{4E00}'..='\u{9FFF}' | '\u{F900}'..='\u{FAFF}' | '\u{20000}'..='\u{2FA1F}')
}

/// Raw-count TF × IDF over known terms, L2-normalised, sorted by column.
fn vectorise(terms: &[String], vocabulary: &HashMap<String, (usize, f64)>) -> Vec<(usize, f64)> {
    let mut counts: HashMap<usize, (f64, f64)> = HashMap::new();
    for term in terms {
        if let Some(&(column, idf)) = vocabulary.get(term) {
            counts.entry(column).or_insert((0.0, idf)).0 += 1.0;
        }
    }
    let mut vector: Vec<(usize, f64)> = counts
        .into_iter()
        .map(|(column, (tf, idf))| (column, tf * idf))
        .collect();
    vector.sort_unstable_by_key(|&(column, _)| column);
    let norm = vector.iter().map(|(_, w)| w * w).sum::<f64>().sqrt();
    if norm > 0.0 {
        for (_, weight) in &mut vector {
            *weight /= norm;
        }
    }
    vector
}

fn sparse_dot(a: &[(usize, f64)], b: &[(usize, f64)]) -> f64 {
    let (mut i, mut j, mut sum) = (0, 0, 0.0);
    while i < a.len() && j < b.len() {
        match a[i].0.cmp(&b[j].0) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                sum += a[i].1 * b[j].1;
                i += 1;
                j += 1;
            }
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_lowercase_split_on_punctuation_and_cjk() {
        assert_eq!(
            words("Create a Pod named web-1!"),
            ["create", "a", "pod", "named", "web", "1"]
        );
        assert_eq!(words("创建Pod"), ["创", "建", "pod"]);
        assert!(words("  --- ").is_empty());
    }

    #[test]
    fn terms_are_unigrams_then_bigrams() {
        assert_eq!(
            terms("Expose the deployment"),
            [
                "expose",
                "the",
                "deployment",
                "expose the",
                "the deployment"
            ]
        );
    }

    #[test]
    fn idf_and_cosine_match_a_hand_computation() {
        // Documents "a b" and "a c"; query "a b".
        // df: a=2, b=1, c=1, "a b"=1, "a c"=1; N=2 → idf(a)=ln(3/3)+1=1, idf(others)=ln(3/2)+1.
        let index = TfIdfIndex::build(&["a b", "a c"]);
        let rare = (1.5f64).ln() + 1.0;
        // Query equals document 0 → cosine 1. Against document 1 only "a" is shared:
        // (1·1) / (sqrt(1 + 2·rare²) · sqrt(1 + 2·rare²)).
        let similarities = index.similarities("a b");
        assert!((similarities[0] - 1.0).abs() < 1e-12);
        let expected = 1.0 / (1.0 + 2.0 * rare * rare);
        assert!(
            (similarities[1] - expected).abs() < 1e-12,
            "{similarities:?} vs {expected}"
        );
    }

    #[test]
    fn nearest_prefers_shared_rare_terms_and_breaks_ties_by_order() {
        let index = TfIdfIndex::build(&[
            "Create a deployment running nginx with three replicas",
            "Create a cronjob that prints the date every minute",
            "Create a cronjob that prints the date every minute",
        ]);
        assert_eq!(
            index
                .nearest("a cronjob printing hello every minute")
                .map(|(i, _)| i),
            Some(1)
        );
        assert_eq!(
            index
                .nearest("nginx deployment, 3 replicas")
                .map(|(i, _)| i),
            Some(0)
        );
        // No shared term: similarity 0 everywhere, first document.
        assert_eq!(index.nearest("zzz"), Some((0, 0.0)));
        assert_eq!(TfIdfIndex::build::<&str>(&[]).nearest("anything"), None);
    }
}
