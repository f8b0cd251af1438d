//! Our JSONL format.

use task::{LoadError, LoadOptions, Variant, load};

use crate::common::write_standard_tree;

fn write(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("problems.jsonl");
    std::fs::write(&path, text).expect("write");
    (dir, path)
}

#[test]
fn directory_export_round_trips_through_jsonl() {
    let tree = tempfile::tempdir().expect("tempdir");
    write_standard_tree(tree.path());
    let problems = load(tree.path(), &LoadOptions::default()).expect("loads");
    let out = tree.path().join("export.jsonl");
    task::load::write_problems_jsonl(&out, &problems).expect("writes");
    let back = load(&out, &LoadOptions::default()).expect("reads back");
    assert_eq!(back, problems);
}

#[test]
fn minimal_lines_load_sorted_and_filtered() {
    let text = concat!(
        r#"{"id":"Istio_gateway_q3","lib":"Istio","mode":"gateway","category":"gateway","questions":{"original":"a","translated":"b"},"reference":"x: 1\n"}"#,
        "\n\n",
        r#"{"id":"Kubernetes_pod_q2","lib":"Kubernetes","mode":"pod","category":"pod","questions":{"original":"c"},"reference":"y: 2\n","unit_test":"echo ok"}"#,
        "\n"
    );
    let (_keep, path) = write(text);
    let problems = load(&path, &LoadOptions::default()).expect("loads");
    assert_eq!(
        problems.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        ["Kubernetes_pod_q2", "Istio_gateway_q3"]
    );
    assert_eq!(problems[1].number, 3);
    let translated = LoadOptions {
        variants: vec![Variant::Translated],
        ..Default::default()
    };
    let problems = load(&path, &translated).expect("loads");
    assert_eq!(problems.len(), 1);
}

fn check_error(text: &str, line: usize, fragment: &str) {
    let (_keep, path) = write(text);
    let err = load(&path, &LoadOptions::default()).expect_err("must fail");
    let message = err.to_string();
    assert!(message.contains("problems.jsonl"), "{message}");
    assert!(
        message.contains(&format!(":{line}")),
        "expected line {line}: {message}"
    );
    assert!(
        message.contains(fragment),
        "expected `{fragment}`: {message}"
    );
}

#[test]
fn bad_lines_name_file_and_line() {
    let good = r#"{"id":"K_pod_q1","lib":"K","mode":"pod","category":"pod","questions":{"original":"q"},"reference":"a: 1"}"#;
    check_error(&format!("{good}\n{{not json\n"), 2, "key must be a string");
    check_error(
        &format!(
            "{good}\n{}\n",
            good.replace("\"reference\"", "\"referenze\"")
        ),
        2,
        "unknown field `referenze`",
    );
    check_error(
        &format!("\n\n{}\n", good.replace("a: 1", "  ")),
        3,
        "empty reference",
    );
    check_error(
        &format!("{}\n", good.replace("\"original\"", "\"simplified\"")),
        1,
        "no `original`",
    );
    check_error(
        &format!("{}\n", good.replace("\"original\"", "\"sideways\"")),
        1,
        "unknown variant",
    );
    check_error(
        &format!("{}\n", good.replace("K_pod_q1", "K_job_q1")),
        1,
        "does not match",
    );
    check_error(&format!("{good}\n{good}\n"), 2, "duplicate problem id");
    let (_keep, path) = write("");
    assert!(matches!(
        load(&path, &LoadOptions::default()),
        Err(LoadError::NoProblems { .. })
    ));
    let (_keep, path) = write(&format!("{good}\n\u{0}"));
    assert!(load(&path, &LoadOptions::default()).is_err());
}

#[test]
fn invalid_utf8_line_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.jsonl");
    std::fs::write(&path, b"\n{\"id\": \"\xff\"}\n").expect("write");
    let err = load(&path, &LoadOptions::default()).expect_err("must fail");
    let message = err.to_string();
    assert!(
        message.contains("bad.jsonl:2") && message.contains("UTF-8"),
        "{message}"
    );
}
