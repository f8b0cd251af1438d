//! Training-safe tensor operations.
//!
//! Every op here records a backward pass (or deliberately records only the input's). The central piece is
//! [`ConstOperand`]: `x·Cᵀ`, `x*C` or `x+C` where `C` is a constant (a frozen weight, a RoPE table, a mask, a frozen
//! norm gain). candle's own `matmul`/`mul`/`add` backward computes and stores a gradient for *both* operands, even a
//! constant one, and since a constant is never visited that gradient stays in the `GradStore` (a weight-sized buffer
//! per frozen linear under LoRA). `ConstOperand`'s backward returns the input's gradient only.

use candle_core::backend::BackendStorage;
use candle_core::op::{Add, Mul};
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, D, DType, Layout, Shape, Storage, Tensor, Var, WithDType,
};
use rayon::prelude::*;

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

/// Up to this many input rows, a constant-weight `x·Cᵀ` on the CPU runs as `(C·xᵀ)ᵀ`, unless the weight is stored
/// transposed (eval's decoder linears): in practice `lm_head` while decoding, where `examples/gemm_layout.rs`
/// measured 11.1 ms for `W·xᵀ` vs 12.9 ms for the transposed view (m 8, k 576, n 49152, 2 threads; the copy back
/// to `(m, n)` that this path adds moves 8 × 49152 values).
const FEW_ROWS: usize = 16;

/// The "const operand" custom op: combines the tracked input with an untracked constant and back-propagates
/// to the input only.
struct ConstOperand {
    kind: ConstKind,
    constant: Tensor,
}

impl ConstOperand {
    /// `rows_first`: whether a few-row `x·Cᵀ` may be computed as `(C·xᵀ)ᵀ` (the CPU; CUDA's gemm needs no help).
    /// `product(a, a_layout, b, b_layout)` is the device's 2-D matrix product.
    fn fwd<S: BackendStorage>(
        &self,
        x: &S,
        x_layout: &Layout,
        c: &S,
        c_layout: &Layout,
        rows_first: bool,
        product: impl Fn(&S, &Layout, &S, &Layout) -> candle_core::Result<S>,
    ) -> candle_core::Result<(S, Shape)> {
        match self.kind {
            ConstKind::MatmulT => {
                let (m, k) = x_layout.shape().dims2()?;
                let (n, k2) = c_layout.shape().dims2()?;
                if k != k2 {
                    candle_core::bail!("const matmul: input width {k} != weight width {k2}");
                }
                // A weight stored transposed (`CausalLm::store_linears_transposed`) is already the layout gemm
                // streams best: the plain product below reads it contiguously.
                let stored_transposed =
                    !c_layout.is_contiguous() && c_layout.transpose(0, 1)?.is_contiguous();
                if rows_first && m <= FEW_ROWS && !stored_transposed {
                    // Few rows (decoding): `(C·xᵀ)ᵀ` lets gemm stream the weight in its own row-major layout
                    // instead of packing a transposed view of it on every call (see
                    // `FEW_ROWS`); the `(n, m)` product is then copied to `(m, n)`.
                    let x_t = x_layout.transpose(0, 1)?;
                    let out_nm = product(c, c_layout, x, &x_t)?;
                    // A same-dtype conversion through the transposed layout is a strided copy.
                    let src = Layout::contiguous((n, m)).transpose(0, 1)?;
                    let out = out_nm.to_dtype(&src, out_nm.dtype())?;
                    return Ok((out, Shape::from((m, n))));
                }
                let out = product(x, x_layout, c, &c_layout.transpose(0, 1)?)?;
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
            Storage::Cpu(c) => self.fwd(storage, layout, c, c_layout, true, |a, al, b, bl| {
                crate::matmul::cpu_product(a, al, b, bl)
            }),
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
            Storage::Cuda(c) => self.fwd(storage, layout, c, c_layout, false, |a, al, b, bl| {
                let (m, k) = al.shape().dims2()?;
                let (_, n) = bl.shape().dims2()?;
                a.matmul(b, (1, m, n, k), al, bl)
            }),
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
            ConstKind::MatmulT => crate::matmul::matmul(grad_res, &self.constant)?,
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
                let x2 = x.reshape((m, k))?;
                let y = if x2.device().is_cpu() && x2.dtype() == w.dtype() {
                    crate::fused::trained_linear(&x2, w)?
                } else {
                    x2.matmul(&w.t()?)?
                };
                y.reshape(dims)
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

/// RMSNorm as HF computes it: in f32, `gain * (x / sqrt(mean(x²) + eps)).to(x.dtype)`. On the CPU the
/// normalisation is one fused op (threaded over rows, backward recomputes the row scale from the input, so only the
/// input is kept), and with a gain in the input's dtype (f32/f64) the scaling joins it in the same node, frozen or
/// trained; elsewhere it is composed from differentiable primitives.
pub fn rms_norm(x: &Tensor, gain: &Param, eps: f64) -> candle_core::Result<Tensor> {
    if x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && gain.tensor().dtype() == x.dtype()
    {
        return match gain {
            Param::Frozen(g) => rms_norm_frozen_gain(x, g, eps),
            Param::Trainable(g) => x
                .contiguous()?
                .apply_op2(g.as_tensor(), RmsNormTrainedGain { eps }),
        };
    }
    let dtype = x.dtype();
    let xf = x.to_dtype(upcast_dtype(dtype))?;
    let normed = if xf.device().is_cpu() {
        rms_normalize_cpu(&xf, eps)?
    } else {
        rms_normalize_composed(&xf, eps)?
    };
    gain.mul(&normed.to_dtype(dtype)?)
}

/// RMSNorm `normalize(x) ⊙ gain` with a frozen `gain` of `x`'s dtype as one fused CPU node over `x` (f32/f64).
pub(crate) fn rms_norm_frozen_gain(
    x: &Tensor,
    gain: &Tensor,
    eps: f64,
) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op1(RmsNormalize::with_frozen_gain(gain.detach(), eps)?)
}

/// The gradient of [`rms_norm_frozen_gain`] at `x` for the upstream gradient `dy` (no graph).
pub(crate) fn rms_norm_frozen_gain_backward(
    x: &Tensor,
    dy: &Tensor,
    gain: &Tensor,
    eps: f64,
) -> candle_core::Result<Tensor> {
    apply_pair_kernel(
        x,
        dy,
        &RmsNormBackward {
            eps,
            gain: Some(gain_values(gain)?),
            gain_grad: false,
        },
    )
}

/// The gradients `(dx, dgain)` of RMSNorm `normalize(x) ⊙ gain` for the upstream gradient `dy` (no graph).
fn rms_norm_trained_gain_backward(
    x: &Tensor,
    dy: &Tensor,
    gain: &Tensor,
    eps: f64,
) -> candle_core::Result<(Tensor, Tensor)> {
    let packed = apply_pair_kernel(
        x,
        dy,
        &RmsNormBackward {
            eps,
            gain: Some(gain_values(gain)?),
            gain_grad: true,
        },
    )?;
    let width = gain.elem_count();
    let rows = x.elem_count() / width.max(1);
    Ok((
        packed.narrow(0, 0, rows)?.reshape(x.shape())?,
        packed.narrow(0, rows, 1)?.reshape(gain.shape())?,
    ))
}

/// A gain's values, exact in f64 (from f32 or f64).
fn gain_values(gain: &Tensor) -> candle_core::Result<Vec<f64>> {
    gain.flatten_all()?.to_dtype(DType::F64)?.to_vec1()
}

/// The fused CPU normalisation `x / sqrt(mean(x²) + eps)` of a contiguous f32/f64 `x`, as a graph node.
pub(crate) fn rms_normalize_cpu(x: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(RmsNormalize { eps, gain: None })
}

/// The gradient of [`rms_normalize_cpu`] at `x` for the upstream gradient `dy` (no graph).
pub(crate) fn rms_normalize_backward(
    x: &Tensor,
    dy: &Tensor,
    eps: f64,
) -> candle_core::Result<Tensor> {
    apply_pair_kernel(
        x,
        dy,
        &RmsNormBackward {
            eps,
            gain: None,
            gain_grad: false,
        },
    )
}

/// The gradients `(dg, du)` of `silu(g) ⊙ u` for the upstream gradient `dy` (CPU, f32/f64; no graph).
pub(crate) fn silu_mul_backward(
    g: &Tensor,
    u: &Tensor,
    dy: &Tensor,
) -> candle_core::Result<(Tensor, Tensor)> {
    let both =
        g.contiguous()?
            .apply_op3_no_bwd(&u.contiguous()?, &dy.contiguous()?, &SiluMulBackward)?;
    let shape = g.shape();
    Ok((both.get(0)?.reshape(shape)?, both.get(1)?.reshape(shape)?))
}

/// `x / sqrt(mean(x²) + eps)` over the last dimension from primitives (the reference for the fused op).
pub fn rms_normalize_composed(x: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let inv = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&inv)
}

/// Rows of this many elements or more per rayon task (small rows are grouped so a task is worth scheduling).
const MIN_TASK_ELEMS: usize = 16 * 1024;

fn rows_per_task(width: usize) -> usize {
    MIN_TASK_ELEMS.div_ceil(width.max(1)).max(1)
}

/// The contiguous slice of a CPU storage that `layout` covers.
fn contiguous_slice<'a, T: WithDType>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [T]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: input must be contiguous")
    };
    Ok(&storage.as_slice::<T>()?[start..end])
}

