//! Logits parity with transformers on every committed fixture family (f32, eager attention), at every real
//! position of a batch with a left-padded row.

use candle_core::DType;
use model::Trainable;

use super::support::{ids_tensor, load_fixture, reference};

fn check_parity(name: &str) {
    let r = reference(name);
    let model = load_fixture(name, &Trainable::Frozen);
    let ids = ids_tensor(&r.input_ids);
    let mask = ids_tensor(&r.attention_mask);
    let logits = model.forward(&ids, &mask, false).expect("forward");
    assert_eq!(logits.dtype(), DType::F32);
    let ours = logits.to_vec3::<f32>().expect("logits");
    let mut worst = 0f32;
    for (b, row) in r.logits.iter().enumerate() {
        for (t, want) in row.iter().enumerate() {
            if r.attention_mask[b][t] == 0 {
                continue;
            }
            for (x, y) in ours[b][t].iter().zip(want) {
                worst = worst.max((x - y).abs());
            }
        }
    }
    assert!(worst < 1e-4, "{name}: max |ours - transformers| = {worst}");
}

#[test]
fn parity_tiny_llama_gqa() {
    check_parity("tiny-llama");
}

#[test]
fn parity_tiny_llama3_rope_scaling() {
    check_parity("tiny-llama3-rope");
}

#[test]
fn parity_tiny_deepseek_linear_rope_mha() {
    check_parity("tiny-deepseek");
}

#[test]
fn parity_tiny_mistral_sliding_window() {
    check_parity("tiny-mistral");
}

#[test]
fn parity_tiny_smollm_tied_embeddings() {
    check_parity("tiny-smollm");
}
