//! AdamW (decoupled weight decay, PyTorch/HF semantics) with the moment-storage levers of the memory plan, global
//! gradient-norm clipping, and a state that (de)serialises to safetensors for exact resume.
//!
//! Moments can be kept in f32, bf16 or a blockwise int8 form, on the training device or on the host. The update
//! arithmetic is always f32: moments are decoded, updated, re-encoded. Each parameter can be stepped on its own
//! (`step_param`), which is what optimizer-in-backward needs: the trainer applies and frees every gradient as soon
//! as a block's backward has produced it.
//!
//! The int8 form follows the idea of bitsandbytes' 8-bit Adam (blocks of 256 values, each with its own absmax) but
//! with a power companding instead of bitsandbytes' dynamic quantile map, so it runs as plain tensor ops on any
//! device: `m` is stored as `round(127·sign(m)·√(|m|/absmax)) + 127` and `v` as `round(255·(v/max)^¼)`. Both keep
//! about five decades of range per block below its largest value, where a linear code keeps about two.

use std::collections::HashMap;

use std::sync::Mutex;

use candle_core::{CpuStorage, DType, Device, InplaceOp1, Layout, Result, Tensor, Var};
use rayon::prelude::*;

/// Values per quantisation block of the int8 moments.
pub const INT8_BLOCK: usize = 256;

/// How optimiser moments are stored between steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MomentFormat {
    /// 4 bytes per value per moment.
    F32,
    /// 2 bytes per value per moment.
    Bf16,
    /// 1 byte per value per moment plus one f32 scale per 256 values.
    Int8,
}

impl MomentFormat {
    /// The name used in configs and log records (`"f32"`, `"bf16"`, `"int8"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::Int8 => "int8",
        }
    }
}

/// AdamW hyper-parameters (the learning rate is passed per step by the schedule).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to √v̂.
    pub eps: f64,
    /// Decoupled weight decay (HF default 0.0; candle's default 0.01 is not used).
    pub weight_decay: f64,
    /// How the moments are stored.
    pub moments: MomentFormat,
    /// Keep the moments in host memory (the update is computed there and only the step is copied to the device).
    pub moments_on_host: bool,
}

/// One stored moment tensor.
#[derive(Debug, Clone)]
enum Moment {
    /// f32 or bf16, same shape as the parameter.
    Dense(Tensor),
    /// `(blocks, 256)` u8 codes and `(blocks, 1)` f32 block maxima.
    Int8 { codes: Tensor, absmax: Tensor },
}

/// Which moment a code belongs to: the first is signed, the second non-negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    First,
    Second,
}

#[derive(Debug)]
struct ParamState {
    name: String,
    var: Var,
    first: Moment,
    second: Moment,
}

/// AdamW over a fixed, named list of variables.
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    params: Vec<ParamState>,
    /// Completed optimiser steps (the `t` of the bias corrections).
    step: u64,
}

impl AdamW {
    /// An optimiser with zero moments for `vars`.
    pub fn new(vars: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        let mut params = Vec::with_capacity(vars.len());
        for (name, var) in vars {
            // One zero tensor per moment: the fused CPU step updates them in place, so they must not share
            // storage (an f32 `encode` of an f32 tensor is the same storage).
            let zeros = || {
                Tensor::zeros(
                    var.shape(),
                    DType::F32,
                    &moment_device(&config, var.device()),
                )
            };
            let first = encode(&zeros()?, config.moments, Kind::First)?;
            let second = encode(&zeros()?, config.moments, Kind::Second)?;
            params.push(ParamState {
                name,
                var,
                first,
                second,
            });
        }
        Ok(Self {
            config,
            params,
            step: 0,
        })
    }

    /// Completed optimiser steps.
    pub fn steps_done(&self) -> u64 {
        self.step
    }

    /// The configuration.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// The optimised variables with their names, in order.
    pub fn vars(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.params.iter().map(|p| (p.name.as_str(), &p.var))
    }

    /// Starts optimiser step `steps_done() + 1`: call once before the `step_param` calls of that step.
    pub fn begin_step(&mut self) {
        self.step += 1;
    }