/// A computation over two contiguous inputs of one float dtype, written once for f32 and f64.
trait FloatPair {
    /// The values out of the inputs' values.
    fn run<T: num_float::Float>(&self, a: &[T], b: &[T]) -> candle_core::Result<Vec<T>>;
}

/// Runs `f` on the contiguous values of two CPU storages that are both f32 or both f64.
fn float_pair(
    op: &str,
    f: &impl FloatPair,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
) -> candle_core::Result<CpuStorage> {
    Ok(match (s1, s2) {
        (CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(f.run(
            contiguous_slice::<f32>(s1, l1, op)?,
            contiguous_slice::<f32>(s2, l2, op)?,
        )?),
        (CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(f.run(
            contiguous_slice::<f64>(s1, l1, op)?,
            contiguous_slice::<f64>(s2, l2, op)?,
        )?),
        _ => candle_core::bail!("{op}: only f32/f64 on the CPU, both inputs of one dtype"),
    })
}

/// A kernel over one contiguous input, written once for f32 and f64; the output has the input's shape.
pub(crate) trait RowKernel {
    /// Applies the kernel; `width` is the size of the last dimension.
    fn apply<T: num_float::Float>(&self, x: &[T], width: usize) -> Vec<T>;
}

/// The CPU forward shared by the one-input, same-shape fused ops (f32/f64, contiguous input).
pub(crate) fn row_cpu_fwd(
    op: &str,
    kernel: &impl RowKernel,
    storage: &CpuStorage,
    layout: &Layout,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let width = layout.dims().last().copied().unwrap_or(1).max(1);
    let out = match storage {
        CpuStorage::F32(_) => {
            CpuStorage::F32(kernel.apply(contiguous_slice::<f32>(storage, layout, op)?, width))
        }
        CpuStorage::F64(_) => {
            CpuStorage::F64(kernel.apply(contiguous_slice::<f64>(storage, layout, op)?, width))
        }
        _ => candle_core::bail!("{op}: only f32/f64 on the CPU"),
    };
    Ok((out, layout.shape().clone()))
}

/// A kernel over two same-shaped contiguous inputs, written once for f32 and f64.
trait PairKernel {
    /// Applies the kernel; `width` is the size of the last dimension.
    fn apply<T: num_float::Float>(&self, a: &[T], b: &[T], width: usize) -> Vec<T>;
}

/// The CPU forward shared by the two-input fused ops: same shapes, contiguous f32/f64 inputs, output of the
/// inputs' shape.
fn pair_cpu_fwd(
    op: &str,
    kernel: &impl PairKernel,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
) -> candle_core::Result<(CpuStorage, Shape)> {
    if l1.dims() != l2.dims() {
        candle_core::bail!("{op}: shapes {:?} != {:?}", l1.dims(), l2.dims());
    }
    struct Apply<'a, K> {
        kernel: &'a K,
        width: usize,
    }
    impl<K: PairKernel> FloatPair for Apply<'_, K> {
        fn run<T: num_float::Float>(&self, a: &[T], b: &[T]) -> candle_core::Result<Vec<T>> {
            Ok(self.kernel.apply(a, b, self.width))
        }
    }
    let width = l1.dims().last().copied().unwrap_or(1).max(1);
    let out = float_pair(op, &Apply { kernel, width }, s1, l1, s2, l2)?;
    Ok((out, l1.shape().clone()))
}

/// Runs a backward kernel (see [`pair_backward_op`]) on contiguous `a` and `b`, outside the graph.
fn apply_pair_kernel(
    a: &Tensor,
    b: &Tensor,
    kernel: &impl CustomOp2,
) -> candle_core::Result<Tensor> {
    a.contiguous()?.apply_op2_no_bwd(&b.contiguous()?, kernel)
}

/// The `CustomOp2::cpu_fwd` of an op that is a [`PairKernel`].
macro_rules! pair_kernel_cpu_fwd {
    () => {
        fn cpu_fwd(
            &self,
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
        ) -> candle_core::Result<(CpuStorage, Shape)> {
            pair_cpu_fwd(self.name(), self, s1, l1, s2, l2)
        }
    };
}

/// `CustomOp2` for a backward kernel (a [`PairKernel`] of two same-shaped inputs, itself never differentiated).
macro_rules! pair_backward_op {
    ($op:ty, $name:literal) => {
        impl CustomOp2 for $op {
            fn name(&self) -> &'static str {
                $name
            }

            pair_kernel_cpu_fwd!();
        }
    };
}

/// Fused `x / sqrt(mean(x²) + eps)` over the last dimension (f32/f64, CPU), times a frozen gain when there is one.
/// With the gain it is RMSNorm as one node over `x`: its backward recomputes the row scale from `x` and needs nothing
/// else, where the pair of nodes it replaces (normalise, then scale by a constant) also kept the normalised copy,
/// one more hidden-sized tensor per norm (LoRA: two norms per block).
struct RmsNormalize {
    eps: f64,
    gain: Option<FrozenGain>,
}

/// A frozen RMSNorm gain `(hidden,)` in the input's dtype, with its values for the forward kernel (exact in either
/// float type).
struct FrozenGain {
    tensor: Tensor,
    values: Vec<f64>,
}

impl RmsNormalize {
    fn with_frozen_gain(gain: Tensor, eps: f64) -> candle_core::Result<Self> {
        let values = gain_values(&gain)?;
        Ok(Self {
            eps,
            gain: Some(FrozenGain {
                tensor: gain,
                values,
            }),
        })
    }
}

/// Rows of `x / sqrt(mean(x²) + eps)`, then times `gain` (one value per column) when given: `(x·r)·g`, the two
/// roundings of normalising and then scaling.
fn rms_normalize_rows<T: num_float::Float>(
    x: &[T],
    width: usize,
    eps: f64,
    gain: Option<&[T]>,
) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    let n = T::from_f64(width as f64);
    let eps = T::from_f64(eps);
    let chunk = width * rows_per_task(width);
    out.par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk))
        .for_each(|(o, xs)| {
            for (o, xr) in o.chunks_mut(width).zip(xs.chunks(width)) {
                let ss = xr.iter().fold(T::zero(), |a, &v| a + v * v);
                let r = T::one() / (ss / n + eps).sqrt();
                match gain {
                    Some(g) => {
                        for ((o, &v), &g) in o.iter_mut().zip(xr).zip(g) {
                            *o = v * r * g;
                        }
                    }
                    None => {
                        for (o, &v) in o.iter_mut().zip(xr) {
                            *o = v * r;
                        }
                    }
                }
            }
        });
    out
}

