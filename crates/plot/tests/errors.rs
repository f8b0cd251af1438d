//! Bad records fail with an error naming the file (and the line, for JSONL).

use task::Method;

use crate::fixtures;

fn error_text(results: &std::path::Path) -> String {
    let error = plot::run(&plot::Options::for_results(results)).expect_err("bad records must fail");
    // The binary prints the chain like this (`{:#}` in anyhow); build the same chain here.
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[test]
fn corrupt_jsonl_line_names_path_and_line() {
    let temp = tempfile::tempdir().expect("temp dir");
    let results = temp.path().join("results");
    fixtures::write_train_run(&results, "bad", "m", Method::Full, &[1.0, 2.0], false);
    let log = results.join("bad/train_log.jsonl");
    let mut text = fixtures::read(&log);
    text.push_str("{\"run\": \"bad\", \"epoch\": \n");
    std::fs::write(&log, text).expect("write");

    let message = error_text(&results);
    assert!(
        message.contains(&format!("{}:3", log.display())),
        "{message}"
    );
}

#[test]
fn corrupt_scores_json_names_the_file() {
    let temp = tempfile::tempdir().expect("temp dir");
    let results = temp.path().join("results");
    let path = results.join("r/scores.json");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&path, "{\"run\": \"r\", \"label\": 3}").expect("write");

    let message = error_text(&results);
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("line 1"), "{message}");
}

#[test]
fn a_log_mixing_two_runs_is_rejected() {
    let temp = tempfile::tempdir().expect("temp dir");
    let results = temp.path().join("results");
    let log = results.join("mixed/train_log.jsonl");
    let records = [
        fixtures::epoch("one", "m", Method::Lora, 1, 1.0),
        fixtures::epoch("two", "m", Method::Lora, 2, 1.0),
    ];
    task::write_jsonl(&log, &records).expect("write");

    let message = error_text(&results);
    assert!(message.contains(&log.display().to_string()), "{message}");
    assert!(message.contains("\"two\""), "{message}");
}

#[test]
fn a_missing_results_root_is_an_error_naming_it() {
    let temp = tempfile::tempdir().expect("temp dir");
    let results = temp.path().join("nowhere");
    let message = error_text(&results);
    assert!(
        message.contains(&results.display().to_string()),
        "{message}"
    );
}