    /// Applies one AdamW update to parameter `index` with gradient `grad` at learning rate `lr`.
    /// Call [`AdamW::begin_step`] first.
    pub fn step_param(&mut self, index: usize, grad: &Tensor, lr: f64) -> Result<()> {
        self.step_param_scaled(index, grad, 1.0, lr)
    }

    /// [`AdamW::step_param`] with the gradient multiplied by `grad_scale` first (gradient clipping), the
    /// multiplication fused into the update on the CPU.
    pub fn step_param_scaled(
        &mut self,
        index: usize,
        grad: &Tensor,
        grad_scale: f64,
        lr: f64,
    ) -> Result<()> {
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
            moments,
            moments_on_host,
        } = self.config;
        let t = self.step.max(1) as i32;
        let state = &mut self.params[index];
        let param_device = state.var.device().clone();
        if moments == MomentFormat::F32
            && param_device.is_cpu()
            && state.var.dtype() == DType::F32
            && let (Moment::Dense(m), Moment::Dense(v)) = (&state.first, &state.second)
        {
            return fused_cpu_step(
                &self.config,
                state.var.as_tensor(),
                (m, v),
                grad,
                grad_scale as f32,
                t,
                lr,
            );
        }
        let moment_dev = moment_device(&self.config, &param_device);
        let shape = state.var.shape().clone();
        let grad = grad.to_device(&moment_dev)?.to_dtype(DType::F32)?;
        let grad = if grad_scale == 1.0 {
            grad
        } else {
            (grad * grad_scale)?
        };
        let m = decode(&state.first, &shape, Kind::First)?;
        let v = decode(&state.second, &shape, Kind::Second)?;
        let m = ((m * beta1)? + (&grad * (1.0 - beta1))?)?;
        let v = ((v * beta2)? + (grad.sqr()? * (1.0 - beta2))?)?;
        let bias1 = 1.0 - beta1.powi(t);
        let bias2 = 1.0 - beta2.powi(t);
        let update = ((&m / bias1)? / ((&v / bias2)?.sqrt()? + eps)?)?;
        let update = if moments_on_host {
            update.to_device(&param_device)?
        } else {
            update
        };
        let param = state.var.as_tensor().to_dtype(DType::F32)?;
        let param = ((param * (1.0 - lr * weight_decay))? - (update * lr)?)?;
        state.var.set(&param.to_dtype(state.var.dtype())?)?;
        state.first = encode(&m, moments, Kind::First)?;
        state.second = encode(&v, moments, Kind::Second)?;
        Ok(())
    }

    /// One full step: `grads[i]` is the gradient of parameter `i` (`None` = no gradient, parameter untouched
    /// apart from weight decay not being applied, like PyTorch's skipping of params without grad).
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        self.step_scaled(grads, 1.0, lr)
    }

    /// [`AdamW::step`] with every gradient multiplied by `grad_scale` first (see [`clip_factor`]).
    pub fn step_scaled(
        &mut self,
        grads: &[Option<Tensor>],
        grad_scale: f64,
        lr: f64,
    ) -> Result<()> {
        self.begin_step();
        for (index, grad) in grads.iter().enumerate() {
            if let Some(grad) = grad {
                self.step_param_scaled(index, grad, grad_scale, lr)?;
            }
        }
        Ok(())
    }

    /// The moments as named tensors for a safetensors file (`<param>.exp_avg`, `<param>.exp_avg_sq`, with
    /// `.codes`/`.absmax` suffixes in int8 form).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(self.params.len() * 2);
        for p in &self.params {
            for (suffix, moment) in [("exp_avg", &p.first), ("exp_avg_sq", &p.second)] {
                match moment {
                    Moment::Dense(t) => out.push((format!("{}.{suffix}", p.name), t.clone())),
                    Moment::Int8 { codes, absmax } => {
                        out.push((format!("{}.{suffix}.codes", p.name), codes.clone()));
                        out.push((format!("{}.{suffix}.absmax", p.name), absmax.clone()));
                    }
                }
            }
        }
        out
    }

    /// Restores the moments saved by [`AdamW::state_tensors`] and the step count. Errors name the missing or
    /// mismatched tensor.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, steps_done: u64) -> Result<()> {
        let get = |key: String, like: &Tensor, device: &Device| -> Result<Tensor> {
            let t = tensors.get(&key).ok_or_else(|| {
                candle_core::Error::Msg(format!("optimizer state has no tensor `{key}`"))
            })?;
            if t.shape() != like.shape() || t.dtype() != like.dtype() {
                candle_core::bail!(
                    "optimizer state tensor `{key}` is {:?} {:?}, expected {:?} {:?} (different moments setting?)",
                    t.dtype(),
                    t.shape(),
                    like.dtype(),
                    like.shape()
                )
            }
            t.to_device(device)
        };
        for p in &mut self.params {
            let device = moment_device(&self.config, p.var.device());
            for (suffix, moment) in [("exp_avg", &mut p.first), ("exp_avg_sq", &mut p.second)] {
                *moment = match moment {
                    Moment::Dense(t) => {
                        Moment::Dense(get(format!("{}.{suffix}", p.name), t, &device)?)
                    }
                    Moment::Int8 { codes, absmax } => Moment::Int8 {
                        codes: get(format!("{}.{suffix}.codes", p.name), codes, &device)?,
                        absmax: get(format!("{}.{suffix}.absmax", p.name), absmax, &device)?,
                    },
                };
            }
        }
        self.step = steps_done;
        Ok(())
    }
}

