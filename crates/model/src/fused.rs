//! Graph nodes with a hand-written backward where candle's composed graph keeps memory or work for no reason (CPU
//! only; other devices use the composed ops).
//!
//! **LoRA linear**: `x·Wᵀ + s·dropout(x)·Aᵀ·Bᵀ` as composed ops keeps the base output, the adapter output (the
//! `add` node holds both) and the dropout output: three output- or input-sized tensors per adapted module.
//! [`lora_linear`] keeps only `x` (and its dropout mask as bits): the rank-r product is recomputed in backward
//! (measured, SmolLM2-135M LoRA on q/k/v/o, batch 2 × ≤256, 2 threads: peak RSS 1871 → 1721 MiB; once it stopped also
//! computing the base product a second time, the LoRA step went 1.67 → 1.46 s).
//!
//! **Trained linear** (full fine-tuning): [`trained_linear`] makes the weight gradient once, in the weight's layout
//! (see there).
//!
//! **Attention** (both methods): [`attention`] keeps only the projections q, k, v and recomputes RoPE, the scores
//! and the probabilities in backward; the composed ops keep 4956 more values per token and layer at 190 tokens.
//!
//! **Frozen MLP** (LoRA on attention only): [`frozen_mlp_residual`] runs the attention half's residual add, then
//! pre-norm, SwiGLU and the MLP's residual add as one node that keeps the gate and up outputs only.
//!
//! Measured together (SmolLM2-135M, batch 2 × ≤256, 2 threads, 8-step runs of the `.cache/bench-train` configs,
//! same losses to 6 digits): LoRA peak RSS 1638 → 1458 MiB with the MLP node → 1100 MiB with attention too, at the
//! same step time (1.65–1.77 s with the attention node, 1.70–1.73 s without it); full 3361 → 2991 MiB and
//! 3.39–3.48 → 3.09–3.31 s per step. What one forward keeps is listed by `cargo run --release -p model --example
//! measure -- census lora` (LoRA, 190 tokens: 342 → 97 MiB of graph tensors, plus the frozen MLP's gate and up
//! outputs, 67 MiB, held inside its node). Folding the attention half's residual add into the MLP node and the
//! frozen norm gain into the norm node (`ops::rms_norm`) took 2 × hidden more values per token and layer out: census
//! at 384 tokens 4454 → 3302 values per token and layer; LoRA peak RSS 1311 → 1214 MiB, same losses, same step time
//! (2.24 s), back to back, in 10-step runs of `train --config out/configs/smollm2_lora.toml --max-steps 10` (the
//! config `scripts/reproduce.sh --dry-run` derives: batch 2 × ≤384, dropout 0.05).
//!
//! Each node computes its forward with ordinary candle ops on detached inputs (no graph), then hands the result to
//! one custom op over the real inputs whose CPU forward returns that result (the trained linear's CPU forward is a
//! single gemm on the storages). The backwards are written out here.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};

use crate::lora::{DropoutBits, DropoutMask, dropout_bits_apply};
use crate::matmul::{cpu_product, matmul};

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

/// The `cpu_fwd` of a node whose result was computed ahead (a [`Precomputed`] in `self.out`); one storage and
/// layout parameter name pair per input.
macro_rules! precomputed_cpu_fwd {
    ($($storage:ident $layout:ident),+) => {
        fn cpu_fwd(
            &self,
            $($storage: &CpuStorage, $layout: &Layout),+
        ) -> candle_core::Result<(CpuStorage, Shape)> {
            self.out.take_cpu(self.name())
        }
    };
}

