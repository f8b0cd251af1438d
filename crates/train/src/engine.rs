//! One optimiser step on a group of micro-batches: forward, masked loss, backward, update.
//!
//! Two execution paths compute the same mathematics:
//! - **whole graph** (no memory lever): `model.forward_hidden` keeps the whole trunk's graph; the head (`lm_head`
//!   and the loss, on target positions only) runs in row chunks, each with its own backward, so the
//!   `(rows, vocab)` logits never exist at once; then one trunk backward per micro-batch, gradients summed over the
//!   gradient-accumulation group, optional clipping, one AdamW step. On the CPU with few trainable parameters
//!   (LoRA) the rows of a micro-batch run concurrently, each unpadded with its own graph and the dropout values the
//!   padded batch would draw, their losses and gradients summed in row order;
//! - **per block** (`memory.recompute` and/or `memory.optimizer_in_backward`): the decoder runs block by block
//!   with a detached input at each block boundary. Backward walks the blocks from the top: the head (final norm,
//!   then the same chunked `lm_head` and loss) first, then each block
//!   with `(output · grad_output).sum().backward()`, which yields the block's parameter gradients and the
//!   gradient for the block below. With `recompute`, the forward keeps only each block's input and the block's
//!   graph is rebuilt right before its backward; with `optimizer_in_backward`, each block's parameters are
//!   stepped and their gradients dropped as soon as the block's backward is done. Parameters used outside the
//!   blocks (embeddings, final norm, `lm_head`, tied or not) are stepped last, once their gradients from the head
//!   and the embedding are summed.
//!
//! The loss of a group is `Σ_micro-batches Σ_target-tokens NLL / (target tokens of the group)`, so each
//! micro-batch's backward is scaled by `1 / group target tokens` and the sum of the gradients is the gradient of
//! the group's mean token loss. A non-finite loss is detected before any parameter changes.

use std::collections::HashMap;

use candle_core::{Tensor, TensorId, Var};
use rayon::prelude::*;
use task::config::MemorySection;

use crate::batch::Batch;
use crate::error::{TensorContext, TrainError};
use crate::loss;
use crate::optim::{AdamW, clip_factor, grad_norm};

/// Backpropagates `grad_output` (a constant) into the graph of `output`: the gradients of `Σ output · grad_output`.
fn backward_with(
    output: &Tensor,
    grad_output: &Tensor,
) -> candle_core::Result<candle_core::backprop::GradStore> {
    model::ops::const_mul(output, &grad_output.to_dtype(output.dtype())?)?
        .sum_all()?
        .backward()
}

/// What a step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepStats {
    /// Σ token NLL over the group's target tokens.
    pub loss_sum: f64,
    /// Target tokens of the group.
    pub target_tokens: u64,
    /// Non-padding tokens of the group.
    pub non_padding_tokens: u64,
    /// Global gradient norm before clipping (only computed when clipping).
    pub grad_norm: Option<f64>,
    /// False when the loss was not finite: no parameter was changed.
    pub applied: bool,
}

/// Adds `grad` to the running sum in `slot` (the first gradient is taken as is).
fn add_into(slot: &mut Option<Tensor>, grad: Tensor) -> candle_core::Result<()> {
    *slot = Some(match slot.take() {
        Some(sum) => (sum + grad)?,
        None => grad,
    });
    Ok(())
}

/// What one forward and backward pass produced.
struct Pass {
    /// Σ token NLL.
    loss_sum: f64,
    /// Gradients of the optimiser's parameters, by index.
    grads: Vec<Option<Tensor>>,
    /// The dropout generator's state afterwards.
    rng_end: u64,
}

/// How the step is executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Levers {
    /// Recompute block activations in backward instead of keeping them.
    pub recompute: bool,
    /// Step each block's parameters as soon as its gradients exist.
    pub optimizer_in_backward: bool,
}

