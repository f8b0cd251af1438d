//! Token-level data handling: fitting rows to `max_seq_len`, a deterministic epoch order, and padded batches.
//!
//! A row is `prompt ids ++ completion ids` (the completion ends with EOS) with `prompt_len` marking where the
//! loss starts. The loss mask is derived from `prompt_len` and the row length alone, never from `id == pad`,
//! because the pad id may equal EOS (SmolLM2), and the EOS inside the completion must be learned.
//!
//! Shortening policy (documented in ARCHITECTURE.md): `max_seq_len` never cuts the completion or its EOS. A row
//! that is too long loses prompt tokens from the start of the question text, i.e. right after the protected head
//! of the prompt (BOS + the template's instruction header), keeping the protected tail (the end of the template,
//! e.g. the answer cue). If even the head, the tail and the whole completion do not fit, the row is skipped.

use candle_core::{Device, Tensor};

use task::split::SplitMix64;

/// One tokenized training row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// Identifies the row in messages and tests (e.g. `"<problem_id>#<variant>"`).
    pub id: String,
    /// `prompt ++ completion` token ids; the completion ends with EOS.
    pub ids: Vec<u32>,
    /// Number of prompt tokens: the loss covers `ids[prompt_len..]`.
    pub prompt_len: usize,
}

impl TokenRow {
    /// Number of completion tokens (the loss targets), EOS included.
    pub fn target_len(&self) -> usize {
        self.ids.len() - self.prompt_len
    }
}

/// How many tokens of every prompt belong to the template around the question and must survive shortening.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PromptFrame {
    /// Leading prompt tokens kept (BOS + instruction header).
    pub head: usize,
    /// Trailing prompt tokens kept (the template's text after the question).
    pub tail: usize,
}

impl PromptFrame {
    /// The frame shared by prompts rendered from different questions: their common token prefix and suffix.
    /// Callers render the same template around two different questions and pass both id lists.
    pub fn from_renders(a: &[u32], b: &[u32]) -> Self {
        let head = a.iter().zip(b).take_while(|(x, y)| x == y).count();
        let max_tail = a.len().min(b.len()) - head;
        let tail = a
            .iter()
            .rev()
            .zip(b.iter().rev())
            .take(max_tail)
            .take_while(|(x, y)| x == y)
            .count();
        Self { head, tail }
    }
}

/// What `fit_row` did to a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fit {
    /// The row fit as is.
    Kept(TokenRow),
    /// Prompt tokens right after the header were dropped; `dropped` says how many.
    Shortened {
        /// The shortened row.
        row: TokenRow,
        /// How many prompt tokens were removed.
        dropped: usize,
    },
    /// The row cannot fit without cutting the completion or the template frame.
    Skipped,
}

/// Makes `row` fit in `max_len` tokens without touching its completion (see the module doc for the policy).
pub fn fit_row(row: TokenRow, frame: PromptFrame, max_len: usize) -> Fit {
    if row.ids.len() <= max_len {
        return Fit::Kept(row);
    }
    let excess = row.ids.len() - max_len;
    let head = frame.head.min(row.prompt_len);
    let tail = frame.tail.min(row.prompt_len - head);
    let droppable = row.prompt_len - head - tail;
    if excess > droppable || row.target_len() == 0 {
        return Fit::Skipped;
    }
    let mut ids = Vec::with_capacity(max_len);
    ids.extend_from_slice(&row.ids[..head]);
    ids.extend_from_slice(&row.ids[head + excess..]);
    Fit::Shortened {
        row: TokenRow {
            id: row.id,
            ids,
            prompt_len: row.prompt_len - excess,
        },
        dropped: excess,
    }
}

/// The order in which an epoch visits the rows: a permutation that depends only on the seed and the epoch, so a
/// resumed run sees the same order.
pub fn epoch_order(n_rows: usize, seed: u64, epoch: u32, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n_rows).collect();
    if shuffle {
        SplitMix64::derive(seed, "epoch-order", u64::from(epoch)).shuffle(&mut order);
    }
    order
}

