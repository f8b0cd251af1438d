//! Records: serde shapes, JSONL helpers, atomic writes.

use std::collections::BTreeMap;

use task::records::{
    Extras, Levers, Method, Prediction, ScoreReport, Scores, TrainEpochRecord, TrainSummary,
};
use task::{
    RecordError, Variant, append_jsonl, read_json, read_jsonl, read_jsonl_for_resume, write_json,
    write_jsonl,
};

fn epoch(n: u32, seconds: f64, peak: u64) -> TrainEpochRecord {
    TrainEpochRecord {
        run: "r".into(),
        model: "m".into(),
        family: "llama".into(),
        method: Method::Lora,
        epoch: n,
        steps: u64::from(n) * 10,
        wall_seconds: seconds,
        target_tokens: 100,
        non_padding_tokens: 200,
        tokens_per_second: 200.0 / seconds,
        train_loss: 1.5,
        val_loss: if n == 1 { None } else { Some(1.25) },
        peak_memory_bytes: peak,
        memory_definition: "process peak RSS (VmHWM)".into(),
        device: "cpu".into(),
        precision: "f32".into(),
        optimizer: "AdamW".into(),
        levers: Levers {
            bf16_weights: false,
            optimizer_in_backward: false,
            moments: "f32".into(),
            moments_on_host: false,
            recompute: false,
        },
        trainable_params: 10,
        total_params: 100,
        rows_shortened: 0,
        rows_skipped: 1,
        seed: 42,
    }
}

fn prediction(i: usize) -> Prediction {
    Prediction {
        row_id: format!("Kubernetes_pod_q{i}#original"),
        problem_id: format!("Kubernetes_pod_q{i}"),
        variant: Variant::Original,
        lib: "Kubernetes".into(),
        category: "pod".into(),
        prompt: "p".into(),
        raw_output: "```yaml\na: 1\n```".into(),
        extracted: "a: 1".into(),
        prompt_tokens: 12,
        generated_tokens: 7,
        seconds: 0.5,
        stopped: true,
    }
}

#[test]
fn jsonl_round_trips_and_appends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("results/r/train_log.jsonl");
    append_jsonl(&path, &epoch(1, 2.0, 10)).expect("append");
    append_jsonl(&path, &epoch(2, 4.0, 30)).expect("append");
    let back: Vec<TrainEpochRecord> = read_jsonl(&path).expect("read");
    assert_eq!(back, [epoch(1, 2.0, 10), epoch(2, 4.0, 30)]);
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(
        text.contains("\"method\":\"lora\"") && text.contains("\"val_loss\":null"),
        "{text}"
    );

    let summary = TrainSummary::from_epochs(back).expect("non-empty");
    assert_eq!(
        (summary.mean_epoch_seconds, summary.peak_memory_bytes),
        (3.0, 30)
    );
    let summary_path = dir.path().join("results/r/train_summary.json");
    let mut with_extra = summary.clone();
    with_extra
        .extra
        .insert("note".into(), serde_json::json!("writer-added"));
    write_json(&summary_path, &with_extra).expect("write");
    let read: TrainSummary = read_json(&summary_path).expect("read");
    assert_eq!(read, with_extra);
    assert!(TrainSummary::from_epochs(Vec::new()).is_none());
}

#[test]
fn readers_tolerate_unknown_fields() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("predictions.jsonl");
    let mut value = serde_json::to_value(prediction(1)).expect("value");
    value["future_field"] = serde_json::json!([1, 2]);
    std::fs::write(&path, format!("{value}\n")).expect("write");
    let back: Vec<Prediction> = read_jsonl(&path).expect("tolerant");
    assert_eq!(back, [prediction(1)]);
}

#[test]
fn bad_jsonl_lines_name_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("predictions.jsonl");
    write_jsonl(&path, &[prediction(1), prediction(2)]).expect("write");
    let mut text = std::fs::read_to_string(&path).expect("read");
    text.push_str("\n{\"row_id\": 3}\n");
    std::fs::write(&path, &text).expect("write");
    let err = read_jsonl::<Prediction>(&path).expect_err("bad line");
    assert!(
        matches!(err, RecordError::JsonLine { line: 4, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("predictions.jsonl:4"), "{err}");
    let missing = read_jsonl::<Prediction>(&dir.path().join("nope.jsonl")).expect_err("missing");
    assert!(missing.to_string().contains("nope.jsonl"), "{missing}");
}

#[test]
fn resume_reading_ignores_only_a_cut_last_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("p.jsonl");
    assert!(
        read_jsonl_for_resume::<Prediction>(&path)
            .expect("missing is empty")
            .is_empty()
    );
    write_jsonl(&path, &[prediction(1), prediction(2)]).expect("write");
    let mut bytes = std::fs::read(&path).expect("read");
    bytes.extend_from_slice(b"{\"row_id\":\"Kubernetes_po");
    std::fs::write(&path, &bytes).expect("write");
    assert_eq!(
        read_jsonl_for_resume::<Prediction>(&path).expect("resumable"),
        [prediction(1), prediction(2)]
    );
    assert!(
        read_jsonl::<Prediction>(&path).is_err(),
        "the strict reader still rejects it"
    );
    std::fs::write(&path, b"garbage\n").expect("write");
    assert!(
        read_jsonl_for_resume::<Prediction>(&path).is_err(),
        "a complete bad line is an error"
    );
}

#[test]
fn score_report_has_the_agreed_shape() {
    let scores = Scores {
        n: 2,
        bleu: 0.5,
        edit_distance: 0.75,
        exact_match: 0.0,
        kv_exact_match: 0.5,
        kv_wildcard_match: 1.25,
    };
    let report = ScoreReport {
        run: "r".into(),
        label: "SmolLM2-135M".into(),
        system: "lora".into(),
        signature: "sig".into(),
        split: "sample/problem".into(),
        n: 2,
        overall: scores,
        per_variant: BTreeMap::from([("original".into(), scores)]),
        per_category: BTreeMap::from([("pod".into(), scores)]),
        per_problem: BTreeMap::from([("Kubernetes_pod_q1".into(), scores)]),
        extras: Extras {
            yaml_parse_rate: 1.0,
            schema_valid_rate: 0.5,
            schema_unknown_kind_rate: 0.0,
            stripped_reference: scores,
        },
        generation_tokens_per_second: None,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("scores.json");
    write_json(&path, &report).expect("write");
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text.ends_with("}\n"));
    for key in [
        "\"kv_wildcard_match\": 1.25",
        "\"stripped_reference\"",
        "\"generation_tokens_per_second\": null",
    ] {
        assert!(text.contains(key), "{key} in {text}");
    }
    assert_eq!(read_json::<ScoreReport>(&path).expect("read"), report);
    // No temp files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(leftovers, ["scores.json"]);
}