/// When a parameter's gradient is complete during a per-block backward (the order of the phases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Final norm and untied `lm_head`: complete after the head's backward.
    Head,
    /// `model.layers.{i}.*` (base weights or adapters): complete after block `i`'s backward.
    Block(usize),
    /// The embeddings (also the tied `lm_head`): complete last.
    Embed,
}

/// The phase of a parameter from its HF or PEFT name.
fn phase_of(name: &str) -> Phase {
    if let Some(rest) = name.split("layers.").nth(1)
        && let Some(index) = rest.split('.').next().and_then(|i| i.parse().ok())
    {
        return Phase::Block(index);
    }
    if name.contains("embed_tokens") {
        Phase::Embed
    } else {
        Phase::Head
    }
}

/// Rows of the `(rows, vocab)` logits computed at once by the chunked head: about 8 M logits (32 MiB f32), and,
/// when the head's weight is trained, at least as many rows as the hidden size: every chunk's backward produces and
/// adds a `(vocab, hidden)` weight gradient, so a chunk's logits may be as large as that gradient anyway, and fewer
/// chunks make fewer of them (with 8 M logits per chunk, SmolLM2's full fine-tuning spent 19 % of a 1-thread step
/// in the head, `perf record`). A chunk streams the whole `(vocab, hidden)` weight through gemm in its forward and
/// again in its backward whatever its rows, so short chunks waste it: SmolLM2's tied head at 42 rows (2 M logits)
/// ran at 105 GFLOP/s, at 168 rows (8 M) at 222 (2 threads). The head runs while the trunk's whole graph is alive,
/// so its chunk adds to the peak once per concurrent row: 1-epoch SmolLM2 LoRA (`configs/smollm2_lora.toml` as
/// `reproduce.sh` derives it), steps 3–30: 2 M logits 48.4 s and peak RSS 1108 MiB, 4 M 45.6 s and 1154 MiB, 8 M
/// 43.2 s and 1272 MiB, same losses (back to back); with the fused head and loss (`model::ops::head_nll_rows`, one
/// `(rows, vocab)` buffer per chunk instead of two) 8 M took 41.0 s and 1113 MiB.
fn head_chunk_rows(vocab: usize, hidden: usize, head_trained: bool) -> usize {
    let bounded = ((8usize << 20) / vocab.max(1)).max(1);
    if head_trained {
        bounded.max(hidden)
    } else {
        bounded
    }
}

/// Runs training steps for one model and optimiser.
#[derive(Debug)]
pub struct Engine {
    levers: Levers,
    max_grad_norm: Option<f64>,
    /// Optimiser parameter index of every trainable tensor.
    index_of: HashMap<TensorId, usize>,
    /// Phase of every optimiser parameter, by index.
    phases: Vec<Phase>,
    /// Whether the whole-graph path runs the rows of a micro-batch concurrently (see [`ROW_CONCURRENCY_MAX_GRAD`]).
    rows_concurrently: bool,
}

/// The whole-graph path on the CPU runs the rows of a micro-batch concurrently, each unpadded with its own graph,
/// when the trainable parameters number at most this many (a LoRA run of a real model; any run of the tiny test
/// model): every row in flight holds its own set of gradients. Measured on 2 cores, SmolLM2-135M, batch 2 × ≤256:
/// LoRA (1.8 M trainable) 2.25 → 1.67 s per step; full fine-tuning (135 M) gained 6% for 540 MiB more peak memory,
/// so it keeps the padded batch.
pub const ROW_CONCURRENCY_MAX_GRAD: usize = 32 << 20;

fn model_err(context: &str) -> impl FnOnce(model::Error) -> TrainError + '_ {
    move |source| TrainError::Model {
        context: context.to_owned(),
        source,
    }
}

