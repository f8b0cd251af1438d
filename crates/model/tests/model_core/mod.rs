//! model-core: parity with transformers, gradients (non-zero, finite differences, no frozen-weight leftovers),
//! LoRA identities, KV-cache and batched decoding, checkpoint round trips.

mod checkpoint;
mod decode;
mod gradients;
mod lora;
mod parity;
mod support;
