//! Criterion benches of every metric over the committed golden pairs (`crates/metrics/tests/golden/pairs.jsonl`).
//!
//! `cargo bench -p benches --bench metrics`

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use metrics::Metric;

fn golden_pairs() -> Vec<(String, String)> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/metrics/tests/golden/pairs.jsonl");
    let text = std::fs::read_to_string(&path).expect("golden pairs are committed");
    text.lines()
        .skip(1)
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).expect("JSON line");
            let field = |name: &str| record[name].as_str().expect("string field").to_string();
            (
                metrics::extract::extract(&field("candidate")),
                field("reference"),
            )
        })
        .collect()
}

fn bench_metrics(c: &mut Criterion) {
    let pairs = golden_pairs();
    let mut group = c.benchmark_group("metrics_over_goldens");
    group.sample_size(10);
    for metric in Metric::ALL {
        group.bench_function(metric.name(), |b| {
            b.iter(|| {
                for (candidate, reference) in &pairs {
                    let _ = black_box(metric.score(black_box(candidate), black_box(reference)));
                }
            })
        });
    }
    group.bench_function("extract", |b| {
        b.iter(|| {
            for (candidate, _) in &pairs {
                black_box(metrics::extract::extract(black_box(candidate)));
            }
        })
    });
    group.bench_function("yaml_load_all", |b| {
        b.iter(|| {
            for (candidate, _) in &pairs {
                let _ = black_box(metrics::yaml::load_all(black_box(candidate)));
            }
        })
    });
    group.bench_function("score_all", |b| {
        b.iter(|| {
            for (candidate, reference) in &pairs {
                let _ = black_box(metrics::score_all(
                    black_box(candidate),
                    black_box(reference),
                ));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench_metrics);
criterion_main!(benches);
