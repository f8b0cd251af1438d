//! model-io: tokenization (`TextCodec`), chat templates, the paper tokenizers' goldens, model sources (HF dir,
//! HF cache, GGUF) and the PEFT / transformers export check.

mod chat_templates;
mod gguf_convert;
mod gguf_logits;
mod hf_cache;
mod peft_export;
mod support;
mod text_codec;
mod tokenizer_goldens;
