//! The `score-pairs` binary end to end: pass-through fields, order, scores, bad lines and exit status.

use std::process::Command;

#[test]
fn score_pairs_scores_in_order_and_reports_bad_lines() {
    let dir = std::env::temp_dir().join(format!("metrics-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let input = dir.join("pairs.jsonl");
    let reference = "apiVersion: v1\\nkind: Pod\\nmetadata:\\n  name: web # *\\n";
    let lines = [
        format!(
            "{{\"id\": \"a\", \"candidate\": \"```yaml\\n{reference}```\", \"reference\": \"{reference}\"}}"
        ),
        "{\"id\": \"broken\"".to_string(),
        format!(
            "{{\"id\": \"b\", \"candidate\": \"kind: Pod\", \"reference\": \"{reference}\", \"extra\": [1]}}"
        ),
    ];
    std::fs::write(&input, lines.join("\n")).expect("write input");
    let output = Command::new(env!("CARGO_BIN_EXE_metrics"))
        .arg("score-pairs")
        .arg(&input)
        .output()
        .expect("runs");
    assert_eq!(
        output.status.code(),
        Some(1),
        "a bad line makes the exit status non-zero"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(":line 2:"),
        "stderr names the bad line: {stderr}"
    );
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    let records: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON line"))
        .collect();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["id"], "a");
    assert_eq!(records[0]["exact_match"], 1.0);
    assert_eq!(records[0]["kv_wildcard_match"], 1.0);
    assert_eq!(
        records[0]["raw"]["exact_match"], 0.0,
        "without extraction the fences stay"
    );
    assert_eq!(records[1]["id"], "b");
    assert_eq!(records[1]["extra"], serde_json::json!([1]));
    let keys: Vec<&String> = records[1].as_object().expect("object").keys().collect();
    assert_eq!(
        keys,
        [
            "id",
            "candidate",
            "reference",
            "extra",
            "bleu",
            "edit_distance",
            "exact_match",
            "kv_exact_match",
            "kv_wildcard_match",
            "raw"
        ]
    );
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
