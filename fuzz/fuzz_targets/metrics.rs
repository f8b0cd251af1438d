//! Fuzz target: the extractor, the YAML loader and every metric on arbitrary (candidate, reference) text.
//! Input bytes are split at the first NUL into candidate and reference; invalid UTF-8 is replaced.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (candidate, reference) = text
        .split_once('\0')
        .unwrap_or((&text, "apiVersion: v1\nkind: Pod\n"));
    let _ = metrics::extract::extract(candidate);
    let _ = metrics::yaml::load_all(candidate);
    for metric in metrics::Metric::ALL {
        if let Ok(score) = metric.score(candidate, reference) {
            assert!(
                score.is_finite() && score >= 0.0,
                "{} = {score}",
                metric.name()
            );
        }
    }
    let _ = metrics::score_all(candidate, reference);
});