impl Engine {
    /// An engine for `lm`'s trainable variables as ordered in `optimizer`.
    pub fn new(optimizer: &AdamW, memory: &MemorySection, max_grad_norm: Option<f64>) -> Self {
        let index_of = optimizer
            .vars()
            .enumerate()
            .map(|(i, (_, var))| (var.as_tensor().id(), i))
            .collect();
        let phases = optimizer.vars().map(|(name, _)| phase_of(name)).collect();
        let trainable: usize = optimizer.vars().map(|(_, v)| v.elem_count()).sum();
        let on_cpu = optimizer.vars().all(|(_, v)| v.device().is_cpu());
        Self {
            levers: Levers {
                recompute: memory.recompute,
                optimizer_in_backward: memory.optimizer_in_backward,
            },
            max_grad_norm,
            index_of,
            phases,
            rows_concurrently: on_cpu && trainable <= ROW_CONCURRENCY_MAX_GRAD,
        }
    }

    /// Chooses whether the whole-graph path runs a micro-batch's rows concurrently (default: on the CPU with at most
    /// [`ROW_CONCURRENCY_MAX_GRAD`] trainable values); for tests that compare the two.
    pub fn with_rows_concurrently(mut self, on: bool) -> Self {
        self.rows_concurrently = on;
        self
    }

    /// The levers this engine runs with.
    pub fn levers(&self) -> Levers {
        self.levers
    }

    /// The per-block path (see the module doc). With `optimizer_in_backward` the group holds one micro-batch
    /// (the plan check enforces `grad_accum = 1`) and the optimiser step is spread over the backward.
    fn per_block_step(
        &self,
        lm: &model::CausalLm,
        optimizer: &mut AdamW,
        micro_batches: &[Batch],
        lr: f64,
        target_tokens: u64,
        non_padding_tokens: u64,
    ) -> Result<StepStats, TrainError> {
        let scale = 1.0 / target_tokens.max(1) as f64;
        let in_backward = self.levers.optimizer_in_backward;
        let mut grads: Vec<Option<Tensor>> = vec![None; self.index_of.len()];
        let mut loss_sum = 0f64;
        if in_backward {
            optimizer.begin_step();
        }
        for batch in micro_batches {
            let ctx = lm
                .prepare(&batch.attention_mask)
                .map_err(model_err("preparing the forward"))?;
            let rng = lm.rng();
            let layers = lm.num_layers();
            let embedded = lm.embed(&batch.input_ids).map_err(model_err("embedding"))?;
            // Forward block by block; each block starts from a detached copy of the previous output.
            let mut hidden = embedded.detach();
            let mut rng_before = Vec::with_capacity(layers);
            let mut kept: Vec<(Var, Tensor)> =
                Vec::with_capacity(if self.levers.recompute { 0 } else { layers });
            let mut inputs: Vec<Tensor> =
                Vec::with_capacity(if self.levers.recompute { layers } else { 0 });
            for layer in 0..layers {
                rng_before.push(rng.state());
                if self.levers.recompute {
                    // `train = true`: the dropout drawn here is the one the recompute replays.
                    let out = lm
                        .block_forward(layer, &hidden, &ctx, true)
                        .map_err(model_err("block forward"))?;
                    inputs.push(hidden);
                    hidden = out.detach();
                } else {
                    let input = Var::from_tensor(&hidden).ctx("block input")?;
                    let out = lm
                        .block_forward(layer, input.as_tensor(), &ctx, true)
                        .map_err(model_err("block forward"))?;
                    hidden = out.detach();
                    kept.push((input, out));
                }
            }
            let rng_after = rng.state();

            // Head: final norm (through a variable so its backward runs once), then lm_head + loss in row chunks.
            let last = Var::from_tensor(&hidden).ctx("head input")?;
            let normed = lm
                .final_hidden(last.as_tensor())
                .map_err(model_err("final norm"))?;
            let (batch_loss, grad_normed) =
                self.chunked_head(lm, &normed, batch, scale, &mut grads)?;
            loss_sum += batch_loss;
            if !loss_sum.is_finite() {
                // Nothing has been applied yet: the head's parameters are stepped only below.
                rng.set_state(rng_after);
                return Ok(StepStats {
                    loss_sum,
                    target_tokens,
                    non_padding_tokens,
                    grad_norm: None,
                    applied: false,
                });
            }
            let store = backward_with(&normed, &grad_normed).ctx("final norm backward")?;
            self.accumulate(&store, &mut grads)?;
            let mut grad = store.get(last.as_tensor()).cloned();
            drop(store);
            if in_backward {
                self.apply_phase(optimizer, &mut grads, Phase::Head, lr)?;
            }

            // Blocks from the top: recompute (replaying the block's dropout masks) or reuse the kept graph.
            for layer in (0..layers).rev() {
                let Some(grad_out) = grad.take() else { break };
                let (input, out) = if self.levers.recompute {
                    let input = Var::from_tensor(&inputs[layer]).ctx("block input")?;
                    rng.set_state(rng_before[layer]);
                    let out = lm
                        .block_forward(layer, input.as_tensor(), &ctx, true)
                        .map_err(model_err("block recompute"))?;
                    (input, out)
                } else {
                    kept.pop().ok_or_else(|| TrainError::Tensor {
                        context: format!("block {layer}"),
                        source: candle_core::Error::Msg("missing kept activation".into()),
                    })?
                };
                let store = backward_with(&out, &grad_out).ctx("block backward")?;
                self.accumulate(&store, &mut grads)?;
                grad = store.get(input.as_tensor()).cloned();
                drop(store);
                if in_backward {
                    self.apply_phase(optimizer, &mut grads, Phase::Block(layer), lr)?;
                }
            }
            rng.set_state(rng_after);
            if let Some(grad_embedded) = grad
                && self.phases.contains(&Phase::Embed)
            {
                let store = backward_with(&embedded, &grad_embedded).ctx("embedding backward")?;
                self.accumulate(&store, &mut grads)?;
            }
            if in_backward {
                self.apply_phase(optimizer, &mut grads, Phase::Embed, lr)?;
            }
        }
        if in_backward {
            return Ok(StepStats {
                loss_sum,
                target_tokens,
                non_padding_tokens,
                grad_norm: None,
                applied: true,
            });
        }
        let grad_norm = self.clip_and_step(optimizer, &mut grads, lr)?;
        Ok(StepStats {
            loss_sum,
            target_tokens,
            non_padding_tokens,
            grad_norm,
            applied: true,
        })
    }

