//! Run configs: shipped files parse, plans round-trip, bad keys are named.

use task::config::{DType, DeviceSpec, Moments, Schedule};
use task::{ConfigError, Method, Template, TrainPlan, Variant};

use crate::common::repo_root;

const MINIMAL: &str = r#"
[model]
source = "some/model"

[data]
path = "data/sample"

[prompt]
template = "cloudeval-zero-shot"

[optim]
lr = 2e-4
epochs = 5
batch_size = 2

[output]
run = "minimal"
"#;

#[test]
fn every_shipped_config_parses_and_round_trips() {
    let dir = repo_root().join("configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("configs/ exists") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let plan = TrainPlan::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let text = plan.to_toml().expect("serialises");
        let back = TrainPlan::from_str(&text, "round-trip")
            .unwrap_or_else(|e| panic!("{}: {e}\n{text}", path.display()));
        assert_eq!(back, plan, "{}", path.display());
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        if stem.ends_with("_lora") {
            assert_eq!(plan.method(), Method::Lora, "{stem}");
        } else if stem.ends_with("_full") {
            assert_eq!(plan.method(), Method::Full, "{stem}");
        }
        seen += 1;
    }
    assert!(
        seen >= 9,
        "expected the paper, smollm2 and tiny configs, found {seen}"
    );
}

#[test]
fn paper_configs_carry_the_paper_settings() {
    for (stem, source) in [
        ("mistral", "mistralai/Mistral-7B-v0.1"),
        ("llama3", "meta-llama/Meta-Llama-3-8B"),
        ("deepseek", "deepseek-ai/deepseek-coder-6.7b-base"),
    ] {
        for method in ["lora", "full"] {
            let plan = TrainPlan::load(&repo_root().join(format!("configs/{stem}_{method}.toml")))
                .expect("parses");
            assert_eq!(plan.model.source, source);
            assert_eq!(
                (plan.model.dtype, plan.model.device),
                (DType::Bf16, DeviceSpec::Cuda(0))
            );
            assert_eq!(
                (plan.optim.lr, plan.optim.batch_size, plan.optim.epochs),
                (2e-4, 2, 5)
            );
            assert_eq!(plan.output.run, format!("{stem}-{method}"));
            if let Some(lora) = &plan.lora {
                assert_eq!((lora.r, lora.alpha), (16, 16.0));
                assert_eq!(lora.targets, ["q_proj", "k_proj", "v_proj", "o_proj"]);
            }
        }
    }
}

#[test]
fn defaults_are_filled_and_written_back() {
    let plan = TrainPlan::from_str(MINIMAL, "minimal.toml").expect("parses");
    assert_eq!(plan.model.dtype, DType::F32);
    assert_eq!(plan.model.device, DeviceSpec::Auto);
    assert_eq!(plan.data.variants, Variant::ALL);
    assert_eq!(plan.data.validation_fraction, 0.1);
    assert_eq!(plan.data.split_params, Some(task::SplitParams::default()));
    assert_eq!(plan.prompt.template, Template::CloudevalZeroShot);
    assert_eq!(plan.optim.betas, [0.9, 0.999]);
    assert_eq!(
        (
            plan.optim.eps,
            plan.optim.weight_decay,
            plan.optim.grad_accum
        ),
        (1e-8, 0.0, 1)
    );
    assert_eq!(
        (
            plan.optim.schedule,
            plan.optim.warmup_steps,
            plan.optim.max_seq_len,
            plan.optim.seed
        ),
        (Schedule::Constant, 0, 1024, 42)
    );
    assert_eq!(
        (plan.optim.max_grad_norm, plan.optim.max_steps),
        (None, None)
    );
    assert_eq!(plan.memory.moments, Moments::F32);
    assert!(
        !plan.memory.recompute
            && !plan.memory.optimizer_in_backward
            && !plan.memory.moments_on_host
    );
    assert_eq!(plan.method(), Method::Full);
    assert_eq!((plan.eval.max_new_tokens, plan.eval.batch_size), (512, 8));
    assert_eq!(plan.run_dir(), std::path::Path::new("out/minimal"));
    assert_eq!(plan.results_dir(), std::path::Path::new("results/minimal"));
    let text = plan.to_toml().expect("serialises");
    for key in [
        "[data.split_params]",
        "test_ratio = 0.25",
        "dtype = \"f32\"",
        "device = \"auto\"",
        "[memory]",
        "[eval]",
        "out_dir = \"out\"",
    ] {
        assert!(text.contains(key), "resolved TOML lacks `{key}`:\n{text}");
    }
    assert_eq!(
        TrainPlan::from_str(&text, "back").expect("parses back"),
        plan
    );
}

/// Parses `text` expecting an error whose message contains every fragment.
fn check_error(text: &str, fragments: &[&str]) {
    let err = TrainPlan::from_str(text, "configs/bad.toml").expect_err("must fail");
    let message = err.to_string();
    assert!(
        message.contains("configs/bad.toml"),
        "names the file: {message}"
    );
    for fragment in fragments {
        assert!(
            message.contains(fragment),
            "expected `{fragment}` in: {message}"
        );
    }
}

