//! The model path: load the evaluated weights, turn rows into prompt ids, batch, decode greedily, write predictions.
//!
//! - Weights: a vanilla evaluation loads the base model (`model::source` resolves an HF directory, a repo in the
//!   offline hub cache, or a `.gguf`, converted once). A run directory with `adapter_config.json` is a LoRA run: the
//!   base model plus the PEFT adapter, merged into the weights before decoding (same function, fewer matmuls). A run
//!   directory with `config.json` holds full fine-tuned weights and is loaded as is.
//! - Tokenizer: the run directory's `tokenizer.json` when it has one (train copies it there), else the base model's.
//! - Prompts exactly as train builds them: `task::Template::render`, then — when the plan asks for the chat template
//!   and the tokenizer has one — `TextCodec::encode_chat_prompt`, else `TextCodec::encode_prompt` (BOS + prompt).
//! - Rows are sorted by prompt length, longest first (ties in split order), and cut into `batch_size` batches, so a
//!   batch pads little and an out-of-memory shows up in the first batch rather than the last.
//! - `model::generate` decodes greedily with a KV cache and per-row positions (batched output equals one-at-a-time);
//!   a row stops at EOS or once its decoded text contains a stop string, and the text is cut before that string.
//! - `seconds` of a row is its batch's wall time divided by the batch's rows, so summing `seconds` gives the wall
//!   time of generation and `Σ generated_tokens / Σ seconds` is the throughput (`generation_tokens_per_second`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::DType;
use model::source::{ModelSource, ResolveOptions};
use model::text::TextCodec;
use model::{CausalLm, GenerateOptions, Trainable};
use task::records::Prediction;
use task::{Row, TrainPlan};

use crate::EvalError;
use crate::plan::GenerationSpec;
use crate::predictions::{Decoding, prediction_for};
use crate::progress::Progress;

/// A loaded model and tokenizer, ready to predict rows.
pub struct Generator {
    lm: CausalLm,
    codec: TextCodec,
    use_chat: bool,
    max_new_tokens: usize,
    batch_size: usize,
    stop: Vec<String>,
}

/// The weights an evaluation loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Weights {
    /// The base model directory as is (vanilla) or full fine-tuned weights.
    Dir(PathBuf),
    /// The base model directory plus a PEFT LoRA adapter directory.
    BaseWithAdapter {
        /// The base model's HF directory.
        base: PathBuf,
        /// The directory holding `adapter_config.json` + `adapter_model.safetensors`.
        adapter: PathBuf,
    },
}

impl Weights {
    /// Where the model weights (config, safetensors) come from.
    pub fn model_dir(&self) -> &Path {
        match self {
            Self::Dir(dir) => dir,
            Self::BaseWithAdapter { base, .. } => base,
        }
    }
}

/// Resolves which directories hold the weights of `spec` (resolving, and for a `.gguf` converting, the base model
/// only when it is needed).
pub fn locate_weights(spec: &GenerationSpec, plan: &TrainPlan) -> Result<Weights, EvalError> {
    let resolve_base = || -> Result<PathBuf, EvalError> {
        let options = ResolveOptions {
            gguf_tokenizer: plan.model.tokenizer.clone(),
            ..ResolveOptions::default()
        };
        ModelSource::parse(&spec.base_model)
            .resolve(&options)
            .map_err(|source| EvalError::ModelSource {
                source_text: spec.base_model.clone(),
                source: Box::new(source),
            })
    };
    match &spec.weights {
        None => Ok(Weights::Dir(resolve_base()?)),
        Some(run_dir) if run_dir.join("adapter_config.json").is_file() => {
            Ok(Weights::BaseWithAdapter {
                base: resolve_base()?,
                adapter: run_dir.clone(),
            })
        }
        Some(run_dir) if run_dir.join("config.json").is_file() => Ok(Weights::Dir(run_dir.clone())),
        Some(run_dir) => Err(EvalError::MissingWeights {
            dir: run_dir.clone(),
        }),
    }
}

