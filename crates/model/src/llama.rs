//! [`CausalLm`]: the Llama-family decoder (LLaMA 3, Mistral, DeepSeek-Coder, SmolLM2) with HF tensor names.
//!
//! The training forward returns f32 logits for every position and uses only ops with a backward pass: RMSNorm
//! and softmax from primitives, computed in f32; RoPE as `x·cos + rotate_half(x)·sin` with the tables entering
//! through the const-operand op; GQA by grouping query heads (`(b, kv, groups·t, d)`) rather than copying keys.
//! Positions come from the attention mask per row, so left and right padding are both correct.

#![allow(unsafe_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, IndexOp, Tensor, Var};

use crate::cache::{KvCache, LayerKv};
use crate::config::{ModelConfig, RopeScaling};
use crate::error::{Error, Result};
use crate::lora::{
    Adapter, LINEAR_MODULES, Linear, LoraConfig, SeededRng, Trainable, adapter_dtype,
};
use crate::ops::{Param, add, matmul, rms_norm, rope_heads_first, scaled_masked_softmax, silu_mul};

/// Self-attention projections of one block.
#[derive(Debug, Clone)]
pub struct Attention {
    /// `self_attn.q_proj`.
    pub q_proj: Linear,
    /// `self_attn.k_proj`.
    pub k_proj: Linear,
    /// `self_attn.v_proj`.
    pub v_proj: Linear,
    /// `self_attn.o_proj`.
    pub o_proj: Linear,
}

/// SwiGLU MLP of one block.
#[derive(Debug, Clone)]
pub struct Mlp {
    /// `mlp.gate_proj`.
    pub gate_proj: Linear,
    /// `mlp.up_proj`.
    pub up_proj: Linear,
    /// `mlp.down_proj`.
    pub down_proj: Linear,
}

/// One decoder block.
#[derive(Debug, Clone)]
pub struct Block {
    /// `input_layernorm.weight`.
    pub input_layernorm: Param,
    /// `self_attn`.
    pub self_attn: Attention,
    /// `post_attention_layernorm.weight`.
    pub post_attention_layernorm: Param,
    /// `mlp`.
    pub mlp: Mlp,
}

impl Block {
    /// The block's linear layers with their module paths relative to the block (`self_attn.q_proj`, ...).
    pub fn linears(&self) -> [(&'static str, &'static str, &Linear); 7] {
        let a = &self.self_attn;
        let m = &self.mlp;
        [
            ("self_attn", "q_proj", &a.q_proj),
            ("self_attn", "k_proj", &a.k_proj),
            ("self_attn", "v_proj", &a.v_proj),
            ("self_attn", "o_proj", &a.o_proj),
            ("mlp", "gate_proj", &m.gate_proj),
            ("mlp", "up_proj", &m.up_proj),
            ("mlp", "down_proj", &m.down_proj),
        ]
    }

    /// The MLP half's weights when none of them is trained (no adapter on `gate/up/down_proj`, the post-attention
    /// norm frozen): then [`crate::fused::frozen_mlp_residual`] can run it.
    fn frozen_mlp(&self, eps: f64) -> Option<crate::fused::FrozenMlp<'_>> {
        fn frozen(linear: &Linear) -> Option<&Tensor> {
            match (&linear.weight, &linear.adapter) {
                (Param::Frozen(w), None) => Some(w),
                _ => None,
            }
        }
        let Param::Frozen(gain) = &self.post_attention_layernorm else {
            return None;
        };
        Some(crate::fused::FrozenMlp {
            gain,
            eps,
            gate: frozen(&self.mlp.gate_proj)?,
            up: frozen(&self.mlp.up_proj)?,
            down: frozen(&self.mlp.down_proj)?,
        })
    }

    pub(crate) fn linear_mut(&mut self, module: &str) -> Option<&mut Linear> {
        match module {
            "q_proj" => Some(&mut self.self_attn.q_proj),
            "k_proj" => Some(&mut self.self_attn.k_proj),
            "v_proj" => Some(&mut self.self_attn.v_proj),
            "o_proj" => Some(&mut self.self_attn.o_proj),
            "gate_proj" => Some(&mut self.mlp.gate_proj),
            "up_proj" => Some(&mut self.mlp.up_proj),
            "down_proj" => Some(&mut self.mlp.down_proj),
            _ => None,
        }
    }
}