#[test]
fn unknown_and_missing_keys_are_named() {
    check_error(
        &MINIMAL.replace("batch_size = 2", "batch_size = 2\nbatch_sise = 3"),
        &["batch_sise", "unknown field"],
    );
    check_error(&MINIMAL.replace("lr = 2e-4\n", ""), &["missing field `lr`"]);
    check_error(
        &MINIMAL.replace("[output]\nrun = \"minimal\"", ""),
        &["missing field `output`"],
    );
    check_error(
        &format!("{MINIMAL}\n[extra]\nx = 1\n"),
        &["unknown field `extra`"],
    );
    check_error(
        &MINIMAL.replace(
            "path = \"data/sample\"",
            "path = \"data/sample\"\nvariants = [\"original\", \"paraphrased\"]",
        ),
        &["paraphrased"],
    );
    check_error(
        &MINIMAL.replace("source = \"some/model\"", "source = \"m\"\ndtype = \"f8\""),
        &["f8"],
    );
    check_error(
        &MINIMAL.replace(
            "source = \"some/model\"",
            "source = \"m\"\ndevice = \"tpu\"",
        ),
        &["tpu", "expected auto, cpu, cuda or cuda:N"],
    );
    check_error(
        &MINIMAL.replace("cloudeval-zero-shot", "few-shot"),
        &["few-shot"],
    );
    check_error("[model\nsource=", &["TOML parse error"]);
}

#[test]
fn semantic_errors_name_the_key_path() {
    let cases: &[(&str, &str, &str)] = &[
        ("lr = 2e-4", "lr = 0.0", "optim.lr"),
        ("lr = 2e-4", "lr = -1e-3", "optim.lr"),
        ("batch_size = 2", "batch_size = 0", "optim.batch_size"),
        ("epochs = 5", "epochs = 0", "optim.epochs"),
        (
            "batch_size = 2",
            "batch_size = 2\nbetas = [0.9, 1.0]",
            "optim.betas[1]",
        ),
        (
            "batch_size = 2",
            "batch_size = 2\nmax_grad_norm = 0.0",
            "optim.max_grad_norm",
        ),
        (
            "batch_size = 2",
            "batch_size = 2\nmax_steps = 0",
            "optim.max_steps",
        ),
        (
            "batch_size = 2",
            "batch_size = 2\nmax_seq_len = 1",
            "optim.max_seq_len",
        ),
        (
            "path = \"data/sample\"",
            "path = \"data/sample\"\nvariants = []",
            "data.variants",
        ),
        (
            "path = \"data/sample\"",
            "path = \"data/sample\"\nvariants = [\"original\", \"original\"]",
            "data.variants",
        ),
        (
            "path = \"data/sample\"",
            "path = \"data/sample\"\nvalidation_fraction = 1.0",
            "data.validation_fraction",
        ),
        (
            "path = \"data/sample\"",
            "path = \"data/sample\"\n[data.split_params]\ntest_ratio = 1.5",
            "data.split_params.test_ratio",
        ),
        (
            "path = \"data/sample\"",
            "path = \"data/sample\"\nsplit = \"s.json\"\n[data.split_params]\nseed = 1",
            "data.split_params",
        ),
        ("run = \"minimal\"", "run = \"../escape\"", "output.run"),
        ("run = \"minimal\"", "run = \"\"", "output.run"),
    ];
    for (from, to, key) in cases {
        assert!(MINIMAL.contains(from), "{from}");
        check_error(&MINIMAL.replacen(from, to, 1), &[key]);
    }
    let lora = |body: &str| format!("{MINIMAL}\n[lora]\n{body}\n");
    check_error(
        &lora("r = 0\nalpha = 16\ntargets = [\"q_proj\"]"),
        &["lora.r"],
    );
    check_error(&lora("r = 8\nalpha = 16\ntargets = []"), &["lora.targets"]);
    check_error(
        &lora("r = 8\nalpha = 0\ntargets = [\"q_proj\"]"),
        &["lora.alpha"],
    );
    check_error(
        &lora("r = 8\nalpha = 16\ndropout = 1.0\ntargets = [\"q_proj\"]"),
        &["lora.dropout"],
    );
    check_error(
        &lora("r = 8\ntargets = [\"q_proj\"]"),
        &["missing field `alpha`"],
    );
    check_error(
        &format!("{MINIMAL}\n[eval]\nbatch_size = 0\n"),
        &["eval.batch_size"],
    );
    check_error(
        &format!("{MINIMAL}\n[memory]\nmoments = \"int4\"\n"),
        &["int4"],
    );
}

#[test]
fn load_names_a_missing_file_and_saves_atomically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = TrainPlan::load(&dir.path().join("absent.toml")).expect_err("missing");
    assert!(
        matches!(err, ConfigError::Io { .. }) && err.to_string().contains("absent.toml"),
        "{err}"
    );
    let plan = TrainPlan::from_str(MINIMAL, "m").expect("parses");
    let path = dir.path().join("out/minimal/run.toml");
    plan.save(&path).expect("saves");
    assert_eq!(TrainPlan::load(&path).expect("loads"), plan);
}
