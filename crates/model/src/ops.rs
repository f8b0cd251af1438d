//! Training-safe tensor operations.
//!
//! Every op here records a backward pass (or deliberately records only the input's). The central piece is
//! [`ConstOperand`]: `x·Cᵀ`, `x*C` or `x+C` where `C` is a constant (a frozen weight, a RoPE table, a mask, a frozen
//! norm gain). candle's own `matmul`/`mul`/`add` backward computes and stores a gradient for *both* operands, even a
//! constant one, and since a constant is never visited that gradient stays in the `GradStore` (a weight-sized buffer
//! per frozen linear under LoRA). `ConstOperand`'s backward returns the input's gradient only.

use candle_core::backend::BackendStorage;
use candle_core::op::{Add, Mul};
use candle_core::{CpuStorage, CustomOp1, D, DType, Layout, Shape, Storage, Tensor, Var};

/// How the constant combines with the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConstKind {
    /// `x (m, k) · Cᵀ` with `C (n, k)`.
    MatmulT,
    /// `x (..., m, k) · C (..., k, n)` with the same batch dimensions.
    Matmul,
    /// `x * C`, `C` broadcast to `x`'s shape.
    Mul,
    /// `x + C`, `C` broadcast to `x`'s shape.
    Add,
}

/// The "const operand" custom op: combines the tracked input with an untracked constant and back-propagates
/// to the input only.
struct ConstOperand {
    kind: ConstKind,
    constant: Tensor,
}

impl ConstOperand {
    fn fwd<S: BackendStorage>(
        &self,
        x: &S,
        x_layout: &Layout,
        c: &S,
        c_layout: &Layout,
    ) -> candle_core::Result<(S, Shape)> {
        match self.kind {
            ConstKind::MatmulT => {
                let (m, k) = x_layout.shape().dims2()?;
                let (n, k2) = c_layout.shape().dims2()?;
                if k != k2 {
                    candle_core::bail!("const matmul: input width {k} != weight width {k2}");
                }
                let c_t = c_layout.transpose(0, 1)?;
                let out = x.matmul(c, (1, m, n, k), x_layout, &c_t)?;
                Ok((out, Shape::from((m, n))))
            }
            ConstKind::Matmul => {
                let x_dims = x_layout.dims();
                let c_dims = c_layout.dims();
                let rank = x_dims.len();
                if rank < 2 || c_dims.len() != rank || x_dims[..rank - 2] != c_dims[..rank - 2] {
                    candle_core::bail!(
                        "const matmul: shapes {x_dims:?} and {c_dims:?} do not match"
                    );
                }
                let (m, k) = (x_dims[rank - 2], x_dims[rank - 1]);
                let (k2, n) = (c_dims[rank - 2], c_dims[rank - 1]);
                if k != k2 {
                    candle_core::bail!("const matmul: inner dimensions {k} != {k2}");
                }
                let batch: usize = x_dims[..rank - 2].iter().product();
                let out = x.matmul(c, (batch, m, n, k), x_layout, c_layout)?;
                let mut out_dims = x_dims[..rank - 2].to_vec();
                out_dims.extend([m, n]);
                Ok((out, Shape::from(out_dims)))
            }
            ConstKind::Mul | ConstKind::Add => {
                let shape = x_layout.shape().clone();
                let c_b = c_layout.broadcast_as(shape.clone())?;
                let out = if self.kind == ConstKind::Mul {
                    x.binary_impl::<Mul>(c, x_layout, &c_b)?
                } else {
                    x.binary_impl::<Add>(c, x_layout, &c_b)?
                };
                Ok((out, shape))
            }
        }
    }
}

