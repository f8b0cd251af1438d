//! The model-free path end to end on data/sample: what scores.json holds, schema validity, rescoring, shards.

use crate::support::{
    arg, no_schemas, read_predictions, read_report, run, scored, tiny_plan, write_config,
};

#[test]
fn scores_json_has_every_field_and_csv_has_one_row_per_prediction() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let config = write_config(tmp.path(), &tiny_plan(tmp.path()));
    let results = tmp.path().join("results");
    let (dir, report, predicted_now) = scored(
        run(&[
            "--baseline",
            "echo-or-nearest",
            "--config",
            &arg(&config),
            "--results-dir",
            &arg(&results),
            "--schemas",
            &no_schemas(tmp.path()),
        ])
        .expect("baseline runs"),
    );
    assert_eq!(dir, results.join("baseline-echo-or-nearest-sample"));
    assert_eq!(report.system, "baseline-echo-or-nearest");
    assert_eq!(report.split, "sample/problem");
    assert!(report.n > 0);
    assert_eq!(predicted_now, report.n);
    assert_eq!(
        read_predictions(&dir.join("predictions.jsonl")).len(),
        report.n
    );
    let csv = std::fs::read_to_string(dir.join("scores.csv")).expect("scores.csv written");
    assert_eq!(csv.lines().count(), report.n + 1);
    assert!(dir.join("eval.json").is_file());

    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("scores.json")).expect("scores.json written"),
    )
    .expect("scores.json is JSON");
    for key in [
        "run",
        "label",
        "system",
        "signature",
        "split",
        "n",
        "overall",
        "per_variant",
        "per_category",
        "per_problem",
        "extras",
        "generation_tokens_per_second",
    ] {
        assert!(json.get(key).is_some(), "scores.json lacks {key}");
    }
    for key in [
        "yaml_parse_rate",
        "schema_valid_rate",
        "schema_unknown_kind_rate",
        "stripped_reference",
    ] {
        assert!(
            json["extras"].get(key).is_some(),
            "scores.json extras lack {key}"
        );
    }
    let validity = json["extras"]["schema_validity"]
        .as_str()
        .expect("schema_validity is recorded");
    assert!(
        validity.starts_with("not computed: ") && validity.contains("no-schemas-here"),
        "{validity}"
    );
    for variant in ["original", "simplified", "translated"] {
        assert!(
            report.per_variant.contains_key(variant),
            "no {variant} rows"
        );
    }
    let per_problem_rows: usize = report.per_problem.values().map(|scores| scores.n).sum();
    assert_eq!(per_problem_rows, report.n);
    // A baseline generates no tokens, so it has no generation speed.
    assert_eq!(report.generation_tokens_per_second, None);
    // Copying the most similar training reference always yields YAML mappings.
    assert!(
        report.extras.yaml_parse_rate > 0.5,
        "{}",
        report.extras.yaml_parse_rate
    );
}

#[test]
fn schema_validity_is_computed_with_the_fetched_schemas() {
    let schemas = std::env::var_os("KUBETUNE_ASSETS")
        .map_or_else(
            || crate::support::root().join(".cache/assets"),
            std::path::PathBuf::from,
        )
        .join(eval::SCHEMA_SUBDIR);
    assert!(
        schemas.is_dir(),
        "{} is missing: run scripts/fetch-assets.sh",
        schemas.display()
    );
    let tmp = tempfile::tempdir().expect("temp dir");
    let config = write_config(tmp.path(), &tiny_plan(tmp.path()));
    let results = tmp.path().join("results");
    let args = [
        "--config",
        &arg(&config),
        "--results-dir",
        &arg(&results),
        "--schemas",
        &arg(&schemas),
    ];
    let (dir, report, _) =
        scored(run(&[&["--baseline", "nearest"], &args[..]].concat()).expect("nearest runs"));
    // Every answer is a label-stripped sample reference, and every sample reference is strictly valid.
    assert_eq!(report.extras.schema_valid_rate, 1.0);
    assert_eq!(report.extras.schema_unknown_kind_rate, 0.0);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("scores.json")).expect("written"))
            .expect("JSON");
    let validity = json["extras"]["schema_validity"]
        .as_str()
        .expect("recorded");
    assert!(validity.starts_with("computed against "), "{validity}");

    // Echo answers nothing when the question has no YAML: such rows do not parse, and are neither valid nor of an
    // unknown kind (only parsed rows are judged).
    let (_, echo, _) =
        scored(run(&[&["--baseline", "echo"], &args[..]].concat()).expect("echo runs"));
    assert!(
        echo.extras.yaml_parse_rate < 1.0,
        "{}",
        echo.extras.yaml_parse_rate
    );
    let judged = echo.extras.schema_valid_rate + echo.extras.schema_unknown_kind_rate;
    assert!(
        judged <= echo.extras.yaml_parse_rate + 1e-12,
        "{judged} > {}",
        echo.extras.yaml_parse_rate
    );
}

#[test]
fn rescoring_equals_scoring_and_shards_merge_to_the_unsharded_result() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let config = write_config(tmp.path(), &tiny_plan(tmp.path()));
    let schemas = no_schemas(tmp.path());
    let whole = tmp.path().join("whole");
    let common = [
        "--baseline",
        "nearest",
        "--config",
        &arg(&config),
        "--schemas",
        &schemas,
    ];
    let (dir, report, _) = scored(
        run(&[&common[..], &["--results-dir", &arg(&whole)]].concat()).expect("unsharded run"),
    );

    let (_, rescored, predicted_now) = scored(
        run(&[
            "score",
            "--predictions",
            &arg(&dir.join("predictions.jsonl")),
            "--schemas",
            &schemas,
        ])
        .expect("rescoring"),
    );
    assert_eq!(predicted_now, 0);
    assert_eq!(rescored, report);
    assert_eq!(read_report(&dir), report);

    let sharded = tmp.path().join("sharded");
    for shard in ["0/3", "1/3", "2/3"] {
        let outcome = run(&[
            &common[..],
            &["--results-dir", &arg(&sharded), "--shard", shard],
        ]
        .concat())
        .expect("shard runs");
        assert!(
            matches!(outcome, eval::Outcome::ShardDone { .. }),
            "{outcome:?}"
        );
    }
    let sharded_dir = sharded.join("baseline-nearest-sample");
    assert!(
        !sharded_dir.join("scores.json").exists(),
        "a shard alone must not be scored"
    );
    let (_, merged, _) =
        scored(run(&["merge", "--run", &arg(&sharded_dir), "--schemas", &schemas]).expect("merge"));
    assert_eq!(merged, report);
    let strip_seconds = |mut predictions: Vec<task::Prediction>| {
        predictions.iter_mut().for_each(|p| p.seconds = 0.0);
        predictions
    };
    assert_eq!(
        strip_seconds(read_predictions(&sharded_dir.join("predictions.jsonl"))),
        strip_seconds(read_predictions(&dir.join("predictions.jsonl")))
    );
}