fn dtype_of(name: &str) -> Result<DType, EvalError> {
    match name {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        other => Err(EvalError::Usage(format!(
            "unknown dtype `{other}` (expected f32, bf16 or f16)"
        ))),
    }
}

impl Generator {
    /// Loads the weights and tokenizer of `spec` onto its device.
    pub fn load(spec: &GenerationSpec, plan: &TrainPlan) -> Result<Self, EvalError> {
        let model_error = |context: String| {
            move |source| EvalError::Model {
                context,
                source: Box::new(source),
            }
        };
        let device = model::device::select(&spec.device)
            .map_err(model_error("selecting the device".to_owned()))?;
        let dtype = dtype_of(&spec.dtype)?;
        let weights = locate_weights(spec, plan)?;
        let model_dir = weights.model_dir();
        let mut lm = CausalLm::load(model_dir, dtype, &device, &Trainable::Frozen, 0).map_err(
            model_error(format!("loading the model from {}", model_dir.display())),
        )?;
        if let Weights::BaseWithAdapter { adapter, .. } = &weights {
            let context = format!("loading the LoRA adapter from {}", adapter.display());
            lm.load_adapter(adapter)
                .map_err(model_error(context.clone()))?;
            lm.merge_adapters().map_err(model_error(context))?;
        }
        if device.is_cpu() {
            lm.store_linears_transposed().map_err(model_error(
                "laying out the weights for inference".to_owned(),
            ))?;
        }
        let tokenizer_dir = match &spec.weights {
            Some(run_dir) if run_dir.join("tokenizer.json").is_file() => run_dir.clone(),
            _ => model_dir.to_path_buf(),
        };
        let codec = TextCodec::from_dir(&tokenizer_dir).map_err(|source| EvalError::Text {
            context: format!("loading the tokenizer of {}", tokenizer_dir.display()),
            source: Box::new(source),
        })?;
        Ok(Self {
            use_chat: spec.chat_template && codec.chat_template().is_some(),
            lm,
            codec,
            max_new_tokens: spec.max_new_tokens,
            batch_size: spec.batch_size,
            stop: spec.stop.clone(),
        })
    }

    /// The prompt text the model sees for `row` and its token ids.
    pub fn prompt(&self, plan: &TrainPlan, row: &Row) -> Result<(String, Vec<u32>), EvalError> {
        let text_error = |source| EvalError::Text {
            context: format!("encoding the prompt of row {}", row.row_id),
            source: Box::new(source),
        };
        let prompt = plan.prompt.template.render(&row.question, row.variant);
        if self.use_chat {
            let rendered = self
                .codec
                .render_chat(&prompt)
                .map_err(|source| EvalError::Text {
                    context: format!("rendering the chat template for row {}", row.row_id),
                    source: Box::new(model::text::TextError::Chat {
                        path: PathBuf::from("tokenizer_config.json"),
                        source,
                    }),
                })?
                .unwrap_or_else(|| prompt.clone());
            let ids = self
                .codec
                .encode_chat_prompt(&prompt)
                .map_err(text_error)?
                .unwrap_or_default();
            Ok((rendered, ids))
        } else {
            let ids = self.codec.encode_prompt(&prompt).map_err(text_error)?;
            Ok((prompt, ids))
        }
    }

