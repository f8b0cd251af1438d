//! Typed record builders and a results-tree writer for the tests.

use std::collections::BTreeMap;
use std::path::Path;

use task::{Extras, Levers, Method, ScoreReport, Scores, TrainEpochRecord, TrainSummary};

pub const MEMORY_DEFINITION: &str = "process peak RSS (VmHWM)";

/// One epoch of a training run with distinctive, checkable numbers.
pub fn epoch(run: &str, model: &str, method: Method, epoch: u32, seconds: f64) -> TrainEpochRecord {
    TrainEpochRecord {
        run: run.to_string(),
        model: model.to_string(),
        family: "llama".to_string(),
        method,
        epoch,
        steps: u64::from(epoch) * 10,
        wall_seconds: seconds,
        target_tokens: 1000,
        non_padding_tokens: 4000,
        tokens_per_second: 4000.0 / seconds,
        train_loss: 2.0 / f64::from(epoch),
        val_loss: Some(2.5 / f64::from(epoch)),
        peak_memory_bytes: match method {
            Method::Lora => 3 << 29, // 1.5 GiB
            Method::Full => 5 << 30, // 5 GiB
        },
        memory_definition: MEMORY_DEFINITION.to_string(),
        device: "cpu".to_string(),
        precision: "f32".to_string(),
        optimizer: "AdamW".to_string(),
        levers: Levers {
            bf16_weights: false,
            optimizer_in_backward: false,
            moments: "f32".to_string(),
            moments_on_host: false,
            recompute: false,
        },
        trainable_params: 1234,
        total_params: 567_890,
        rows_shortened: 0,
        rows_skipped: 0,
        seed: 7,
    }
}

/// Writes `results/<run>/train_log.jsonl` (and `train_summary.json` when `finished`) for epochs of `seconds`.
pub fn write_train_run(
    results: &Path,
    run: &str,
    model: &str,
    method: Method,
    seconds: &[f64],
    finished: bool,
) {
    let epochs: Vec<TrainEpochRecord> = seconds
        .iter()
        .enumerate()
        .map(|(i, s)| epoch(run, model, method, i as u32 + 1, *s))
        .collect();
    let dir = results.join(run);
    task::write_jsonl(&dir.join("train_log.jsonl"), &epochs).expect("write train log");
    if finished {
        let summary = TrainSummary::from_epochs(epochs).expect("non-empty epochs");
        task::write_json(&dir.join("train_summary.json"), &summary).expect("write summary");
    }
}

pub fn scores(bleu: f64, edit: f64, wildcard: f64, n: usize) -> Scores {
    Scores {
        n,
        bleu,
        edit_distance: edit,
        exact_match: bleu / 4.0,
        kv_exact_match: wildcard / 2.0,
        kv_wildcard_match: wildcard,
    }
}

/// Writes `results/<run>/scores.json`.
pub fn write_scores(results: &Path, run: &str, label: &str, system: &str, overall: Scores) {
    let report = ScoreReport {
        run: run.to_string(),
        label: label.to_string(),
        system: system.to_string(),
        signature: "bleu:nltk-method3|edit:difflib".to_string(),
        split: "sample/problem".to_string(),
        n: overall.n,
        overall,
        per_variant: BTreeMap::from([("original".to_string(), overall)]),
        per_category: BTreeMap::new(),
        per_problem: BTreeMap::new(),
        extras: Extras {
            yaml_parse_rate: 0.875,
            schema_valid_rate: 0.625,
            schema_unknown_kind_rate: 0.0625,
            stripped_reference: scores(0.1111, 0.2222, 0.3333, overall.n),
        },
        generation_tokens_per_second: Some(42.5),
    };
    task::write_json(&results.join(run).join("scores.json"), &report).expect("write scores");
}

/// Two models × {LoRA, full} training runs with scores, vanilla scores for both, and the three baselines.
pub fn full_matrix(results: &Path) {
    for (model, label) in [("org/Alpha-1B", "Alpha-1B"), ("org/Beta-2B", "Beta-2B")] {
        let slug = label.to_lowercase();
        write_train_run(
            results,
            &format!("{slug}-lora"),
            model,
            Method::Lora,
            &[10.0, 12.0, 14.0],
            true,
        );
        write_train_run(
            results,
            &format!("{slug}-full"),
            model,
            Method::Full,
            &[20.0, 30.0],
            true,
        );
        write_scores(
            results,
            &format!("{slug}-vanilla"),
            label,
            "vanilla",
            scores(0.2100, 0.3100, 0.4100, 24),
        );
        write_scores(
            results,
            &format!("{slug}-lora"),
            label,
            "lora",
            scores(0.5200, 0.6200, 0.7200, 24),
        );
        write_scores(
            results,
            &format!("{slug}-full"),
            label,
            "full",
            scores(0.5300, 0.6300, 0.7300, 24),
        );
    }
    write_scores(
        results,
        "baseline-echo-test",
        "echo",
        "baseline-echo",
        scores(0.0500, 0.1500, 0.0900, 24),
    );
    write_scores(
        results,
        "baseline-nearest-test",
        "nearest",
        "baseline-nearest",
        scores(0.3500, 0.4500, 0.3900, 24),
    );
    write_scores(
        results,
        "baseline-echo-or-nearest-test",
        "echo-or-nearest",
        "baseline-echo-or-nearest",
        scores(0.3600, 0.4600, 0.4000, 24),
    );
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}
