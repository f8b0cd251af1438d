//! Linear layers that may carry a LoRA adapter, with PEFT's meaning of every setting.
//!
//! `y = x·Wᵀ + (α/r)·dropout(x)·Aᵀ·Bᵀ` with `A (r, in)` Kaiming-uniform (PEFT's `kaiming_uniform_(a=√5)`, i.e.
//! `U(-1/√in, 1/√in)`) and `B (out, r)` zero, so a fresh adapter is exactly the base. `W` is a [`Param`]: frozen
//! (through the const-operand op, no weight gradient) or trainable (full fine-tuning).

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor, Var, WithDType};
use rayon::prelude::*;
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

/// SplitMix64's state increment.
const SPLITMIX_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function of the state after `n` increments.
#[inline(always)]
fn splitmix_mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A small deterministic generator (SplitMix64) for adapter initialisation and dropout masks: candle's CPU
/// backend cannot be seeded.
#[derive(Debug)]
pub struct SeededRng {
    state: Mutex<u64>,
    /// Set for the stream of one row of a padded batch ([`SeededRng::row_of_batch`]).
    row: Option<RowOfBatch>,
}

/// Where one row sits in the padded batch whose dropout stream it reproduces.
#[derive(Debug, Clone, Copy)]
struct RowOfBatch {
    index: u64,
    rows: u64,
    padded_len: u64,
    len: u64,
}

impl SeededRng {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        SeededRng {
            state: Mutex::new(seed),
            row: None,
        }
    }

    /// The dropout stream of row `index` (of `len` real tokens) of a right-padded `(rows, padded_len)` batch
    /// whose forward would start drawing at `start`: a forward of that row alone draws, element for element, the
    /// dropout values the row gets in the batch forward, and leaves [`SeededRng::state`] where the batch forward
    /// leaves it. (The trainer runs the rows of a batch concurrently and needs the same masks as the batched
    /// forward.) Every draw must cover whole tokens: `n` a multiple of `len`.
    pub fn row_of_batch(
        start: u64,
        index: usize,
        rows: usize,
        padded_len: usize,
        len: usize,
    ) -> Self {
        SeededRng {
            state: Mutex::new(start),
            row: Some(RowOfBatch {
                index: index as u64,
                rows: rows as u64,
                padded_len: padded_len as u64,
                len: len.max(1) as u64,
            }),
        }
    }

    /// Returns the current state and moves the generator past `n` draws (SplitMix64's state only counts, so
    /// draw `i` from the returned state can be recomputed independently). For a row of a batch, `n` covers the
    /// row's tokens: the batch's draw of `rows · padded_len` tokens of the same width is skipped, and the row's
    /// own slice of it is returned.
    fn skip(&self, n: usize) -> u64 {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let start = *state;
        let (own_offset, batch_draws) = match self.row {
            None => (0, n as u64),
            Some(r) => {
                let width = n as u64 / r.len;
                (
                    r.index * r.padded_len * width,
                    r.rows * r.padded_len * width,
                )
            }
        };
        *state = start.wrapping_add(SPLITMIX_GAMMA.wrapping_mul(batch_draws));
        start.wrapping_add(SPLITMIX_GAMMA.wrapping_mul(own_offset))
    }

    fn next_u64(state: &mut u64) -> u64 {
        *state = state.wrapping_add(SPLITMIX_GAMMA);
        splitmix_mix(*state)
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
        let Some(ad) = &self.adapter else {
            return self.weight.matmul_t(x);
        };
        let xf = x.to_dtype(ad.a.dtype())?;
        if let Param::Frozen(w) = &self.weight
            && xf.track_op()
            && crate::fused::lora_linear_applies(x, ad.a.as_tensor())
        {
            // One graph node for the whole module (see `fused`): nothing output-sized is kept for backward.
            let dims = xf.dims().to_vec();
            let k = dims[dims.len() - 1];
            let x2 = xf.reshape((xf.elem_count() / k, k))?;
            let mask = (train && ad.dropout > 0.0)
                .then(|| DropoutMask::draw(ad.dropout, x2.elem_count(), rng));
            let mut out = dims[..dims.len() - 1].to_vec();
            out.push(w.dim(0)?);
            let y = crate::fused::lora_linear(
                &x2,
                w,
                ad.a.as_tensor(),
                ad.b.as_tensor(),
                ad.scale,
                mask,
            )?;
            return y.reshape(out);
        }
        let y = self.weight.matmul_t(x)?;
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

/// A dropout mask by its generator state: element `i` is kept (scaled by `1/keep`) when draw `i` from `start` is
/// below `keep`. The mask itself is not stored: it is regenerated wherever it is applied, or made into bits
/// ([`DropoutMask::to_bits`]) by a node that applies it several times.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropoutMask {
    start: u64,
    keep: f32,
}