/// `x·Wᵀ + scale·dropout(x)·Aᵀ·Bᵀ` for `x (m, in)`, a constant `w (out, in)`, `a (r, in)`, `b (out, r)`: one graph
/// node over `x`, `A` and `B` that keeps no output-sized intermediate (CPU, f32/f64 inputs of one dtype; the caller
/// falls back to composed ops elsewhere). `mask` is the dropout to apply (drawn by the caller, made into bits here for
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
    let bits = mask.map(|m| m.to_bits(x.elem_count()));
    let forward = {
        let xd = x.detach();
        let dropped = match &bits {
            Some(bits) => dropout_bits_apply(&xd, bits)?,
            None => xd.clone(),
        };
        let low = (matmul(&dropped, &a.detach().t()?)? * scale)?;
        (matmul(&xd, &w.t()?)? + matmul(&low, &b.detach().t()?)?)?
    };
    x.apply_op3(
        a,
        b,
        LoraLinear {
            out: Precomputed::new(forward),
            w,
            scale,
            bits,
        },
    )
}

struct LoraLinear {
    out: Precomputed,
    w: Tensor,
    scale: f64,
    /// The dropout mask, drawn once in forward and applied again in backward.
    bits: Option<DropoutBits>,
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    precomputed_cpu_fwd!(_x _x_layout, _a _a_layout, _b _b_layout);

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x, a, b, dy) = (x.detach(), a.detach(), b.detach(), dy.detach());
        let dropped = match &self.bits {
            Some(bits) => dropout_bits_apply(&x, bits)?,
            None => x.clone(),
        };
        // y = x·Wᵀ + s·(u·Aᵀ)·Bᵀ with u = dropout(x), l = u·Aᵀ:
        //   dB = s·dyᵀ·l,  dl = s·dy·B,  dA = dlᵀ·u,  dx = dy·W + dropout(dl·A).
        let low = matmul(&dropped, &a.t()?)?;
        let grad_b = (matmul(&dy.t()?, &low)? * self.scale)?;
        let grad_low = (matmul(&dy, &b)? * self.scale)?;
        let grad_a = matmul(&grad_low.t()?, &dropped)?;
        let grad_dropped = matmul(&grad_low, &a)?;
        let grad_dropped = match &self.bits {
            Some(bits) => dropout_bits_apply(&grad_dropped, bits)?,
            None => grad_dropped,
        };
        let grad_x = (matmul(&dy, &self.w)? + grad_dropped)?;
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
        let out = cpu_product(x, x_layout, w, &w_layout.transpose(0, 1)?)?;
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
        Ok((Some(matmul(&dy, &w)?), Some(matmul(&dy.t()?, &x)?)))
    }
}

/// The frozen weights of a pre-norm SwiGLU MLP: `down(silu(gate(h)) ⊙ up(h))`, `h = rmsnorm(x)·gain`. Linear
/// weights are `(out, in)`.
#[derive(Debug, Clone, Copy)]
pub struct FrozenMlp<'a> {
    /// The RMSNorm gain, `(hidden,)`.
    pub gain: &'a Tensor,
    /// The RMSNorm epsilon.
    pub eps: f64,
    /// `gate_proj.weight`, `(intermediate, hidden)`.
    pub gate: &'a Tensor,
    /// `up_proj.weight`, `(intermediate, hidden)`.
    pub up: &'a Tensor,
    /// `down_proj.weight`, `(hidden, intermediate)`.
    pub down: &'a Tensor,
}