impl CustomOp1 for ConstOperand {
    fn name(&self) -> &'static str {
        match self.kind {
            ConstKind::MatmulT => "const-matmul-t",
            ConstKind::Matmul => "const-matmul",
            ConstKind::Mul => "const-mul",
            ConstKind::Add => "const-add",
        }
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (c_storage, c_layout) = self.constant.storage_and_layout();
        match &*c_storage {
            Storage::Cpu(c) => self.fwd(storage, layout, c, c_layout),
            _ => candle_core::bail!("{}: input on CPU but constant is not", self.name()),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (c_storage, c_layout) = self.constant.storage_and_layout();
        match &*c_storage {
            Storage::Cuda(c) => self.fwd(storage, layout, c, c_layout),
            _ => candle_core::bail!("{}: input on CUDA but constant is not", self.name()),
        }
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let grad = match self.kind {
            // y = x·Cᵀ  ⇒  dx = dy·C
            ConstKind::MatmulT => grad_res.matmul(&self.constant)?,
            // y = x·C  ⇒  dx = dy·Cᵀ
            ConstKind::Matmul => grad_res.matmul(&self.constant.t()?)?,
            ConstKind::Mul => grad_res.broadcast_mul(&self.constant)?,
            ConstKind::Add => grad_res.clone(),
        };
        Ok(Some(grad))
    }
}

fn constant_like(x: &Tensor, c: &Tensor) -> candle_core::Result<Tensor> {
    // The constant must not be tracked itself, or its own graph would be lost silently.
    let c = c.detach();
    if c.dtype() == x.dtype() {
        Ok(c)
    } else {
        c.to_dtype(x.dtype())
    }
}

/// `x · wᵀ` for a constant `w (n, k)` and `x (..., k)`: gradient to `x` only.
pub fn const_matmul_t(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let w = constant_like(x, w)?;
    let mut out_dims = x.dims().to_vec();
    let k = out_dims
        .pop()
        .ok_or_else(|| candle_core::Error::Msg("const matmul of a scalar".into()))?;
    let n = w.dim(0)?;
    let m = x.elem_count() / k.max(1);
    let x2 = if x.rank() == 2 {
        x.clone()
    } else {
        x.reshape((m, k))?
    };
    let x2 = if x2.is_contiguous() {
        x2
    } else {
        x2.contiguous()?
    };
    out_dims.push(n);
    x2.apply_op1(ConstOperand {
        kind: ConstKind::MatmulT,
        constant: w,
    })?
    .reshape(out_dims)
}

/// `x * c` for a constant `c` broadcastable to `x`: gradient to `x` only.
pub fn const_mul(x: &Tensor, c: &Tensor) -> candle_core::Result<Tensor> {
    let c = constant_like(x, c)?;
    x.apply_op1(ConstOperand {
        kind: ConstKind::Mul,
        constant: c,
    })
}

/// `x + c` for a constant `c` broadcastable to `x`: gradient to `x` only.
pub fn const_add(x: &Tensor, c: &Tensor) -> candle_core::Result<Tensor> {
    let c = constant_like(x, c)?;
    x.apply_op1(ConstOperand {
        kind: ConstKind::Add,
        constant: c,
    })
}

/// `x · c` (batched, same batch dimensions) for a constant `c`: gradient to `x` only.
pub fn const_matmul(x: &Tensor, c: &Tensor) -> candle_core::Result<Tensor> {
    let c = constant_like(x, c)?;
    x.apply_op1(ConstOperand {
        kind: ConstKind::Matmul,
        constant: c,
    })
}

/// `a + b` (broadcast) that stores no gradient for an operand outside the autograd graph: when only one side is
/// tracked, the other enters as a constant.
pub fn add(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    match (a.track_op(), b.track_op()) {
        (true, false) => const_add(a, b),
        (false, true) => const_add(b, a),
        _ => a.broadcast_add(b),
    }
}

/// `a * b` (broadcast), constant-aware like [`add`].
pub fn mul(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    match (a.track_op(), b.track_op()) {
        (true, false) => const_mul(a, b),
        (false, true) => const_mul(b, a),
        _ => a.broadcast_mul(b),
    }
}

