//! The `plot` binary: thin over `plot::run`, exit 0 on success and 2 on error.

use std::process::Command;

use task::Method;

use crate::fixtures;

fn plot() -> Command {
    Command::new(env!("CARGO_BIN_EXE_plot"))
}

#[test]
fn help_describes_the_options() {
    let output = plot().arg("--help").output().expect("runs");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for option in ["--results", "--out", "--summary", "Fig. 3", "Fig. 4"] {
        assert!(help.contains(option), "--help lacks {option}:\n{help}");
    }
}

#[test]
fn draws_and_lists_what_it_wrote() {
    let temp = tempfile::tempdir().expect("temp dir");
    let results = temp.path().join("results");
    fixtures::full_matrix(&results);
    let output = plot()
        .arg("--results")
        .arg(&results)
        .arg("--out")
        .arg(temp.path().join("figs"))
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("read 4 training runs and 9 score reports"),
        "{stdout}"
    );
    assert!(
        stdout.contains("fig3.svg") && stdout.contains("summary.md"),
        "{stdout}"
    );
    assert!(temp.path().join("figs/loss.png").is_file());
}

#[test]
fn bad_records_exit_2_naming_the_file() {
    let temp = tempfile::tempdir().expect("temp dir");
    let results = temp.path().join("results");
    fixtures::write_train_run(&results, "bad", "m", Method::Lora, &[1.0], false);
    let log = results.join("bad/train_log.jsonl");
    std::fs::write(&log, "not json\n").expect("write");

    let output = plot()
        .arg("--results")
        .arg(&results)
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("{}:1", log.display())), "{stderr}");
}
