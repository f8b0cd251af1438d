//! Overfitting one batch proves that gradients reach every trainable tensor and the update is right; LoRA must
//! not touch the base weights.

use candle_core::{DType, Device};
use task::config::MemorySection;
use train::batch::{Batch, TokenRow, make_batch};
use train::engine::Engine;
use train::optim::{AdamW, AdamWConfig, MomentFormat};

use crate::support::{tiny_data, tiny_model};

/// Two rows of the tiny dataset, encoded as the trainer encodes them with the tokenizer of the model in `dir`.
fn one_batch(dir: &std::path::Path) -> Batch {
    let codec = model::text::TextCodec::from_dir(dir).expect("tokenizer");
    let problems = task::load(&tiny_data(), &task::LoadOptions::default()).expect("data");
    // The two shortest problems: a few dozen target tokens the tiny model can memorise.
    let rows: Vec<TokenRow> = problems
        .iter()
        .filter(|p| ["Kubernetes_namespace_q1", "Kubernetes_configmap_q1"].contains(&p.id.as_str()))
        .map(|p| {
            // A short prompt keeps the debug-build test fast; the template is irrelevant to overfitting.
            let prompt = format!("Question: {}\n", p.questions[&task::Variant::Simplified]);
            let pair = codec
                .encode_pair(&prompt, &task::completion_target(p))
                .expect("encode");
            TokenRow {
                id: p.id.clone(),
                ids: pair.ids,
                prompt_len: pair.prompt_len,
            }
        })
        .collect();
    let refs: Vec<&TokenRow> = rows.iter().collect();
    make_batch(&refs, codec.pad_id(), &Device::Cpu).expect("batch")
}

fn adamw() -> AdamWConfig {
    AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        moments: MomentFormat::F32,
        moments_on_host: false,
    }
}

/// The model in `dir` in f32 on the CPU, trained as `trainable` (adapters seeded with 3).
fn f32_model(dir: &std::path::Path, trainable: &model::Trainable) -> model::CausalLm {
    model::CausalLm::load(dir, DType::F32, &Device::Cpu, trainable, 3).expect("model")
}

/// Trains `steps` steps on one batch (tokenized for the model in `dir`); returns the per-step mean losses.
fn overfit(lm: &model::CausalLm, dir: &std::path::Path, lr: f64, steps: usize) -> Vec<f64> {
    let optimizer = AdamW::new(lm.trainable_vars(), adamw()).expect("optimizer");
    let engine = Engine::new(&optimizer, &MemorySection::default(), None);
    train_steps(lm, dir, optimizer, engine, lr, steps)
}

fn train_steps(
    lm: &model::CausalLm,
    dir: &std::path::Path,
    mut optimizer: AdamW,
    engine: Engine,
    lr: f64,
    steps: usize,
) -> Vec<f64> {
    let batch = one_batch(dir);
    (0..steps)
        .map(|_| {
            let stats = engine
                .train_step(lm, &mut optimizer, std::slice::from_ref(&batch), lr)
                .expect("step");
            assert!(stats.applied);
            stats.loss_sum / stats.target_tokens as f64
        })
        .collect()
}

#[test]
fn full_fine_tuning_overfits_one_batch() {
    let lm = f32_model(&tiny_model(), &model::Trainable::Full);
    let losses = overfit(&lm, &tiny_model(), 3e-3, 40);
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    assert!(
        last < 0.1 * first,
        "full FT loss {first:.4} → {last:.4} (want a > 90% drop): {losses:?}"
    );
}