/// `a · b` (batched matmul, same batch dimensions), constant-aware like [`add`].
pub fn matmul(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    match (a.track_op(), b.track_op()) {
        (true, false) => const_matmul(a, b),
        // a·b = (bᵀ·aᵀ)ᵀ with aᵀ the constant.
        (false, true) => const_matmul(&b.t()?, &a.t()?)?.t(),
        _ => a.matmul(b),
    }
}

/// A model parameter: a frozen tensor (no gradient, enters the graph through [`ConstOperand`]) or a trainable
/// [`Var`].
#[derive(Debug, Clone)]
pub enum Param {
    /// Not trained; gradients never reach it.
    Frozen(Tensor),
    /// Trained; gets a gradient in every backward pass that uses it.
    Trainable(Var),
}

impl Param {
    /// The current value.
    pub fn tensor(&self) -> &Tensor {
        match self {
            Param::Frozen(t) => t,
            Param::Trainable(v) => v.as_tensor(),
        }
    }

    /// Whether an optimiser updates this parameter.
    pub fn is_trainable(&self) -> bool {
        matches!(self, Param::Trainable(_))
    }

    /// `x · selfᵀ` (a linear layer without bias).
    pub fn matmul_t(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Param::Frozen(w) => const_matmul_t(x, w),
            Param::Trainable(w) => {
                let w = w.as_tensor();
                let mut dims = x.dims().to_vec();
                let k = dims.pop().unwrap_or(1);
                let m = x.elem_count() / k.max(1);
                dims.push(w.dim(0)?);
                x.reshape((m, k))?.matmul(&w.t()?)?.reshape(dims)
            }
        }
    }

    /// `x * self`, broadcast.
    pub fn mul(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Param::Frozen(c) => const_mul(x, c),
            Param::Trainable(c) => x.broadcast_mul(c.as_tensor()),
        }
    }
}

/// The dtype norms and softmax are computed in: f32, or f64 for an f64 model.
pub fn upcast_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// RMSNorm as HF computes it: in f32, `gain * (x / sqrt(mean(x²) + eps)).to(x.dtype)`. Only differentiable ops.
pub fn rms_norm(x: &Tensor, gain: &Param, eps: f64) -> candle_core::Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(upcast_dtype(dtype))?;
    let inv = (xf.sqr()?.mean_keepdim(D::Minus1)? + eps)?
        .sqrt()?
        .recip()?;
    let normed = xf.broadcast_mul(&inv)?.to_dtype(dtype)?;
    gain.mul(&normed)
}

/// HF's `rotate_half`: `cat(-x2, x1)` over the last dimension.
fn rotate_half(x: &Tensor) -> candle_core::Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)
}

/// Rotary embedding, HF layout (halves, not interleaved pairs): `x*cos + rotate_half(x)*sin`. `x: (b, h, t, d)`,
/// `cos`/`sin: (b, 1, t, d)` constants.
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    const_mul(x, cos)? + const_mul(&rotate_half(x)?, sin)?
}

/// Softmax over the last dimension with a backward pass that keeps only the output (candle's fused
/// `softmax_last_dim` has no backward; its composed `softmax` keeps four attention-sized intermediates per call).
struct SoftmaxLast {
    /// Multiplies the input before the mask is added.
    scale: f64,
    /// Additive constant broadcast to the input (e.g. the attention mask), same dtype as the input.
    mask: Option<Tensor>,
}

fn softmax_rows<T: num_float::Float>(
    src: &[T],
    width: usize,
    scale: T,
    mask: Option<&[T]>,
) -> Vec<T> {
    let mut out = Vec::with_capacity(src.len());
    let mut row_buf = vec![T::zero(); width];
    for (r, row) in src.chunks(width).enumerate() {
        for (j, (dst, &v)) in row_buf.iter_mut().zip(row).enumerate() {
            *dst = match mask {
                Some(m) => v * scale + m[r * width + j],
                None => v * scale,
            };
        }
        let max = row_buf.iter().copied().fold(T::neg_infinity(), T::max);
        let start = out.len();
        let mut sum = T::zero();
        for &v in &row_buf {
            let e = (v - max).exp();
            sum = sum + e;
            out.push(e);
        }
        for e in &mut out[start..] {
            *e = *e / sum;
        }
    }
    out
}