    /// Generates every row in batches, handing each finished prediction to `sink` as soon as its batch is done.
    pub fn predict(
        &mut self,
        plan: &TrainPlan,
        rows: &[Row],
        sink: &mut dyn FnMut(&Prediction) -> Result<(), EvalError>,
        progress: &mut dyn Progress,
    ) -> Result<(), EvalError> {
        let mut prepared = Vec::with_capacity(rows.len());
        for row in rows {
            let (prompt, ids) = self.prompt(plan, row)?;
            prepared.push((row, prompt, ids));
        }
        // Longest first; the sort is stable, so equal lengths keep the split's order.
        prepared.sort_by_key(|(_, _, ids)| std::cmp::Reverse(ids.len()));
        for batch in prepared.chunks(self.batch_size) {
            let prompts: Vec<Vec<u32>> = batch.iter().map(|(_, _, ids)| ids.clone()).collect();
            let started = Instant::now();
            let generations = self.generate(&prompts)?;
            let seconds = started.elapsed().as_secs_f64() / batch.len() as f64;
            let mut batch_tokens = 0u64;
            for ((row, prompt, ids), generation) in batch.iter().zip(generations) {
                let decoded =
                    self.codec
                        .decode(&generation.ids)
                        .map_err(|source| EvalError::Text {
                            context: format!("decoding the output of row {}", row.row_id),
                            source: Box::new(source),
                        })?;
                let raw_output = cut_at_stop(&decoded, &self.stop).to_owned();
                batch_tokens += generation.ids.len() as u64;
                let prediction = prediction_for(
                    row,
                    prompt.clone(),
                    raw_output,
                    Decoding {
                        prompt_tokens: count(ids.len()),
                        generated_tokens: count(generation.ids.len()),
                        seconds,
                        stopped: generation.stopped,
                    },
                );
                sink(&prediction)?;
            }
            progress.advance(batch.len(), batch_tokens, seconds * batch.len() as f64);
        }
        Ok(())
    }

    /// Greedy generation for a batch of prompt ids, stopping at EOS or a stop string. The compute pool's other
    /// workers poll for work meanwhile (`model::device::with_pool_awake`).
    pub fn generate(&self, prompts: &[Vec<u32>]) -> Result<Vec<model::Generation>, EvalError> {
        let generated = model::device::with_pool_awake(|| {
            let codec = &self.codec;
            let stops = &self.stop;
            // Decoding the whole output at every step is quadratic, but outputs are short next to the forward pass.
            let stop_check = |ids: &[u32]| {
                codec
                    .decode(ids)
                    .is_ok_and(|text| stops.iter().any(|s| text.contains(s)))
            };
            let options = GenerateOptions {
                max_new_tokens: self.max_new_tokens,
                eos_ids: self.codec.eos_ids().to_vec(),
                pad_id: self.codec.pad_id(),
                stop: if self.stop.is_empty() {
                    None
                } else {
                    Some(&stop_check)
                },
            };
            model::generate(&self.lm, prompts, &options)
        });
        generated.map_err(|source| EvalError::Model {
            context: format!("generating a batch of {} rows", prompts.len()),
            source: Box::new(source),
        })
    }

    /// The tokenizer (benchmarks and tests compare outputs through it).
    pub fn codec(&self) -> &TextCodec {
        &self.codec
    }
}

/// Token counts fit `u32` for any realistic prompt; saturate rather than wrap if one ever does not.
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// `text` up to the first occurrence of any stop string (all of it when none occurs).
pub fn cut_at_stop<'a>(text: &'a str, stops: &[String]) -> &'a str {
    let end = stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min();
    end.map_or(text, |end| &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_at_the_earliest_stop_string() {
        let stops = vec!["```".to_owned(), "\n\n\n".to_owned()];
        assert_eq!(cut_at_stop("kind: Pod\n```\nmore", &stops), "kind: Pod\n");
        assert_eq!(cut_at_stop("a\n\n\nb```", &stops), "a");
        assert_eq!(cut_at_stop("no stop here", &stops), "no stop here");
        assert_eq!(cut_at_stop("x", &[String::new()]), "x");
    }

    #[test]
    fn dtypes_by_name() {
        assert_eq!(dtype_of("bf16").expect("known"), DType::BF16);
        assert!(
            dtype_of("f64")
                .expect_err("unknown")
                .to_string()
                .contains("f64")
        );
    }
}
