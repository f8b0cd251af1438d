//! Kill-and-resume: a CPU run interrupted at any point and resumed must produce the uninterrupted run's loss curve
//! bit for bit (data order from seed + epoch, dropout stream and optimiser moments restored from the checkpoint).

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::support::{epochs, step_losses, write_config};

fn spawn(config: &Path, root: &Path, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_train"))
        .args([
            "--config",
            &config.display().to_string(),
            "--quiet",
            "--checkpoint-every",
            "1",
        ])
        .arg("--out-dir")
        .arg(root.join("out"))
        .arg("--results-dir")
        .arg(root.join("results"))
        .args(extra)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn train")
}

fn finish(child: Child) {
    let out = child.wait_with_output().expect("wait for train");
    assert!(
        out.status.success(),
        "train failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until the run has written its first checkpoint, then interrupts it with `signal`.
fn interrupt_after_first_checkpoint(mut child: Child, root: &Path, run: &str, signal: &str) {
    let state = root.join("out").join(run).join("checkpoint/state.json");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !state.is_file() {
        assert!(Instant::now() < deadline, "no checkpoint appeared");
        if let Some(status) = child.try_wait().expect("poll train") {
            panic!("train exited ({status}) before its first checkpoint");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let out = child
        .wait_with_output()
        .expect("wait for the interrupted train");
    if signal == "-KILL" {
        assert_eq!(
            out.status.code(),
            None,
            "SIGKILL must end the process by the signal"
        );
    } else {
        assert_eq!(
            out.status.code(),
            Some(130),
            "SIGTERM must checkpoint and exit 130: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = std::fs::read_to_string(&state).expect("state.json after the interruption");
    let value: serde_json::Value = serde_json::from_str(&text).expect("state.json");
    assert_eq!(
        value["finished"], false,
        "the run finished before it was interrupted; make it longer"
    );
}

fn assert_same_run(a: &Path, b: &Path) {
    let (ea, eb) = (epochs(a), epochs(b));
    assert_eq!(ea.len(), eb.len());
    for (x, y) in ea.iter().zip(&eb) {
        assert_eq!(
            x.train_loss.to_bits(),
            y.train_loss.to_bits(),
            "epoch {} train loss",
            x.epoch
        );
        assert_eq!(
            x.val_loss.map(f64::to_bits),
            y.val_loss.map(f64::to_bits),
            "epoch {} val loss",
            x.epoch
        );
        assert_eq!(
            (x.steps, x.target_tokens, x.non_padding_tokens),
            (y.steps, y.target_tokens, y.non_padding_tokens)
        );
    }
    let (la, lb) = (step_losses(a), step_losses(b));
    assert_eq!(
        la.iter().map(|l| l.to_bits()).collect::<Vec<_>>(),
        lb.iter().map(|l| l.to_bits()).collect::<Vec<_>>()
    );
}

#[test]
fn sigkill_then_resume_reproduces_the_lora_run_bit_for_bit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lora = "r = 4\nalpha = 8\ndropout = 0.1\ntargets = [\"q_proj\", \"k_proj\", \"v_proj\", \"o_proj\"]";
    let config = write_config(
        dir.path(),
        "lora",
        Some(lora),
        "epochs = 3\nschedule = \"cosine\"\nwarmup_steps = 2",
        "",
    );
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace("epochs = 2\n", "");
    std::fs::write(&config, text).expect("config");
    let (whole, cut) = (dir.path().join("whole"), dir.path().join("cut"));
    finish(spawn(&config, &whole, &[]));
    interrupt_after_first_checkpoint(spawn(&config, &cut, &[]), &cut, "lora", "-KILL");
    finish(spawn(&config, &cut, &["--resume"]));
    assert_same_run(&whole.join("results/lora"), &cut.join("results/lora"));
    assert!(cut.join("out/lora/adapter_model.safetensors").is_file());
    assert!(
        cut.join("out/lora/run.toml").is_file() && cut.join("out/lora/tokenizer.json").is_file()
    );
}

#[test]
fn sigterm_then_resume_reproduces_the_full_run_bit_for_bit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        "full",
        None,
        "grad_accum = 2\nmax_grad_norm = 1.0",
        "",
    );
    let (whole, cut) = (dir.path().join("whole"), dir.path().join("cut"));
    finish(spawn(&config, &whole, &[]));
    interrupt_after_first_checkpoint(spawn(&config, &cut, &[]), &cut, "full", "-TERM");
    finish(spawn(&config, &cut, &["--resume"]));
    assert_same_run(&whole.join("results/full"), &cut.join("results/full"));
    assert!(
        cut.join("out/full/model.safetensors").is_file()
            && cut.join("out/full/config.json").is_file()
    );
}
