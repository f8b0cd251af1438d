//! The binary: `--help`, clear errors for bad configs (non-zero exit, file and key named), NaN handling.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::write_config;

fn train(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_train"))
        .args(args)
        .output()
        .expect("run the train binary")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Writes the LoRA test config with `from` replaced by `to` and runs the binary on it.
fn run_edited(dir: &Path, from: &str, to: &str) -> (String, Output) {
    let config = write_config(
        dir,
        "bad",
        Some("r = 2\nalpha = 4\ntargets = [\"q_proj\"]"),
        "",
        "",
    );
    let text = std::fs::read_to_string(&config).expect("config");
    assert!(text.contains(from), "the test config has no `{from}`");
    std::fs::write(&config, text.replacen(from, to, 1)).expect("config");
    let path = config.display().to_string();
    let out = train(&["--config", &path]);
    (path, out)
}

#[test]
fn help_lists_the_flags() {
    let out = train(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--resume",
        "--max-steps",
        "--device",
        "--out-dir",
        "--results-dir",
        "--checkpoint-every",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }
}

#[test]
fn bad_configs_fail_with_the_file_and_key_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("unknown key", "seed = 7", "seed = 7\nsed = 8", vec!["sed"]),
        (
            "missing model",
            "[model]\nsource = \"",
            "[model]\nsource = \"/no/such/model\" #",
            vec!["model.source", "/no/such/model"],
        ),
        (
            "wrong dtype",
            "dtype = \"f32\"",
            "dtype = \"f64\"",
            vec!["dtype", "f64"],
        ),
        (
            "unknown LoRA target",
            "targets = [\"q_proj\"]",
            "targets = [\"qq_proj\"]",
            vec!["lora.targets", "qq_proj"],
        ),
        ("lr = 0", "lr = 1e-3", "lr = 0.0", vec!["optim.lr"]),
        ("negative lr", "lr = 1e-3", "lr = -1e-3", vec!["optim.lr"]),
    ];
    for (name, from, to, needles) in cases {
        let (path, out) = run_edited(dir.path(), from, to);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{name}: exit status {:?}, stderr {}",
            out.status,
            stderr(&out)
        );
        let err = stderr(&out);
        assert!(
            err.contains(&path),
            "{name}: the message does not name {path}: {err}"
        );
        for needle in needles {
            assert!(
                err.contains(needle),
                "{name}: the message does not mention `{needle}`: {err}"
            );
        }
        assert!(!err.contains("panicked"), "{name}: {err}");
    }
}

#[test]
fn a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    // An absurd learning rate drives the weights to ±1e30 after one step, so the next loss is NaN or inf.
    let config = write_config(dir.path(), "nan", None, "", "");
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace("lr = 1e-3", "lr = 1e30");
    std::fs::write(&config, text).expect("config");
    let out = train(&[
        "--config",
        &config.display().to_string(),
        "--checkpoint-every",
        "1",
        "--quiet",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("non-finite loss"), "{err}");
    assert!(err.contains("last good checkpoint"), "{err}");
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("out/nan/checkpoint/state.json"))
            .expect("a checkpoint was kept"),
    )
    .expect("state.json");
    let history = state["loss_history"].as_array().expect("loss history");
    assert!(!history.is_empty());
    assert!(
        history
            .iter()
            .all(|s| s["loss"].as_f64().is_some_and(f64::is_finite)),
        "{history:?}"
    );
}

#[test]
fn an_existing_run_is_never_overwritten_and_resume_needs_the_same_plan() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "guard", None, "max_steps = 1", "");
    let path = config.display().to_string();
    let first = train(&["--config", &path, "--quiet"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let again = train(&["--config", &path, "--quiet"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        stderr(&again).contains("pass --resume"),
        "{}",
        stderr(&again)
    );
    let extended = train(&["--config", &path, "--quiet", "--resume", "--max-steps", "3"]);
    assert_eq!(extended.status.code(), Some(2));
    assert!(
        stderr(&extended).contains("cannot be extended"),
        "{}",
        stderr(&extended)
    );
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace("lr = 1e-3", "lr = 2e-3");
    std::fs::write(&config, text).expect("config");
    let changed = train(&["--config", &path, "--quiet", "--resume"]);
    assert_eq!(changed.status.code(), Some(2));
    assert!(
        stderr(&changed).contains("different plan"),
        "{}",
        stderr(&changed)
    );
}