/// `x + down(silu(gate(h)) ⊙ up(h))` with `x = residual + branch` and `h = rmsnorm(x)·gain`, every weight frozen:
/// the residual add that closes a block's attention half and the whole MLP half (pre-norm, SwiGLU, residual) as one
/// graph node over `residual` and `branch (…, hidden)` (CPU, f32/f64; the caller falls back to composed ops
/// elsewhere).
///
/// With frozen weights the backward needs only the gradient for `x` (which both inputs receive), for which the gate
/// and up outputs suffice besides `x` itself, recomputed from the inputs: the residual stream keeps `residual` for
/// the attention half's norm anyway, and `branch` is all the node adds. The composed ops also keep the normalised
/// input, the normed-and-scaled input, the gated product, the down projection (held by the residual add) and `x`
/// (held by the add before it): 4 × hidden + intermediate values per token that a LoRA backward never reads.
pub fn frozen_mlp_residual(
    residual: &Tensor,
    branch: &Tensor,
    mlp: FrozenMlp<'_>,
) -> candle_core::Result<Tensor> {
    let dims = residual.dims().to_vec();
    let hidden = dims.last().copied().unwrap_or(1);
    let rows = residual.elem_count() / hidden.max(1);
    let (gate, up, out) = {
        let x2 = (residual.detach() + branch.detach())?.reshape((rows, hidden))?;
        let h = crate::ops::rms_norm_frozen_gain(&x2, mlp.gain, mlp.eps)?;
        let gate = matmul(&h, &mlp.gate.t()?)?;
        let up = matmul(&h, &mlp.up.t()?)?;
        let gated = crate::ops::silu_mul(&gate, &up)?;
        let out = (x2 + matmul(&gated, &mlp.down.t()?)?)?.reshape(dims)?;
        (gate, up, out)
    };
    residual.apply_op2(
        branch,
        FrozenMlpResidual {
            out: Precomputed::new(out),
            gate,
            up,
            gain: mlp.gain.detach(),
            eps: mlp.eps,
            w_gate: mlp.gate.detach(),
            w_up: mlp.up.detach(),
            w_down: mlp.down.detach(),
        },
    )
}

struct FrozenMlpResidual {
    out: Precomputed,
    /// `h·W_gateᵀ` and `h·W_upᵀ`, `(rows, intermediate)`: all the backward keeps.
    gate: Tensor,
    up: Tensor,
    gain: Tensor,
    eps: f64,
    w_gate: Tensor,
    w_up: Tensor,
    w_down: Tensor,
}

impl CustomOp2 for FrozenMlpResidual {
    fn name(&self) -> &'static str {
        "frozen-mlp-residual"
    }

    precomputed_cpu_fwd!(_residual _residual_layout, _branch _branch_layout);

    fn bwd(
        &self,
        residual: &Tensor,
        branch: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        // y = x + (silu(g) ⊙ u)·W_downᵀ, x = residual + branch, g = h·W_gateᵀ, u = h·W_upᵀ, h = n(x)·gain:
        //   d(gated) = dy·W_down,  (dg, du) from the SwiGLU backward,  dh = dg·W_gate + du·W_up,
        //   dx = dy + n'(x)ᵀ·(dh ⊙ gain),  d(residual) = d(branch) = dx.
        let hidden = residual.dims().last().copied().unwrap_or(1);
        let rows = residual.elem_count() / hidden.max(1);
        let x2 = (residual.detach() + branch.detach())?.reshape((rows, hidden))?;
        let dy2 = dy.detach().reshape((rows, hidden))?;
        let grad_gated = matmul(&dy2, &self.w_down)?;
        let (grad_gate, grad_up) =
            crate::ops::silu_mul_backward(&self.gate, &self.up, &grad_gated)?;
        let grad_h = (matmul(&grad_gate, &self.w_gate)? + matmul(&grad_up, &self.w_up)?)?;
        let grad_x =
            (crate::ops::rms_norm_frozen_gain_backward(&x2, &grad_h, &self.gain, self.eps)? + dy2)?
                .reshape(residual.shape())?;
        // An untracked input (the embeddings below the first block) would only store a gradient nobody reads.
        Ok((
            residual.track_op().then(|| grad_x.clone()),
            branch.track_op().then_some(grad_x),
        ))
    }
}

/// Whether [`frozen_mlp_residual`] applies to its inputs: part of a graph (a training forward; otherwise there is
/// no backward to save memory for), on the CPU, f32 or f64, the same shape and dtype.
pub(crate) fn frozen_mlp_applies(residual: &Tensor, branch: &Tensor) -> bool {
    (residual.track_op() || branch.track_op())
        && residual.device().is_cpu()
        && branch.device().is_cpu()
        && matches!(residual.dtype(), DType::F32 | DType::F64)
        && residual.dtype() == branch.dtype()
        && residual.dims() == branch.dims()
}