impl CustomOp1 for SoftmaxLast {
    fn name(&self) -> &'static str {
        "softmax-last-with-backward"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let width = layout.dims().last().copied().unwrap_or(1).max(1);
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("softmax: input must be contiguous")
        };
        // The mask, materialised at the input's shape (it is built per forward, so this costs one mask-sized copy).
        let mask = match &self.mask {
            Some(m) => Some(
                m.broadcast_as(layout.shape())?
                    .contiguous()?
                    .flatten_all()?,
            ),
            None => None,
        };
        let out = match storage {
            CpuStorage::F32(v) => {
                let m = mask.as_ref().map(|m| m.to_vec1::<f32>()).transpose()?;
                CpuStorage::F32(softmax_rows(
                    &v[start..end],
                    width,
                    self.scale as f32,
                    m.as_deref(),
                ))
            }
            CpuStorage::F64(v) => {
                let m = mask.as_ref().map(|m| m.to_vec1::<f64>()).transpose()?;
                CpuStorage::F64(softmax_rows(
                    &v[start..end],
                    width,
                    self.scale,
                    m.as_deref(),
                ))
            }
            _ => candle_core::bail!("softmax: only f32/f64 on the CPU"),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        // dx = scale · y ⊙ (dy − Σ_j dy_j y_j); the mask is a constant.
        let dot = (grad_res * res)?.sum_keepdim(D::Minus1)?;
        let dx = res.mul(&grad_res.broadcast_sub(&dot)?)?;
        Ok(Some(if self.scale == 1.0 {
            dx
        } else {
            (dx * self.scale)?
        }))
    }
}

/// Softmax over the last dimension, differentiable: a fused CPU kernel for f32/f64 whose backward keeps only the
/// output, else (other devices and dtypes) candle's composed `softmax`.
pub fn softmax_last(x: &Tensor) -> candle_core::Result<Tensor> {
    scaled_masked_softmax(x, 1.0, None)
}

/// `softmax(x·scale + mask)` over the last dimension, `mask` a constant broadcast to `x` (the attention scores'
/// scale and additive mask fused into the softmax, so no extra score-sized tensors are kept for backward).
pub fn scaled_masked_softmax(
    x: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        let mask = mask.map(|m| constant_like(x, m)).transpose()?;
        x.contiguous()?.apply_op1(SoftmaxLast { scale, mask })
    } else {
        let scaled = if scale == 1.0 {
            x.clone()
        } else {
            (x * scale)?
        };
        let masked = match mask {
            Some(m) => const_add(&scaled, m)?,
            None => scaled,
        };
        candle_nn::ops::softmax(&masked, D::Minus1)
    }
}

