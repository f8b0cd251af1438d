//! The model path end to end on the tiny-llama fixture (random weights, so the scores are near zero; what is
//! tested is the pipeline: which weights are loaded, resume, rescoring, shards, batching).

use std::path::Path;

use crate::support::{
    arg, lora_and_full_runs, no_schemas, read_predictions, read_report, run, scored,
    tiny_model_dir, tiny_plan, write_config,
};

/// Rows evaluated by these tests (the first rows of the sample split), to keep them quick.
const LIMIT: &str = "10";

fn outputs(path: &Path) -> Vec<(String, String, u32, bool)> {
    read_predictions(path)
        .into_iter()
        .map(|p| (p.row_id, p.raw_output, p.generated_tokens, p.stopped))
        .collect()
}

#[test]
fn lora_full_and_vanilla_runs_end_to_end() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (lora_dir, full_dir) = lora_and_full_runs(tmp.path());
    let results = tmp.path().join("results");
    let schemas = no_schemas(tmp.path());
    let common = [
        "--results-dir",
        &arg(&results),
        "--limit",
        LIMIT,
        "--schemas",
        &schemas,
    ];

    let (lora_results, lora, predicted) = scored(
        run(&[&["--model", &arg(&lora_dir)], &common[..]].concat()).expect("LoRA run evaluates"),
    );
    assert_eq!(lora_results, results.join("tiny-lora"));
    assert_eq!(
        (lora.system.as_str(), lora.label.as_str(), lora.n, predicted),
        ("lora", "tiny-llama", 10, 10)
    );
    let rate = lora
        .generation_tokens_per_second
        .expect("a model run records its generation speed");
    assert!(rate.is_finite() && rate > 0.0);
    let predictions = read_predictions(&lora_results.join("predictions.jsonl"));
    for p in &predictions {
        assert!(
            p.prompt.contains("Question:\n"),
            "prompt rendered by the paper-role template: {}",
            p.prompt
        );
        assert!(p.prompt_tokens > 0 && p.generated_tokens <= 16 && p.seconds > 0.0);
        assert!(p.stopped || p.generated_tokens == 16, "{p:?}");
        assert_eq!(p.extracted, metrics::extract::extract(&p.raw_output));
    }

    // The full run holds the same adapter merged into its weights: identical outputs.
    let (full_results, full, _) = scored(
        run(&[&["--model", &arg(&full_dir)], &common[..]].concat()).expect("full run evaluates"),
    );
    assert_eq!(
        (full.system.as_str(), full.run.as_str()),
        ("full", "tiny-full")
    );
    assert_eq!(
        outputs(&full_results.join("predictions.jsonl")),
        outputs(&lora_results.join("predictions.jsonl"))
    );

    // The vanilla base model differs: the adapter was really applied.
    let base = arg(&tiny_model_dir());
    let (vanilla_results, vanilla, _) = scored(
        run(&[&["--base", &base, "--model", &arg(&lora_dir)], &common[..]].concat())
            .expect("vanilla evaluates"),
    );
    assert_eq!(
        (vanilla.system.as_str(), vanilla.run.as_str()),
        ("vanilla", "tiny-lora-vanilla")
    );
    assert_ne!(
        outputs(&vanilla_results.join("predictions.jsonl")),
        outputs(&lora_results.join("predictions.jsonl"))
    );
}

#[test]
fn a_killed_run_resumes_with_only_the_missing_rows_and_rescoring_matches() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let config = write_config(tmp.path(), &tiny_plan(tmp.path()));
    let results = tmp.path().join("results");
    let schemas = no_schemas(tmp.path());
    let args = [
        "--base",
        &arg(&tiny_model_dir()),
        "--config",
        &arg(&config),
        "--results-dir",
        &arg(&results),
        "--limit",
        LIMIT,
        "--schemas",
        &schemas,
    ];
    let (dir, report, _) = scored(run(&args).expect("first run"));
    let path = dir.join("predictions.jsonl");
    let complete = std::fs::read_to_string(&path).expect("predictions written");
    let expected = outputs(&path);

    // Simulate a kill after 4 rows, in the middle of writing the 5th: 4 lines and half of the next.
    let lines: Vec<&str> = complete.split_inclusive('\n').collect();
    let torn = format!("{}{}", lines[..4].concat(), &lines[4][..lines[4].len() / 2]);
    std::fs::write(&path, torn).expect("truncated");
    let (_, resumed, predicted_now) = scored(run(&args).expect("resumed run"));
    assert_eq!(
        predicted_now, 6,
        "only the rows after the 4 finished ones are generated"
    );
    assert_eq!(outputs(&path), expected);
    let ignore_speed = |mut report: task::ScoreReport| {
        report.generation_tokens_per_second = None;
        report
    };
    assert_eq!(ignore_speed(resumed.clone()), ignore_speed(report));

    // A finished run reruns as a no-op.
    let (_, again, predicted_now) = scored(run(&args).expect("rerun"));
    assert_eq!((predicted_now, &again), (0, &resumed));

    // Rescoring from the file gives the same report, speed included (it is computed from the file).
    let (_, rescored, _) = scored(
        run(&["score", "--predictions", &arg(&path), "--schemas", &schemas]).expect("rescoring"),
    );
    assert_eq!(rescored, resumed);
    assert_eq!(read_report(&dir), resumed);
}

#[test]
fn sharded_generation_merges_to_the_unsharded_result_and_batching_does_not_change_outputs() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let config = write_config(tmp.path(), &tiny_plan(tmp.path()));
    let schemas = no_schemas(tmp.path());
    let base = arg(&tiny_model_dir());
    let common = [
        "--base",
        &base,
        "--config",
        &arg(&config),
        "--limit",
        LIMIT,
        "--schemas",
        &schemas,
    ];
    let one_at_a_time = tmp.path().join("single");
    let (single_dir, single, _) = scored(
        run(&[
            &common[..],
            &["--results-dir", &arg(&one_at_a_time), "--batch-size", "1"],
        ]
        .concat())
        .expect("batch size 1"),
    );

    let sharded = tmp.path().join("sharded");
    for shard in ["0/2", "1/2"] {
        run(&[
            &common[..],
            &[
                "--results-dir",
                &arg(&sharded),
                "--batch-size",
                "4",
                "--shard",
                shard,
            ],
        ]
        .concat())
        .expect("shard runs");
    }
    let (merged_dir, merged, _) = scored(
        run(&[
            "merge",
            "--run",
            &arg(&sharded.join("tiny-vanilla")),
            "--schemas",
            &schemas,
        ])
        .expect("merge"),
    );
    assert_eq!(
        outputs(&merged_dir.join("predictions.jsonl")),
        outputs(&single_dir.join("predictions.jsonl"))
    );
    let ignore_speed = |mut report: task::ScoreReport| {
        report.generation_tokens_per_second = None;
        report
    };
    assert_eq!(ignore_speed(merged), ignore_speed(single));
}
