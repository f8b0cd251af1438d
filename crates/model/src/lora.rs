//! Linear layers that may carry a LoRA adapter, with PEFT's meaning of every setting.
//!
//! `y = x·Wᵀ + (α/r)·dropout(x)·Aᵀ·Bᵀ` with `A (r, in)` Kaiming-uniform (PEFT's `kaiming_uniform_(a=√5)`, i.e.
//! `U(-1/√in, 1/√in)`) and `B (out, r)` zero, so a fresh adapter is exactly the base. `W` is a [`Param`]: frozen
//! (through the const-operand op, no weight gradient) or trainable (full fine-tuning).

use std::sync::Mutex;

use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::ops::Param;

/// The linear layers of a block that may carry adapters, by their HF module names.
pub const LINEAR_MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// LoRA hyper-parameters (PEFT names and meanings; `scale = alpha / r`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank of the update.
    pub r: usize,
    /// `lora_alpha`; the update is scaled by `alpha / r`.
    pub alpha: f64,
    /// `lora_dropout`: dropout on the adapter's input while training.
    pub dropout: f64,
    /// HF module names that get adapters (`q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`,
    /// `down_proj`).
    pub target_modules: Vec<String>,
}

impl Default for LoraConfig {
    /// PEFT's usual setting for this task: r 16, α 16, dropout 0.05, attention projections.
    fn default() -> Self {
        LoraConfig {
            r: 16,
            alpha: 16.0,
            dropout: 0.05,
            target_modules: ["q_proj", "k_proj", "v_proj", "o_proj"]
                .map(String::from)
                .to_vec(),
        }
    }
}