/// Elements per rayon task in the fused CPU update.
const FUSED_CHUNK: usize = 1 << 16;

/// The CPU update of an f32 parameter with f32 moments, in place, in one pass over memory that reads the gradient
/// once and updates `m`, `v` and the parameter together (the three separate passes it replaces read the gradient
/// twice and the moments twice: 10 weight-sized streams per step instead of 7), instead of a dozen whole-tensor
/// temporaries. It repeats the f32 arithmetic of the composed tensor path above operation for operation (candle's
/// scalar ops are `x·mul + add` in the tensor dtype), so both paths give the same values (up to the sign of a zero
/// moment).
fn fused_cpu_step(
    config: &AdamWConfig,
    param: &Tensor,
    (m, v): (&Tensor, &Tensor),
    grad: &Tensor,
    grad_scale: f32,
    t: i32,
    lr: f64,
) -> Result<()> {
    let grad = grad.to_dtype(DType::F32)?.contiguous()?;
    let (b1, b2) = (config.beta1, config.beta2);
    let (decay1, gain1) = (b1 as f32, (1.0 - b1) as f32);
    let (decay2, gain2) = (b2 as f32, (1.0 - b2) as f32);
    let inv_bias1 = (1.0 / (1.0 - b1.powi(t))) as f32;
    let inv_bias2 = (1.0 / (1.0 - b2.powi(t))) as f32;
    let eps = config.eps as f32;
    let keep = (1.0 - lr * config.weight_decay) as f32;
    let lr = lr as f32;
    with_values_mut(m, |m| {
        with_values_mut(v, |v| {
            with_values_mut(param, |p| {
                let (storage, layout) = grad.storage_and_layout();
                let g = match &*storage {
                    candle_core::Storage::Cpu(s) => f32_slice(s, layout, "adamw")?,
                    _ => candle_core::bail!("adamw: the gradient is not on the CPU"),
                };
                if [m.len(), v.len(), g.len()] != [p.len(); 3] {
                    candle_core::bail!(
                        "adamw: parameter of {} values, moments of {} and {}, gradient of {}",
                        p.len(),
                        m.len(),
                        v.len(),
                        g.len()
                    );
                }
                p.par_chunks_mut(FUSED_CHUNK)
                    .zip(m.par_chunks_mut(FUSED_CHUNK))
                    .zip(v.par_chunks_mut(FUSED_CHUNK))
                    .zip(g.par_chunks(FUSED_CHUNK))
                    .for_each(|(((p, m), v), g)| {
                        for (((p, m), v), &g) in p.iter_mut().zip(m).zip(v).zip(g) {
                            // × 1.0 is exact, so an unclipped step computes what it did before.
                            let g = g * grad_scale;
                            *m = *m * decay1 + g * gain1;
                            *v = *v * decay2 + (g * g) * gain2;
                            let update = (*m * inv_bias1) / ((*v * inv_bias2).sqrt() + eps);
                            *p = *p * keep - update * lr;
                        }
                    });
                Ok(())
            })
        })
    })
}