/// The backward of RMSNorm over rows of `x` and `dy`, `r = 1/sqrt(mean(x²) + eps)` per row and `h = dy ⊙ gain`
/// (`h = dy` without a gain): `dx = r·h − r³·x·mean(h⊙x)`. With `gain_grad`, the output has one more row,
/// `dgain = Σ_rows dy ⊙ (x·r)`: each task sums its own rows and the tasks' sums are added in task order, so the
/// result does not depend on scheduling.
fn rms_norm_backward_rows<T: num_float::Float>(
    x: &[T],
    dy: &[T],
    width: usize,
    eps: f64,
    gain: Option<&[T]>,
    gain_grad: bool,
) -> Vec<T> {
    let rows_len = x.len();
    let mut out = vec![T::zero(); rows_len + if gain_grad { width } else { 0 }];
    let (dx, dgain) = out.split_at_mut(rows_len);
    let n = T::from_f64(width as f64);
    let eps = T::from_f64(eps);
    let chunk = width * rows_per_task(width);
    let partial_sums: Vec<Vec<T>> = dx
        .par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk).zip(dy.par_chunks(chunk)))
        .map(|(o, (xs, gs))| {
            let mut h = vec![T::zero(); width];
            let mut sum = vec![T::zero(); if gain_grad { width } else { 0 }];
            for ((o, xr), gr) in o
                .chunks_mut(width)
                .zip(xs.chunks(width))
                .zip(gs.chunks(width))
            {
                match gain {
                    Some(g) => {
                        for ((h, &d), &g) in h.iter_mut().zip(gr).zip(g) {
                            *h = d * g;
                        }
                    }
                    None => h.copy_from_slice(gr),
                }
                let ss = xr.iter().fold(T::zero(), |a, &v| a + v * v);
                let r = T::one() / (ss / n + eps).sqrt();
                let dot = xr.iter().zip(&h).fold(T::zero(), |a, (&v, &h)| a + v * h);
                let k = r * r * r * dot / n;
                for ((o, &v), &h) in o.iter_mut().zip(xr).zip(&h) {
                    *o = r * h - k * v;
                }
                for ((s, &v), &d) in sum.iter_mut().zip(xr).zip(gr) {
                    *s += d * (v * r);
                }
            }
            sum
        })
        .collect();
    for part in &partial_sums {
        for (total, &p) in dgain.iter_mut().zip(part) {
            *total += p;
        }
    }
    out
}

impl RowKernel for RmsNormalize {
    fn apply<T: num_float::Float>(&self, x: &[T], width: usize) -> Vec<T> {
        let gain: Option<Vec<T>> = self
            .gain
            .as_ref()
            .map(|g| g.values.iter().map(|&v| T::from_f64(v)).collect());
        rms_normalize_rows(x, width, self.eps, gain.as_deref())
    }
}

impl CustomOp1 for RmsNormalize {
    fn name(&self) -> &'static str {
        if self.gain.is_some() {
            "rms-norm-frozen-gain"
        } else {
            "rms-normalize"
        }
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let width = layout.dims().last().copied().unwrap_or(0);
        if let Some(gain) = &self.gain
            && width != gain.values.len()
        {
            candle_core::bail!(
                "{}: input width {width} but {} gain values",
                self.name(),
                gain.values.len()
            );
        }
        row_cpu_fwd(self.name(), self, storage, layout)
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let grad = match &self.gain {
            Some(gain) => rms_norm_frozen_gain_backward(arg, grad_res, &gain.tensor, self.eps)?,
            None => rms_normalize_backward(arg, grad_res, self.eps)?,
        };
        Ok(Some(grad))
    }
}

/// Backward of [`RmsNormalize`] and [`RmsNormTrainedGain`]: `(x, dy) → dx` for a gain of these values (none: the
/// plain normalisation), followed by one row of `dgain` with `gain_grad` ([`rms_norm_backward_rows`]).
struct RmsNormBackward {
    eps: f64,
    gain: Option<Vec<f64>>,
    gain_grad: bool,
}

impl CustomOp2 for RmsNormBackward {
    fn name(&self) -> &'static str {
        "rms-norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = self.name();
        if l1.dims() != l2.dims() {
            candle_core::bail!("{op}: shapes {:?} != {:?}", l1.dims(), l2.dims());
        }
        let width = l1.dims().last().copied().unwrap_or(1).max(1);
        if let Some(gain) = &self.gain
            && gain.len() != width
        {
            candle_core::bail!("{op}: input width {width} but {} gain values", gain.len());
        }
        let out = float_pair(
            op,
            &RmsNormBackwardRows {
                backward: self,
                width,
            },
            s1,
            l1,
            s2,
            l2,
        )?;
        let rows = l1.shape().elem_count() / width;
        let shape = if self.gain_grad {
            Shape::from((rows + 1, width))
        } else {
            l1.shape().clone()
        };
        Ok((out, shape))
    }
}

/// [`RmsNormBackward`]'s kernel over `(x, dy)` rows of `width`.
struct RmsNormBackwardRows<'a> {
    backward: &'a RmsNormBackward,
    width: usize,
}

impl FloatPair for RmsNormBackwardRows<'_> {
    fn run<T: num_float::Float>(&self, x: &[T], dy: &[T]) -> candle_core::Result<Vec<T>> {
        let gain: Option<Vec<T>> = self
            .backward
            .gain
            .as_ref()
            .map(|g| g.iter().map(|&v| T::from_f64(v)).collect());
        Ok(rms_norm_backward_rows(
            x,
            dy,
            self.width,
            self.backward.eps,
            gain.as_deref(),
            self.backward.gain_grad,
        ))
    }
}

/// RMSNorm `normalize(x) ⊙ gain` with a trained `gain` as one CPU node over `(x, gain)` (f32/f64, one dtype): the
/// forward is [`RmsNormalize`]'s with the gain read from its storage; the backward returns `dx` and `dgain` from
/// one pass over `x` and `dy`. The composed form (normalise, then a broadcast multiply) made candle's backward
/// multiply `dy` by the normalised copy and reduce it over the leading dimensions with its strided reduction
/// (full fine-tuning of SmolLM2: 11 % of the samples in which one core worked alone, `perf record`).
struct RmsNormTrainedGain {
    eps: f64,
}

