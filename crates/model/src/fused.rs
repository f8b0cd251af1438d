//! Graph nodes with a hand-written backward where candle's composed graph keeps memory or work for no reason (CPU
//! only; other devices use the composed ops).
//!
//! **LoRA linear**: `x·Wᵀ + s·dropout(x)·Aᵀ·Bᵀ` as composed ops keeps the base output, the adapter output (the
//! `add` node holds both) and the dropout output: three output- or input-sized tensors per adapted module.
//! [`lora_linear`] keeps only `x`: the dropout mask is regenerated and the rank-r product recomputed in backward
//! (measured, SmolLM2-135M LoRA on q/k/v/o, batch 2 × ≤256, 2 threads: peak RSS 1871 → 1721 MiB; once it stopped also
//! computing the base product a second time, the LoRA step went 1.67 → 1.46 s).
//!
//! **Trained linear** (full fine-tuning): [`trained_linear`] makes the weight gradient once, in the weight's layout
//! (see there).
//!
//! The LoRA node computes its forward with ordinary candle ops on detached inputs (no graph), then hands the result
//! to one custom op over the real inputs whose CPU forward returns that result; the trained linear's CPU forward is
//! a single gemm on the storages. Both backwards are given here.
//! (The same device was tried for attention — keep only q, k, v and recompute the probabilities in backward: it
//! saved 270 MiB at the same batch but cost 10% of the step, so attention stays composed.)

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};

use crate::lora::{DropoutMask, dropout_with};

/// A result computed ahead of the custom op that hands it to the graph, taken once by the op's forward.
struct Precomputed(Mutex<Option<Tensor>>);

impl Precomputed {
    fn new(t: Tensor) -> Self {
        Precomputed(Mutex::new(Some(t)))
    }

    /// The result as an owned CPU storage of its shape (one copy of the output).
    fn take_cpu(&self, op: &str) -> candle_core::Result<(CpuStorage, Shape)> {
        let t = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
            .ok_or_else(|| candle_core::Error::Msg(format!("{op}: forward ran twice")))?;
        let shape = t.shape().clone();
        let flat = t.flatten_all()?;
        let storage = match t.dtype() {
            DType::F32 => CpuStorage::F32(flat.to_vec1()?),
            DType::F64 => CpuStorage::F64(flat.to_vec1()?),
            DType::BF16 => CpuStorage::BF16(flat.to_vec1()?),
            DType::F16 => CpuStorage::F16(flat.to_vec1()?),
            other => candle_core::bail!("{op}: unsupported dtype {other:?}"),
        };
        Ok((storage, shape))
    }
}

/// `x·Wᵀ + scale·dropout(x)·Aᵀ·Bᵀ` for `x (m, in)`, a constant `w (out, in)`, `a (r, in)`, `b (out, r)`: one graph
/// node over `x`, `A` and `B` that keeps no output-sized intermediate (CPU, f32/f64 inputs of one dtype; the caller
/// falls back to composed ops elsewhere). `mask` is the dropout to apply (drawn by the caller, regenerated here in
/// backward), `None` for none.
pub fn lora_linear(
    x: &Tensor,
    w: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    mask: Option<DropoutMask>,
) -> candle_core::Result<Tensor> {
    let (x, w) = (x.contiguous()?, w.detach());
    let forward = {
        let xd = x.detach();
        let dropped = match mask {
            Some(m) => dropout_with(&xd, m)?,
            None => xd.clone(),
        };
        let low = (dropped.matmul(&a.detach().t()?)? * scale)?;
        (xd.matmul(&w.t()?)? + low.matmul(&b.detach().t()?)?)?
    };
    x.apply_op3(
        a,
        b,
        LoraLinear {
            out: Precomputed::new(forward),
            w,
            scale,
            mask,
        },
    )
}

struct LoraLinear {
    out: Precomputed,
    w: Tensor,
    scale: f64,
    mask: Option<DropoutMask>,
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.out.take_cpu(self.name())
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x, a, b, dy) = (x.detach(), a.detach(), b.detach(), dy.detach());
        let dropped = match self.mask {
            Some(m) => dropout_with(&x, m)?,
            None => x.clone(),
        };
        // y = x·Wᵀ + s·(u·Aᵀ)·Bᵀ with u = dropout(x), l = u·Aᵀ:
        //   dB = s·dyᵀ·l,  dl = s·dy·B,  dA = dlᵀ·u,  dx = dy·W + dropout(dl·A).
        let low = dropped.matmul(&a.t()?)?;
        let grad_b = (dy.t()?.matmul(&low)? * self.scale)?;
        let grad_low = (dy.matmul(&b)? * self.scale)?;
        let grad_a = grad_low.t()?.matmul(&dropped)?;
        let grad_dropped = grad_low.matmul(&a)?;
        let grad_dropped = match self.mask {
            Some(m) => dropout_with(&grad_dropped, m)?,
            None => grad_dropped,
        };
        let grad_x = (dy.matmul(&self.w)? + grad_dropped)?;
        Ok((Some(grad_x), Some(grad_a), Some(grad_b)))
    }
}