/// Per-forward constants shared by all blocks: RoPE tables for each row's positions and the additive mask.
#[derive(Debug, Clone)]
pub struct ForwardContext {
    /// `(b, 1, t, head_dim)` in the model dtype.
    pub cos: Tensor,
    /// `(b, 1, t, head_dim)` in the model dtype.
    pub sin: Tensor,
    /// `(b, 1, t, s)` f32: 0 where the query may attend the key, `f32::MIN` elsewhere.
    pub mask: Tensor,
}

/// The decoder with its language-model head.
#[derive(Debug)]
pub struct CausalLm {
    config: ModelConfig,
    /// `model.embed_tokens.weight`.
    pub embed_tokens: Param,
    /// `model.layers.{i}`.
    pub layers: Vec<Block>,
    /// `model.norm.weight`.
    pub norm: Param,
    /// `lm_head.weight`; `None` when tied to the embeddings.
    pub lm_head: Option<Param>,
    dtype: DType,
    device: Device,
    lora: Option<LoraConfig>,
    rng: SeededRng,
    inv_freq: Vec<f32>,
}

/// Where weights come from while building a model.
trait WeightSource {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor>;
}

struct SafetensorsSource {
    dir: PathBuf,
    st: MmapedSafetensors,
    dtype: DType,
    device: Device,
}

impl WeightSource for SafetensorsSource {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self
            .st
            .load(name, &self.device)
            .map_err(|e| Error::Weights {
                path: self.dir.clone(),
                name: name.to_string(),
                reason: format!("cannot load: {e}"),
            })?;
        if t.dims() != shape {
            return Err(Error::Weights {
                path: self.dir.clone(),
                name: name.to_string(),
                reason: format!("shape {:?}, config implies {shape:?}", t.dims()),
            });
        }
        Ok(t.to_dtype(self.dtype)?)
    }
}

struct RandomSource {
    rng: SeededRng,
    dtype: DType,
    device: Device,
}

impl WeightSource for RandomSource {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if name.ends_with("norm.weight") {
            // Gains near 1 (not exactly, so tests see them).
            self.rng
                .uniform(n)
                .into_iter()
                .map(|u| 1.0 + 0.2 * (u - 0.5))
                .collect()
        } else {
            // HF's initializer_range 0.02, as a uniform of the same standard deviation.
            let half_width = 0.02 * 3f32.sqrt();
            self.rng
                .uniform(n)
                .into_iter()
                .map(|u| (2.0 * u - 1.0) * half_width)
                .collect()
        };
        Ok(Tensor::from_vec(data, shape, &self.device)?.to_dtype(self.dtype)?)
    }
}

/// The weight files of an HF directory: `model.safetensors` or the shards of `model.safetensors.index.json`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(Error::Weights {
            path: dir.to_path_buf(),
            name: "model.safetensors".into(),
            reason: "neither model.safetensors nor model.safetensors.index.json exists".into(),
        });
    }
    let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: index.clone(),
        source,
    })?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::Config {
            path: index.clone(),
            field: "weight_map".into(),
            reason: "missing or not an object".into(),
        })?;
    let mut files: Vec<PathBuf> = Vec::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| Error::Config {
            path: index.clone(),
            field: format!("weight_map.{name}"),
            reason: "not a file name".into(),
        })?;
        let path = dir.join(file);
        if !files.contains(&path) {
            files.push(path);
        }
    }
    Ok(files)
}