/// The contiguous f32 elements a layout addresses.
fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Ok(&data[start..end]),
        _ => candle_core::bail!("{op}: expected a contiguous f32 tensor"),
    }
}

/// Calls `f` with the contiguous f32 values of the CPU tensor `t`, mutably (candle lends a storage mutably only to
/// an in-place op, so this is one). Nested calls on distinct tensors hold several of them at once; the same tensor
/// twice would deadlock on its storage lock.
fn with_values_mut<R: Send>(
    t: &Tensor,
    f: impl FnOnce(&mut [f32]) -> Result<R> + Send,
) -> Result<R> {
    struct Lend<F, R> {
        f: Mutex<Option<F>>,
        out: Mutex<Option<Result<R>>>,
    }
    impl<F: FnOnce(&mut [f32]) -> Result<R> + Send, R: Send> InplaceOp1 for Lend<F, R> {
        fn name(&self) -> &'static str {
            "lend-values"
        }

        fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
            let values = f32_slice_mut(storage, layout, self.name())?;
            if let Some(f) = lock(&self.f).take() {
                *lock(&self.out) = Some(f(values));
            }
            Ok(())
        }
    }
    let lend = Lend {
        f: Mutex::new(Some(f)),
        out: Mutex::new(None),
    };
    t.inplace_op1(&lend)?;
    let out = lock(&lend.out).take();
    out.unwrap_or_else(|| {
        Err(candle_core::Error::Msg(
            "lend-values: the op did not run".into(),
        ))
    })
}

/// A mutex's value; a panic elsewhere while it was held leaves nothing half-written here (each value is replaced
/// whole), so a poisoned lock is still usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn f32_slice_mut<'a>(
    storage: &'a mut CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<&'a mut [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Ok(&mut data[start..end]),
        _ => candle_core::bail!("{op}: expected a contiguous f32 tensor"),
    }
}

fn moment_device(config: &AdamWConfig, param_device: &Device) -> Device {
    if config.moments_on_host {
        Device::Cpu
    } else {
        param_device.clone()
    }
}

fn encode(values: &Tensor, format: MomentFormat, kind: Kind) -> Result<Moment> {
    match format {
        MomentFormat::F32 => Ok(Moment::Dense(values.to_dtype(DType::F32)?)),
        MomentFormat::Bf16 => Ok(Moment::Dense(values.to_dtype(DType::BF16)?)),
        MomentFormat::Int8 => {
            let flat = values.flatten_all()?.to_dtype(DType::F32)?;
            let n = flat.elem_count();
            let blocks = n.div_ceil(INT8_BLOCK).max(1);
            let padding = blocks * INT8_BLOCK - n;
            let flat = if padding > 0 {
                Tensor::cat(
                    &[&flat, &Tensor::zeros(padding, DType::F32, flat.device())?],
                    0,
                )?
            } else {
                flat
            };
            let blocked = flat.reshape((blocks, INT8_BLOCK))?;
            let absmax = blocked.abs()?.max_keepdim(1)?;
            // A block of zeros gets scale 1 so its codes stay finite (they are all zero anyway).
            let safe = absmax.eq(0.0)?.where_cond(&absmax.ones_like()?, &absmax)?;
            let unit = blocked.broadcast_div(&safe)?;
            let codes = match kind {
                Kind::First => ((unit.sign()? * unit.abs()?.sqrt()?)? * 127.0)?
                    .round()?
                    .affine(1.0, 127.0)?,
                Kind::Second => (unit.relu()?.sqrt()?.sqrt()? * 255.0)?.round()?,
            };
            Ok(Moment::Int8 {
                codes: codes.to_dtype(DType::U8)?,
                absmax,
            })
        }
    }
}