impl CustomOp2 for RmsNormTrainedGain {
    fn name(&self) -> &'static str {
        "rms-norm-trained-gain"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = self.name();
        let width = l1.dims().last().copied().unwrap_or(0);
        if l2.dims() != [width] {
            candle_core::bail!("{op}: input width {width} but gain shape {:?}", l2.dims());
        }
        struct Rows {
            width: usize,
            eps: f64,
        }
        impl FloatPair for Rows {
            fn run<T: num_float::Float>(&self, x: &[T], gain: &[T]) -> candle_core::Result<Vec<T>> {
                Ok(rms_normalize_rows(x, self.width, self.eps, Some(gain)))
            }
        }
        let rows = Rows {
            width: width.max(1),
            eps: self.eps,
        };
        Ok((float_pair(op, &rows, s1, l1, s2, l2)?, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gain: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dgain) = rms_norm_trained_gain_backward(x, grad_res, gain, self.eps)?;
        Ok((Some(dx), Some(dgain)))
    }
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

/// The adjoint of [`rope_heads_first`] (its backward): `dy (b, h, t, d)` → `(b, t, h, d)`, CPU f32/f64, no graph.
pub(crate) fn rope_heads_first_adjoint(
    dy: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
) -> candle_core::Result<Tensor> {
    let (b, h, t, d) = dy.dims4()?;
    dy.contiguous()?.apply_op1_no_bwd(&RopeOp {
        cos: constant_like(dy, cos)?.contiguous()?,
        sin: constant_like(dy, sin)?.contiguous()?,
        dims: (b, t, h, d),
        adjoint: true,
    })
}

/// Fused rotary embedding that also moves heads before time: `x (b, t, h, d)` → `(b, h, t, d)` equal to
/// `apply_rope(x.transpose(1, 2), cos, sin)`, with `cos`/`sin (b, 1, t, d)` constants. On the CPU (f32/f64) one op
/// writes the rotated, head-major result directly (no transposed copy, no `rotate_half` temporaries; backward is
/// the adjoint op, threaded); elsewhere the composed [`apply_rope`].
pub fn rope_heads_first(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let (b, t, h, d) = x.dims4()?;
    let fused = x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && d % 2 == 0
        && cos.dims() == [b, 1, t, d]
        && sin.dims() == [b, 1, t, d];
    if !fused {
        return apply_rope(&x.transpose(1, 2)?, cos, sin);
    }
    let cos = constant_like(x, cos)?.contiguous()?;
    let sin = constant_like(x, sin)?.contiguous()?;
    x.contiguous()?.apply_op1(RopeOp {
        cos,
        sin,
        dims: (b, t, h, d),
        adjoint: false,
    })
}

/// The rotary op and its adjoint. Forward maps `(b, t, h, d)` → `(b, h, t, d)`:
/// `y₁ = x₁c₁ − x₂s₁`, `y₂ = x₂c₂ + x₁s₂` (halves of the last dimension); the adjoint maps `(b, h, t, d)` →
/// `(b, t, h, d)`: `dx₁ = dy₁c₁ + dy₂s₂`, `dx₂ = dy₂c₂ − dy₁s₁`. Each is the other's backward.
struct RopeOp {
    cos: Tensor,
    sin: Tensor,
    dims: (usize, usize, usize, usize),
    adjoint: bool,
}

fn rope_kernel<T: num_float::Float>(
    x: &[T],
    cos: &[T],
    sin: &[T],
    (b, t, h, d): (usize, usize, usize, usize),
    adjoint: bool,
) -> Vec<T> {
    let half = d / 2;
    let mut out = vec![T::zero(); b * t * h * d];
    if !adjoint {
        // Output block (bi, hi) is `t·d` contiguous values.
        out.par_chunks_mut(t * d).enumerate().for_each(|(bh, o)| {
            let (bi, hi) = (bh / h, bh % h);
            for ti in 0..t {
                let src = &x[((bi * t + ti) * h + hi) * d..][..d];
                let c = &cos[(bi * t + ti) * d..][..d];
                let s = &sin[(bi * t + ti) * d..][..d];
                let dst = &mut o[ti * d..][..d];
                for j in 0..half {
                    let (x1, x2) = (src[j], src[j + half]);
                    dst[j] = x1 * c[j] - x2 * s[j];
                    dst[j + half] = x2 * c[j + half] + x1 * s[j + half];
                }
            }
        });
    } else {
        // Output block (bi, ti) is `h·d` contiguous values.
        out.par_chunks_mut(h * d).enumerate().for_each(|(bt, o)| {
            let (bi, ti) = (bt / t, bt % t);
            let c = &cos[bt * d..][..d];
            let s = &sin[bt * d..][..d];
            for hi in 0..h {
                let g = &x[((bi * h + hi) * t + ti) * d..][..d];
                let dst = &mut o[hi * d..][..d];
                for j in 0..half {
                    let (g1, g2) = (g[j], g[j + half]);
                    dst[j] = g1 * c[j] + g2 * s[j + half];
                    dst[j + half] = g2 * c[j + half] - g1 * s[j];
                }
            }
        });
    }
    out
}

impl CustomOp1 for RopeOp {
    fn name(&self) -> &'static str {
        if self.adjoint {
            "rope-adjoint"
        } else {
            "rope-heads-first"
        }
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, t, h, d) = self.dims;
        let (in_shape, out_shape) = if self.adjoint {
            ((b, h, t, d), (b, t, h, d))
        } else {
            ((b, t, h, d), (b, h, t, d))
        };
        if layout.dims() != Shape::from(in_shape).dims() {
            candle_core::bail!(
                "{}: input {:?}, expected {in_shape:?}",
                self.name(),
                layout.dims()
            );
        }
        let (cs, cl) = self.cos.storage_and_layout();
        let (ss, sl) = self.sin.storage_and_layout();
        let (Storage::Cpu(cs), Storage::Cpu(ss)) = (&*cs, &*ss) else {
            candle_core::bail!("{}: tables not on the CPU", self.name())
        };
        let out = match storage {
            CpuStorage::F32(_) => CpuStorage::F32(rope_kernel(
                contiguous_slice::<f32>(storage, layout, self.name())?,
                contiguous_slice::<f32>(cs, cl, self.name())?,
                contiguous_slice::<f32>(ss, sl, self.name())?,
                self.dims,
                self.adjoint,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(rope_kernel(
                contiguous_slice::<f64>(storage, layout, self.name())?,
                contiguous_slice::<f64>(cs, cl, self.name())?,
                contiguous_slice::<f64>(ss, sl, self.name())?,
                self.dims,
                self.adjoint,
            )),
            _ => candle_core::bail!("{}: only f32/f64 on the CPU", self.name()),
        };
        Ok((out, Shape::from(out_shape)))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let dx = grad_res.contiguous()?.apply_op1(RopeOp {
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            dims: self.dims,
            adjoint: !self.adjoint,
        })?;
        Ok(Some(dx))
    }
}

/// SwiGLU's gate: `silu(gate) ⊙ up`. On the CPU (f32/f64, both operands tracked or neither) one fused op keeps
/// only its two inputs for backward (no `silu(gate)` tensor; the backward is one pass computing both gradients);
/// otherwise the composed `silu` and [`mul`].
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    let fused = gate.device().is_cpu()
        && matches!(gate.dtype(), DType::F32 | DType::F64)
        && gate.dtype() == up.dtype()
        && gate.dims() == up.dims()
        && gate.track_op() == up.track_op();
    if !fused {
        return mul(&gate.silu()?, up);
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, SiluMul)
}

/// `silu(g) ⊙ u` with backward `dg = dy·u·σ(g)·(1 + g·(1 − σ(g)))`, `du = dy·silu(g)`.
struct SiluMul;

fn sigmoid<T: num_float::Float>(v: T) -> T {
    T::one() / (T::one() + (T::zero() - v).exp())
}

fn silu_mul_rows<T: num_float::Float>(g: &[T], u: &[T]) -> Vec<T> {
    let mut out = vec![T::zero(); g.len()];
    out.par_chunks_mut(MIN_TASK_ELEMS)
        .zip(
            g.par_chunks(MIN_TASK_ELEMS)
                .zip(u.par_chunks(MIN_TASK_ELEMS)),
        )
        .for_each(|(o, (gs, us))| {
            for ((o, &g), &u) in o.iter_mut().zip(gs).zip(us) {
                *o = g * sigmoid(g) * u;
            }
        });
    out
}

/// Both gradients in one pass, stacked: `[dg; du]` (twice the input's length).
fn silu_mul_backward_rows<T: num_float::Float>(g: &[T], u: &[T], dy: &[T]) -> Vec<T> {
    let n = g.len();
    let mut out = vec![T::zero(); 2 * n];
    let (dg, du) = out.split_at_mut(n);
    dg.par_chunks_mut(MIN_TASK_ELEMS)
        .zip(du.par_chunks_mut(MIN_TASK_ELEMS))
        .zip(
            g.par_chunks(MIN_TASK_ELEMS).zip(
                u.par_chunks(MIN_TASK_ELEMS)
                    .zip(dy.par_chunks(MIN_TASK_ELEMS)),
            ),
        )
        .for_each(|((dgs, dus), (gs, (us, ys)))| {
            for ((((dg, du), &g), &u), &y) in dgs.iter_mut().zip(dus).zip(gs).zip(us).zip(ys) {
                let s = sigmoid(g);
                *dg = y * u * s * (T::one() + g * (T::one() - s));
                *du = y * g * s;
            }
        });
    out
}

impl PairKernel for SiluMul {
    fn apply<T: num_float::Float>(&self, gate: &[T], up: &[T], _width: usize) -> Vec<T> {
        silu_mul_rows(gate, up)
    }
}

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul"
    }

    pair_kernel_cpu_fwd!();

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dg, du) = silu_mul_backward(gate, up, grad_res)?;
        Ok((Some(dg), Some(du)))
    }
}

/// Backward of [`SiluMul`]: `(g, u, dy) → (2, ...)` holding `[dg, du]`.
struct SiluMulBackward;

impl candle_core::CustomOp3 for SiluMulBackward {
    fn name(&self) -> &'static str {
        "silu-mul-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if l1.dims() != l2.dims() || l1.dims() != l3.dims() {
            candle_core::bail!("silu-mul-backward: shapes differ");
        }
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => {
                CpuStorage::F32(silu_mul_backward_rows(
                    contiguous_slice::<f32>(s1, l1, self.name())?,
                    contiguous_slice::<f32>(s2, l2, self.name())?,
                    contiguous_slice::<f32>(s3, l3, self.name())?,
                ))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => {
                CpuStorage::F64(silu_mul_backward_rows(
                    contiguous_slice::<f64>(s1, l1, self.name())?,
                    contiguous_slice::<f64>(s2, l2, self.name())?,
                    contiguous_slice::<f64>(s3, l3, self.name())?,
                ))
            }
            _ => candle_core::bail!("silu-mul-backward: only f32/f64 on the CPU"),
        };
        Ok((out, Shape::from((2, l1.shape().elem_count()))))
    }
}

