//! Shared helpers: fixtures, tiny models, comparisons.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use model::{CausalLm, LoraConfig, ModelConfig, Trainable};

/// The families of committed transformers fixtures.
pub const FIXTURES: [&str; 5] = [
    "tiny-llama",
    "tiny-llama3-rope",
    "tiny-deepseek",
    "tiny-mistral",
    "tiny-smollm",
];

pub fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// `reference.json`: input ids, mask and transformers' logits.
pub struct Reference {
    pub input_ids: Vec<Vec<u32>>,
    pub attention_mask: Vec<Vec<u32>>,
    pub logits: Vec<Vec<Vec<f32>>>,
}

pub fn reference(name: &str) -> Reference {
    let path = fixture_dir(name).join("reference.json");
    let text = std::fs::read_to_string(&path).expect("reference.json is committed");
    let v: serde_json::Value = serde_json::from_str(&text).expect("reference.json parses");
    let take = |k: &str| {
        v.get(k)
            .cloned()
            .unwrap_or_else(|| panic!("{k} in {}", path.display()))
    };
    Reference {
        input_ids: serde_json::from_value(take("input_ids")).expect("input_ids"),
        attention_mask: serde_json::from_value(take("attention_mask")).expect("attention_mask"),
        logits: serde_json::from_value(take("logits")).expect("logits"),
    }
}

pub fn ids_tensor(rows: &[Vec<u32>]) -> Tensor {
    let t = rows[0].len();
    let flat: Vec<u32> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), t), &Device::Cpu).expect("ids tensor")
}

pub fn load_fixture(name: &str, trainable: &Trainable) -> CausalLm {
    CausalLm::load(&fixture_dir(name), DType::F32, &Device::Cpu, trainable, 7)
        .expect("fixture loads")
}

pub fn lora_all() -> LoraConfig {
    LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.1,
        target_modules: model::lora::LINEAR_MODULES.map(String::from).to_vec(),
    }
}

pub fn tiny(dtype: DType, trainable: &Trainable) -> CausalLm {
    CausalLm::random(ModelConfig::tiny(), dtype, &Device::Cpu, trainable, 11).expect("tiny model")
}

/// Gives every LoRA `B` small random values (a fresh adapter has `B = 0`, which zeroes `A`'s gradient).
pub fn perturb_lora_b(model: &CausalLm, seed: u64) {
    let rng = model::lora::SeededRng::new(seed);
    for (name, var) in model.trainable_vars() {
        if name.ends_with("lora_B.weight") {
            let n = var.elem_count();
            let data: Vec<f32> = rng
                .uniform(n)
                .into_iter()
                .map(|u| (u - 0.5) * 0.2)
                .collect();
            let t = Tensor::from_vec(data, var.shape(), &Device::Cpu)
                .and_then(|t| t.to_dtype(var.dtype()))
                .expect("B values");
            var.set(&t).expect("set B");
        }
    }
}

/// Max |a - b| of two same-shaped tensors.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_dtype(DType::F32))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("diff")
}

/// A fixed batch: row 0 full length, row 1 left-padded by 3.
pub fn batch(t: usize, vocab: u32) -> (Tensor, Tensor) {
    let row0: Vec<u32> = (0..t as u32).map(|i| (i * 37 + 5) % vocab).collect();
    let row1: Vec<u32> = (0..t as u32)
        .map(|i| if i < 3 { 2 } else { (i * 53 + 11) % vocab })
        .collect();
    let mask1: Vec<u32> = (0..t).map(|i| u32::from(i >= 3)).collect();
    (ids_tensor(&[row0, row1]), ids_tensor(&[vec![1; t], mask1]))
}

/// Mean next-token negative log-likelihood over predictions from a real token of a real token (what the
/// trainer minimises, in spirit). A padding position's logits are not meaningful: in a fully masked attention row
/// every score is absorbed by the mask value, so its analytic and numeric gradients legitimately differ.
pub fn nll(logits: &Tensor, ids: &Tensor, mask: &Tensor) -> Tensor {
    let (b, t, v) = logits.dims3().expect("logits dims");
    let f = || -> candle_core::Result<Tensor> {
        let lp = candle_nn::ops::log_softmax(
            &logits.narrow(1, 0, t - 1)?.reshape((b * (t - 1), v))?,
            1,
        )?;
        let target = ids.narrow(1, 1, t - 1)?.reshape((b * (t - 1), 1))?;
        let picked = lp.gather(&target, 1)?.squeeze(1)?;
        let m = (mask.narrow(1, 1, t - 1)? * mask.narrow(1, 0, t - 1)?)?
            .reshape(b * (t - 1))?
            .to_dtype(picked.dtype())?;
        model::ops::mul(&picked, &m)?.sum_all()?.neg()?
            / m.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?
    };
    f().expect("nll")
}