    /// `lm_head` + masked loss over the normed hidden states `(b, t, hidden)`, on the target positions only
    /// ([`HeadRows`]), in row chunks; each chunk's loss (scaled by `scale`) is backpropagated at once:
    /// head-parameter gradients go into `grads`, and the gradient for the hidden states is summed and returned with
    /// the batch's Σ token NLL.
    fn chunked_head(
        &self,
        lm: &model::CausalLm,
        normed: &Tensor,
        batch: &Batch,
        scale: f64,
        grads: &mut [Option<Tensor>],
    ) -> Result<(f64, Tensor), TrainError> {
        let normed_var = Var::from_tensor(&normed.detach()).ctx("head input")?;
        let mut loss_sum = 0f64;
        let mut grad_normed: Option<Tensor> = None;
        if let Some(rows) = HeadRows::gather(lm, normed_var.as_tensor(), batch)? {
            for (start, len) in rows.chunks() {
                let nll = rows.chunk_nll_to_train(lm, start, len, scale)?;
                loss_sum += f64::from(nll.to_scalar::<f32>().ctx("reading the loss")?);
                let store = (nll * scale)
                    .ctx("scaling the loss")?
                    .backward()
                    .ctx("head backward")?;
                self.accumulate(&store, grads)?;
                if let Some(g) = store.get(normed_var.as_tensor()) {
                    add_into(&mut grad_normed, g.clone()).ctx("accumulating the head gradient")?;
                }
            }
        }
        let grad_normed = match grad_normed {
            Some(g) => g,
            None => normed_var.as_tensor().zeros_like().ctx("zero gradient")?,
        };
        Ok((loss_sum, grad_normed))
    }