fn decode(moment: &Moment, shape: &candle_core::Shape, kind: Kind) -> Result<Tensor> {
    match moment {
        Moment::Dense(t) => t.to_dtype(DType::F32),
        Moment::Int8 { codes, absmax } => {
            let codes = codes.to_dtype(DType::F32)?;
            let unit = match kind {
                Kind::First => {
                    let centred = codes.affine(1.0 / 127.0, -1.0)?;
                    (centred.sign()? * centred.sqr()?)?
                }
                Kind::Second => (codes / 255.0)?.sqr()?.sqr()?,
            };
            let safe = absmax.eq(0.0)?.where_cond(&absmax.ones_like()?, absmax)?;
            unit.broadcast_mul(&safe)?
                .flatten_all()?
                .narrow(0, 0, shape.elem_count())?
                .reshape(shape)
        }
    }
}

/// The global L2 norm of `grads`: f32 CPU gradients in one threaded pass with f64 accumulation and no temporaries;
/// others as an f32 sum of squares per tensor, summed in f64.
pub fn grad_norm(grads: &[Option<Tensor>]) -> Result<f64> {
    let mut sum_sq = 0f64;
    for grad in grads.iter().flatten() {
        let (storage, layout) = grad.storage_and_layout();
        let fused = match (&*storage, layout.contiguous_offsets()) {
            (candle_core::Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) => {
                let partial: Vec<f64> = data[start..end]
                    .par_chunks(FUSED_CHUNK)
                    .map(sum_of_squares)
                    .collect();
                Some(partial.iter().sum::<f64>())
            }
            _ => None,
        };
        drop(storage);
        sum_sq += match fused {
            Some(s) => s,
            None => f64::from(
                grad.to_dtype(DType::F32)?
                    .sqr()?
                    .sum_all()?
                    .to_scalar::<f32>()?,
            ),
        };
    }
    Ok(sum_sq.sqrt())
}

/// `Σ g²` in f64 over eight interleaved partial sums (added up in a fixed order at the end), so the additions are
/// independent and vectorise instead of waiting on one running sum (SmolLM2 full fine-tuning: the gradient norm was
/// 0.15 s of a 2.5 s step on the main thread, `perf record`).
fn sum_of_squares(values: &[f32]) -> f64 {
    const LANES: usize = 8;
    let mut lanes = [0f64; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (lane, &g) in lanes.iter_mut().zip(chunk) {
            let g = f64::from(g);
            *lane += g * g;
        }
    }
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|&g| f64::from(g) * f64::from(g))
        .sum();
    lanes.iter().sum::<f64>() + tail
}