impl DropoutMask {
    /// Draws the mask of `n` elements with drop probability `p` (advances `rng` past `n` draws).
    pub fn draw(p: f64, n: usize, rng: &SeededRng) -> Self {
        DropoutMask {
            start: rng.skip(n),
            keep: 1.0 - p as f32,
        }
    }

    /// The mask's first `n` elements as one bit each (1 = kept). Drawing an element costs a SplitMix64 hash; the
    /// fused LoRA node applies its mask three times (forward, and for `dA` and `dx` in backward) and now draws it
    /// once, for `n / 8` bytes held until its backward.
    pub fn to_bits(self, n: usize) -> DropoutBits {
        let mut words = vec![0u64; n.div_ceil(64)];
        words
            .par_chunks_mut(DROPOUT_CHUNK / 64)
            .enumerate()
            .for_each(|(c, words)| {
                let first = c * DROPOUT_CHUNK;
                let mut factors = vec![0f32; DROPOUT_CHUNK.min(n - first)];
                dropout_factors(self.start, first, self.keep, &mut factors);
                for (word, factors) in words.iter_mut().zip(factors.chunks(64)) {
                    *word = factors
                        .iter()
                        .enumerate()
                        .fold(0, |bits, (b, &f)| bits | (u64::from(f != 0.0) << b));
                }
            });
        DropoutBits {
            words,
            len: n,
            keep: self.keep,
        }
    }
}

/// A dropout mask made into bits by [`DropoutMask::to_bits`]: bit `i % 64` of word `i / 64` is 1 where element `i`
/// is kept.
#[derive(Debug)]
pub struct DropoutBits {
    words: Vec<u64>,
    len: usize,
    keep: f32,
}

impl DropoutBits {
    /// Writes the multipliers of elements `first..first + out.len()` (`first` a multiple of 64): `1/keep` or 0, the
    /// values [`dropout_factors`] writes for the mask the bits were made from.
    fn factors(&self, first: usize, out: &mut [f32]) {
        let kept = 1.0 / self.keep;
        for (out, &word) in out.chunks_mut(64).zip(&self.words[first / 64..]) {
            for (b, o) in out.iter_mut().enumerate() {
                *o = if (word >> b) & 1 == 1 { kept } else { 0.0 };
            }
        }
    }
}

/// `x ⊙ mask` for a mask held as bits: the values [`dropout_with`] gives for the mask the bits were made from. CPU,
/// f32/f64; no gradient is recorded (for the fused LoRA node, which works on detached tensors).
pub(crate) fn dropout_bits_apply(x: &Tensor, bits: &DropoutBits) -> candle_core::Result<Tensor> {
    if x.elem_count() != bits.len {
        candle_core::bail!(
            "dropout: a mask of {} elements applied to a tensor of {}",
            bits.len,
            x.elem_count()
        );
    }
    x.contiguous()?.apply_op1_no_bwd(&BitsDropoutOp(bits))
}

/// [`dropout_bits_apply`]'s CPU kernel.
struct BitsDropoutOp<'a>(&'a DropoutBits);

impl crate::ops::RowKernel for BitsDropoutOp<'_> {
    fn apply<T: crate::ops::num_float::Float>(&self, x: &[T], _width: usize) -> Vec<T> {
        apply_dropout_factors(x, |first, factors| self.0.factors(first, factors))
    }
}

impl CustomOp1 for BitsDropoutOp<'_> {
    fn name(&self) -> &'static str {
        "dropout-mask-bits"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        crate::ops::row_cpu_fwd(self.name(), self, storage, layout)
    }
}

/// Inverted dropout with a mask drawn from `rng` (kept values scaled by `1/(1-p)`); the mask is a constant.
/// The generator is counter-based (SplitMix64), so on the CPU the mask is never stored: the op remembers the
/// generator state it started from and regenerates the mask in backward (same values as drawing
/// `rng.uniform(n)`).
pub fn dropout(x: &Tensor, p: f64, rng: &SeededRng) -> candle_core::Result<Tensor> {
    dropout_with(x, DropoutMask::draw(p, x.elem_count(), rng))
}

