//! Masked next-token cross-entropy built only from ops that have a backward pass.
//!
//! candle's `cross_entropy` has no ignore index, so the loss is `-Σ mask · log_softmax(logits)[target]`. It is
//! returned as a *sum* over target tokens: the trainer divides by the number of target tokens of the whole
//! gradient-accumulation group, so every completion token weighs the same however the rows fall into
//! micro-batches (sum over micro-batches / total target tokens).

use candle_core::{Result, Tensor};

/// `Σ target_mask · (−log softmax(logits)[target])` for `logits (b, t, V)` (any float dtype; computed in f32),
/// `targets (b, t−1)` u32 (`input_ids[:, 1:]`) and `target_mask (b, t−1)` f32. Position `j` predicts `j + 1`,
/// so the last position's logits are unused. Returns a scalar f32 tensor.
pub fn masked_nll_sum(logits: &Tensor, targets: &Tensor, target_mask: &Tensor) -> Result<Tensor> {
    let (b, t, vocab) = logits.dims3()?;
    let predicting = logits.narrow(1, 0, t - 1)?.reshape((b * (t - 1), vocab))?;
    nll_rows(
        &predicting,
        &targets.reshape(b * (t - 1))?,
        &target_mask.reshape(b * (t - 1))?,
    )
}

/// The same sum over flat rows: `logits (n, V)`, `targets (n,)` u32, `mask (n,)` f32. On the CPU this is
/// `model`'s fused loss, which reads the logits once forward and once backward and keeps no `(n, V)`
/// intermediate.
pub fn nll_rows(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    model::ops::masked_nll_rows(logits, targets, mask)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    // Reference (plain Python, same numbers as torch.nn.functional.cross_entropy(reduction="none") masked):
    //   for each (b, j): lse = logsumexp(logits[b][j]); total += mask[b][j] * (lse - logits[b][j][targets[b][j]])
    //   → 3.2930945123865887
    #[test]
    fn masked_nll_sum_matches_reference() -> Result<()> {
        let device = Device::Cpu;
        let logits = Tensor::new(
            &[
                [
                    [0.5f32, -1.0, 2.0, 0.1],
                    [1.5, 0.3, -0.7, 0.0],
                    [0.2, 0.2, 0.9, -2.0],
                ],
                [
                    [-0.3, 1.1, 0.4, 0.8],
                    [2.2, -0.5, 0.0, 1.0],
                    [0.0, 0.0, 0.0, 0.0],
                ],
            ],
            &device,
        )?;
        let targets = Tensor::new(&[[2u32, 1], [3, 0]], &device)?;
        let mask = Tensor::new(&[[0f32, 1.0], [1.0, 1.0]], &device)?;
        let loss = masked_nll_sum(&logits, &targets, &mask)?.to_scalar::<f32>()?;
        assert!(
            (f64::from(loss) - 3.293_094_512_386_588_7).abs() < 1e-5,
            "{loss}"
        );
        Ok(())
    }

    #[test]
    fn masked_positions_get_no_gradient() -> Result<()> {
        let device = Device::Cpu;
        let logits = Var::from_tensor(&Tensor::new(
            &[[[0.5f32, -1.0, 2.0], [0.3, 0.2, 0.1], [1.0, 1.0, 1.0]]],
            &device,
        )?)?;
        let targets = Tensor::new(&[[2u32, 0]], &device)?;
        let mask = Tensor::new(&[[0f32, 1.0]], &device)?;
        let grads = masked_nll_sum(logits.as_tensor(), &targets, &mask)?.backward()?;
        let grad: Vec<Vec<Vec<f32>>> = grads
            .get(logits.as_tensor())
            .expect("grad of logits")
            .to_vec3()?;
        assert!(
            grad[0][0].iter().all(|g| *g == 0.0),
            "masked position got {:?}",
            grad[0][0]
        );
        assert!(grad[0][1].iter().any(|g| *g != 0.0));
        assert!(
            grad[0][2].iter().all(|g| *g == 0.0),
            "last position predicts nothing"
        );
        Ok(())
    }
}