/// `Σᵢ maskᵢ · (−log softmax(logitsᵢ)[targetᵢ])` for `logits (n, V)`, `targets (n,)` (u32) and `mask (n,)` (any
/// float): the masked next-token loss as a sum, a scalar f32 tensor. On the CPU one fused op reads the logits once
/// forward and once backward (`dlogits = dy · maskᵢ · (softmaxᵢ − onehot(targetᵢ))`) and keeps nothing but the
/// logits it is given — candle's composed `log_softmax` + `gather` keep several `(n, V)` intermediates. Elsewhere it
/// is composed from candle ops. `train`'s loss calls it.
pub fn masked_nll_rows(
    logits: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
) -> candle_core::Result<Tensor> {
    let (n, vocab) = logits.dims2()?;
    if targets.elem_count() != n || mask.elem_count() != n {
        candle_core::bail!(
            "masked nll: {n} logit rows but {} targets and {} mask values",
            targets.elem_count(),
            mask.elem_count()
        );
    }
    let logits = logits.to_dtype(DType::F32)?;
    if !logits.device().is_cpu() {
        let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let picked = log_probs
            .gather(
                &targets
                    .to_dtype(DType::U32)?
                    .reshape((n, 1))?
                    .contiguous()?,
                1,
            )?
            .squeeze(1)?;
        return (picked * mask.to_dtype(DType::F32)?.reshape(n)?)?
            .sum_all()?
            .neg();
    }
    let (target_ids, weights) = loss_targets("masked nll", targets, mask, vocab)?;
    logits.contiguous()?.apply_op1(MaskedNll {
        targets: target_ids,
        weights,
    })
}

/// `Σ_rows maskᵢ·NLLᵢ` of the logits `rows (n, hidden) · weightᵀ` (the language-model head and the masked loss of
/// [`masked_nll_rows`]) as one node, for a loss whose upstream gradient will be `scale`. On the CPU in f32 the
/// forward turns the logits buffer into the logits' gradient `scale·maskᵢ·(softmaxᵢ − onehot(targetᵢ))` in place
/// (one `exp` per logit, which the loss's own forward and backward each computed), and the backward only multiplies
/// it by `weight` (and `rowsᵀ` for a trained head): one `(n, vocab)` buffer per chunk where the two nodes held the
/// logits and then their gradient too. The same values as `masked_nll_rows(rows·weightᵀ)` bit for bit (same sums in
/// the same order). Elsewhere (other dtypes or devices) it is that composition.
pub fn head_nll_rows(
    rows: &Tensor,
    weight: &Param,
    targets: &Tensor,
    mask: &Tensor,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let fused = rows.device().is_cpu()
        && rows.dtype() == DType::F32
        && weight.tensor().dtype() == DType::F32
        && rows.rank() == 2
        && weight.tensor().rank() == 2;
    if !fused {
        return masked_nll_rows(&weight.matmul_t(rows)?, targets, mask);
    }
    let weight = weight.tensor();
    let (n, _) = rows.dims2()?;
    let (vocab, _) = weight.dims2()?;
    if targets.elem_count() != n || mask.elem_count() != n {
        candle_core::bail!(
            "head nll: {n} rows but {} targets and {} mask values",
            targets.elem_count(),
            mask.elem_count()
        );
    }
    let (target_ids, weights) = loss_targets("head nll", targets, mask, vocab)?;
    rows.contiguous()?.apply_op2(
        weight,
        HeadNll {
            targets: target_ids,
            weights,
            scale: scale as f32,
            grad_logits: std::sync::Mutex::new(None),
        },
    )
}

/// The fused head and loss of [`head_nll_rows`] (f32, CPU).
struct HeadNll {
    targets: Vec<u32>,
    weights: Vec<f32>,
    /// The upstream gradient the logits' gradient is made for.
    scale: f32,
    /// The logits' gradient, made by the forward and taken by the backward.
    grad_logits: std::sync::Mutex<Option<Tensor>>,
}

impl CustomOp2 for HeadNll {
    fn name(&self) -> &'static str {
        "head-nll"
    }

    fn cpu_fwd(
        &self,
        rows: &CpuStorage,
        rows_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, _) = rows_layout.shape().dims2()?;
        let (vocab, _) = weight_layout.shape().dims2()?;
        let logits =
            crate::matmul::cpu_product(rows, rows_layout, weight, &weight_layout.transpose(0, 1)?)?;
        let CpuStorage::F32(mut buffer) = logits else {
            candle_core::bail!("{}: only f32", self.name())
        };
        // Per row: the masked NLL, as `MaskedNll`'s forward computes it, and the row turned into its gradient for an
        // upstream gradient of `scale`, as `MaskedNll`'s backward computes it.
        let per_row: Vec<f64> = buffer
            .par_chunks_mut(vocab.max(1))
            .zip(self.targets.par_iter().zip(self.weights.par_iter()))
            .map(|(row, (&t, &w))| nll_into_gradient(row, t as usize, w, self.scale))
            .collect();
        let total = per_row.iter().sum::<f64>() as f32;
        let grad = Tensor::from_vec(buffer, (n, vocab), &candle_core::Device::Cpu)?;
        *self
            .grad_logits
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(grad);
        Ok((CpuStorage::F32(vec![total]), Shape::from(())))
    }

    fn bwd(
        &self,
        rows: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = grad_res.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let Some(grad_logits) = self
            .grad_logits
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
        else {
            candle_core::bail!("{}: a second backward through one forward", self.name())
        };
        // Made for an upstream gradient of `scale`; any other is a rescaling (× 1 exactly in training).
        let grad_logits = if dy == self.scale {
            grad_logits
        } else if self.scale != 0.0 {
            (grad_logits * f64::from(dy / self.scale))?
        } else {
            candle_core::bail!(
                "{}: made for a zero upstream gradient, got {dy}",
                self.name()
            )
        };
        let grad_rows = crate::matmul::matmul(&grad_logits, &weight.detach())?;
        let grad_weight = if weight.track_op() {
            Some(crate::matmul::matmul(&grad_logits.t()?, &rows.detach())?)
        } else {
            None
        };
        Ok((Some(grad_rows), grad_weight))
    }
}

/// The target ids (each checked against `vocab`) and loss weights of a masked loss, on the host.
fn loss_targets(
    op: &str,
    targets: &Tensor,
    mask: &Tensor,
    vocab: usize,
) -> candle_core::Result<(Vec<u32>, Vec<f32>)> {
    let target_ids = targets
        .to_dtype(DType::U32)?
        .flatten_all()?
        .to_vec1::<u32>()?;
    if let Some(bad) = target_ids.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("{op}: target id {bad} outside the vocabulary of {vocab}");
    }
    let weights = mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok((target_ids, weights))
}

/// Turns one row of logits into its gradient `scale·w·(softmax − onehot(t))` in place and returns the row's loss
/// `w·NLL` (0 and a zero row when `w` is 0). Shared by [`MaskedNll`]'s backward and [`HeadNll`]'s forward, so both
/// make the same bits.
fn nll_into_gradient(row: &mut [f32], t: usize, w: f32, scale: f32) -> f64 {
    if w == 0.0 {
        row.fill(0.0);
        return 0.0;
    }
    let target_logit = row[t];
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let row_scale = scale * w;
    if row_scale == 0.0 {
        row.fill(0.0);
    } else {
        let k = row_scale / sum;
        for v in row.iter_mut() {
            *v *= k;
        }
        row[t] -= row_scale;
    }
    let lse = max + sum.ln();
    f64::from(w) * f64::from(lse - target_logit)
}

/// The fused loss of [`masked_nll_rows`] (f32, CPU).
struct MaskedNll {
    targets: Vec<u32>,
    weights: Vec<f32>,
}

impl CustomOp1 for MaskedNll {
    fn name(&self) -> &'static str {
        "masked-nll"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let vocab = layout.dims().last().copied().unwrap_or(1).max(1);
        let x = contiguous_slice::<f32>(storage, layout, self.name())?;
        let per_row: Vec<f64> = x
            .par_chunks(vocab)
            .zip(self.targets.par_iter().zip(self.weights.par_iter()))
            .map(|(row, (&t, &w))| {
                if w == 0.0 {
                    return 0.0;
                }
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum: f32 = row.iter().map(|&v| (v - max).exp()).sum();
                let lse = max + sum.ln();
                f64::from(w) * f64::from(lse - row[t as usize])
            })
            .collect();
        let total = per_row.iter().sum::<f64>() as f32;
        Ok((CpuStorage::F32(vec![total]), Shape::from(())))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let dy = grad_res.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let (n, vocab) = arg.dims2()?;
        // The logits are read where they are (the forward ran on a contiguous f32 CPU tensor), not copied.
        let (storage, layout) = arg.storage_and_layout();
        let Storage::Cpu(storage) = &*storage else {
            candle_core::bail!("{}: logits not on the CPU", self.name())
        };
        let mut dx = contiguous_slice::<f32>(storage, layout, self.name())?.to_vec();
        dx.par_chunks_mut(vocab.max(1))
            .zip(self.targets.par_iter().zip(self.weights.par_iter()))
            .for_each(|(row, (&t, &w))| {
                nll_into_gradient(row, t as usize, w, dy);
            });
        Ok(Some(Tensor::from_vec(dx, (n, vocab), arg.device())?))
    }
}

