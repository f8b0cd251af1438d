//! Integration tests of the `model` crate: one test binary, one module per area.

// model-io: tokenization, chat templates, tokenizer goldens, model sources (HF dir / HF cache / GGUF).
mod model_io;

// model-core: parity with transformers, gradients, LoRA identities, decoding, checkpoints.
mod model_core;
