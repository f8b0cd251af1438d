//! Forward + backward and decoding benches of the `model` decoder on a small random Llama (hidden 256, 4 layers,
//! vocab 2048, GQA 8/4 heads), CPU, f32. The SmolLM2-135M-sized measurements (step time, peak RSS, generation
//! tokens/s) are `cargo run --release -p model --example measure`.

use std::hint::black_box;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use model::{CausalLm, GenerateOptions, LoraConfig, ModelConfig, Trainable, generate};

const SMALL: &str = r#"{"model_type":"llama","vocab_size":2048,"hidden_size":256,"intermediate_size":688,
"num_hidden_layers":4,"num_attention_heads":8,"num_key_value_heads":4,"rms_norm_eps":1e-5,"rope_theta":10000,
"tie_word_embeddings":false,"bos_token_id":0,"eos_token_id":1}"#;

fn small(trainable: &Trainable) -> CausalLm {
    let config = ModelConfig::from_json_str(SMALL, Path::new("<bench>")).expect("bench config");
    CausalLm::random(config, DType::F32, &Device::Cpu, trainable, 0).expect("random model")
}

fn batch(b: usize, t: usize) -> (Tensor, Tensor) {
    let ids: Vec<u32> = (0..(b * t) as u32)
        .map(|i| (i * 7919 + 13) % 2048)
        .collect();
    (
        Tensor::from_vec(ids, (b, t), &Device::Cpu).expect("ids"),
        Tensor::ones((b, t), DType::U32, &Device::Cpu).expect("mask"),
    )
}

fn train_step(model: &CausalLm, ids: &Tensor, mask: &Tensor) -> candle_core::Result<f32> {
    let logits = model
        .forward(ids, mask, true)
        .map_err(candle_core::Error::wrap)?;
    let (b, t, v) = logits.dims3()?;
    let lp =
        candle_nn::ops::log_softmax(&logits.narrow(1, 0, t - 1)?.reshape((b * (t - 1), v))?, 1)?;
    let target = ids.narrow(1, 1, t - 1)?.reshape((b * (t - 1), 1))?;
    let loss = lp.gather(&target, 1)?.mean_all()?.neg()?;
    let grads = loss.backward()?;
    black_box(grads);
    loss.to_scalar::<f32>()
}

fn forward_backward(c: &mut Criterion) {
    let (ids, mask) = batch(2, 128);
    let mut group = c.benchmark_group("forward_backward_2x128");
    group.sample_size(10);
    for (name, trainable) in [
        ("lora", Trainable::Lora(LoraConfig::default())),
        ("full", Trainable::Full),
    ] {
        let model = small(&trainable);
        group.bench_function(name, |bench| {
            bench.iter(|| train_step(&model, &ids, &mask).expect("step"))
        });
    }
    group.finish();
}

fn decoding(c: &mut Criterion) {
    let model = small(&Trainable::Frozen);
    let prompts: Vec<Vec<u32>> = (0..4u32)
        .map(|r| (0..(16 + r)).map(|i| (i * 31 + r) % 2048).collect())
        .collect();
    let opts = GenerateOptions {
        max_new_tokens: 32,
        eos_ids: vec![],
        pad_id: 0,
        stop: None,
    };
    let mut group = c.benchmark_group("generate");
    group.sample_size(10);
    group.bench_function("batch4_32_new", |bench| {
        bench.iter(|| generate(&model, black_box(&prompts), &opts).expect("generate"))
    });
    group.finish();
}

criterion_group!(benches, forward_backward, decoding);
criterion_main!(benches);