/// Softmax over the last dimension whose backward needs only the output (candle's fused `softmax_last_dim` has no
/// backward; its composed `softmax` also keeps `x − max` and its `exp`). The graph node still holds the input
/// scores, as every candle custom op holds its argument.
struct SoftmaxLast {
    /// Multiplies the input before the mask is added.
    scale: f64,
    /// Additive constant broadcast to the input (e.g. the attention mask), same dtype as the input.
    mask: Option<Tensor>,
}

/// Row-wise `softmax(x·scale + mask)`; `mask_rows[r]` is the offset of row `r`'s mask values in `mask` (the mask
/// is read through its broadcast layout, never materialised at the scores' shape).
fn softmax_rows<T: num_float::Float>(
    src: &[T],
    width: usize,
    scale: T,
    mask: Option<(&[T], &[usize])>,
) -> Vec<T> {
    let mut out = vec![T::zero(); src.len()];
    let per_task = rows_per_task(width);
    out.par_chunks_mut(width * per_task)
        .zip(src.par_chunks(width * per_task))
        .enumerate()
        .for_each(|(task, (o, xs))| {
            for (i, (o, row)) in o.chunks_mut(width).zip(xs.chunks(width)).enumerate() {
                let r = task * per_task + i;
                match mask {
                    Some((m, offsets)) => {
                        let m = &m[offsets[r]..][..width];
                        for ((dst, &v), &mv) in o.iter_mut().zip(row).zip(m) {
                            *dst = v * scale + mv;
                        }
                    }
                    None => {
                        for (dst, &v) in o.iter_mut().zip(row) {
                            *dst = v * scale;
                        }
                    }
                }
                let max = o
                    .iter()
                    .copied()
                    .fold(T::neg_infinity(), num_float::Float::max);
                let mut sum = T::zero();
                for e in o.iter_mut() {
                    // Masked entries (`f32::MIN` added) land far below the bound: half of a causal score matrix.
                    let shifted = *e - max;
                    *e = if shifted < T::EXP_IS_ZERO_BELOW {
                        T::zero()
                    } else {
                        shifted.exp()
                    };
                    sum += *e;
                }
                let inv = T::one() / sum;
                for e in o.iter_mut() {
                    *e *= inv;
                }
            }
        });
    out
}

/// Offsets of each row's first element for a layout whose last dimension has stride 1 (`None` otherwise).
fn row_offsets(layout: &Layout) -> Option<Vec<usize>> {
    let dims = layout.dims();
    let strides = layout.stride();
    let rank = dims.len();
    if rank == 0 || strides[rank - 1] != 1 {
        return None;
    }
    let rows: usize = dims[..rank - 1].iter().product();
    let mut offsets = Vec::with_capacity(rows);
    for r in 0..rows {
        let mut rem = r;
        let mut off = layout.start_offset();
        for k in (0..rank - 1).rev() {
            off += (rem % dims[k]) * strides[k];
            rem /= dims[k];
        }
        offsets.push(off);
    }
    Some(offsets)
}

fn softmax_cpu<T: num_float::Float>(
    op: &SoftmaxLast,
    storage: &CpuStorage,
    layout: &Layout,
) -> candle_core::Result<Vec<T>> {
    let width = layout.dims().last().copied().unwrap_or(1).max(1);
    let src = contiguous_slice::<T>(storage, layout, op.name())?;
    let scale = T::from_f64(op.scale);
    let Some(mask) = &op.mask else {
        return Ok(softmax_rows(src, width, scale, None));
    };
    let mask = mask.broadcast_as(layout.shape())?;
    let (ms, ml) = mask.storage_and_layout();
    let Storage::Cpu(ms) = &*ms else {
        candle_core::bail!("softmax: mask not on the CPU")
    };
    match row_offsets(ml) {
        Some(offsets) => Ok(softmax_rows(
            src,
            width,
            scale,
            Some((ms.as_slice::<T>()?, &offsets)),
        )),
        None => {
            // A mask strided in its last dimension: materialise it once.
            let dense = mask.contiguous()?.flatten_all()?.to_vec1::<T>()?;
            let offsets: Vec<usize> = (0..src.len() / width).map(|r| r * width).collect();
            Ok(softmax_rows(src, width, scale, Some((&dense, &offsets))))
        }
    }
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
        let out = match storage {
            CpuStorage::F32(_) => CpuStorage::F32(softmax_cpu(self, storage, layout)?),
            CpuStorage::F64(_) => CpuStorage::F64(softmax_cpu(self, storage, layout)?),
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
        // dx = scale · y ⊙ (dy − Σ_j dy_j y_j); the mask is a constant. (Built only on the CPU: see
        // `scaled_masked_softmax`.)
        Ok(Some(scaled_softmax_backward(res, grad_res, self.scale)?))
    }
}

/// Backward of [`SoftmaxLast`] on the CPU: `(y, dy) → scale · y ⊙ (dy − Σ dy⊙y)`, one pass per row, threaded.
struct SoftmaxBackward {
    scale: f64,
}

fn softmax_backward_rows<T: num_float::Float>(
    y: &[T],
    dy: &[T],
    width: usize,
    scale: f64,
) -> Vec<T> {
    let mut out = vec![T::zero(); y.len()];
    let scale = T::from_f64(scale);
    let chunk = width * rows_per_task(width);
    out.par_chunks_mut(chunk)
        .zip(y.par_chunks(chunk).zip(dy.par_chunks(chunk)))
        .for_each(|(o, (ys, gs))| {
            for ((o, yr), gr) in o
                .chunks_mut(width)
                .zip(ys.chunks(width))
                .zip(gs.chunks(width))
            {
                let dot = yr.iter().zip(gr).fold(T::zero(), |a, (&y, &g)| a + y * g);
                for ((o, &y), &g) in o.iter_mut().zip(yr).zip(gr) {
                    *o = scale * y * (g - dot);
                }
            }
        });
    out
}

impl PairKernel for SoftmaxBackward {
    fn apply<T: num_float::Float>(&self, y: &[T], dy: &[T], width: usize) -> Vec<T> {
        softmax_backward_rows(y, dy, width, self.scale)
    }
}

pair_backward_op!(SoftmaxBackward, "softmax-last-backward");

/// The gradient of `softmax(x·scale + mask)` from its output `y` and the upstream gradient `dy` (CPU, f32/f64,
/// no graph): `scale · y ⊙ (dy − Σ dy⊙y)` per row.
pub(crate) fn scaled_softmax_backward(
    y: &Tensor,
    dy: &Tensor,
    scale: f64,
) -> candle_core::Result<Tensor> {
    apply_pair_kernel(y, dy, &SoftmaxBackward { scale })
}