/// `x ⊙ mask` for a mask drawn by [`DropoutMask::draw`] over `x`'s element count.
pub fn dropout_with(x: &Tensor, mask: DropoutMask) -> candle_core::Result<Tensor> {
    let DropoutMask { start, keep } = mask;
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        return x.contiguous()?.apply_op1(DropoutOp { start, keep });
    }
    let n = x.elem_count();
    let mask: Vec<f32> = (0..n).map(|i| dropout_factor(start, i, keep)).collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    crate::ops::const_mul(x, &mask)
}

/// The dropout multiplier of element `i` for a mask drawn from generator state `start`: `1/keep` or 0.
fn dropout_factor(start: u64, i: usize, keep: f32) -> f32 {
    let mut state = start.wrapping_add(SPLITMIX_GAMMA.wrapping_mul(i as u64));
    let u = (SeededRng::next_u64(&mut state) >> 40) as f32 / (1u64 << 24) as f32;
    if u < keep { 1.0 / keep } else { 0.0 }
}

/// Elements per parallel task of the dropout kernels (a multiple of 64, so a task's mask bits are whole words).
const DROPOUT_CHUNK: usize = 16 * 1024;

/// `x ⊙ mask` with the mask regenerated from a generator state; linear and diagonal, so it is its own backward.
struct DropoutOp {
    start: u64,
    keep: f32,
}

fn dropout_apply<T: WithDType + std::ops::Mul<Output = T> + Send + Sync>(
    x: &[T],
    start: u64,
    keep: f32,
) -> Vec<T> {
    apply_dropout_factors(x, |first, factors| {
        dropout_factors(start, first, keep, factors)
    })
}

/// `x ⊙ factors` in parallel chunks of [`DROPOUT_CHUNK`] elements, the factors of the chunk starting at element
/// `first` written by `fill(first, factors)`: the one multiplication both ways of applying a mask share, so they give
/// the same bits.
fn apply_dropout_factors<T: WithDType + std::ops::Mul<Output = T> + Send + Sync>(
    x: &[T],
    fill: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(DROPOUT_CHUNK)
        .zip(x.par_chunks(DROPOUT_CHUNK))
        .enumerate()
        .for_each(|(c, (o, xs))| {
            let mut factors = vec![0f32; xs.len()];
            fill(c * DROPOUT_CHUNK, &mut factors);
            for ((o, &v), &f) in o.iter_mut().zip(xs).zip(&factors) {
                *o = v * T::from_f64(f64::from(f));
            }
        });
    out
}