#[test]
fn lora_overfits_one_batch_and_leaves_the_base_bit_identical() {
    let lora = model::LoraConfig {
        r: 16,
        alpha: 32.0,
        dropout: 0.0,
        target_modules: model::lora::LINEAR_MODULES.map(String::from).to_vec(),
    };
    let lm = f32_model(&tiny_model(), &model::Trainable::Lora(lora));
    let before: Vec<(String, Vec<f32>)> = sorted_base(&lm);
    let losses = overfit(&lm, &tiny_model(), 1e-2, 80);
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    // The tiny fixture's frozen lm_head (rows of norm ≈ 0.8) and final norm (|h| = 8) bound every logit by ≈ 6.4
    // while the 511 other logits spread with σ ≈ 0.8, so no adapter can push the loss below ≈ 0.6–0.9 nats (it
    // levels off at 0.886 after 150 steps). The bar is therefore an 85% drop, i.e. most of the way to that floor.
    assert!(
        last < 0.15 * first,
        "LoRA loss {first:.4} → {last:.4} (want a > 85% drop): {losses:?}"
    );
    let after = sorted_base(&lm);
    assert_eq!(before.len(), after.len());
    for ((name, a), (_, b)) in before.iter().zip(&after) {
        assert!(
            a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "base tensor {name} changed"
        );
    }
}

/// The whole-graph step's two ways of running a padded batch — its rows concurrently, each unpadded with the batch's
/// dropout values, or the padded batch at once — train the same (only the summation order differs), with dropout.
#[test]
fn concurrent_rows_train_like_the_padded_batch() {
    let lora = model::LoraConfig {
        r: 8,
        alpha: 16.0,
        dropout: 0.2,
        target_modules: model::lora::LINEAR_MODULES.map(String::from).to_vec(),
    };
    let curve = |concurrent: bool| {
        let lm = f32_model(&tiny_model(), &model::Trainable::Lora(lora.clone()));
        let optimizer = AdamW::new(lm.trainable_vars(), adamw()).expect("optimizer");
        let engine = Engine::new(&optimizer, &MemorySection::default(), Some(1.0))
            .with_rows_concurrently(concurrent);
        train_steps(&lm, &tiny_model(), optimizer, engine, 1e-2, 6)
    };
    let (rows, padded) = (curve(true), curve(false));
    for (step, (a, b)) in rows.iter().zip(&padded).enumerate() {
        assert!(
            (a - b).abs() <= 1e-6 * b.abs(),
            "step {}: {a} (rows) vs {b} (padded)\n{rows:?}\n{padded:?}",
            step + 1
        );
    }
    assert!(padded[5] < padded[0], "the loss must move: {padded:?}");
}

/// The paper's LoRA (r 16, α 16, q/k/v/o) on real pretrained weights (SmolLM2-135M-Instruct from the fetched GGUF),
/// whose head is not the tiny fixture's bottleneck: the loss on one batch falls by more than 90% within 12 steps
/// (measured: 2.707 → 0.0069 after 10 steps, 0.0005 after 30).
#[test]
fn paper_lora_overfits_one_batch_of_a_pretrained_model() {
    let assets = std::env::var_os("KUBETUNE_ASSETS").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/assets"),
        std::path::PathBuf::from,
    );
    let gguf = assets.join("smollm2-135m-instruct.gguf");
    assert!(
        gguf.exists(),
        "{} is missing: run scripts/fetch-assets.sh (or point KUBETUNE_ASSETS at the assets root)",
        gguf.display()
    );
    let converted = tempfile::tempdir().expect("temp dir");
    let dir = model::source::ModelSource::Gguf(gguf)
        .resolve(&model::source::ResolveOptions {
            converted_dir: Some(converted.path().to_owned()),
            ..model::source::ResolveOptions::default()
        })
        .expect("converts the GGUF");
    let lora = model::LoraConfig {
        dropout: 0.0,
        ..model::LoraConfig::default()
    };
    let lm = f32_model(&dir, &model::Trainable::Lora(lora));
    let losses = overfit(&lm, &dir, 2e-3, 12);
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    assert!(
        last < 0.1 * first,
        "LoRA loss {first:.4} → {last:.4} (want a > 90% drop): {losses:?}"
    );
}

fn sorted_base(lm: &model::CausalLm) -> Vec<(String, Vec<f32>)> {
    let mut out: Vec<(String, Vec<f32>)> = lm
        .base_tensors()
        .into_iter()
        .map(|(name, t)| {
            (
                name,
                t.flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .expect("tensor values"),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}