    /// Steps the parameters of `phase` with their (now complete) gradients and frees those gradients.
    fn apply_phase(
        &self,
        optimizer: &mut AdamW,
        grads: &mut [Option<Tensor>],
        phase: Phase,
        lr: f64,
    ) -> Result<(), TrainError> {
        for (index, p) in self.phases.iter().enumerate() {
            if *p == phase
                && let Some(grad) = grads[index].take()
            {
                optimizer
                    .step_param(index, &grad, lr)
                    .ctx("optimizer step")?;
            }
        }
        Ok(())
    }

    /// One optimiser step over `micro_batches` (the gradient-accumulation group) at learning rate `lr`. The other
    /// threads of the pool poll for work meanwhile (`model::device::with_pool_awake`).
    pub fn train_step(
        &self,
        lm: &model::CausalLm,
        optimizer: &mut AdamW,
        micro_batches: &[Batch],
        lr: f64,
    ) -> Result<StepStats, TrainError> {
        model::device::with_pool_awake(|| self.step(lm, optimizer, micro_batches, lr))
    }

    fn step(
        &self,
        lm: &model::CausalLm,
        optimizer: &mut AdamW,
        micro_batches: &[Batch],
        lr: f64,
    ) -> Result<StepStats, TrainError> {
        let target_tokens: u64 = micro_batches.iter().map(|b| b.target_tokens).sum();
        let non_padding_tokens: u64 = micro_batches.iter().map(|b| b.non_padding_tokens).sum();
        if self.levers.recompute || self.levers.optimizer_in_backward {
            return self.per_block_step(
                lm,
                optimizer,
                micro_batches,
                lr,
                target_tokens,
                non_padding_tokens,
            );
        }
        let scale = 1.0 / target_tokens.max(1) as f64;
        let mut grads: Vec<Option<Tensor>> = vec![None; self.index_of.len()];
        let mut loss_sum = 0f64;
        for batch in micro_batches {
            let passes = if self.rows_concurrently {
                // The rows run concurrently, each unpadded with its own graph (rayon shares the cores between
                // them and the matmuls inside them), drawing the dropout values the padded batch forward would
                // give them; their losses and gradients are summed in row order, so the result does not depend on
                // the scheduling.
                let start = lm.rng().state();
                let (n_rows, padded_len) = batch.input_ids.dims2().ctx("batch shape")?;
                let rows = batch.rows().ctx("splitting the micro-batch")?;
                let passes = rows
                    .into_par_iter()
                    .enumerate()
                    .map(|(index, row)| {
                        let (_, len) = row.input_ids.dims2().ctx("row shape")?;
                        let rng = model::lora::SeededRng::row_of_batch(
                            start, index, n_rows, padded_len, len,
                        );
                        self.forward_backward(lm, &row, &rng, scale)
                    })
                    .collect::<Result<Vec<Pass>, TrainError>>()?;
                if let Some(last) = passes.last() {
                    lm.rng().set_state(last.rng_end);
                }
                passes
            } else {
                vec![self.forward_backward(lm, batch, lm.rng(), scale)?]
            };
            for pass in passes {
                loss_sum += pass.loss_sum;
                for (sum, grad) in grads.iter_mut().zip(pass.grads) {
                    if let Some(grad) = grad {
                        add_into(sum, grad).ctx("accumulating gradients")?;
                    }
                }
            }
            if !loss_sum.is_finite() {
                return Ok(StepStats {
                    loss_sum,
                    target_tokens,
                    non_padding_tokens,
                    grad_norm: None,
                    applied: false,
                });
            }
        }
        let grad_norm = self.clip_and_step(optimizer, &mut grads, lr)?;
        Ok(StepStats {
            loss_sum,
            target_tokens,
            non_padding_tokens,
            grad_norm,
            applied: true,
        })
    }

