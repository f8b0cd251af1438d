//! Robustness properties (proptest) and the stable stand-in for the `cargo fuzz` target.
//!
//! `fuzz_*` tests run every entry point on arbitrary text; a long run is
//! `PROPTEST_CASES=200000 cargo test -p metrics --release --test tests fuzz_`.

use metrics::{Metric, edit_distance, extract, kv_match, kv_wildcard, yaml};
use proptest::prelude::*;

/// Text biased towards YAML syntax, so the loader's deeper paths are reached.
fn yamlish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just(": ".to_string()),
        Just("\n".to_string()),
        Just("\n  ".to_string()),
        Just("- ".to_string()),
        Just("# *".to_string()),
        Just("---\n".to_string()),
        Just("```".to_string()),
        Just("apiVersion:".to_string()),
        Just("Here is\n".to_string()),
        Just("|\n".to_string()),
        Just(">-\n".to_string()),
        Just("&a ".to_string()),
        Just("*a".to_string()),
        Just("<<: ".to_string()),
        Just("!!str ".to_string()),
        Just("? ".to_string()),
        Just("\t".to_string()),
        Just("\r\n".to_string()),
        Just("\u{85}".to_string()),
        Just("\u{2028}".to_string()),
        Just("\u{feff}".to_string()),
        prop::sample::select(vec![
            "[", "]", "{", "}", ",", "\"", "'", "%", "@", "`", "=", "~", "\\"
        ])
        .prop_map(str::to_string),
        "[a-z0-9._:-]{1,6}",
        "[ -~]{0,4}",
        any::<char>().prop_map(|c| c.to_string()),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
}

/// A valid YAML mapping (block style) with string keys and assorted scalar values.
fn mapping_yaml() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        "[a-z][a-z0-9-]{0,8}",
        any::<u16>().prop_map(|n| n.to_string()),
        Just("yes".to_string()),
        Just("1.5".to_string()),
        Just("\"quoted: text\"".to_string()),
        Just("[a, 1, true]".to_string()),
        Just("2024-01-31".to_string()),
    ];
    let entry = ("[a-z][a-zA-Z]{0,8}", value, any::<bool>());
    prop::collection::vec(entry, 1..12).prop_map(|entries| {
        let mut text = String::new();
        for (index, (key, value, nested)) in entries.into_iter().enumerate() {
            if nested {
                text.push_str(&format!(
                    "k{index}{key}:\n  inner: {value}\n  list:\n  - name: {value}\n"
                ));
            } else {
                text.push_str(&format!("k{index}{key}: {value}\n"));
            }
        }
        text
    })
}

fn check_everything(candidate: &str, reference: &str) {
    let _ = extract::extract(candidate);
    let _ = yaml::load_all(candidate);
    let _ = metrics::yaml_parses(candidate);
    for metric in Metric::ALL {
        if let Ok(score) = metric.score(candidate, reference) {
            assert!(
                score.is_finite() && score >= 0.0,
                "{} = {score}",
                metric.name()
            );
            if metric != Metric::KvWildcardMatch {
                assert!(score <= 1.0, "{} = {score}", metric.name());
            }
        }
    }
    let _ = metrics::score_all(candidate, reference);
}

proptest! {
    #[test]
    fn fuzz_no_panic_and_scores_in_range(candidate in yamlish(), reference in yamlish()) {
        check_everything(&candidate, &reference);
    }

    #[test]
    fn fuzz_arbitrary_unicode(candidate in any::<String>(), reference in any::<String>()) {
        check_everything(&candidate, &reference);
    }

    #[test]
    fn self_comparison_of_a_mapping_scores_one(x in mapping_yaml()) {
        prop_assert!(yaml::load_all(&x).is_ok(), "generated YAML must load: {x:?}");
        prop_assert_eq!(edit_distance::edit_distance(&x, &x), Ok(1.0));
        prop_assert_eq!(kv_match::kv_match(&x, &x), 1.0);
        prop_assert_eq!(kv_wildcard::kv_wildcard(&x, &x), 1.0);
    }

    #[test]
    fn bleu_and_edit_distance_stay_in_unit_range(candidate in mapping_yaml(), reference in mapping_yaml()) {
        let bleu = metrics::bleu::bleu(&candidate, &reference);
        prop_assert!((0.0..=1.0).contains(&bleu), "bleu {bleu}");
        let edit = edit_distance::edit_distance(&candidate, &reference).expect("non-empty reference");
        prop_assert!((0.0..=1.0).contains(&edit), "edit distance {edit}");
    }
}