/// `x·Wᵀ` for a trained weight `w (out, in)` and `x (m, in)` as one graph node (CPU, one float dtype). candle's
/// own `x.matmul(&w.t())` records a transpose node, so the weight's gradient is first made as `(in, out)`, summed into
/// a zero tensor, transposed, and summed again into a second zero tensor through a strided add; here it is made once
/// as `dyᵀ·x` in the weight's own layout.
pub fn trained_linear(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op2(w, TrainedLinear)
}

struct TrainedLinear;

impl CustomOp2 for TrainedLinear {
    fn name(&self) -> &'static str {
        "trained-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        w: &CpuStorage,
        w_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        // `x (m, k) · Wᵀ` straight on the storages, as the const-operand op does: no copy of the output.
        let (m, k) = x_layout.shape().dims2()?;
        let (n, k2) = w_layout.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("{}: input width {k} != weight width {k2}", self.name());
        }
        let out = x.matmul(w, (1, m, n, k), x_layout, &w_layout.transpose(0, 1)?)?;
        Ok((out, Shape::from((m, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, w, dy) = (x.detach(), w.detach(), dy.detach());
        Ok((Some(dy.matmul(&w)?), Some(dy.t()?.matmul(&x)?)))
    }
}

/// Whether the fused LoRA node applies: CPU, and the module's input `x` (so the model's dtype) equal to the adapter's
/// dtype, f32 or f64 (a bf16 model keeps the composed ops, which cast only the rank-r side).
pub(crate) fn lora_linear_applies(x: &Tensor, a: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == a.dtype() && matches!(x.dtype(), DType::F32 | DType::F64)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::lora::SeededRng;

    fn random(shape: (usize, usize), seed: u64) -> candle_core::Result<Tensor> {
        let rng = SeededRng::new(seed);
        let values: Vec<f32> = rng
            .uniform(shape.0 * shape.1)
            .into_iter()
            .map(|u| u - 0.5)
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> candle_core::Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    #[test]
    fn trained_linear_matches_candle_matmul_forward_and_backward() -> candle_core::Result<()> {
        let x = Var::from_tensor(&random((7, 12), 1)?)?;
        let w = Var::from_tensor(&random((10, 12), 2)?)?;
        let upstream = random((7, 10), 3)?;
        let fused = trained_linear(x.as_tensor(), w.as_tensor())?;
        let composed = x.as_tensor().matmul(&w.as_tensor().t()?)?;
        assert!(max_diff(&fused, &composed)? < 1e-6);
        let g_fused = (&fused * &upstream)?.sum_all()?.backward()?;
        let g_composed = (&composed * &upstream)?.sum_all()?.backward()?;
        for v in [&x, &w] {
            let (gf, gc) = (
                g_fused.get(v.as_tensor()).expect("fused gradient"),
                g_composed.get(v.as_tensor()).expect("composed gradient"),
            );
            assert!(max_diff(gf, gc)? < 1e-5);
        }
        Ok(())
    }

    /// The fused node against the same function from composed candle ops: output and the gradients of x, A, B,
    /// with and without dropout.
    #[test]
    fn lora_linear_matches_composed_ops_forward_and_backward() -> candle_core::Result<()> {
        let (m, n_in, n_out, r, scale) = (7, 12, 10, 4, 2.0);
        let w = random((n_out, n_in), 1)?;
        let upstream = random((m, n_out), 5)?;
        for p in [None, Some(0.3)] {
            let x = Var::from_tensor(&random((m, n_in), 2)?)?;
            let a = Var::from_tensor(&random((r, n_in), 3)?)?;
            let b = Var::from_tensor(&random((n_out, r), 4)?)?;
            let mask = p.map(|p| DropoutMask::draw(p, m * n_in, &SeededRng::new(9)));
            let fused = lora_linear(x.as_tensor(), &w, a.as_tensor(), b.as_tensor(), scale, mask)?;
            let dropped = match mask {
                Some(mask) => dropout_with(x.as_tensor(), mask)?,
                None => x.as_tensor().clone(),
            };
            let composed = (crate::ops::const_matmul_t(x.as_tensor(), &w)?
                + ((dropped.matmul(&a.as_tensor().t()?)? * scale)?.matmul(&b.as_tensor().t()?))?)?;
            assert!(
                max_diff(&fused, &composed)? < 1e-6,
                "forward, dropout {p:?}"
            );
            let g_fused = (&fused * &upstream)?.sum_all()?.backward()?;
            let g_composed = (&composed * &upstream)?.sum_all()?.backward()?;
            for (name, v) in [("x", &x), ("A", &a), ("B", &b)] {
                let (gf, gc) = (
                    g_fused.get(v.as_tensor()).expect("fused gradient"),
                    g_composed.get(v.as_tensor()).expect("composed gradient"),
                );
                assert!(
                    max_diff(gf, gc)? < 1e-5,
                    "gradient of {name}, dropout {p:?}: {}",
                    max_diff(gf, gc)?
                );
            }
        }
        Ok(())
    }
}