/// The shape and constants of a causal grouped-query self-attention over one batch: `cos`/`sin (b, 1, t, head_dim)`
/// RoPE tables and the additive `mask (b, 1, t, t)` (the node keeps them for its backward).
#[derive(Debug, Clone)]
pub struct AttentionParts {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (a divisor of `heads`).
    pub kv_heads: usize,
    /// Per-head width (even).
    pub head_dim: usize,
    /// RoPE cosine table.
    pub cos: Tensor,
    /// RoPE sine table.
    pub sin: Tensor,
    /// Additive attention mask, f32: 0 where a query may attend a key, `f32::MIN` elsewhere.
    pub mask: Tensor,
}

/// Query rows per block of the causal attention: block `j` scores its queries against keys `0..end_j` only, so the
/// upper triangle of the scores (all masked) is neither computed nor kept, in forward and in backward: at 384 tokens
/// and 64-row blocks, 7/12 of the full square (a smaller block skips more, but its matmuls run less efficiently).
const QUERY_BLOCK: usize = 64;

/// RoPE'd queries and keys and head-major values, detached, from which each query block's scores are computed.
struct Rotated {
    /// Rotated queries, `(b, kv_heads, groups, t, d)` (the query heads of one KV head side by side).
    queries: Tensor,
    /// Rotated keys, `(b, kv_heads, t, d)`.
    keys: Tensor,
    /// Values, `(b, kv_heads, t, d)`.
    values: Tensor,
}

/// One query block's view of [`Rotated`]: the queries of rows `start..start + len` of every query head, stacked per
/// KV head, and the keys and values of positions `0..start + len`, the only ones those rows may attend.
struct QueryBlock {
    start: usize,
    len: usize,
    /// `(b, kv_heads, groups·len, d)`.
    queries: Tensor,
    /// `(b, kv_heads, start + len, d)`.
    keys: Tensor,
    /// `(b, kv_heads, start + len, d)`.
    values: Tensor,
    /// Attention probabilities, `(b, kv_heads, groups·len, start + len)`.
    probs: Tensor,
}

impl AttentionParts {
    fn scale(&self) -> f64 {
        1.0 / (self.head_dim as f64).sqrt()
    }