/// The little float interface [`softmax_rows`] needs, for f32 and f64.
mod num_float {
    pub trait Float:
        Copy
        + std::ops::Sub<Output = Self>
        + std::ops::Add<Output = Self>
        + std::ops::Mul<Output = Self>
        + std::ops::Div<Output = Self>
    {
        fn neg_infinity() -> Self;
        fn zero() -> Self;
        fn max(self, other: Self) -> Self;
        fn exp(self) -> Self;
    }
    macro_rules! float {
        ($t:ty) => {
            impl Float for $t {
                fn neg_infinity() -> Self {
                    <$t>::NEG_INFINITY
                }
                fn zero() -> Self {
                    0.0
                }
                fn max(self, other: Self) -> Self {
                    <$t>::max(self, other)
                }
                fn exp(self) -> Self {
                    <$t>::exp(self)
                }
            }
        };
    }
    float!(f32);
    float!(f64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn const_ops_match_plain_ops_and_skip_the_constant_gradient() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::arange(0f32, 12., &dev)?.reshape((2, 2, 3))?)?;
        let w = (Tensor::arange(0f32, 12., &dev)?.reshape((4, 3))? * 0.1)?;
        let y = const_matmul_t(x.as_tensor(), &w)?;
        let expected = x
            .as_tensor()
            .reshape((4, 3))?
            .matmul(&w.t()?)?
            .reshape((2, 2, 4))?;
        assert_eq!(y.to_vec3::<f32>()?, expected.to_vec3::<f32>()?);
        let c = Tensor::new(&[1f32, 2., 3.], &dev)?;
        let z = const_add(&const_mul(&y.narrow(2, 0, 3)?, &c)?, &c)?;
        let grads = z.sum_all()?.backward()?;
        assert!(grads.get(&w).is_none(), "frozen weight got a gradient");
        assert!(grads.get(&c).is_none(), "constant got a gradient");
        // d/dx sum((x·wᵀ)[..., :3] * c + c) = sum_j c_j w_j
        let gx = grads
            .get(x.as_tensor())
            .expect("input gradient")
            .to_vec3::<f32>()?;
        let w_rows = w.narrow(0, 0, 3)?.to_vec2::<f32>()?;
        for (col, g) in gx[0][0].iter().enumerate() {
            let want: f32 = (0..3).map(|j| (j as f32 + 1.) * w_rows[j][col]).sum();
            assert!((g - want).abs() < 1e-5, "{g} vs {want}");
        }
        Ok(())
    }

    #[test]
    fn fused_softmax_matches_composed_softmax_forward_and_backward() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let data: Vec<f64> = (0..24).map(|i| ((i * 7) % 11) as f64 * 0.3 - 1.0).collect();
        let x = Var::from_tensor(&Tensor::from_vec(data, (2, 3, 4), &dev)?)?;
        let w = Tensor::arange(0f64, 24., &dev)?.reshape((2, 3, 4))?;
        let fused = softmax_last(x.as_tensor())?;
        let composed = candle_nn::ops::softmax(x.as_tensor(), D::Minus1)?;
        let diff = (&fused - &composed)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-15, "forward diff {diff}");
        let g1 = (fused * &w)?.sum_all()?.backward()?;
        let g2 = (composed * &w)?.sum_all()?.backward()?;
        let (g1, g2) = (
            g1.get(x.as_tensor()).expect("g1"),
            g2.get(x.as_tensor()).expect("g2"),
        );
        let diff = (g1 - g2)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-12, "backward diff {diff}");
        Ok(())
    }

    #[test]
    fn fused_scaled_masked_softmax_matches_the_composed_ops() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let data: Vec<f64> = (0..24).map(|i| ((i * 5) % 7) as f64 * 0.4 - 1.0).collect();
        let x = Var::from_tensor(&Tensor::from_vec(data, (2, 3, 4), &dev)?)?;
        let mask = Tensor::new(
            &[[[0f32, f32::MIN, 0., 0.]], [[0., 0., f32::MIN, f32::MIN]]],
            &dev,
        )?;
        let w = Tensor::arange(0f64, 24., &dev)?.reshape((2, 3, 4))?;
        let fused = scaled_masked_softmax(x.as_tensor(), 0.5, Some(&mask))?;
        let composed =
            candle_nn::ops::softmax(&const_add(&(x.as_tensor() * 0.5)?, &mask)?, D::Minus1)?;
        let diff = (&fused - &composed)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-15, "forward diff {diff}");
        let g1 = (fused * &w)?.sum_all()?.backward()?;
        let g2 = (composed * &w)?.sum_all()?.backward()?;
        let (g1, g2) = (
            g1.get(x.as_tensor()).expect("g1"),
            g2.get(x.as_tensor()).expect("g2"),
        );
        let diff = (g1 - g2)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-12, "backward diff {diff}");
        Ok(())
    }
}