/// A padded micro-batch, ready for the model and the loss.
#[derive(Debug)]
pub struct Batch {
    /// `(b, t)` u32 token ids, right-padded with the pad id.
    pub input_ids: Tensor,
    /// `(b, t)` u32, 1 on real tokens, 0 on padding (from lengths).
    pub attention_mask: Tensor,
    /// `(b, t-1)` u32 next-token targets: `input_ids[:, 1:]`.
    pub targets: Tensor,
    /// `(b, t-1)` f32, 1 where `targets` is a completion token (EOS included), 0 on prompt and padding.
    pub target_mask: Tensor,
    /// Number of 1s in `target_mask`.
    pub target_tokens: u64,
    /// Number of real (non-padding) tokens.
    pub non_padding_tokens: u64,
}

/// Pads `rows` to the longest one and builds the tensors of a [`Batch`].
pub fn make_batch(rows: &[&TokenRow], pad_id: u32, device: &Device) -> candle_core::Result<Batch> {
    let b = rows.len();
    let t = rows.iter().map(|r| r.ids.len()).max().unwrap_or(0).max(2);
    let mut ids = vec![pad_id; b * t];
    let mut mask = vec![0u32; b * t];
    let mut targets = vec![pad_id; b * (t - 1)];
    let mut target_mask = vec![0f32; b * (t - 1)];
    let mut target_tokens = 0u64;
    let mut non_padding_tokens = 0u64;
    for (i, row) in rows.iter().enumerate() {
        let len = row.ids.len();
        ids[i * t..i * t + len].copy_from_slice(&row.ids);
        mask[i * t..i * t + len].fill(1);
        non_padding_tokens += len as u64;
        for j in 1..len {
            targets[i * (t - 1) + j - 1] = row.ids[j];
            if j >= row.prompt_len {
                target_mask[i * (t - 1) + j - 1] = 1.0;
                target_tokens += 1;
            }
        }
    }
    Ok(Batch {
        input_ids: Tensor::from_vec(ids, (b, t), device)?,
        attention_mask: Tensor::from_vec(mask, (b, t), device)?,
        targets: Tensor::from_vec(targets, (b, t - 1), device)?,
        target_mask: Tensor::from_vec(target_mask, (b, t - 1), device)?,
        target_tokens,
        non_padding_tokens,
    })
}