    /// RoPE from the projections `q (b, t, heads·d)`, `k`/`v (b, t, kv_heads·d)`, on detached tensors (no graph).
    fn rotated(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Rotated> {
        let (b, t, _) = q.dims3()?;
        let (nh, kvh, d) = (self.heads, self.kv_heads, self.head_dim);
        let (q, k, v) = (q.detach(), k.detach(), v.detach());
        let queries =
            crate::ops::rope_heads_first(&q.reshape((b, t, nh, d))?, &self.cos, &self.sin)?
                .reshape((b, kvh, nh / kvh, t, d))?;
        let keys = crate::ops::rope_heads_first(&k.reshape((b, t, kvh, d))?, &self.cos, &self.sin)?;
        let values = v.reshape((b, t, kvh, d))?.transpose(1, 2)?.contiguous()?;
        Ok(Rotated {
            queries,
            keys,
            values,
        })
    }

    /// The query blocks `(start, len)` of `t` positions, `block` rows each.
    fn blocks(t: usize, block: usize) -> impl Iterator<Item = (usize, usize)> {
        let block = block.max(1);
        (0..t)
            .step_by(block)
            .map(move |start| (start, block.min(t - start)))
    }

    /// Scores and masked softmax of the query block `start..start + len` against the keys it may attend.
    fn query_block(
        &self,
        rotated: &Rotated,
        start: usize,
        len: usize,
    ) -> candle_core::Result<QueryBlock> {
        let (b, kvh, groups, _, d) = rotated.queries.dims5()?;
        let end = start + len;
        let queries = rotated
            .queries
            .narrow(3, start, len)?
            .contiguous()?
            .reshape((b, kvh, groups * len, d))?;
        let keys = rotated.keys.narrow(2, 0, end)?;
        let values = rotated.values.narrow(2, 0, end)?;
        let scores = queries
            .matmul(&keys.t()?)?
            .reshape((b, kvh * groups, len, end))?;
        let mask = self.mask.narrow(2, start, len)?.narrow(3, 0, end)?;
        let probs = crate::ops::scaled_masked_softmax(&scores, self.scale(), Some(&mask))?
            .reshape((b, kvh, groups * len, end))?;
        Ok(QueryBlock {
            start,
            len,
            queries,
            keys,
            values,
            probs,
        })
    }
}

/// `blocks` of `(b, kv_heads, groups·len_j, d)` for consecutive query rows → `(b, kv_heads, groups, t, d)`.
fn join_query_blocks(blocks: &[Tensor], groups: usize) -> candle_core::Result<Tensor> {
    let split: Vec<Tensor> = blocks
        .iter()
        .map(|x| {
            let (b, kvh, rows, d) = x.dims4()?;
            x.reshape((b, kvh, groups, rows / groups, d))
        })
        .collect::<candle_core::Result<_>>()?;
    Tensor::cat(&split, 3)
}

/// `sum` += `part`, where `part (b, kv_heads, end, d)` covers the first `end` of `sum`'s `t` positions.
fn add_leading_positions(
    sum: &mut Option<Tensor>,
    part: Tensor,
    t: usize,
) -> candle_core::Result<()> {
    let end = part.dim(2)?;
    let part = if end < t {
        part.pad_with_zeros(2, 0, t - end)?
    } else {
        part
    };
    *sum = Some(match sum.take() {
        Some(s) => (s + part)?,
        None => part,
    });
    Ok(())
}

/// Causal grouped-query self-attention with RoPE, from the projections `q (b, t, heads·d)`, `k`/`v (b, t,
/// kv_heads·d)` to the heads' outputs `(b, t, heads·d)`, as one graph node over `q`, `k`, `v` (CPU, f32/f64, no KV
/// cache; the caller composes the ops elsewhere). The composed ops keep, per token and layer, both the projections
/// and their rotated, head-major copies, the scores and the probabilities (`heads · t` values each) and the output
/// before its transpose; this node keeps only its inputs and recomputes the rest in backward (RoPE, `QKᵀ`,
/// softmax: a small part of the step next to the linears). Scores are computed in query blocks of
/// [`QUERY_BLOCK`] rows against the keys each block may attend (the mask must be causal: no query attends a later
/// key). A query row that may attend no key at all (left padding) gets an average of its block's values where the
/// composed ops average all values: no loss reads that row.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    parts: AttentionParts,
) -> candle_core::Result<Tensor> {
    attention_in_blocks(q, k, v, parts, QUERY_BLOCK)
}

