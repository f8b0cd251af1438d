//! Batched greedy generation with a KV cache, left padding and per-row positions.
//!
//! Prompts are left-padded to the longest; each row's RoPE positions count only its real tokens, and padding slots
//! are masked out of attention, so a row's output does not depend on the other rows (batched == one at a time).
//! Only the last position goes through `lm_head` during decoding.

use candle_core::{D, Tensor};

use crate::cache::KvCache;
use crate::error::{Error, Result};
use crate::llama::CausalLm;

/// A caller's stop check on a row's generated ids so far.
pub type StopCheck<'a> = &'a dyn Fn(&[u32]) -> bool;

/// Settings of [`generate`].
pub struct GenerateOptions<'a> {
    /// At most this many new tokens per row.
    pub max_new_tokens: usize,
    /// A row stops when it produces one of these (the EOS token is not included in its output).
    pub eos_ids: Vec<u32>,
    /// Token fed into padding slots (never attended to; may equal an EOS id).
    pub pad_id: u32,
    /// Caller's stop check on a row's generated ids so far (e.g. a stop string via the tokenizer's decode); when
    /// it returns true the row stops, keeping the token just generated.
    pub stop: Option<StopCheck<'a>>,
}

/// One row's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// The generated ids (prompt excluded, EOS excluded).
    pub ids: Vec<u32>,
    /// True when the row stopped on EOS or the stop check, false when it ran out of `max_new_tokens`.
    pub stopped: bool,
}

/// Greedy decoding of a batch of prompts (token ids, BOS included by the caller).
pub fn generate(
    model: &CausalLm,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions<'_>,
) -> Result<Vec<Generation>> {
    let b = prompts.len();
    let mut out: Vec<Generation> = vec![
        Generation {
            ids: Vec::new(),
            stopped: false
        };
        b
    ];
    if b == 0 || opts.max_new_tokens == 0 {
        return Ok(out);
    }
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(Error::Input(format!(
            "prompt {i} is empty (it needs at least a BOS token)"
        )));
    }
    let vocab = model.config().vocab_size as u32;
    if let Some(bad) = prompts.iter().flatten().find(|&&id| id >= vocab) {
        return Err(Error::Input(format!(
            "token id {bad} is outside the vocabulary of {vocab}"
        )));
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let device = model.device();
    let mut ids = Vec::with_capacity(b * longest);
    let mut mask = Vec::with_capacity(b * longest);
    for p in prompts {
        let pad = longest - p.len();
        ids.extend(std::iter::repeat_n(opts.pad_id, pad).chain(p.iter().copied()));
        mask.extend(std::iter::repeat_n(0u32, pad).chain(std::iter::repeat_n(1u32, p.len())));
    }
    let mut cache = KvCache::new(
        model.config(),
        b,
        longest + opts.max_new_tokens,
        model.dtype(),
        device,
    )?;
    let ids = Tensor::from_vec(ids, (b, longest), device)?;
    let mask = Tensor::from_vec(mask, (b, longest), device)?;
    let mut logits = model.forward_cached(&ids, &mask, &mut cache, true)?;
    let mut done = vec![false; b];
    for step in 0..opts.max_new_tokens {
        let next: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
        for (r, &tok) in next.iter().enumerate() {
            if done[r] {
                continue;
            }
            if opts.eos_ids.contains(&tok) {
                done[r] = true;
                out[r].stopped = true;
                continue;
            }
            out[r].ids.push(tok);
            if opts.stop.is_some_and(|stop| stop(&out[r].ids)) {
                done[r] = true;
                out[r].stopped = true;
            }
        }
        if step + 1 == opts.max_new_tokens || done.iter().all(|d| *d) {
            break;
        }
        let feed: Vec<u32> = next
            .iter()
            .zip(&done)
            .map(|(&t, &d)| if d { opts.pad_id } else { t })
            .collect();
        let feed_mask: Vec<u32> = done.iter().map(|&d| u32::from(!d)).collect();
        let feed = Tensor::from_vec(feed, (b, 1), device)?;
        let feed_mask = Tensor::from_vec(feed_mask, (b, 1), device)?;
        logits = model.forward_cached(&feed, &feed_mask, &mut cache, true)?;
    }
    Ok(out)
}
