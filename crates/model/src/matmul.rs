//! Matrix products on the CPU written straight into an output that is not zeroed first.
//!
//! candle's CPU matmul allocates its output as `vec![0; m·n]` and then has gemm overwrite every value
//! (`read_dst = false`). With freed memory kept in the process (`device::set_cpu_runtime_defaults`) that zeroing is
//! a memset of every product's size on the calling thread alone: 2.2 % of the samples of a SmolLM2 full
//! fine-tuning step, nearly all of them while the other core waited (`perf record`; the weight gradients alone are
//! 424 MiB per step). Here the output is allocated uninitialised and gemm, told not to read it, writes every value.
//! Elsewhere than x86-64 (where `gemm` is not a direct dependency) and on other devices, candle's product is used.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

/// `lhs (m, k) · rhs (k, n)` for 2-D tensors of any strides: on the CPU without zeroing the output first, elsewhere
/// candle's `matmul`. No gradient is recorded: for backward passes and for the forward of fused nodes.
pub(crate) fn matmul(lhs: &Tensor, rhs: &Tensor) -> candle_core::Result<Tensor> {
    if lhs.device().is_cpu() && rhs.device().is_cpu() && lhs.rank() == 2 && rhs.rank() == 2 {
        lhs.apply_op2_no_bwd(rhs, &Product)
    } else {
        lhs.detach().matmul(&rhs.detach())
    }
}

/// `lhs (m, k) · rhs (k, n)` on CPU storages with 2-D layouts of any strides (f32/f64 without zeroing the output;
/// other dtypes through candle).
pub(crate) fn cpu_product(
    lhs: &CpuStorage,
    lhs_layout: &Layout,
    rhs: &CpuStorage,
    rhs_layout: &Layout,
) -> candle_core::Result<CpuStorage> {
    let (m, k) = lhs_layout.shape().dims2()?;
    let (k2, n) = rhs_layout.shape().dims2()?;
    if k != k2 {
        candle_core::bail!("matmul: lhs ({m}, {k}) and rhs ({k2}, {n}) do not chain");
    }
    #[cfg(target_arch = "x86_64")]
    match (lhs, rhs) {
        (CpuStorage::F32(a), CpuStorage::F32(b)) => {
            return Ok(CpuStorage::F32(unzeroed::product(
                a, lhs_layout, b, rhs_layout,
            )?));
        }
        (CpuStorage::F64(a), CpuStorage::F64(b)) => {
            return Ok(CpuStorage::F64(unzeroed::product(
                a, lhs_layout, b, rhs_layout,
            )?));
        }
        _ => {}
    }
    lhs.matmul(rhs, (1, m, n, k), lhs_layout, rhs_layout)
}

/// [`cpu_product`] as a graph-less op, so that candle takes the storage locks and makes the tensor.
struct Product;

impl CustomOp2 for Product {
    fn name(&self) -> &'static str {
        "matmul-unzeroed"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, _) = l1.shape().dims2()?;
        let (_, n) = l2.shape().dims2()?;
        Ok((cpu_product(s1, l1, s2, l2)?, Shape::from((m, n))))
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod unzeroed {
    use candle_core::{Layout, WithDType};

    /// The last element index a 2-D layout of `rows × cols` addresses (both nonzero).
    fn last_index(layout: &Layout, rows: usize, cols: usize) -> usize {
        let stride = layout.stride();
        layout.start_offset() + (rows - 1) * stride[0] + (cols - 1) * stride[1]
    }

    /// `a (m, k) · b (k, n)` row-major into a fresh vector; f32 or f64 (gemm dispatches on the type).
    pub(super) fn product<T: WithDType>(
        a: &[T],
        a_layout: &Layout,
        b: &[T],
        b_layout: &Layout,
    ) -> candle_core::Result<Vec<T>> {
        let (m, k) = a_layout.shape().dims2()?;
        let (_, n) = b_layout.shape().dims2()?;
        if m == 0 || n == 0 {
            return Ok(Vec::new());
        }
        if k == 0 {
            return Ok(vec![T::zero(); m * n]);
        }
        if last_index(a_layout, m, k) >= a.len() || last_index(b_layout, k, n) >= b.len() {
            candle_core::bail!("matmul: a layout addresses past its storage");
        }
        let threads = rayon::current_num_threads();
        let parallelism = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        let (a_stride, b_stride) = (a_layout.stride(), b_layout.stride());
        let mut out: Vec<T> = Vec::with_capacity(m * n);
        // SAFETY: every index gemm reads is inside `a` and `b` (checked above: the largest index each layout
        // addresses is in bounds, strides are non-negative); `out` has capacity for the m·n row-major values, which
        // gemm writes without reading them (`read_dst = false`), so every one is initialised before `set_len`.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr().add(a_layout.start_offset()),
                a_stride[1] as isize,
                a_stride[0] as isize,
                b.as_ptr().add(b_layout.start_offset()),
                b_stride[1] as isize,
                b_stride[0] as isize,
                T::zero(),
                T::one(),
                false,
                false,
                false,
                parallelism,
            );
            out.set_len(m * n);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::matmul;

    /// Equal to candle's product for f32 and f64, with transposed and offset (narrowed) operands, an empty inner
    /// dimension and a product large enough for gemm to thread.
    #[test]
    fn unzeroed_product_equals_candles() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        for dtype in [DType::F32, DType::F64] {
            let values = |n: usize, seed: usize| -> candle_core::Result<Tensor> {
                let v: Vec<f64> = (0..n)
                    .map(|i| (((i * 31 + seed * 7) % 29) as f64 - 14.0) * 0.07)
                    .collect();
                Tensor::from_vec(v, n, &dev)?.to_dtype(dtype)
            };
            let a = values(70 * 90, 1)?.reshape((70, 90))?;
            let b = values(90 * 50, 2)?.reshape((90, 50))?;
            let cases = [
                (a.clone(), b.clone()),
                (a.t()?.t()?, b.t()?.contiguous()?.t()?),
                (a.narrow(0, 3, 60)?.narrow(1, 5, 40)?, b.narrow(0, 10, 40)?),
                (a.narrow(1, 0, 0)?, b.narrow(0, 0, 0)?),
                (
                    values(300 * 200, 3)?.reshape((300, 200))?,
                    values(200 * 250, 4)?.reshape((200, 250))?,
                ),
            ];
            for (lhs, rhs) in cases {
                let ours = matmul(&lhs, &rhs)?;
                let candles = lhs.matmul(&rhs)?;
                assert_eq!(ours.dims(), candles.dims());
                let diff = (ours - candles)?
                    .abs()?
                    .flatten_all()?
                    .max(0)?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()?;
                assert_eq!(diff, 0.0, "{dtype:?} {:?} · {:?}", lhs.dims(), rhs.dims());
            }
        }
        Ok(())
    }
}
