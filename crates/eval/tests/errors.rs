//! Bad input through the binary: a clear message naming the path (or value), exit status 2, no panic.

use std::path::Path;
use std::process::Output;

use crate::support::{arg, binary, no_schemas, tiny_plan, write_config};

fn assert_fails(output: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "stderr lacks `{needle}`: {stderr}");
    }
}

/// Runs the `nearest` baseline into `tmp/results` and returns its predictions file.
fn baseline_predictions(tmp: &Path) -> std::path::PathBuf {
    let config = write_config(tmp, &tiny_plan(tmp));
    let args = [
        "--baseline",
        "nearest",
        "--config",
        &arg(&config),
        "--results-dir",
        &arg(&tmp.join("results")),
    ];
    let output = binary(&[&args[..], &["--schemas", &no_schemas(tmp)]].concat(), tmp);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    tmp.join("results/baseline-nearest-sample/predictions.jsonl")
}

#[test]
fn missing_run_directory() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let missing = tmp.path().join("out/no-such-run");
    assert_fails(
        &binary(&["--model", &arg(&missing)], tmp.path()),
        &[&arg(&missing), "does not exist"],
    );
}

#[test]
fn run_directory_without_run_toml() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("out/half-written");
    std::fs::create_dir_all(&dir).expect("dir created");
    assert_fails(
        &binary(&["--model", &arg(&dir)], tmp.path()),
        &[&arg(&dir.join("run.toml")), "not found"],
    );
}

#[test]
fn run_directory_without_weights() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("out/tiny");
    std::fs::create_dir_all(&dir).expect("dir created");
    tiny_plan(tmp.path())
        .save(&dir.join("run.toml"))
        .expect("run.toml written");
    let output = binary(
        &[
            "--model",
            &arg(&dir),
            "--results-dir",
            &arg(&tmp.path().join("results")),
        ],
        tmp.path(),
    );
    assert_fails(&output, &[&arg(&dir), "adapter_config.json"]);
}

#[test]
fn unknown_model_sources() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let config = write_config(tmp.path(), &tiny_plan(tmp.path()));
    let results = arg(&tmp.path().join("results"));
    let missing = tmp.path().join("models/nothing-here");
    let output = binary(
        &[
            "--base",
            &arg(&missing),
            "--config",
            &arg(&config),
            "--results-dir",
            &results,
        ],
        tmp.path(),
    );
    assert_fails(&output, &[&arg(&missing)]);

    let missing_gguf = tmp.path().join("nothing.gguf");
    let output = binary(
        &[
            "--base",
            &arg(&missing_gguf),
            "--config",
            &arg(&config),
            "--results-dir",
            &results,
        ],
        tmp.path(),
    );
    assert_fails(&output, &[&arg(&missing_gguf)]);

    // A repository id is looked up in the offline hub cache only; an empty cache names the repository.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_eval"))
        .args([
            "--base",
            "example-org/no-such-model",
            "--config",
            &arg(&config),
            "--results-dir",
            &results,
        ])
        .env("HF_HUB_CACHE", tmp.path().join("hub"))
        .current_dir(tmp.path())
        .output()
        .expect("the eval binary runs");
    assert_fails(&output, &["example-org/no-such-model"]);
}

#[test]
fn corrupt_and_torn_prediction_files() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let path = baseline_predictions(tmp.path());
    let text = std::fs::read_to_string(&path).expect("predictions written");
    let mut lines: Vec<&str> = text.lines().collect();
    lines[2] = "{\"row_id\": \"Kubernetes_pod_q1#original\", truncated";
    std::fs::write(&path, lines.join("\n") + "\n").expect("corrupted");
    let schemas = no_schemas(tmp.path());
    let output = binary(
        &["score", "--predictions", &arg(&path), "--schemas", &schemas],
        tmp.path(),
    );
    assert_fails(&output, &[&arg(&path), "line 3"]);

    // Resuming does not paper over a corrupt line either.
    let config = arg(&tmp.path().join("tiny.toml"));
    let results = arg(&tmp.path().join("results"));
    let output = binary(
        &[
            "--baseline",
            "nearest",
            "--config",
            &config,
            "--results-dir",
            &results,
        ],
        tmp.path(),
    );
    assert_fails(&output, &[&arg(&path), "line 3"]);

    // A torn last line is fine for resuming but means "unfinished" to the scorer.
    std::fs::write(
        &path,
        format!(
            "{}\n{{\"row_id\": \"Kub",
            text.lines().next().expect("a line")
        ),
    )
    .expect("torn");
    let output = binary(
        &["score", "--predictions", &arg(&path), "--schemas", &schemas],
        tmp.path(),
    );
    assert_fails(&output, &[&arg(&path), "line 2 is incomplete"]);

    let missing = tmp.path().join("results/none/predictions.jsonl");
    assert_fails(
        &binary(&["score", "--predictions", &arg(&missing)], tmp.path()),
        &[&arg(&missing)],
    );
}

#[test]
fn merge_needs_every_shard_and_eval_json() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let config = write_config(tmp.path(), &tiny_plan(tmp.path()));
    let results = tmp.path().join("results");
    let args = [
        "--baseline",
        "echo",
        "--config",
        &arg(&config),
        "--results-dir",
        &arg(&results),
        "--shard",
        "1/3",
    ];
    assert!(binary(&args, tmp.path()).status.success());
    let dir = results.join("baseline-echo-sample");
    assert_fails(
        &binary(&["merge", "--run", &arg(&dir)], tmp.path()),
        &[
            &arg(&dir),
            "predictions.shard-0-of-3.jsonl",
            "predictions.shard-2-of-3.jsonl",
        ],
    );
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).expect("dir created");
    assert_fails(
        &binary(&["merge", "--run", &arg(&empty)], tmp.path()),
        &[&arg(&empty.join("eval.json"))],
    );
}

#[test]
fn a_different_evaluation_may_not_resume_into_the_same_directory() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let config = write_config(tmp.path(), &tiny_plan(tmp.path()));
    let results = arg(&tmp.path().join("results"));
    let base = arg(&crate::support::tiny_model_dir());
    let args = [
        "--base",
        &base,
        "--config",
        &arg(&config),
        "--results-dir",
        &results,
        "--limit",
        "2",
    ];
    assert!(binary(&args, tmp.path()).status.success());
    let output = binary(
        &[&args[..], &["--max-new-tokens", "3"]].concat(),
        tmp.path(),
    );
    assert_fails(&output, &["eval.json", "different evaluation"]);
}

#[test]
fn usage_errors() {
    let tmp = tempfile::tempdir().expect("temp dir");
    assert_fails(&binary(&[], tmp.path()), &["nothing to evaluate"]);
    let config = write_config(tmp.path(), &tiny_plan(tmp.path()));
    assert_fails(
        &binary(&["--config", &arg(&config)], tmp.path()),
        &["--base", "--baseline"],
    );
    let broken = tmp.path().join("broken.toml");
    std::fs::write(&broken, "[model]\nsource = 1\n").expect("written");
    assert_fails(
        &binary(
            &["--baseline", "echo", "--config", &arg(&broken)],
            tmp.path(),
        ),
        &[&arg(&broken)],
    );
    // clap's own errors (bad --shard) exit 2 as well.
    let output = binary(
        &[
            "--baseline",
            "echo",
            "--config",
            &arg(&config),
            "--shard",
            "3/3",
        ],
        tmp.path(),
    );
    assert_fails(&output, &["3/3"]);
}
