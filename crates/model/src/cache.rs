//! [`KvCache`]: preallocated per-layer key/value buffers for batched decoding with per-row positions.
//!
//! Keys and values of every step are written in place (`slice_set`) into `(b, kv_heads, capacity, head_dim)`
//! buffers, so a decoding step copies only the new token's keys and values. The cache also remembers, per row,
//! which slots hold real tokens (left padding is masked out) and the next RoPE position.

use candle_core::{DType, Device, Tensor};

use crate::config::ModelConfig;

/// Keys and values of one layer.
#[derive(Debug, Clone)]
pub(crate) struct LayerKv {
    pub(crate) k: Tensor,
    pub(crate) v: Tensor,
}

/// The decoding state of a batch: cached keys/values, valid slots and next positions per row.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub(crate) layers: Vec<LayerKv>,
    /// Number of filled slots (the same for every row; padding fills slots too).
    pub(crate) len: usize,
    pub(crate) capacity: usize,
    /// `valid[row][slot]`: whether the slot holds a real token.
    pub(crate) valid: Vec<Vec<bool>>,
    /// The RoPE position the row's next real token gets.
    pub(crate) next_position: Vec<usize>,
}

impl KvCache {
    /// An empty cache for `batch` rows and at most `capacity` tokens per row (prompt + new tokens).
    pub fn new(
        config: &ModelConfig,
        batch: usize,
        capacity: usize,
        dtype: DType,
        device: &Device,
    ) -> crate::Result<Self> {
        let shape = (batch, config.num_key_value_heads, capacity, config.head_dim);
        let layers = (0..config.num_hidden_layers)
            .map(|_| {
                Ok(LayerKv {
                    k: Tensor::zeros(shape, dtype, device)?,
                    v: Tensor::zeros(shape, dtype, device)?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(KvCache {
            layers,
            len: 0,
            capacity,
            valid: vec![Vec::with_capacity(capacity); batch],
            next_position: vec![0; batch],
        })
    }

    /// Number of filled slots.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of rows.
    pub fn batch(&self) -> usize {
        self.valid.len()
    }

    /// Maximum number of slots.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}