impl LoraConfig {
    /// `alpha / r`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.r as f64
    }

    /// Checks the rank, dropout and that every target names a linear layer.
    pub fn validate(&self) -> crate::Result<()> {
        if self.r == 0 {
            return Err(crate::Error::State("LoRA rank r must be positive".into()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(crate::Error::State(format!(
                "LoRA dropout {} must be in [0, 1)",
                self.dropout
            )));
        }
        if self.target_modules.is_empty() {
            return Err(crate::Error::State("LoRA target_modules is empty".into()));
        }
        for t in &self.target_modules {
            if !LINEAR_MODULES.contains(&t.as_str()) {
                return Err(crate::Error::UnknownLoraTarget(t.clone()));
            }
        }
        Ok(())
    }

    /// Whether the module named `name` (e.g. `q_proj`) gets an adapter.
    pub fn targets(&self, name: &str) -> bool {
        self.target_modules.iter().any(|t| t == name)
    }
}

/// What a loaded model trains.
#[derive(Debug, Clone, PartialEq)]
pub enum Trainable {
    /// Nothing (evaluation): every weight is a plain tensor.
    Frozen,
    /// Every weight is a [`Var`].
    Full,
    /// Base weights frozen, LoRA adapters (f32 [`Var`]s) on the targets of every layer.
    Lora(LoraConfig),
}

/// A small deterministic generator (SplitMix64) for adapter initialisation and dropout masks: candle's CPU
/// backend cannot be seeded.
#[derive(Debug)]
pub struct SeededRng {
    state: Mutex<u64>,
}

impl SeededRng {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        SeededRng {
            state: Mutex::new(seed),
        }
    }

    fn next_u64(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The whole generator state. (Added for `train`: it checkpoints the dropout stream for a bit-exact resume
    /// and rewinds it to replay the same dropout masks when a block's activations are recomputed.)
    pub fn state(&self) -> u64 {
        *self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Restores a state returned by [`SeededRng::state`] (added for `train`, see there).
    pub fn set_state(&self, state: u64) {
        *self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = state;
    }

    /// `n` uniform samples in `[0, 1)`.
    pub fn uniform(&self, n: usize) -> Vec<f32> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (0..n)
            .map(|_| (Self::next_u64(&mut state) >> 40) as f32 / (1u64 << 24) as f32)
            .collect()
    }
}

/// The dtype of adapters on a model of `model_dtype`: f32 (so AdamW keeps full-precision updates), or f64 for an
/// f64 model (finite-difference tests).
pub fn adapter_dtype(model_dtype: DType) -> DType {
    if model_dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// A LoRA adapter: `A (r, in)`, `B (out, r)`, trainable variables in [`adapter_dtype`].
#[derive(Debug, Clone)]
pub struct Adapter {
    /// `lora_A.weight`, `(r, in)`.
    pub a: Var,
    /// `lora_B.weight`, `(out, r)`.
    pub b: Var,
    /// `alpha / r`.
    pub scale: f64,
    /// Dropout probability on the adapter input while training.
    pub dropout: f64,
}

impl Adapter {
    /// A fresh PEFT-initialised adapter: `A ~ U(-1/√in, 1/√in)`, `B = 0`.
    /// `dtype` is [`adapter_dtype`] of the model's dtype.
    pub fn init(
        in_dim: usize,
        out_dim: usize,
        config: &LoraConfig,
        rng: &SeededRng,
        dtype: DType,
        device: &candle_core::Device,
    ) -> crate::Result<Self> {
        let bound = 1.0 / (in_dim as f32).sqrt();
        let a: Vec<f32> = rng
            .uniform(config.r * in_dim)
            .into_iter()
            .map(|u| (2.0 * u - 1.0) * bound)
            .collect();
        let a =
            Var::from_tensor(&Tensor::from_vec(a, (config.r, in_dim), device)?.to_dtype(dtype)?)?;
        let b = Var::zeros((out_dim, config.r), dtype, device)?;
        Ok(Adapter {
            a,
            b,
            scale: config.scale(),
            dropout: config.dropout,
        })
    }

    /// `scale · B·A`, the weight update, in `dtype`.
    pub fn delta(&self, dtype: DType) -> crate::Result<Tensor> {
        Ok((self.b.as_tensor().matmul(self.a.as_tensor())? * self.scale)?.to_dtype(dtype)?)
    }
}

/// A bias-free linear layer with an optional LoRA adapter.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `weight`, `(out, in)`.
    pub weight: Param,
    /// The adapter, when this module is a LoRA target.
    pub adapter: Option<Adapter>,
}

impl Linear {
    /// `x·Wᵀ (+ scale·dropout(x)·Aᵀ·Bᵀ)`. The adapter runs in its own dtype (f32) and its result is cast to
    /// `x`'s dtype.
    pub fn forward(&self, x: &Tensor, train: bool, rng: &SeededRng) -> candle_core::Result<Tensor> {
        let y = self.weight.matmul_t(x)?;
        let Some(ad) = &self.adapter else {
            return Ok(y);
        };
        let xf = x.to_dtype(ad.a.dtype())?;
        let xd = if train && ad.dropout > 0.0 {
            dropout(&xf, ad.dropout, rng)?
        } else {
            xf
        };
        let low = if xd.track_op() {
            xd.broadcast_matmul(&ad.a.as_tensor().t()?)?
        } else {
            // Untracked input (e.g. a frozen embedding's output): x·Aᵀ = (A·xᵀ)ᵀ with x the constant, so no
            // activation-sized gradient of x is stored.
            let dims = xd.dims().to_vec();
            let k = dims[dims.len() - 1];
            let x2 = xd.reshape((xd.elem_count() / k, k))?;
            let mut out = dims[..dims.len() - 1].to_vec();
            out.push(ad.a.dim(0)?);
            crate::ops::const_matmul_t(ad.a.as_tensor(), &x2)?
                .t()?
                .reshape(out)?
        };
        // The scale applied to the rank-r intermediate, not the output-sized product (r/out of the work; a zero B
        // still gives an exactly zero update).
        let up = (low * ad.scale)?.broadcast_matmul(&ad.b.as_tensor().t()?)?;
        let dtype = y.dtype();
        crate::ops::add(&y, &up.to_dtype(dtype)?)
    }

    /// Output and input widths of the base weight.
    pub fn dims(&self) -> candle_core::Result<(usize, usize)> {
        self.weight.tensor().dims2()
    }
}

/// Inverted dropout with a mask drawn from `rng` (kept values scaled by `1/(1-p)`); the mask is a constant.
pub fn dropout(x: &Tensor, p: f64, rng: &SeededRng) -> candle_core::Result<Tensor> {
    let keep = 1.0 - p as f32;
    let mask: Vec<f32> = rng
        .uniform(x.elem_count())
        .into_iter()
        .map(|u| if u < keep { 1.0 / keep } else { 0.0 })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    crate::ops::const_mul(x, &mask)
}