    /// Forward and backward of one micro-batch (or one row of it) with dropout drawn from `rng`: the trunk's graph
    /// ends at the normed hidden states and the head and loss run in row chunks, each with its own backward, so the
    /// `(rows, vocab)` logits never exist at once. A non-finite loss skips the backward.
    fn forward_backward(
        &self,
        lm: &model::CausalLm,
        batch: &Batch,
        rng: &model::lora::SeededRng,
        scale: f64,
    ) -> Result<Pass, TrainError> {
        let mut grads: Vec<Option<Tensor>> = vec![None; self.index_of.len()];
        let normed = lm
            .forward_hidden_with(&batch.input_ids, &batch.attention_mask, true, rng)
            .map_err(model_err("forward"))?;
        let (loss_sum, grad_normed) = self.chunked_head(lm, &normed, batch, scale, &mut grads)?;
        if loss_sum.is_finite() {
            let store = backward_with(&normed, &grad_normed).ctx("backward")?;
            self.accumulate(&store, &mut grads)?;
        }
        Ok(Pass {
            loss_sum,
            grads,
            rng_end: rng.state(),
        })
    }

    /// The end of a whole-graph step: clips the accumulated gradients when configured (returning the norm before
    /// clipping), then applies one optimiser step.
    fn clip_and_step(
        &self,
        optimizer: &mut AdamW,
        grads: &mut [Option<Tensor>],
        lr: f64,
    ) -> Result<Option<f64>, TrainError> {
        let (grad_norm, scale) = match self.max_grad_norm {
            Some(max) => {
                let norm = grad_norm(grads).ctx("gradient norm")?;
                (Some(norm), clip_factor(norm, max))
            }
            None => (None, 1.0),
        };
        optimizer
            .step_scaled(grads, scale, lr)
            .ctx("optimizer step")?;
        Ok(grad_norm)
    }

    /// Adds every trainable variable's gradient in `store` to `grads`; other entries (frozen operands) are dropped
    /// with the store.
    fn accumulate(
        &self,
        store: &candle_core::backprop::GradStore,
        grads: &mut [Option<Tensor>],
    ) -> Result<(), TrainError> {
        for (id, &index) in &self.index_of {
            if let Some(grad) = store.get_id(*id) {
                add_into(&mut grads[index], grad.clone()).ctx("accumulating gradients")?;
            }
        }
        Ok(())
    }
}

/// Σ token NLL of a batch without dropout or gradients (validation). It runs block by block from a detached
/// input, so only one block's graph is alive at a time (LoRA's adapters are variables: a whole-model forward
/// would keep every block's activations until its logits are dropped), and the head runs in the training
/// step's row chunks over the target positions only (the `(b, t, vocab)` logits never exist): SmolLM2 LoRA,
/// batch 2 × 384, the whole-batch forward lifted the process RSS from 1341 to 1813 MiB.
pub fn eval_loss_sum(lm: &model::CausalLm, batch: &Batch) -> Result<f64, TrainError> {
    let ctx = lm
        .prepare(&batch.attention_mask)
        .map_err(model_err("preparing the forward"))?;
    let mut hidden = lm
        .embed(&batch.input_ids)
        .map_err(model_err("embedding"))?
        .detach();
    for layer in 0..lm.num_layers() {
        hidden = lm
            .block_forward(layer, &hidden, &ctx, false)
            .map_err(model_err("block forward"))?
            .detach();
    }
    let normed = lm
        .final_hidden(&hidden)
        .map_err(model_err("final norm"))?
        .detach();
    let mut loss_sum = 0f64;
    if let Some(rows) = HeadRows::gather(lm, &normed, batch)? {
        for (start, len) in rows.chunks() {
            let nll = rows.chunk_nll(lm, start, len)?;
            loss_sum += f64::from(nll.to_scalar::<f32>().ctx("reading the validation loss")?);
        }
    }
    Ok(loss_sum)
}