fn attention_in_blocks(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    parts: AttentionParts,
    query_block: usize,
) -> candle_core::Result<Tensor> {
    let (b, t, _) = q.dims3()?;
    let out = {
        let rotated = parts.rotated(q, k, v)?;
        let groups = parts.heads / parts.kv_heads;
        let outs = AttentionParts::blocks(t, query_block)
            .map(|(start, len)| {
                let block = parts.query_block(&rotated, start, len)?;
                block.probs.matmul(&block.values)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        join_query_blocks(&outs, groups)?
            .reshape((b, parts.heads, t, parts.head_dim))?
            .transpose(1, 2)?
            .reshape((b, t, parts.heads * parts.head_dim))?
    };
    q.apply_op3(
        k,
        v,
        Attention {
            out: Precomputed::new(out),
            parts,
            query_block,
        },
    )
}

struct Attention {
    out: Precomputed,
    parts: AttentionParts,
    query_block: usize,
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }

    precomputed_cpu_fwd!(_q _q_layout, _k _k_layout, _v _v_layout);

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let parts = &self.parts;
        let (b, t, _) = q.dims3()?;
        let (nh, kvh, d) = (parts.heads, parts.kv_heads, parts.head_dim);
        let groups = nh / kvh;
        let rotated = parts.rotated(q, k, v)?;
        // o = P·V with P = softmax(scale·Q·Kᵀ + mask), per KV head over its stacked query heads and per query
        // block: dV = Pᵀ·dO,  dP = dO·Vᵀ,  dS = softmax'(P, dP),  dQ = dS·K,  dK = dSᵀ·Q;  then RoPE's adjoint.
        let grad_out = dy
            .detach()
            .reshape((b, t, nh, d))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, kvh, groups, t, d))?;
        let scores_needed = q.track_op() || k.track_op();
        let (mut grad_v, mut grad_k) = (None, None);
        let mut grad_q_blocks = Vec::new();
        for (start, len) in AttentionParts::blocks(t, self.query_block) {
            let block = parts.query_block(&rotated, start, len)?;
            let grad_out = grad_out
                .narrow(3, block.start, block.len)?
                .contiguous()?
                .reshape((b, kvh, groups * block.len, d))?;
            if v.track_op() {
                add_leading_positions(&mut grad_v, block.probs.t()?.matmul(&grad_out)?, t)?;
            }
            if !scores_needed {
                continue;
            }
            let grad_probs = grad_out.matmul(&block.values.t()?)?;
            let grad_scores =
                crate::ops::scaled_softmax_backward(&block.probs, &grad_probs, parts.scale())?;
            if q.track_op() {
                grad_q_blocks.push(grad_scores.matmul(&block.keys)?);
            }
            if k.track_op() {
                add_leading_positions(&mut grad_k, grad_scores.t()?.matmul(&block.queries)?, t)?;
            }
        }
        // The gradient for the unrotated projection `(b, t, heads·d)` of a rotated, head-major one.
        let unrotate = |rotated: Tensor, heads: usize| {
            crate::ops::rope_heads_first_adjoint(&rotated, &parts.cos, &parts.sin)?.reshape((
                b,
                t,
                heads * d,
            ))
        };
        let grad_v = grad_v
            .map(|g| g.transpose(1, 2)?.reshape((b, t, kvh * d)))
            .transpose()?;
        let grad_q = if grad_q_blocks.is_empty() {
            None
        } else {
            Some(unrotate(
                join_query_blocks(&grad_q_blocks, groups)?.reshape((b, nh, t, d))?,
                nh,
            )?)
        };
        let grad_k = grad_k.map(|g| unrotate(g, kvh)).transpose()?;
        Ok((grad_q, grad_k, grad_v))
    }
}

