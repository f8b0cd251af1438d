//! LoRA identities: a fresh adapter is the base bit for bit; merging equals the unmerged adapter.

use candle_core::DType;
use model::{LoraConfig, Trainable};

use super::support::{FIXTURES, batch, load_fixture, lora_all, max_abs_diff, perturb_lora_b};

#[test]
fn fresh_adapter_equals_base_bit_for_bit() {
    for name in FIXTURES {
        let base = load_fixture(name, &Trainable::Frozen);
        let adapted = load_fixture(name, &Trainable::Lora(lora_all()));
        let (ids, mask) = batch(9, base.config().vocab_size as u32);
        let a = base.forward(&ids, &mask, false).expect("base");
        let b = adapted.forward(&ids, &mask, false).expect("adapted");
        assert_eq!(
            a.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("a"),
            b.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("b"),
            "{name}"
        );
    }
}

#[test]
fn merged_equals_unmerged() {
    for name in FIXTURES {
        let mut model = load_fixture(name, &Trainable::Lora(lora_all()));
        perturb_lora_b(&model, 21);
        let (ids, mask) = batch(9, model.config().vocab_size as u32);
        let unmerged = model.forward(&ids, &mask, false).expect("unmerged");
        let base = load_fixture(name, &Trainable::Frozen)
            .forward(&ids, &mask, false)
            .expect("base");
        assert!(
            max_abs_diff(&unmerged, &base) > 1e-3,
            "{name}: the adapter should change the logits"
        );
        model.merge_adapters().expect("merge");
        assert!(model.trainable_vars().is_empty());
        let merged = model.forward(&ids, &mask, false).expect("merged");
        let diff = max_abs_diff(&merged, &unmerged);
        assert!(diff < 1e-5, "{name}: merged vs unmerged max diff {diff}");
        assert_eq!(merged.dtype(), DType::F32);
    }
}

#[test]
fn gqa_adapters_have_per_module_shapes_and_peft_names() {
    let model = load_fixture("tiny-llama", &Trainable::Lora(LoraConfig::default()));
    let vars = model.trainable_vars();
    let shape = |n: &str| {
        vars.iter()
            .find(|(name, _)| name == n)
            .map(|(_, v)| v.dims().to_vec())
            .unwrap_or_else(|| panic!("{n}"))
    };
    assert_eq!(
        shape("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"),
        vec![16, 64]
    );
    assert_eq!(
        shape("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"),
        vec![64, 16]
    );
    assert_eq!(
        shape("base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight"),
        vec![32, 16]
    );
    assert_eq!(
        shape("base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight"),
        vec![16, 64]
    );
    assert_eq!(vars.len(), 2 * 4 * 2);
    let (trainable, total) = model.param_counts();
    let per_layer = 16 * 64 + 64 * 16 + 2 * (16 * 64 + 32 * 16) + 16 * 64 + 64 * 16;
    assert_eq!(trainable, 2 * per_layer);
    assert!(total > trainable);
}

#[test]
fn unknown_target_is_an_error() {
    let config = LoraConfig {
        target_modules: vec!["qkv_proj".into()],
        ..LoraConfig::default()
    };
    let dir = super::support::fixture_dir("tiny-llama");
    let err = model::CausalLm::load(
        &dir,
        DType::F32,
        &candle_core::Device::Cpu,
        &Trainable::Lora(config),
        0,
    )
    .expect_err("qkv_proj is not a module");
    assert!(err.to_string().contains("qkv_proj"), "{err}");
}

#[test]
fn bf16_base_with_f32_adapters_runs_forward_backward_and_tracks_f32() {
    let dir = super::support::fixture_dir("tiny-llama");
    let cpu = candle_core::Device::Cpu;
    let bf16 = model::CausalLm::load(&dir, DType::BF16, &cpu, &Trainable::Lora(lora_all()), 3)
        .expect("bf16 load");
    let f32_model = load_fixture("tiny-llama", &Trainable::Frozen);
    let (ids, mask) = batch(9, 512);
    let fresh = bf16.forward(&ids, &mask, false).expect("bf16 forward");
    perturb_lora_b(&bf16, 4);
    let low = bf16.forward(&ids, &mask, true).expect("bf16 forward");
    assert_eq!(
        low.dtype(),
        DType::F32,
        "logits are f32 whatever the weights"
    );
    let high = f32_model.forward(&ids, &mask, false).expect("f32 forward");
    let diff = max_abs_diff(
        &fresh.narrow(0, 0, 1).expect("row 0"),
        &high.narrow(0, 0, 1).expect("row 0"),
    );
    assert!(diff < 0.1, "bf16 vs f32 logits differ by {diff}");
    let grads = low.sum_all().and_then(|l| l.backward()).expect("backward");
    for (name, var) in bf16.trainable_vars() {
        assert_eq!(var.dtype(), DType::F32, "{name}");
        assert!(
            grads.get(var.as_tensor()).is_some(),
            "{name} has no gradient"
        );
    }
}