/// PyTorch's `clip_grad_norm_` factor for a gradient norm: `max_norm / (norm + 1e-6)` when that is below 1, else 1.
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    (max_norm / (norm + 1e-6)).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scales `grads` in place so their global L2 norm is at most `max_norm`; returns the norm before clipping.
    /// The trainer passes [`clip_factor`] to [`AdamW::step_scaled`] instead, which fuses the scaling into the update;
    /// this is the unfused reference its test compares with.
    fn clip_grad_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f64> {
        let norm = grad_norm(grads)?;
        let factor = clip_factor(norm, max_norm);
        if factor < 1.0 {
            for grad in grads.iter_mut().flatten() {
                *grad = (&*grad * factor)?;
            }
        }
        Ok(norm)
    }

    fn config(moments: MomentFormat) -> AdamWConfig {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
            moments,
            moments_on_host: false,
        }
    }

    // Reference (PyTorch 2.x):
    //   p = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
    //   opt = torch.optim.AdamW([p], lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    //   for g in ([0.5, -1.0, 0.0], [0.25, 0.5, 1.0]): p.grad = torch.tensor(g); opt.step()
    // Hand-derived with the same formulas in f64 (below) since the arithmetic is elementwise:
    //   step 1: p ← p(1 − lr·wd) − lr·m̂/(√v̂ + eps), m̂ = g, v̂ = g²
    fn reference(p0: f64, grads: &[f64]) -> f64 {
        let (lr, wd, b1, b2, eps) = (0.1, 0.1, 0.9f64, 0.999f64, 1e-8);
        let (mut p, mut m, mut v) = (p0, 0.0, 0.0);
        for (i, g) in grads.iter().enumerate() {
            let t = i as i32 + 1;
            m = b1 * m + (1.0 - b1) * g;
            v = b2 * v + (1.0 - b2) * g * g;
            p = p * (1.0 - lr * wd)
                - lr * (m / (1.0 - b1.powi(t))) / ((v / (1.0 - b2.powi(t))).sqrt() + eps);
        }
        p
    }

    #[test]
    fn adamw_f32_matches_the_reference_update() -> Result<()> {
        let var = Var::from_tensor(&Tensor::new(&[1.0f32, -2.0, 0.5], &Device::Cpu)?)?;
        let mut opt = AdamW::new(vec![("w".into(), var.clone())], config(MomentFormat::F32))?;
        let grads = [[0.5f32, -1.0, 0.0], [0.25, 0.5, 1.0]];
        for g in grads {
            opt.step(&[Some(Tensor::new(&g, &Device::Cpu)?)], 0.1)?;
        }
        let got: Vec<f32> = var.as_tensor().to_vec1()?;
        for (i, p0) in [1.0, -2.0, 0.5].into_iter().enumerate() {
            let want = reference(p0, &[f64::from(grads[0][i]), f64::from(grads[1][i])]);
            assert!(
                (f64::from(got[i]) - want).abs() < 1e-6,
                "param {i}: {} vs {want}",
                got[i]
            );
        }
        Ok(())
    }

    #[test]
    fn int8_codes_round_trip_within_companding_error() -> Result<()> {
        let values: Vec<f32> = (0..600)
            .map(|i| ((i as f32) * 0.37).sin() * (1.0 + i as f32 / 100.0))
            .collect();
        let t = Tensor::from_vec(values.clone(), (20, 30), &Device::Cpu)?;
        let back: Vec<f32> = decode(
            &encode(&t, MomentFormat::Int8, Kind::First)?,
            t.shape(),
            Kind::First,
        )?
        .flatten_all()?
        .to_vec1()?;
        for (block, chunk) in values.chunks(INT8_BLOCK).enumerate() {
            let absmax = chunk.iter().fold(0f32, |a, v| a.max(v.abs()));
            for (j, v) in chunk.iter().enumerate() {
                let got = back[block * INT8_BLOCK + j];
                // sqrt companding: the error is at most half a code step in √|x|, i.e. ≤ (√|x|/127 + 1/127²)·absmax.
                let bound = ((v.abs() / absmax).sqrt() / 127.0 + 1.0 / (127.0 * 127.0)) * absmax;
                assert!((got - v).abs() <= bound * 1.01, "{v} decoded as {got}");
            }
        }
        let sq = t.sqr()?;
        let back_sq: Vec<f32> = decode(
            &encode(&sq, MomentFormat::Int8, Kind::Second)?,
            t.shape(),
            Kind::Second,
        )?
        .flatten_all()?
        .to_vec1()?;
        assert!(back_sq.iter().all(|v| *v >= 0.0));
        Ok(())
    }

    #[test]
    fn every_moment_format_and_host_placement_trains_a_quadratic() -> Result<()> {
        // Minimise |w − target|² from zero; all formats must get close in 300 steps.
        let target = Tensor::new(&[0.5f32, -1.0, 2.0, 0.0], &Device::Cpu)?;
        for (format, on_host) in [
            (MomentFormat::F32, false),
            (MomentFormat::Bf16, false),
            (MomentFormat::Int8, false),
            (MomentFormat::F32, true),
        ] {
            let var = Var::zeros(4, DType::F32, &Device::Cpu)?;
            let mut cfg = config(format);
            cfg.weight_decay = 0.0;
            cfg.moments_on_host = on_host;
            let mut opt = AdamW::new(vec![("w".into(), var.clone())], cfg)?;
            for _ in 0..300 {
                let grad = ((var.as_tensor() - &target)? * 2.0)?;
                opt.step(&[Some(grad)], 0.05)?;
            }
            let err = (var.as_tensor() - &target)?
                .abs()?
                .max_keepdim(0)?
                .to_vec1::<f32>()?[0];
            assert!(err < 0.05, "{format:?} on_host={on_host}: max error {err}");
        }
        Ok(())
    }

    #[test]
    fn state_round_trips_through_named_tensors() -> Result<()> {
        for format in [MomentFormat::F32, MomentFormat::Bf16, MomentFormat::Int8] {
            let var = Var::from_tensor(&Tensor::new(&[1.0f32, 2.0], &Device::Cpu)?)?;
            let mut opt = AdamW::new(vec![("w".into(), var.clone())], config(format))?;
            opt.step(&[Some(Tensor::new(&[0.3f32, -0.1], &Device::Cpu)?)], 0.01)?;
            let saved: HashMap<String, Tensor> = opt.state_tensors().into_iter().collect();
            let twin = Var::from_tensor(var.as_tensor())?;
            let mut restored = AdamW::new(vec![("w".into(), twin.clone())], config(format))?;
            restored.load_state(&saved, opt.steps_done())?;
            let g = Tensor::new(&[0.2f32, 0.4], &Device::Cpu)?;
            opt.step(&[Some(g.clone())], 0.01)?;
            restored.step(&[Some(g)], 0.01)?;
            assert_eq!(
                var.as_tensor().to_vec1::<f32>()?,
                twin.as_tensor().to_vec1::<f32>()?,
                "{format:?}"
            );
            let mut wrong = AdamW::new(vec![("other".into(), twin)], config(format))?;
            let err = wrong
                .load_state(&saved, 1)
                .expect_err("a missing tensor must fail")
                .to_string();
            assert!(err.contains("other.exp_avg"), "{err}");
        }
        Ok(())
    }

    #[test]
    fn a_fused_clip_factor_equals_clipping_the_gradients_first() -> Result<()> {
        let values: Vec<f32> = (0..1000).map(|i| ((i as f32) * 0.37).sin()).collect();
        let grad = Tensor::from_vec(values.clone(), 1000, &Device::Cpu)?;
        let run = |fused: bool| -> Result<Vec<f32>> {
            let var = Var::from_tensor(&Tensor::from_vec(values.clone(), 1000, &Device::Cpu)?)?;
            let mut opt = AdamW::new(vec![("w".into(), var.clone())], config(MomentFormat::F32))?;
            let mut grads = vec![Some(grad.clone())];
            if fused {
                let factor = clip_factor(grad_norm(&grads)?, 1.0);
                assert!(factor < 1.0);
                opt.step_scaled(&grads, factor, 0.1)?;
            } else {
                clip_grad_norm(&mut grads, 1.0)?;
                opt.step(&grads, 0.1)?;
            }
            var.as_tensor().to_vec1::<f32>()
        };
        assert_eq!(run(true)?, run(false)?);
        Ok(())
    }

    /// The eight-lane sum of squares equals the plain running sum to rounding, with a tail that is not a multiple
    /// of eight, and the gradient norm of a tensor is its square root.
    #[test]
    fn gradient_norm_sums_every_value() -> Result<()> {
        let values: Vec<f32> = (0..1037)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect();
        let plain: f64 = values.iter().map(|&g| f64::from(g) * f64::from(g)).sum();
        let lanes = sum_of_squares(&values);
        assert!((lanes - plain).abs() <= 1e-12 * plain, "{lanes} vs {plain}");
        let grad = Tensor::from_vec(values, 1037, &Device::Cpu)?;
        let norm = grad_norm(&[Some(grad), None])?;
        assert!(
            (norm - plain.sqrt()).abs() <= 1e-12 * plain.sqrt(),
            "{norm}"
        );
        Ok(())
    }

    #[test]
    fn clipping_scales_to_the_max_norm() -> Result<()> {
        let mut grads = vec![
            Some(Tensor::new(&[3.0f32, 0.0], &Device::Cpu)?),
            None,
            Some(Tensor::new(&[4.0f32], &Device::Cpu)?),
        ];
        let norm = clip_grad_norm(&mut grads, 1.0)?;
        assert!((norm - 5.0).abs() < 1e-6);
        let a = grads[0].as_ref().expect("grad").to_vec1::<f32>()?;
        assert!((a[0] - 0.6).abs() < 1e-5, "{a:?}");
        let norm_after = clip_grad_norm(&mut grads, 10.0)?;
        assert!((norm_after - 1.0).abs() < 1e-4);
        Ok(())
    }
}