/// The positions of a batch that predict a target token, gathered once on the device from the normed hidden
/// states: only they reach `lm_head` (prompt and padding positions would get logits the loss multiplies by zero —
/// about half of all positions on CloudEval-style rows, and `lm_head` is the largest matmul of a small model).
struct HeadRows {
    /// Hidden states `(n, hidden)` of the target positions.
    rows: Tensor,
    /// Their targets `(n,)` u32.
    targets: Tensor,
    /// Their loss weights `(n,)` f32.
    weights: Tensor,
    /// Rows per `lm_head` chunk ([`head_chunk_rows`]).
    chunk: usize,
}

impl HeadRows {
    /// The target positions of `batch` in `normed (b, t, hidden)`; `None` when the batch has no target token.
    fn gather(
        lm: &model::CausalLm,
        normed: &Tensor,
        batch: &Batch,
    ) -> Result<Option<Self>, TrainError> {
        let (b, t, width) = normed.dims3().ctx("hidden shape")?;
        let n = b * (t - 1);
        let weights: Vec<f32> = batch
            .target_mask
            .reshape(n)
            .and_then(|m| m.to_dtype(candle_core::DType::F32))
            .and_then(|m| m.to_vec1())
            .ctx("target mask")?;
        let picked: Vec<u32> = (0..n as u32)
            .filter(|&i| weights[i as usize] != 0.0)
            .collect();
        if picked.is_empty() {
            return Ok(None);
        }
        let index = Tensor::new(picked.as_slice(), normed.device()).ctx("target positions")?;
        let pick = |x: &Tensor, dims: &[usize]| x.reshape(dims)?.index_select(&index, 0);
        let rows = normed
            .narrow(1, 0, t - 1)
            .and_then(|x| pick(&x, &[n, width]))
            .ctx("head rows")?;
        let config = lm.config();
        Ok(Some(Self {
            rows,
            targets: pick(&batch.targets, &[n]).ctx("targets")?,
            weights: pick(&batch.target_mask, &[n]).ctx("target mask")?,
            chunk: head_chunk_rows(
                config.vocab_size,
                config.hidden_size,
                lm.head_weight().is_trainable(),
            ),
        }))
    }

    /// `(start, len)` of every chunk, in order.
    fn chunks(&self) -> impl Iterator<Item = (usize, usize)> + use<> {
        let (n, chunk) = (self.targets.elem_count(), self.chunk);
        (0..n)
            .step_by(chunk)
            .map(move |start| (start, chunk.min(n - start)))
    }

    /// Σ weighted token NLL of the chunk's rows (a scalar, in the graph of the hidden states and the head).
    fn chunk_nll(
        &self,
        lm: &model::CausalLm,
        start: usize,
        len: usize,
    ) -> Result<Tensor, TrainError> {
        let span = |x: &Tensor| x.narrow(0, start, len).ctx("head chunk");
        let logits = lm
            .lm_head(&span(&self.rows)?)
            .map_err(model_err("lm_head"))?;
        loss::nll_rows(&logits, &span(&self.targets)?, &span(&self.weights)?).ctx("loss")
    }

