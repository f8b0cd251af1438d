//! Checkpoints: full save → load gives the same logits; adapter save → load gives the same logits; PEFT files.

use candle_core::{DType, Device};
use model::{CausalLm, Trainable};

use super::support::{batch, load_fixture, lora_all, max_abs_diff, perturb_lora_b, tiny};

#[test]
fn full_save_load_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["tiny-smollm", "tiny-mistral", "tiny-llama3-rope"] {
        let model = load_fixture(name, &Trainable::Full);
        let out = dir.path().join(name);
        model.save_full(&out).expect("save");
        let back =
            CausalLm::load(&out, DType::F32, &Device::Cpu, &Trainable::Frozen, 0).expect("load");
        assert_eq!(
            back.config().to_json(),
            model.config().to_json(),
            "{name}: config"
        );
        let (ids, mask) = batch(7, model.config().vocab_size as u32);
        let a = model.forward(&ids, &mask, false).expect("a");
        let b = back.forward(&ids, &mask, false).expect("b");
        assert_eq!(max_abs_diff(&a, &b), 0.0, "{name}");
    }
}

#[test]
fn adapter_save_load_round_trip_and_peft_layout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = load_fixture("tiny-llama", &Trainable::Lora(lora_all()));
    perturb_lora_b(&model, 33);
    model
        .save_adapter(dir.path(), "tiny-llama")
        .expect("save adapter");
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).expect("config written"),
    )
    .expect("json");
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 8);
    assert_eq!(config["task_type"], "CAUSAL_LM");
    assert_eq!(config["base_model_name_or_path"], "tiny-llama");
    let tensors =
        candle_core::safetensors::load(dir.path().join("adapter_model.safetensors"), &Device::Cpu)
            .expect("weights written");
    assert_eq!(tensors.len(), 2 * 7 * 2);
    assert_eq!(
        tensors["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"].dims(),
        &[4, 128],
        "down_proj A is (r, intermediate)"
    );

    let mut back = load_fixture("tiny-llama", &Trainable::Frozen);
    back.load_adapter(dir.path()).expect("load adapter");
    let (ids, mask) = batch(8, 512);
    let a = model.forward(&ids, &mask, false).expect("a");
    let b = back.forward(&ids, &mask, false).expect("b");
    assert_eq!(max_abs_diff(&a, &b), 0.0);

    // A merged full save equals the adapter model too.
    let merged_dir = dir.path().join("merged");
    model.save_full(&merged_dir).expect("save merged");
    let merged = CausalLm::load(&merged_dir, DType::F32, &Device::Cpu, &Trainable::Frozen, 0)
        .expect("load merged");
    let c = merged.forward(&ids, &mask, false).expect("c");
    assert!(max_abs_diff(&a, &c) < 1e-5);
}

#[test]
fn saving_an_adapter_without_one_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = tiny(DType::F32, &Trainable::Frozen);
    assert!(model.save_adapter(dir.path(), "x").is_err());
}

#[test]
fn missing_weights_name_the_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        super::support::fixture_dir("tiny-llama").join("config.json"),
        dir.path().join("config.json"),
    )
    .expect("copy config");
    let err = CausalLm::load(dir.path(), DType::F32, &Device::Cpu, &Trainable::Frozen, 0)
        .expect_err("no weights");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}