/// `out[j] = dropout_factor(start, first + j, keep)`, vectorised where the CPU allows: one element at a time it was
/// 4 % of a SmolLM2 LoRA step, when every adapted module regenerated its mask three times per step.
// `unsafe` only to call the feature-specific copies of the same safe code after the runtime feature check.
#[allow(unsafe_code)]
fn dropout_factors(start: u64, first: usize, keep: f32, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512dq") {
            // SAFETY: the CPU supports the features the function is compiled for (checked just above).
            return unsafe { dropout_factors_avx512(start, first, keep, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            return unsafe { dropout_factors_avx2(start, first, keep, out) };
        }
    }
    dropout_factors_body(start, first, keep, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
fn dropout_factors_avx512(start: u64, first: usize, keep: f32, out: &mut [f32]) {
    dropout_factors_body(start, first, keep, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dropout_factors_avx2(start: u64, first: usize, keep: f32, out: &mut [f32]) {
    dropout_factors_body(start, first, keep, out);
}

/// [`dropout_factor`] over consecutive elements, written so the compiler vectorises it (no early exits, the
/// 24-bit draw converted through `u32`, which is exact).
#[inline(always)]
fn dropout_factors_body(start: u64, first: usize, keep: f32, out: &mut [f32]) {
    let kept = 1.0 / keep;
    let first = start.wrapping_add(SPLITMIX_GAMMA.wrapping_mul(first as u64 + 1));
    for (j, o) in out.iter_mut().enumerate() {
        let z = splitmix_mix(first.wrapping_add(SPLITMIX_GAMMA.wrapping_mul(j as u64)));
        let u = ((z >> 40) as u32) as f32 / (1u32 << 24) as f32;
        *o = if u < keep { kept } else { 0.0 };
    }
}

impl crate::ops::RowKernel for DropoutOp {
    fn apply<T: crate::ops::num_float::Float>(&self, x: &[T], _width: usize) -> Vec<T> {
        dropout_apply(x, self.start, self.keep)
    }
}

impl CustomOp1 for DropoutOp {
    fn name(&self) -> &'static str {
        "dropout-regenerated-mask"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        crate::ops::row_cpu_fwd(self.name(), self, storage, layout)
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.apply_op1(DropoutOp {
            start: self.start,
            keep: self.keep,
        })?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_alone_draws_its_slice_of_the_padded_batch_dropout() -> candle_core::Result<()> {
        let dev = candle_core::Device::Cpu;
        let (rows, padded, width, start) = (3, 5, 4, 11u64);
        let batch_rng = SeededRng::new(start);
        let ones = Tensor::ones((rows, padded, width), DType::F32, &dev)?;
        // Two draws, as two adapted modules of one forward make them.
        let batch_masks = [
            dropout(&ones, 0.5, &batch_rng)?,
            dropout(&ones, 0.5, &batch_rng)?,
        ];
        for (index, len) in [(0, 5), (1, 2), (2, 4)] {
            let row_rng = SeededRng::row_of_batch(start, index, rows, padded, len);
            let alone = Tensor::ones((len, width), DType::F32, &dev)?;
            for mask in &batch_masks {
                let row = dropout(&alone, 0.5, &row_rng)?;
                let expected = mask.get(index)?.narrow(0, 0, len)?;
                assert_eq!(
                    row.to_vec2::<f32>()?,
                    expected.to_vec2::<f32>()?,
                    "row {index}"
                );
            }
            assert_eq!(
                row_rng.state(),
                batch_rng.state(),
                "row {index} ends where the batch does"
            );
        }
        Ok(())
    }

    /// The mask as bits applies the very values the regenerated mask does, across parallel chunks and a last word
    /// that is only partly used, in f32 and f64; a tensor of another size is refused.
    #[test]
    fn a_mask_made_into_bits_applies_the_regenerated_mask_values() -> candle_core::Result<()> {
        let dev = candle_core::Device::Cpu;
        let n = 2 * DROPOUT_CHUNK + 77;
        let rng = SeededRng::new(5);
        let mask = DropoutMask::draw(0.3, n, &rng);
        let bits = mask.to_bits(n);
        let x = (Tensor::arange(0f32, n as f32, &dev)? - 1000.0)?.reshape((n / 5, 5))?;
        for x in [x.clone(), x.to_dtype(DType::F64)?] {
            let expected = dropout_with(&x, mask)?
                .flatten_all()?
                .to_dtype(DType::F64)?;
            let got = dropout_bits_apply(&x, &bits)?
                .flatten_all()?
                .to_dtype(DType::F64)?;
            assert_eq!(got.to_vec1::<f64>()?, expected.to_vec1::<f64>()?);
        }
        let kept: usize = bits.words.iter().map(|w| w.count_ones() as usize).sum();
        assert!(
            (0.65..0.75).contains(&(kept as f64 / n as f64)),
            "kept {kept} of {n}"
        );
        assert!(dropout_bits_apply(&Tensor::zeros(n - 1, DType::F32, &dev)?, &bits).is_err());
        Ok(())
    }

    #[test]
    fn regenerated_dropout_equals_a_drawn_mask_and_back_propagates_it() -> candle_core::Result<()> {
        let dev = candle_core::Device::Cpu;
        let n = 40_000; // more than one parallel chunk
        let x = Var::from_tensor(&Tensor::arange(0f32, n as f32, &dev)?.reshape((200, 200))?)?;
        let (a, b) = (SeededRng::new(7), SeededRng::new(7));
        let y = dropout(x.as_tensor(), 0.3, &a)?;
        let keep = 0.7f32;
        let mask: Vec<f32> = b
            .uniform(n)
            .into_iter()
            .map(|u| if u < keep { 1.0 / keep } else { 0.0 })
            .collect();
        let mask = Tensor::from_vec(mask, (200, 200), &dev)?;
        let expected = (x.as_tensor() * &mask)?;
        assert_eq!(
            y.flatten_all()?.to_vec1::<f32>()?,
            expected.flatten_all()?.to_vec1::<f32>()?
        );
        assert_eq!(
            a.state(),
            b.state(),
            "the generator advances as if the mask were drawn"
        );
        let grads = y.sum_all()?.backward()?;
        let g = grads.get(x.as_tensor()).expect("gradient");
        assert_eq!(
            g.flatten_all()?.to_vec1::<f32>()?,
            mask.flatten_all()?.to_vec1::<f32>()?
        );
        Ok(())
    }
}
