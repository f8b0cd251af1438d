//! Placeholder: this crate is being written; see its issue.

// model-io modules (owned by the model-io engineer): tokenization and chat templates; model sources come next.
pub mod chat;
pub mod text;