    /// [`chunk_nll`](Self::chunk_nll) for a backward with upstream gradient `scale`: head and loss as one node
    /// (`model::ops::head_nll_rows`) that holds one `(rows, vocab)` buffer, the logits' gradient, instead of the
    /// logits and then their gradient.
    fn chunk_nll_to_train(
        &self,
        lm: &model::CausalLm,
        start: usize,
        len: usize,
        scale: f64,
    ) -> Result<Tensor, TrainError> {
        let span = |x: &Tensor| x.narrow(0, start, len).ctx("head chunk");
        model::ops::head_nll_rows(
            &span(&self.rows)?,
            lm.head_weight(),
            &span(&self.targets)?,
            &span(&self.weights)?,
            scale,
        )
        .ctx("head and loss")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::TokenRow;

    #[test]
    fn parameters_are_assigned_to_the_phase_that_completes_their_gradient() {
        assert_eq!(
            phase_of("model.layers.3.self_attn.q_proj.weight"),
            Phase::Block(3)
        );
        assert_eq!(
            phase_of("base_model.model.model.layers.12.mlp.down_proj.lora_B.weight"),
            Phase::Block(12)
        );
        assert_eq!(phase_of("model.embed_tokens.weight"), Phase::Embed);
        assert_eq!(phase_of("model.norm.weight"), Phase::Head);
        assert_eq!(phase_of("lm_head.weight"), Phase::Head);
    }

    /// The validation loss (block by block, chunked head on target positions) equals the masked loss of a whole
    /// forward's logits, on a LoRA model (adapters are variables, so its forward builds a graph) with trained
    /// adapters and a padded batch.
    #[test]
    fn validation_loss_equals_the_masked_loss_of_the_whole_forward() -> Result<(), TrainError> {
        let config = model::ModelConfig::from_json_str(
            r#"{"model_type":"llama","vocab_size":97,"hidden_size":32,"intermediate_size":48,
            "num_hidden_layers":3,"num_attention_heads":4,"num_key_value_heads":2,"rms_norm_eps":1e-5,
            "rope_theta":10000,"max_position_embeddings":64,"tie_word_embeddings":true}"#,
            std::path::Path::new("<tiny>"),
        )
        .map_err(model_err("config"))?;
        let lora = model::LoraConfig {
            dropout: 0.3,
            ..model::LoraConfig::default()
        };
        let device = candle_core::Device::Cpu;
        let lm = model::CausalLm::random(
            config,
            candle_core::DType::F32,
            &device,
            &model::Trainable::Lora(lora),
            7,
        )
        .map_err(model_err("model"))?;
        // B starts at zero; give every adapter a nonzero update so the adapters take part in the loss.
        for (_, var) in lm.trainable_vars() {
            let values = (var.as_tensor().ones_like().ctx("ones")? * 0.05).ctx("scale")?;
            var.set(&values).ctx("set")?;
        }
        let rows = [
            TokenRow {
                id: "a".into(),
                ids: (0..19).map(|i| (i * 13 + 5) % 97).collect(),
                prompt_len: 7,
            },
            TokenRow {
                id: "b".into(),
                ids: (0..11).map(|i| (i * 29 + 3) % 97).collect(),
                prompt_len: 4,
            },
        ];
        let refs: Vec<&TokenRow> = rows.iter().collect();
        let batch = crate::batch::make_batch(&refs, 0, &device).ctx("batch")?;
        let chunked = eval_loss_sum(&lm, &batch)?;
        let logits = lm
            .forward(&batch.input_ids, &batch.attention_mask, false)
            .map_err(model_err("forward"))?;
        let whole = loss::masked_nll_sum(&logits, &batch.targets, &batch.target_mask)
            .and_then(|l| l.to_scalar::<f32>())
            .ctx("whole loss")?;
        assert!(
            chunked > 1.0,
            "a loss over {} targets: {chunked}",
            batch.target_tokens
        );
        assert!(
            (chunked - f64::from(whole)).abs() <= 1e-5 * chunked,
            "chunked {chunked} vs whole forward {whole}"
        );
        Ok(())
    }

    #[test]
    fn head_chunks_bound_the_logits_held_at_once() {
        assert_eq!(head_chunk_rows(512, 64, false), 16384);
        assert_eq!(head_chunk_rows(49_152, 576, false), 170);
        assert_eq!(head_chunk_rows(128_256, 4096, false), 65);
        assert_eq!(head_chunk_rows(0, 64, false), 8 << 20);
        assert_eq!(head_chunk_rows(128_256, 4096, true), 4096);
        assert_eq!(head_chunk_rows(49_152, 576, true), 576);
        assert_eq!(head_chunk_rows(512, 64, true), 16384);
    }
}
