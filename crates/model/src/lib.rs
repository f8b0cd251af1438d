//! Placeholder: this crate is being written; see its issue.

// model-io modules (owned by the model-io engineer): model sources (HF dir, HF cache, GGUF), tokenization, chat templates.
pub mod chat;
pub mod gguf;
pub mod hub;
pub mod source;
pub mod text;