impl Batch {
    /// The batch's rows as batches of one row each, without padding, in order. Rows must be right-padded (real
    /// tokens first), as [`make_batch`] builds them.
    pub fn rows(&self) -> candle_core::Result<Vec<Batch>> {
        let mask: Vec<Vec<u32>> = self.attention_mask.to_vec2()?;
        let target_mask: Vec<Vec<f32>> = self.target_mask.to_vec2()?;
        let mut out = Vec::with_capacity(mask.len());
        for (i, row_mask) in mask.iter().enumerate() {
            let real = row_mask.iter().filter(|&&m| m != 0).count();
            // `make_batch` pads every row to at least two positions.
            let len = real.clamp(2, row_mask.len());
            let target_tokens = target_mask[i][..len - 1]
                .iter()
                .filter(|&&m| m != 0.0)
                .count() as u64;
            let narrow = |x: &Tensor, width: usize| x.narrow(0, i, 1)?.narrow(1, 0, width);
            out.push(Batch {
                input_ids: narrow(&self.input_ids, len)?,
                attention_mask: narrow(&self.attention_mask, len)?,
                targets: narrow(&self.targets, len - 1)?,
                target_mask: narrow(&self.target_mask, len - 1)?,
                target_tokens,
                non_padding_tokens: real as u64,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_splits_into_its_unpadded_rows() -> candle_core::Result<()> {
        let (a, b) = (row(&[1, 5, 6, 7, 2], 3), row(&[1, 8, 2], 2));
        let batch = make_batch(&[&a, &b], 0, &Device::Cpu)?;
        let rows = batch.rows()?;
        assert_eq!(rows.len(), 2);
        for (index, (one, source)) in rows.iter().zip([&a, &b]).enumerate() {
            let alone = make_batch(&[source], 0, &Device::Cpu)?;
            assert_eq!(
                one.input_ids.to_vec2::<u32>()?,
                alone.input_ids.to_vec2::<u32>()?,
                "row {index}"
            );
            assert_eq!(
                one.attention_mask.to_vec2::<u32>()?,
                alone.attention_mask.to_vec2::<u32>()?
            );
            assert_eq!(
                one.targets.to_vec2::<u32>()?,
                alone.targets.to_vec2::<u32>()?
            );
            assert_eq!(
                one.target_mask.to_vec2::<f32>()?,
                alone.target_mask.to_vec2::<f32>()?
            );
            assert_eq!(one.target_tokens, alone.target_tokens);
            assert_eq!(one.non_padding_tokens, alone.non_padding_tokens);
        }
        Ok(())
    }

    fn row(ids: &[u32], prompt_len: usize) -> TokenRow {
        TokenRow {
            id: "r".into(),
            ids: ids.to_vec(),
            prompt_len,
        }
    }

    #[test]
    fn frame_is_the_common_prefix_and_suffix() {
        let frame = PromptFrame::from_renders(&[1, 5, 6, 10, 11, 8, 9], &[1, 5, 6, 20, 8, 9]);
        assert_eq!(frame, PromptFrame { head: 3, tail: 2 });
        // Identical renders never count a token twice.
        let same = PromptFrame::from_renders(&[1, 2, 3], &[1, 2, 3]);
        assert_eq!(same.head + same.tail, 3);
    }

    #[test]
    fn short_rows_are_kept() {
        let r = row(&[1, 2, 3, 4], 2);
        assert_eq!(fit_row(r.clone(), PromptFrame::default(), 4), Fit::Kept(r));
    }

    #[test]
    fn long_prompts_lose_the_oldest_question_tokens_not_the_completion() {
        // prompt: [BOS=1, header=7, q1..q4=11..14, cue=9]; completion: [30, 31, EOS=2]
        let r = row(&[1, 7, 11, 12, 13, 14, 9, 30, 31, 2], 7);
        let frame = PromptFrame { head: 2, tail: 1 };
        let Fit::Shortened { row, dropped } = fit_row(r, frame, 7) else {
            panic!("expected a shortened row")
        };
        assert_eq!(dropped, 3);
        assert_eq!(row.ids, vec![1, 7, 14, 9, 30, 31, 2]);
        assert_eq!(row.prompt_len, 4);
        assert_eq!(row.target_len(), 3);
    }

    #[test]
    fn rows_whose_completion_cannot_fit_are_skipped() {
        let r = row(&[1, 7, 11, 9, 30, 31, 32, 2], 4);
        assert_eq!(
            fit_row(r, PromptFrame { head: 2, tail: 1 }, 6),
            Fit::Skipped
        );
    }

    #[test]
    fn epoch_order_is_deterministic_and_varies_by_epoch() {
        assert_eq!(epoch_order(20, 5, 1, true), epoch_order(20, 5, 1, true));
        assert_ne!(epoch_order(20, 5, 1, true), epoch_order(20, 5, 2, true));
        assert_eq!(epoch_order(4, 5, 1, false), vec![0, 1, 2, 3]);
    }

    #[test]
    fn batch_masks_prompt_and_padding_even_when_pad_equals_eos() {
        // pad id 2 == EOS: the EOS of row b must be a target, its padding must not.
        let a = row(&[1, 5, 6, 7, 2], 3);
        let b = row(&[1, 5, 8, 2], 2);
        let batch = make_batch(&[&a, &b], 2, &Device::Cpu).expect("batch");
        let mask: Vec<Vec<f32>> = batch.target_mask.to_vec2().expect("mask");
        assert_eq!(
            mask,
            vec![vec![0.0, 0.0, 1.0, 1.0], vec![0.0, 1.0, 1.0, 0.0]]
        );
        let targets: Vec<Vec<u32>> = batch.targets.to_vec2().expect("targets");
        assert_eq!(targets, vec![vec![5, 6, 7, 2], vec![5, 8, 2, 2]]);
        let attention: Vec<Vec<u32>> = batch.attention_mask.to_vec2().expect("attention");
        assert_eq!(attention, vec![vec![1, 1, 1, 1, 1], vec![1, 1, 1, 1, 0]]);
        assert_eq!(batch.target_tokens, 4);
        assert_eq!(batch.non_padding_tokens, 9);
    }
}
