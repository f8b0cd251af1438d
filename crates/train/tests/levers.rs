//! Each memory lever must train like the plain run: same loss curve within a tolerance that reflects what the
//! lever changes (none for the exact rearrangements, the rounding of the stored form for compressed moments).

use std::path::Path;

use crate::support::{run_lib, step_losses, write_config};

const STEPS: &str = "max_steps = 8";

/// Runs a full fine-tuning config with `memory` (and `dtype`) and returns its per-step losses.
fn curve(dir: &Path, run: &str, memory: &str, dtype: &str, lora: Option<&str>) -> Vec<f64> {
    let config = write_config(dir, run, lora, STEPS, memory);
    let mut text = std::fs::read_to_string(&config)
        .expect("config")
        .replace("dtype = \"f32\"", &format!("dtype = \"{dtype}\""));
    if lora.is_some() {
        // Adapters start at zero and move slowly at the full-FT rate; a larger rate makes the curve fall in 8 steps.
        text = text.replace("lr = 1e-3", "lr = 1e-2");
    }
    std::fs::write(&config, text).expect("config");
    run_lib(&config).unwrap_or_else(|e| panic!("{run}: {e}"));
    step_losses(&dir.join("results").join(run))
}

fn assert_close(name: &str, plain: &[f64], other: &[f64], relative: f64) {
    assert_eq!(plain.len(), other.len(), "{name}: step count");
    let worst = plain
        .iter()
        .zip(other)
        .map(|(a, b)| (a - b).abs() / a.abs())
        .fold(0f64, f64::max);
    eprintln!(
        "{name}: largest relative deviation from the plain curve {worst:.2e} (tolerance {relative:.0e})"
    );
    for (step, (a, b)) in plain.iter().zip(other).enumerate() {
        assert!(
            (a - b).abs() <= relative * a.abs(),
            "{name}: step {} loss {b} vs plain {a} (tolerance {relative})\n{plain:?}\n{other:?}",
            step + 1
        );
    }
    // The curve must actually move, or the comparison proves nothing.
    assert!(
        plain[plain.len() - 1] < plain[0],
        "{name}: the plain loss did not fall: {plain:?}"
    );
}

#[test]
fn every_lever_reproduces_the_plain_full_fine_tuning_curve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = curve(dir.path(), "plain", "", "f32", None);
    // The plain (whole-graph) path runs the rows of a batch concurrently and sums their losses and gradients row by
    // row; the per-block path that recompute and in-backward select runs the padded batch. Same mathematics,
    // another summation order (measured 4.7e-8 relative).
    let per_block = curve(dir.path(), "recompute", "recompute = true", "f32", None);
    assert_close("recompute", &plain, &per_block, 1e-6);
    for (name, memory, reference, tolerance) in [
        // Exact rearrangements of the same arithmetic: bit-identical on CPU (measured deviation 0).
        (
            "in-backward",
            "optimizer_in_backward = true",
            &per_block,
            0.0,
        ),
        (
            "in-backward-recompute",
            "optimizer_in_backward = true\nrecompute = true",
            &per_block,
            0.0,
        ),
        ("moments-on-host", "moments_on_host = true", &plain, 0.0),
        // Rounded moment storage (measured 4e-6 and 2e-5 over these 8 steps).
        ("bf16-moments", "moments = \"bf16\"", &plain, 1e-4),
        ("int8-moments", "moments = \"int8\"", &plain, 1e-3),
    ] {
        let other = curve(dir.path(), name, memory, "f32", None);
        assert_close(name, reference, &other, tolerance);
    }
    let bf16 = curve(dir.path(), "bf16-weights", "", "bf16", None);
    // bf16 weights and activations (measured 4e-3).
    assert_close("bf16-weights", &plain, &bf16, 2e-2);
}

#[test]
fn recompute_replays_lora_dropout_exactly() {
    // Both runs use the per-block path; only the activation recompute differs, so with the dropout stream
    // rewound for each recomputed block the two runs are bit-identical.
    let dir = tempfile::tempdir().expect("tempdir");
    let lora =
        Some("r = 4\nalpha = 8\ndropout = 0.2\ntargets = [\"q_proj\", \"v_proj\", \"down_proj\"]");
    let kept = curve(
        dir.path(),
        "kept",
        "optimizer_in_backward = true",
        "f32",
        lora,
    );
    let recomputed = curve(
        dir.path(),
        "recomputed",
        "optimizer_in_backward = true\nrecompute = true",
        "f32",
        lora,
    );
    assert_eq!(kept, recomputed);
    // The plain path runs the batch's rows concurrently with the dropout values the padded batch draws: only the
    // summation order differs from the per-block path (measured 4.4e-8 relative; masks drawn differently would
    // change the curve from the second step on, once B is no longer zero).
    let plain = curve(dir.path(), "plain-lora", "", "f32", lora);
    assert_close("lora in-backward", &plain, &kept, 1e-6);
}
