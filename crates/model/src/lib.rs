//! The trainable Llama-family decoder of kubetune: configuration from HF `config.json`, LoRA-capable linears,
//! loading and saving HF / PEFT checkpoints, and batched greedy generation with a KV cache.
//!
//! Key types:
//! - [`ModelConfig`] (HF `config.json`), [`LoraConfig`], [`Trainable`];
//! - [`CausalLm`]: `load` an HF directory, `forward` (all-position f32 logits, only ops with a backward pass),
//!   `trainable_vars`, `save_full` / `save_adapter` / `load_adapter` / `merge_adapters`;
//! - [`KvCache`], [`generate`] with [`GenerateOptions`] → [`Generation`].
//!
//! Design decision: one decoder for LLaMA 3, Mistral, DeepSeek-Coder and SmolLM2, written only with candle ops that
//! record a backward pass (no fused `softmax_last_dim`, `rms_norm`, `rope`, `sdpa`), and frozen tensors (base
//! weights under LoRA, RoPE tables, masks) enter the graph through the "const operand" op of [`ops`], whose backward
//! returns only the input gradient, so a LoRA backward never allocates a gradient of a frozen weight's size.
#![warn(missing_docs)]

pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod device;
pub mod error;
pub mod fused;
pub mod generate;
pub mod llama;
pub mod lora;
mod matmul;
pub mod ops;

// model-io (owned by the model-io engineer): model sources (HF dir, HF cache, GGUF), tokenization, chat templates.
pub mod chat;
pub mod gguf;
pub mod hub;
pub mod source;
pub mod text;

pub use cache::KvCache;
pub use config::{ModelConfig, ModelType, RopeScaling};
pub use error::{Error, Result};
pub use generate::{GenerateOptions, Generation, generate};
pub use llama::{CausalLm, ForwardContext};
pub use lora::{LoraConfig, Trainable};