/// RoPE inverse frequencies in f32, as HF computes them, with the config's scaling applied.
fn inverse_frequencies(config: &ModelConfig) -> Vec<f32> {
    let d = config.head_dim;
    let base = config.rope_theta as f32;
    let inv: Vec<f32> = (0..d)
        .step_by(2)
        .map(|i| 1.0 / base.powf(i as f32 / d as f32))
        .collect();
    match &config.rope_scaling {
        None => inv,
        Some(RopeScaling::Linear { factor }) => {
            inv.into_iter().map(|f| f / *factor as f32).collect()
        }
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => {
            let old = *original_max_position_embeddings as f64;
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            inv.into_iter()
                .map(|f| {
                    let f = f as f64;
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    let scaled = if wavelen > low_wavelen { f / factor } else { f };
                    let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                    let out = if medium {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    };
                    out as f32
                })
                .collect()
        }
    }
}

/// Reads a `(b, t)` mask (u8/u32/i64/f32/..., nonzero = real token) to host rows.
pub(crate) fn mask_rows(mask: &Tensor) -> Result<Vec<Vec<bool>>> {
    let rows = mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    Ok(rows
        .into_iter()
        .map(|r| r.into_iter().map(|v| v != 0.0).collect())
        .collect())
}

impl CausalLm {
    /// Loads an HF-layout directory (`config.json` + `model.safetensors` or sharded index). Weights are
    /// memory-mapped and converted to `dtype`; `trainable` decides which become [`Var`]s. `seed` initialises
    /// LoRA adapters and dropout.
    pub fn load(
        dir: &Path,
        dtype: DType,
        device: &Device,
        trainable: &Trainable,
        seed: u64,
    ) -> Result<Self> {
        let config = ModelConfig::from_dir(dir)?;
        let files = weight_files(dir)?;
        // SAFETY: the weight files are memory-mapped read-only; we own the checkpoint directory and nothing
        // modifies these files while a model is being loaded (every writer in this project writes a temp file
        // and renames it over, which leaves an existing mapping intact). Tensors are copied out before returning.
        let st = unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| Error::Weights {
            path: dir.to_path_buf(),
            name: "<all>".into(),
            reason: format!("cannot map the safetensors files: {e}"),
        })?;
        let source = SafetensorsSource {
            dir: dir.to_path_buf(),
            st,
            dtype,
            device: device.clone(),
        };
        Self::build(config, &source, dtype, device, trainable, seed)
    }

    /// A model with random weights (HF-like init, deterministic in `seed`), for tests and benchmarks.
    pub fn random(
        config: ModelConfig,
        dtype: DType,
        device: &Device,
        trainable: &Trainable,
        seed: u64,
    ) -> Result<Self> {
        let source = RandomSource {
            rng: SeededRng::new(seed ^ 0x5EED),
            dtype,
            device: device.clone(),
        };
        Self::build(config, &source, dtype, device, trainable, seed)
    }

    fn build(
        config: ModelConfig,
        source: &dyn WeightSource,
        dtype: DType,
        device: &Device,
        trainable: &Trainable,
        seed: u64,
    ) -> Result<Self> {
        let full = matches!(trainable, Trainable::Full);
        let lora = match trainable {
            Trainable::Lora(c) => {
                c.validate()?;
                Some(c.clone())
            }
            _ => None,
        };
        let param = |t: Tensor| -> Result<Param> {
            Ok(if full {
                Param::Trainable(Var::from_tensor(&t)?)
            } else {
                Param::Frozen(t)
            })
        };
        let rng = SeededRng::new(seed);
        let c = &config;
        let (h, kv, d) = (c.hidden_size, c.num_key_value_heads, c.head_dim);
        let q_out = c.num_attention_heads * d;
        let linear = |name: &str, module: &str, out_dim: usize, in_dim: usize| -> Result<Linear> {
            let weight = param(source.get(&format!("{name}.weight"), &[out_dim, in_dim])?)?;
            let adapter = match &lora {
                Some(lc) if lc.targets(module) => Some(Adapter::init(
                    in_dim,
                    out_dim,
                    lc,
                    &rng,
                    adapter_dtype(dtype),
                    device,
                )?),
                _ => None,
            };
            Ok(Linear { weight, adapter })
        };
        let embed_tokens = param(source.get("model.embed_tokens.weight", &[c.vocab_size, h])?)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let input_layernorm = param(source.get(&format!("{p}.input_layernorm.weight"), &[h])?)?;
            let self_attn = Attention {
                q_proj: linear(&format!("{p}.self_attn.q_proj"), "q_proj", q_out, h)?,
                k_proj: linear(&format!("{p}.self_attn.k_proj"), "k_proj", kv * d, h)?,
                v_proj: linear(&format!("{p}.self_attn.v_proj"), "v_proj", kv * d, h)?,
                o_proj: linear(&format!("{p}.self_attn.o_proj"), "o_proj", h, q_out)?,
            };
            let post_attention_layernorm =
                param(source.get(&format!("{p}.post_attention_layernorm.weight"), &[h])?)?;
            let mlp = Mlp {
                gate_proj: linear(
                    &format!("{p}.mlp.gate_proj"),
                    "gate_proj",
                    c.intermediate_size,
                    h,
                )?,
                up_proj: linear(
                    &format!("{p}.mlp.up_proj"),
                    "up_proj",
                    c.intermediate_size,
                    h,
                )?,
                down_proj: linear(
                    &format!("{p}.mlp.down_proj"),
                    "down_proj",
                    h,
                    c.intermediate_size,
                )?,
            };
            layers.push(Block {
                input_layernorm,
                self_attn,
                post_attention_layernorm,
                mlp,
            });
        }
        let norm = param(source.get("model.norm.weight", &[h])?)?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(param(source.get("lm_head.weight", &[c.vocab_size, h])?)?)
        };
        let inv_freq = inverse_frequencies(&config);
        Ok(CausalLm {
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            dtype,
            device: device.clone(),
            lora,
            rng,
            inv_freq,
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The weights' dtype (activations run in it; norms and softmax in f32).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device holding the weights.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The LoRA configuration of the attached adapters, if any.
    pub fn lora_config(&self) -> Option<&LoraConfig> {
        self.lora.as_ref()
    }

    pub(crate) fn set_lora_config(&mut self, lora: Option<LoraConfig>) {
        self.lora = lora;
    }

    /// Number of decoder blocks.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Every base parameter with its HF name.
    pub fn named_params(&self) -> Vec<(String, &Param)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), &self.embed_tokens)];
        for (i, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((
                format!("{p}.input_layernorm.weight"),
                &layer.input_layernorm,
            ));
            for (group, module, lin) in layer.linears() {
                out.push((format!("{p}.{group}.{module}.weight"), &lin.weight));
            }
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                &layer.post_attention_layernorm,
            ));
        }
        out.push(("model.norm.weight".to_string(), &self.norm));
        if let Some(head) = &self.lora_head_param() {
            out.push(("lm_head.weight".to_string(), head));
        }
        out
    }

    fn lora_head_param(&self) -> Option<&Param> {
        self.lm_head.as_ref()
    }

    /// Every adapter with its PEFT key prefix (`base_model.model.model.layers.{i}.self_attn.q_proj`).
    pub fn named_adapters(&self) -> Vec<(String, &Adapter)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for (group, module, lin) in layer.linears() {
                if let Some(ad) = &lin.adapter {
                    out.push((
                        format!("base_model.model.model.layers.{i}.{group}.{module}"),
                        ad,
                    ));
                }
            }
        }
        out
    }

    /// The variables an optimiser should update, with their HF (full) or PEFT (LoRA) names.
    pub fn trainable_vars(&self) -> Vec<(String, Var)> {
        let mut out: Vec<(String, Var)> = self
            .named_params()
            .into_iter()
            .filter_map(|(name, p)| match p {
                Param::Trainable(v) => Some((name, v.clone())),
                Param::Frozen(_) => None,
            })
            .collect();
        for (prefix, ad) in self.named_adapters() {
            out.push((format!("{prefix}.lora_A.weight"), ad.a.clone()));
            out.push((format!("{prefix}.lora_B.weight"), ad.b.clone()));
        }
        out
    }

    /// `(trainable, total)` parameter counts; adapters count in both.
    pub fn param_counts(&self) -> (usize, usize) {
        let mut trainable = 0;
        let mut total = 0;
        for (_, p) in self.named_params() {
            let n = p.tensor().elem_count();
            total += n;
            if p.is_trainable() {
                trainable += n;
            }
        }
        for (_, ad) in self.named_adapters() {
            let n = ad.a.elem_count() + ad.b.elem_count();
            total += n;
            trainable += n;
        }
        (trainable, total)
    }

    /// RoPE tables `(b, 1, t, head_dim)` for per-row positions.
    fn rope_tables(&self, positions: &[Vec<usize>]) -> Result<(Tensor, Tensor)> {
        let b = positions.len();
        let t = positions.first().map_or(0, Vec::len);
        let half = self.inv_freq.len();
        let d = 2 * half;
        let mut cos = Vec::with_capacity(b * t * d);
        let mut sin = Vec::with_capacity(b * t * d);
        for row in positions {
            for &p in row {
                let angles: Vec<f32> = self.inv_freq.iter().map(|f| f * p as f32).collect();
                for _ in 0..2 {
                    cos.extend(angles.iter().map(|a| a.cos()));
                    sin.extend(angles.iter().map(|a| a.sin()));
                }
            }
        }
        let cos = Tensor::from_vec(cos, (b, 1, t, d), &self.device)?.to_dtype(self.dtype)?;
        let sin = Tensor::from_vec(sin, (b, 1, t, d), &self.device)?.to_dtype(self.dtype)?;
        Ok((cos, sin))
    }

    /// Additive mask `(b, 1, t, s)`: query `i` (slot `offset + i`) sees key slot `j` iff the key is a real token,
    /// `j ≤ offset + i`, and (sliding window) `offset + i - j < window`.
    fn additive_mask(&self, key_valid: &[Vec<bool>], offset: usize, t: usize) -> Result<Tensor> {
        let b = key_valid.len();
        let s = offset + t;
        let window = self.config.sliding_window.unwrap_or(usize::MAX);
        let mut data = vec![f32::MIN; b * t * s];
        for (r, valid) in key_valid.iter().enumerate() {
            for i in 0..t {
                let q = offset + i;
                let row = &mut data[(r * t + i) * s..(r * t + i + 1) * s];
                for (j, slot) in row.iter_mut().enumerate().take(q + 1) {
                    if valid[j] && q - j < window {
                        *slot = 0.0;
                    }
                }
            }
        }
        Ok(Tensor::from_vec(data, (b, 1, t, s), &self.device)?)
    }

    /// Positions, RoPE tables and mask for a whole-sequence forward over `attention_mask (b, t)` (nonzero = real
    /// token). Positions count real tokens per row (`cumsum(mask) - 1`), so left padding is handled.
    pub fn prepare(&self, attention_mask: &Tensor) -> Result<ForwardContext> {
        let valid = mask_rows(attention_mask)?;
        let positions = positions_from_valid(&valid, &vec![0; valid.len()]);
        let (cos, sin) = self.rope_tables(&positions)?;
        let t = valid.first().map_or(0, Vec::len);
        let mask = self.additive_mask(&valid, 0, t)?;
        Ok(ForwardContext { cos, sin, mask })
    }

    /// Token embeddings `(b, t, hidden)` in the model dtype.
    pub fn embed(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let ids = input_ids.to_dtype(DType::U32)?.flatten_all()?;
        Ok(self.embed_tokens.tensor().index_select(&ids, 0)?.reshape((
            b,
            t,
            self.config.hidden_size,
        ))?)
    }

    /// Block `layer` over hidden states `(b, t, hidden)` (the unit of activation recompute).
    pub fn block_forward(
        &self,
        layer: usize,
        hidden: &Tensor,
        ctx: &ForwardContext,
        train: bool,
    ) -> Result<Tensor> {
        let block = self
            .layers
            .get(layer)
            .ok_or_else(|| Error::Input(format!("no layer {layer}")))?;
        Ok(self.block_inner(block, hidden, ctx, None, train, &self.rng)?)
    }

    fn block_inner(
        &self,
        block: &Block,
        x: &Tensor,
        ctx: &ForwardContext,
        cache: Option<(&mut LayerKv, usize)>,
        train: bool,
        rng: &SeededRng,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (nh, kvh, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let h = rms_norm(x, &block.input_layernorm, c.rms_norm_eps)?;
        let a = &block.self_attn;
        let (q, k, v) = (
            a.q_proj.forward(&h, train, rng)?,
            a.k_proj.forward(&h, train, rng)?,
            a.v_proj.forward(&h, train, rng)?,
        );
        let parts = crate::fused::AttentionParts {
            heads: nh,
            kv_heads: kvh,
            head_dim: d,
            cos: ctx.cos.clone(),
            sin: ctx.sin.clone(),
            mask: ctx.mask.clone(),
        };
        let attn = if cache.is_none() && crate::fused::attention_applies(&q, &k, &v, &parts) {
            crate::fused::attention(&q, &k, &v, parts)?
        } else {
            self.attention_composed(&q, &k, &v, ctx, cache)?
        };
        let attn_out = a.o_proj.forward(&attn, train, rng)?;
        self.mlp_half(block, x, &attn_out, train, rng)
    }

    /// Attention from the projections `q (b, t, heads·d)`, `k`/`v (b, t, kv_heads·d)` in composed ops (any
    /// device and dtype, with or without a KV cache), to `(b, t, heads·d)`.
    fn attention_composed(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        ctx: &ForwardContext,
        cache: Option<(&mut LayerKv, usize)>,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (b, t, _) = q.dims3()?;
        let (nh, kvh, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let groups = nh / kvh;
        // Rotated and moved to `(b, heads, t, d)` in one op (no transposed copy of q or k).
        let q = rope_heads_first(&q.reshape((b, t, nh, d))?, &ctx.cos, &ctx.sin)?;
        let k = rope_heads_first(&k.reshape((b, t, kvh, d))?, &ctx.cos, &ctx.sin)?;
        let v = v.reshape((b, t, kvh, d))?.transpose(1, 2)?.contiguous()?;
        let (k, v) = match cache {
            None => (k, v),
            Some((kv, offset)) => {
                kv.k.slice_set(&k, 2, offset)?;
                kv.v.slice_set(&v, 2, offset)?;
                let s = offset + t;
                (kv.k.narrow(2, 0, s)?, kv.v.narrow(2, 0, s)?)
            }
        };
        let s = k.dim(2)?;
        // GQA without copying keys: the `groups` query heads of one KV head become extra query rows.
        let qg = q.reshape((b, kvh, groups * t, d))?;
        let scores = matmul(&qg, &k.t()?)?.reshape((b, nh, t, s))?;
        let scores = scores.to_dtype(crate::ops::upcast_dtype(self.dtype))?;
        let probs = scaled_masked_softmax(&scores, 1.0 / (d as f64).sqrt(), Some(&ctx.mask))?
            .to_dtype(self.dtype)?;
        let attn = matmul(&probs.reshape((b, kvh, groups * t, s))?, &v)?.reshape((b, nh, t, d))?;
        attn.transpose(1, 2)?.reshape((b, t, nh * d))
    }

    /// The attention half's residual add and the MLP half of a block: `x + mlp(rmsnorm(x))`,
    /// `x = residual + attn_out`.
    fn mlp_half(
        &self,
        block: &Block,
        residual: &Tensor,
        attn_out: &Tensor,
        train: bool,
        rng: &SeededRng,
    ) -> candle_core::Result<Tensor> {
        let eps = self.config.rms_norm_eps;
        if let Some(frozen) = block.frozen_mlp(eps)
            && crate::fused::frozen_mlp_applies(residual, attn_out)
        {
            return crate::fused::frozen_mlp_residual(residual, attn_out, frozen);
        }
        let x = &add(residual, attn_out)?;
        let h = rms_norm(x, &block.post_attention_layernorm, eps)?;
        let m = &block.mlp;
        let gated = silu_mul(
            &m.gate_proj.forward(&h, train, rng)?,
            &m.up_proj.forward(&h, train, rng)?,
        )?;
        add(x, &m.down_proj.forward(&gated, train, rng)?)
    }

    /// The final RMSNorm over the last block's output.
    pub fn final_hidden(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(rms_norm(hidden, &self.norm, self.config.rms_norm_eps)?)
    }

    /// Re-lays every frozen decoder linear weight `W (out, in)` as a transposed view of a contiguous `Wᵀ` (same
    /// values, same memory), so `x·Wᵀ` reads the weight contiguously, the layout gemm streams fastest: at 8 rows
    /// 0.098 ms vs 0.19–0.28 ms for the other layouts (k 576, n 1536, `examples/gemm_layout.rs`), no slower for
    /// long prompts. `eval` on the CPU: 59 → 66 generated tokens/s (SmolLM2, batch 8, 16 rows × 64 new tokens, three
    /// alternating runs each, same outputs). For inference: backward through such a weight would read it transposed.
    /// Embeddings and `lm_head` keep their layout (rows are gathered; at n = vocab both layouts measured the same).
    pub fn store_linears_transposed(&mut self) -> Result<()> {
        for layer in &mut self.layers {
            for module in LINEAR_MODULES {
                if let Some(linear) = layer.linear_mut(module)
                    && let Param::Frozen(w) = &mut linear.weight
                    && w.is_contiguous()
                {
                    *w = w.t()?.contiguous()?.t()?;
                }
            }
        }
        Ok(())
    }

    /// The weight `lm_head` multiplies by: `lm_head.weight`, or the embeddings when tied.
    pub fn head_weight(&self) -> &Param {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// `hidden (..., hidden_size)` → f32 logits (f64 for an f64 model) `(..., vocab)` (tied to the embeddings when configured).
    pub fn lm_head(&self, hidden: &Tensor) -> Result<Tensor> {
        let logits = self.head_weight().matmul_t(hidden)?;
        // f32 logits for every model dtype but f64 (kept for finite-difference tests).
        Ok(if logits.dtype() == DType::F64 {
            logits
        } else {
            logits.to_dtype(DType::F32)?
        })
    }

    /// Training / scoring forward: f32 logits `(b, t, vocab)` for every position. `attention_mask (b, t)`:
    /// nonzero = real token. `train` turns LoRA dropout on.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let hidden = self.forward_hidden(input_ids, attention_mask, train)?;
        self.lm_head(&hidden)
    }

    /// Like [`CausalLm::forward`] but stops before `lm_head`: the normed final hidden states `(b, t, hidden)`,
    /// for a chunked loss.
    pub fn forward_hidden(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        self.forward_hidden_with(input_ids, attention_mask, train, &self.rng)
    }

    /// [`CausalLm::forward_hidden`] drawing its dropout masks from `rng` instead of the model's generator (see
    /// [`SeededRng::row_of_batch`]).
    pub fn forward_hidden_with(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        train: bool,
        rng: &SeededRng,
    ) -> Result<Tensor> {
        check_ids_mask(input_ids, attention_mask)?;
        let ctx = self.prepare(attention_mask)?;
        let mut h = self.embed(input_ids)?;
        for block in &self.layers {
            h = self.block_inner(block, &h, &ctx, None, train, rng)?;
        }
        self.final_hidden(&h)
    }

    /// Decoding forward: appends `input_ids (b, t)` (with `attention_mask (b, t)` for these new tokens) to the
    /// cache and returns f32 logits — of the last position only `(b, vocab)` when `last_only`, else `(b, t, vocab)`.
    /// Positions continue each row's count of real tokens in the cache.
    pub fn forward_cached(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        cache: &mut KvCache,
        last_only: bool,
    ) -> Result<Tensor> {
        check_ids_mask(input_ids, attention_mask)?;
        let (b, t) = input_ids.dims2()?;
        if b != cache.batch() {
            return Err(Error::Input(format!(
                "batch {b} but the cache holds {} rows",
                cache.batch()
            )));
        }
        if cache.layers.len() != self.layers.len() {
            return Err(Error::Input("the cache was built for another model".into()));
        }
        let offset = cache.len;
        if offset + t > cache.capacity {
            return Err(Error::Input(format!(
                "cache capacity {} exceeded ({offset} cached + {t} new)",
                cache.capacity
            )));
        }
        let new_valid = mask_rows(attention_mask)?;
        let positions = positions_from_valid(&new_valid, &cache.next_position);
        for (r, row) in new_valid.iter().enumerate() {
            cache.valid[r].extend_from_slice(row);
            cache.next_position[r] += row.iter().filter(|v| **v).count();
        }
        let (cos, sin) = self.rope_tables(&positions)?;
        let mask = self.additive_mask(&cache.valid, offset, t)?;
        let ctx = ForwardContext { cos, sin, mask };
        let mut h = self.embed(input_ids)?;
        for (block, kv) in self.layers.iter().zip(cache.layers.iter_mut()) {
            h = self.block_inner(block, &h, &ctx, Some((kv, offset)), false, &self.rng)?;
        }
        cache.len = offset + t;
        let h = if last_only { h.i((.., t - 1, ..))? } else { h };
        let h = self.final_hidden(&h)?;
        self.lm_head(&h)
    }

    /// Mutable access to the blocks, for adapter loading and merging.
    pub(crate) fn layers_mut(&mut self) -> &mut Vec<Block> {
        &mut self.layers
    }

    /// The generator used for dropout and adapter initialisation.
    // `pub` (was `pub(crate)`) for `train`: it saves and restores the dropout stream (`SeededRng::state`).
    pub fn rng(&self) -> &SeededRng {
        &self.rng
    }

    /// All base tensors by HF name (tied `lm_head` omitted), for saving.
    pub fn base_tensors(&self) -> HashMap<String, Tensor> {
        self.named_params()
            .into_iter()
            .map(|(n, p)| (n, p.tensor().clone()))
            .collect()
    }
}

/// RoPE positions of new tokens: each row continues from `start[row]`, counting only real tokens; a padding
/// slot gets the position of the next real token (it is masked, so the value only has to be in range).
fn positions_from_valid(valid: &[Vec<bool>], start: &[usize]) -> Vec<Vec<usize>> {
    valid
        .iter()
        .zip(start)
        .map(|(row, &s)| {
            let mut next = s;
            row.iter()
                .map(|&v| {
                    let p = next;
                    if v {
                        next += 1;
                    }
                    p
                })
                .collect()
        })
        .collect()
}

fn check_ids_mask(input_ids: &Tensor, attention_mask: &Tensor) -> Result<()> {
    let (b, t) = input_ids.dims2().map_err(|_| {
        Error::Input(format!(
            "input_ids must be (batch, time), got {:?}",
            input_ids.dims()
        ))
    })?;
    if attention_mask.dims() != [b, t] {
        return Err(Error::Input(format!(
            "attention_mask shape {:?} != input_ids shape {:?}",
            attention_mask.dims(),
            input_ids.dims()
        )));
    }
    if b == 0 || t == 0 {
        return Err(Error::Input("empty batch".into()));
    }
    Ok(())
}

/// The module names that may carry adapters (re-exported for callers validating configs).
pub fn linear_module_names() -> &'static [&'static str] {
    &LINEAR_MODULES
}
