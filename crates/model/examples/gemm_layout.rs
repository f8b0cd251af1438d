//! Which weight layout candle's CPU matmul handles fastest for decoding-sized inputs (m = 8) and training-sized
//! ones (m = 512): `x · Wᵀ` with `W (n, k)` row-major (a transposed view) vs a pre-transposed contiguous `Wᵀ (k, n)`.
use anyhow::Result;
use candle_core::{Device, Tensor};
use std::time::Instant;

fn main() -> Result<()> {
    let dev = Device::Cpu;
    for &(m, k, n) in &[
        (8usize, 576usize, 1536usize),
        (8, 576, 49152),
        (512, 576, 1536),
        (512, 1536, 576),
    ] {
        let x = Tensor::randn(0f32, 1., (m, k), &dev)?;
        let w = Tensor::randn(0f32, 1., (n, k), &dev)?;
        let wt = w.t()?.contiguous()?;
        let reps = if m == 8 { 50 } else { 10 };
        let xt = x.t()?;
        let xtc = xt.contiguous()?;
        for (name, lhs, rhs) in [
            ("W.t() view", &x, w.t()?),
            ("W^T contiguous", &x, wt.clone()),
            ("W·xᵀ", &w, xt.clone()),
            ("W·xᵀ contiguous", &w, xtc.clone()),
        ] {
            let _ = lhs.matmul(&rhs)?;
            let start = Instant::now();
            for _ in 0..reps {
                let _ = lhs.matmul(&rhs)?;
            }
            let s = start.elapsed().as_secs_f64() / reps as f64;
            println!(
                "m {m} k {k} n {n} {name}: {:.3} ms = {:.1} GFLOP/s",
                s * 1e3,
                2.0 * (m * k * n) as f64 / s / 1e9
            );
        }
    }
    Ok(())
}
