//! model-io: tokenization (`TextCodec`), chat templates, the paper tokenizers' goldens, and model sources.

mod chat_templates;
mod gguf_convert;
mod hf_cache;
mod support;
mod text_codec;
mod tokenizer_goldens;