/// Whether [`attention`] applies: a training graph (some projection tracked), on the CPU, f32 or f64, the RoPE
/// tables `(b, 1, t, head_dim)` and `head_dim` even.
pub(crate) fn attention_applies(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    parts: &AttentionParts,
) -> bool {
    let Ok((b, t, _)) = q.dims3() else {
        return false;
    };
    (q.track_op() || k.track_op() || v.track_op())
        && q.device().is_cpu()
        && matches!(q.dtype(), DType::F32 | DType::F64)
        && q.dtype() == k.dtype()
        && q.dtype() == v.dtype()
        && parts.head_dim.is_multiple_of(2)
        && parts.cos.dims() == [b, 1, t, parts.head_dim]
        && parts.sin.dims() == [b, 1, t, parts.head_dim]
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
    use crate::lora::{SeededRng, dropout_with};

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
        assert_gradients_match(&fused, &composed, 1e-6, &upstream, &[("x", &x), ("w", &w)])
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
            assert_gradients_match(
                &fused,
                &composed,
                1e-6,
                &upstream,
                &[("x", &x), ("A", &a), ("B", &b)],
            )?;
        }
        Ok(())
    }

    fn random_nd(dims: &[usize], seed: u64) -> candle_core::Result<Tensor> {
        let n: usize = dims.iter().product();
        random((n, 1), seed)?.reshape(dims)
    }

    /// Asserts `fused` equals `composed` within `forward_tolerance` and that the gradients of `Σ output · upstream`
    /// for every variable agree within 1e-5.
    fn assert_gradients_match(
        fused: &Tensor,
        composed: &Tensor,
        forward_tolerance: f32,
        upstream: &Tensor,
        vars: &[(&str, &Var)],
    ) -> candle_core::Result<()> {
        assert!(
            max_diff(fused, composed)? < forward_tolerance,
            "forward: {}",
            max_diff(fused, composed)?
        );
        let g_fused = (fused * upstream)?.sum_all()?.backward()?;
        let g_composed = (composed * upstream)?.sum_all()?.backward()?;
        for (name, v) in vars {
            let (gf, gc) = (
                g_fused.get(v.as_tensor()).expect("fused gradient"),
                g_composed.get(v.as_tensor()).expect("composed gradient"),
            );
            assert!(
                max_diff(gf, gc)? < 1e-5,
                "gradient of {name}: {}",
                max_diff(gf, gc)?
            );
        }
        Ok(())
    }

    /// The fused attention against attention written out per query head from candle's primitives (RoPE by
    /// `rotate_half`, the shared KV head picked by index, candle's composed softmax): output and the gradients of
    /// q, k and v, with grouped-query heads and a left-padded row, for several query-block sizes.
    #[test]
    fn attention_matches_per_head_composed_attention() -> candle_core::Result<()> {
        let (b, t, nh, kvh, d) = (2, 5, 4, 2, 6);
        let q = Var::from_tensor(&random_nd(&[b, t, nh * d], 1)?)?;
        let k = Var::from_tensor(&random_nd(&[b, t, kvh * d], 2)?)?;
        let v = Var::from_tensor(&random_nd(&[b, t, kvh * d], 3)?)?;
        let cos = random_nd(&[b, 1, t, d], 4)?;
        let sin = random_nd(&[b, 1, t, d], 5)?;
        // Causal; row 1 is left-padded by two positions (its queries never attend them).
        let mut mask = vec![0f32; b * t * t];
        for r in 0..b {
            for i in 0..t {
                for j in 0..t {
                    if j > i || (r == 1 && j < 2) {
                        mask[(r * t + i) * t + j] = f32::MIN;
                    }
                }
            }
        }
        let mask = Tensor::from_vec(mask, (b, 1, t, t), &Device::Cpu)?;
        let parts = AttentionParts {
            heads: nh,
            kv_heads: kvh,
            head_dim: d,
            cos: cos.clone(),
            sin: sin.clone(),
            mask: mask.clone(),
        };
        assert!(attention_applies(
            q.as_tensor(),
            k.as_tensor(),
            v.as_tensor(),
            &parts
        ));
        let composed_attention = |q: &Tensor, k: &Tensor, v: &Tensor| {
            let heads_first = |x: &Tensor, h: usize| x.reshape((b, t, h, d))?.transpose(1, 2);
            let qr = crate::ops::apply_rope(&heads_first(q, nh)?, &cos, &sin)?;
            let kr = crate::ops::apply_rope(&heads_first(k, kvh)?, &cos, &sin)?;
            let vh = heads_first(v, kvh)?;
            let mut outs = Vec::new();
            for h in 0..nh {
                let kv = h / (nh / kvh);
                let scores = (qr.narrow(1, h, 1)?.matmul(&kr.narrow(1, kv, 1)?.t()?)?
                    * (1.0 / (d as f64).sqrt()))?
                .broadcast_add(&mask)?;
                let probs = candle_nn::ops::softmax(&scores, candle_core::D::Minus1)?;
                outs.push(probs.matmul(&vh.narrow(1, kv, 1)?)?);
            }
            Tensor::cat(&outs, 1)?
                .transpose(1, 2)?
                .reshape((b, t, nh * d))
        };
        let upstream = random_nd(&[b, t, nh * d], 6)?;
        let (qt, kt, vt) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
        // Row 1's first two queries may attend no key at all: their outputs are an average over whichever keys are
        // scored (all of them in the composed ops, the query block's in the node), read by no loss. Compare the
        // other positions.
        let attended = Tensor::from_iter(
            (0..b * t).map(|i| if i / t == 1 && i % t < 2 { 0f32 } else { 1.0 }),
            &Device::Cpu,
        )?
        .reshape((b, t, 1))?;
        let attention_in_blocks = |q: &Tensor, k: &Tensor, v: &Tensor, block: usize| {
            attention_in_blocks(q, k, v, parts.clone(), block)?.broadcast_mul(&attended)
        };
        let composed_attention = |q: &Tensor, k: &Tensor, v: &Tensor| {
            composed_attention(q, k, v)?.broadcast_mul(&attended)
        };
        // One query block, blocks of one row, and blocks of 2 + 2 + 1 rows (the last one short).
        for block in [t, 1, 2] {
            assert_gradients_match(
                &attention_in_blocks(qt, kt, vt, block)?,
                &composed_attention(qt, kt, vt)?,
                1e-5,
                &upstream,
                &[("q", &q), ("k", &k), ("v", &v)],
            )?;
            // Only v trained (q and k constants): the node skips the score gradients and still gets v's right.
            let (qc, kc) = (qt.detach(), kt.detach());
            assert_gradients_match(
                &attention_in_blocks(&qc, &kc, vt, block)?,
                &composed_attention(&qc, &kc, vt)?,
                1e-5,
                &upstream,
                &[("v", &v)],
            )?;
        }
        Ok(())
    }

    /// The frozen MLP node against `x + down(silu(gate(h)) ⊙ up(h))`, `x = residual + branch`,
    /// `h = rmsnorm(x)·gain`, from candle's primitives: output and the gradients of both inputs.
    #[test]
    fn frozen_mlp_residual_matches_composed_ops() -> candle_core::Result<()> {
        let (b, t, hidden, inter, eps) = (2, 3, 8, 12, 1e-5);
        let residual = Var::from_tensor(&random_nd(&[b, t, hidden], 1)?)?;
        let branch = Var::from_tensor(&random_nd(&[b, t, hidden], 7)?)?;
        let gain = (random_nd(&[hidden], 2)? + 1.0)?;
        let (gate, up, down) = (
            random((inter, hidden), 3)?,
            random((inter, hidden), 4)?,
            random((hidden, inter), 5)?,
        );
        let mlp = FrozenMlp {
            gain: &gain,
            eps,
            gate: &gate,
            up: &up,
            down: &down,
        };
        let (r, x_branch) = (residual.as_tensor(), branch.as_tensor());
        assert!(frozen_mlp_applies(r, x_branch));
        let fused = frozen_mlp_residual(r, x_branch, mlp)?;
        let x = (r + x_branch)?;
        let h = crate::ops::rms_normalize_composed(&x, eps)?.broadcast_mul(&gain)?;
        let gated = (h.broadcast_matmul(&gate.t()?)?.silu()? * h.broadcast_matmul(&up.t()?)?)?;
        let composed = (x + gated.broadcast_matmul(&down.t()?)?)?;
        let upstream = random_nd(&[b, t, hidden], 6)?;
        assert_gradients_match(
            &fused,
            &composed,
            1e-5,
            &upstream,
            &[("residual", &residual), ("branch", &branch)],
        )
    }
}