/// Softmax over the last dimension, differentiable: a fused CPU kernel for f32/f64 whose backward needs only the
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
pub(crate) mod num_float {
    pub trait Float:
        Copy
        + Send
        + Sync
        + candle_core::WithDType
        + std::ops::Sub<Output = Self>
        + std::ops::Add<Output = Self>
        + std::ops::Mul<Output = Self>
        + std::ops::Div<Output = Self>
        + std::ops::AddAssign
    {
        /// `exp(x)` rounds to exactly zero for every `x` below this (e⁻¹⁰⁴ ≈ 6.8e-46 is under half of f32's smallest
        /// subnormal, e⁻⁷⁴⁶ ≈ 1.0e-324 under half of f64's): callers skip the call, whose underflow path (glibc's
        /// `__math_uflowf`, which also sets `errno`) is several times slower than a normal `exp`.
        const EXP_IS_ZERO_BELOW: Self;
        fn neg_infinity() -> Self;
        fn max(self, other: Self) -> Self;
        fn exp(self) -> Self;
        fn sqrt(self) -> Self;
    }
    macro_rules! float {
        ($t:ty, $zero_below:expr) => {
            impl Float for $t {
                const EXP_IS_ZERO_BELOW: Self = $zero_below;
                fn neg_infinity() -> Self {
                    <$t>::NEG_INFINITY
                }
                fn max(self, other: Self) -> Self {
                    <$t>::max(self, other)
                }
                fn exp(self) -> Self {
                    <$t>::exp(self)
                }
                fn sqrt(self) -> Self {
                    <$t>::sqrt(self)
                }
            }
        };
    }
    float!(f32, -104.0);
    float!(f64, -746.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The softmax skips `exp` below [`num_float::Float::EXP_IS_ZERO_BELOW`]: that must be where `exp` is zero
    /// (so skipping changes no bit), and not far below where it stops being zero (so the bound does the work).
    #[test]
    fn exp_is_zero_below_the_softmax_bound() {
        use num_float::Float;
        for x in [f32::EXP_IS_ZERO_BELOW, -1e3, f32::MIN] {
            assert_eq!(x.exp(), 0.0, "exp({x})");
        }
        assert!((f32::EXP_IS_ZERO_BELOW + 1.0).exp() > 0.0);
        for x in [f64::EXP_IS_ZERO_BELOW, -1e4, f64::MIN] {
            assert_eq!(x.exp(), 0.0, "exp({x})");
        }
        assert!((f64::EXP_IS_ZERO_BELOW + 2.0).exp() > 0.0);
    }
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
    /// Deterministic, irregular test data.
    fn data(n: usize, seed: usize) -> Vec<f64> {
        (0..n)
            .map(|i| (((i * 37 + seed * 11) % 23) as f64 - 11.0) * 0.13)
            .collect()
    }

    #[test]
    fn fused_rms_normalize_matches_the_composed_ops() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::from_vec(data(2 * 3 * 8, 1), (2, 3, 8), &dev)?)?;
        let w = Tensor::from_vec(data(48, 2), (2, 3, 8), &dev)?;
        let fused = x.as_tensor().apply_op1(RmsNormalize {
            eps: 1e-5,
            gain: None,
        })?;
        let composed = rms_normalize_composed(x.as_tensor(), 1e-5)?;
        let diff = (&fused - &composed)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-14, "forward diff {diff}");
        let g1 = (fused * &w)?.sum_all()?.backward()?;
        let g2 = (composed * &w)?.sum_all()?.backward()?;
        let (g1, g2) = (
            g1.get(x.as_tensor()).expect("g1"),
            g2.get(x.as_tensor()).expect("g2"),
        );
        let diff = (g1 - g2)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-12, "backward diff {diff}");
        // f32 through the public function, with a frozen gain: same values as the composed f32 path.
        let xf = x.as_tensor().to_dtype(DType::F32)?;
        let gain = Param::Frozen(Tensor::from_vec(data(8, 3), 8, &dev)?.to_dtype(DType::F32)?);
        let ours = rms_norm(&xf, &gain, 1e-5)?;
        let reference = gain.mul(&rms_normalize_composed(&xf, 1e-5)?)?;
        let diff = (ours - reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "f32 diff {diff}");
        Ok(())
    }

    /// `rms_norm` with a frozen gain is one node: the same bits as normalising and then scaling (the two nodes it
    /// replaces), and the gradient of the composed ops, in f64 and f32.
    #[test]
    fn rms_norm_with_a_frozen_gain_matches_the_two_node_form() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let eps = 1e-5;
        for dtype in [DType::F64, DType::F32] {
            let x = Var::from_tensor(
                &Tensor::from_vec(data(2 * 3 * 8, 1), (2, 3, 8), &dev)?.to_dtype(dtype)?,
            )?;
            let upstream = Tensor::from_vec(data(48, 2), (2, 3, 8), &dev)?.to_dtype(dtype)?;
            let gain = Tensor::from_vec(data(8, 3), 8, &dev)?.to_dtype(dtype)?;
            let fused = rms_norm(x.as_tensor(), &Param::Frozen(gain.clone()), eps)?;
            let two_nodes = const_mul(&rms_normalize_cpu(x.as_tensor(), eps)?, &gain)?;
            let bits = |t: &Tensor| -> candle_core::Result<Vec<f64>> {
                t.flatten_all()?.to_dtype(DType::F64)?.to_vec1()
            };
            assert_eq!(bits(&fused)?, bits(&two_nodes)?, "{dtype:?} forward");
            let composed = rms_normalize_composed(x.as_tensor(), eps)?.broadcast_mul(&gain)?;
            let g1 = (fused * &upstream)?.sum_all()?.backward()?;
            let g2 = (composed * &upstream)?.sum_all()?.backward()?;
            let (g1, g2) = (
                g1.get(x.as_tensor()).expect("fused gradient"),
                g2.get(x.as_tensor()).expect("composed gradient"),
            );
            let diff = (g1 - g2)?
                .abs()?
                .max_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            let tolerance = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
            assert!(diff < tolerance, "{dtype:?} backward diff {diff}");
        }
        Ok(())
    }

    /// `rms_norm` with a trained gain is one node over `(x, gain)`: the same bits forward as normalising and then
    /// scaling by the gain, and both gradients of the composed ops, in f64 and f32. The width makes each rayon
    /// task four rows long, so the gain's gradient is summed over several tasks.
    #[test]
    fn rms_norm_with_a_trained_gain_matches_the_composed_ops() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let eps = 1e-5;
        let (b, t, width) = (3, 5, 4096);
        assert!(rows_per_task(width) < b * t, "the test needs several tasks");
        for dtype in [DType::F64, DType::F32] {
            let x = Var::from_tensor(
                &Tensor::from_vec(data(b * t * width, 1), (b, t, width), &dev)?.to_dtype(dtype)?,
            )?;
            let upstream =
                Tensor::from_vec(data(b * t * width, 2), (b, t, width), &dev)?.to_dtype(dtype)?;
            let gain =
                Var::from_tensor(&Tensor::from_vec(data(width, 3), width, &dev)?.to_dtype(dtype)?)?;
            let fused = rms_norm(x.as_tensor(), &Param::Trainable(gain.clone()), eps)?;
            let two_nodes =
                rms_normalize_cpu(x.as_tensor(), eps)?.broadcast_mul(gain.as_tensor())?;
            let bits = |t: &Tensor| -> candle_core::Result<Vec<f64>> {
                t.flatten_all()?.to_dtype(DType::F64)?.to_vec1()
            };
            assert_eq!(bits(&fused)?, bits(&two_nodes)?, "{dtype:?} forward");
            let composed =
                rms_normalize_composed(x.as_tensor(), eps)?.broadcast_mul(gain.as_tensor())?;
            let g1 = (fused * &upstream)?.sum_all()?.backward()?;
            let g2 = (composed * &upstream)?.sum_all()?.backward()?;
            for (name, var, tolerance) in [
                ("x", &x, if dtype == DType::F64 { 1e-12 } else { 1e-5 }),
                (
                    "gain",
                    &gain,
                    if dtype == DType::F64 { 1e-11 } else { 1e-3 },
                ),
            ] {
                let fused_grad = g1.get(var.as_tensor()).expect("fused gradient");
                let composed_grad = g2.get(var.as_tensor()).expect("composed gradient");
                assert_eq!(fused_grad.dims(), var.as_tensor().dims(), "{name}");
                let scale = composed_grad
                    .abs()?
                    .max_all()?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()?;
                let diff = (fused_grad - composed_grad)?
                    .abs()?
                    .max_all()?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()?;
                assert!(
                    diff <= tolerance * scale.max(1.0),
                    "{dtype:?} {name} gradient diff {diff} (scale {scale})"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn fused_rope_matches_the_composed_rope_forward_and_backward() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let (b, t, h, d) = (2, 3, 4, 6);
        let x = Var::from_tensor(&Tensor::from_vec(
            data(b * t * h * d, 4),
            (b, t, h, d),
            &dev,
        )?)?;
        // Tables as the model builds them: halves duplicated; here with distinct rows per batch entry.
        let angles: Vec<f64> = data(b * t * d / 2, 5);
        let mut cos = Vec::new();
        let mut sin = Vec::new();
        for row in angles.chunks(d / 2) {
            for _ in 0..2 {
                cos.extend(row.iter().map(|a| a.cos()));
                sin.extend(row.iter().map(|a| a.sin()));
            }
        }
        // Tracked tables, so the check below that the fused op leaves them without gradients can fail.
        let cos = Var::from_tensor(&Tensor::from_vec(cos, (b, 1, t, d), &dev)?)?
            .as_tensor()
            .clone();
        let sin = Var::from_tensor(&Tensor::from_vec(sin, (b, 1, t, d), &dev)?)?
            .as_tensor()
            .clone();
        let w = Tensor::from_vec(data(b * h * t * d, 6), (b, h, t, d), &dev)?;
        let fused = rope_heads_first(x.as_tensor(), &cos, &sin)?;
        let composed = apply_rope(&x.as_tensor().transpose(1, 2)?, &cos, &sin)?;
        assert_eq!(fused.dims(), composed.dims());
        let diff = (&fused - &composed)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-14, "forward diff {diff}");
        let g1 = (&fused * &w)?.sum_all()?.backward()?;
        let g2 = (&composed * &w)?.sum_all()?.backward()?;
        assert!(g1.get(&cos).is_none() && g1.get(&sin).is_none());
        let plain = x
            .as_tensor()
            .transpose(1, 2)?
            .broadcast_mul(&cos)?
            .sum_all()?
            .backward()?;
        assert!(
            plain.get(&cos).is_some(),
            "a plain product does differentiate the tracked tables"
        );
        let (g1x, g2x) = (
            g1.get(x.as_tensor()).expect("g1"),
            g2.get(x.as_tensor()).expect("g2"),
        );
        let diff = (g1x - g2x)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-14, "backward diff {diff}");
        // With all-ones upstream gradients too (the adjoint op applied to a plain sum).
        let dx = fused.backward()?;
        let adj = dx.get(x.as_tensor()).expect("dx");
        assert_eq!(adj.dims(), &[b, t, h, d]);
        let composed_dx = composed.backward()?;
        let expected = composed_dx.get(x.as_tensor()).expect("composed dx");
        let diff = (adj - expected)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-14, "all-ones backward diff {diff}");
        Ok(())
    }

    #[test]
    fn fused_softmax_reads_a_broadcast_mask_like_a_materialised_one() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        // Scores (b, h, t, s) with a (b, 1, t, s) mask, as attention uses it.
        let x = Tensor::from_vec(data(2 * 3 * 4 * 5, 7), (2, 3, 4, 5), &dev)?;
        let mask: Vec<f64> = (0..2 * 4 * 5)
            .map(|i| if (i * 7) % 5 == 0 { f64::MIN } else { 0.0 })
            .collect();
        let mask = Tensor::from_vec(mask, (2, 1, 4, 5), &dev)?;
        let fused = scaled_masked_softmax(&x, 0.7, Some(&mask))?;
        let dense = mask.broadcast_as((2, 3, 4, 5))?.contiguous()?;
        let composed = candle_nn::ops::softmax(&((&x * 0.7)? + dense)?, D::Minus1)?;
        let diff = (fused - composed)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-15, "forward diff {diff}");
        Ok(())
    }
    #[test]
    fn fused_silu_mul_matches_the_composed_ops() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let g = Var::from_tensor(&Tensor::from_vec(data(2 * 3 * 5, 8), (2, 3, 5), &dev)?)?;
        let u = Var::from_tensor(&Tensor::from_vec(data(2 * 3 * 5, 9), (2, 3, 5), &dev)?)?;
        let w = Tensor::from_vec(data(30, 10), (2, 3, 5), &dev)?;
        let fused = silu_mul(g.as_tensor(), u.as_tensor())?;
        let composed = (g.as_tensor().silu()? * u.as_tensor())?;
        let diff = (&fused - &composed)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-14, "forward diff {diff}");
        let g1 = (fused * &w)?.sum_all()?.backward()?;
        let g2 = (composed * &w)?.sum_all()?.backward()?;
        for v in [&g, &u] {
            let a = g1.get(v.as_tensor()).expect("fused grad");
            let b = g2.get(v.as_tensor()).expect("composed grad");
            assert_eq!(a.dims(), b.dims());
            let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(diff < 1e-12, "backward diff {diff}");
        }
        Ok(())
    }
    #[test]
    fn fused_masked_nll_matches_log_softmax_and_gather() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let (n, v) = (5, 7);
        let logits = Var::from_tensor(
            &Tensor::from_vec(data(n * v, 11), (n, v), &dev)?.to_dtype(DType::F32)?,
        )?;
        let targets = Tensor::new(&[3u32, 0, 6, 2, 2], &dev)?;
        let mask = Tensor::new(&[1f32, 0., 1., 0.5, 1.], &dev)?;
        let fused = masked_nll_rows(logits.as_tensor(), &targets, &mask)?;
        let picked = candle_nn::ops::log_softmax(logits.as_tensor(), D::Minus1)?
            .gather(&targets.reshape((n, 1))?, 1)?
            .squeeze(1)?;
        let composed = (picked * &mask)?.sum_all()?.neg()?;
        let (a, b) = (fused.to_scalar::<f32>()?, composed.to_scalar::<f32>()?);
        assert!((a - b).abs() < 1e-5, "loss {a} vs {b}");
        let g1 = (fused * 1.5)?.backward()?;
        let g2 = (composed * 1.5)?.backward()?;
        let (g1, g2) = (
            g1.get(logits.as_tensor()).expect("fused grad"),
            g2.get(logits.as_tensor()).expect("composed grad"),
        );
        let diff = (g1 - g2)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "backward diff {diff}");
        Ok(())
    }
    /// The fused head and loss give the bits of `masked_nll_rows(weight.matmul_t(rows))`: the loss, the rows'
    /// gradient and a trained weight's gradient, for the upstream gradient it was made for and for another one; a
    /// frozen weight gets no gradient.
    #[test]
    fn fused_head_nll_equals_the_head_then_the_loss() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let (n, hidden, vocab) = (5, 6, 9);
        let f32_data = |len: usize, seed: usize| -> candle_core::Result<Tensor> {
            Tensor::from_vec(data(len, seed), len, &dev)?.to_dtype(DType::F32)
        };
        let targets = Tensor::new(&[3u32, 0, 8, 2, 2], &dev)?;
        let mask = Tensor::new(&[1f32, 0., 1., 0.5, 1.], &dev)?;
        let scale = 0.125;
        let bits = |t: &Tensor| -> candle_core::Result<Vec<f32>> { t.flatten_all()?.to_vec1() };
        for upstream in [scale, 0.75] {
            let rows = Var::from_tensor(&f32_data(n * hidden, 14)?.reshape((n, hidden))?)?;
            let weight =
                Var::from_tensor(&f32_data(vocab * hidden, 15)?.reshape((vocab, hidden))?)?;
            let trained = Param::Trainable(weight.clone());
            let fused = head_nll_rows(rows.as_tensor(), &trained, &targets, &mask, scale)?;
            let composed = masked_nll_rows(&trained.matmul_t(rows.as_tensor())?, &targets, &mask)?;
            assert_eq!(bits(&fused)?, bits(&composed)?, "loss");
            let g1 = (fused * upstream)?.backward()?;
            let g2 = (composed * upstream)?.backward()?;
            for (name, var) in [("rows", &rows), ("weight", &weight)] {
                let a = g1.get(var.as_tensor()).expect("fused gradient");
                let b = g2.get(var.as_tensor()).expect("composed gradient");
                if upstream == scale {
                    assert_eq!(bits(a)?, bits(b)?, "{name} gradient");
                } else {
                    let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
                    assert!(
                        diff < 1e-6,
                        "{name} gradient at upstream {upstream}: {diff}"
                    );
                }
            }
        }
        let rows = Var::from_tensor(&f32_data(n * hidden, 14)?.reshape((n, hidden))?)?;
        let frozen = Param::Frozen(f32_data(vocab * hidden, 15)?.reshape((vocab, hidden))?);
        let grads = (head_nll_rows(rows.as_tensor(), &frozen, &targets, &mask, scale)? * scale)?
            .backward()?;
        assert!(grads.get(rows.as_tensor()).is_some());
        assert!(grads.get(frozen.tensor()).is_none());
        Ok(())
    }

    #[test]
    fn few_row_const_matmul_equals_the_plain_product() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        for m in [1, 3, FEW_ROWS, FEW_ROWS + 1] {
            let x = Tensor::from_vec(data(m * 6, 12), (m, 6), &dev)?;
            let w = Tensor::from_vec(data(5 * 6, 13), (5, 6), &dev)?;
            let ours = const_matmul_t(&x, &w)?;
            let plain = x.matmul(&w.t()?)?;
            assert_eq!(ours.dims(), &[m, 5]);
            let diff = (ours - plain)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(diff < 1e-12, "m {m}: diff {diff}");
        }
        Ok(())
    }
}
