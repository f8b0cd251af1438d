//! [`ModelConfig`]: the decoder's hyper-parameters, read from an HF `config.json`.
//!
//! The file is parsed into a JSON value first and validated field by field, so every error names the file, the
//! field and the reason. The original JSON is kept ([`ModelConfig::raw`]) and written back by
//! [`crate::CausalLm::save_full`], so fields we do not use (`architectures`, `torch_dtype`, ...) survive.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The HF `model_type` values this decoder implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelType {
    /// `LlamaForCausalLM`: LLaMA 3, DeepSeek-Coder, SmolLM2.
    Llama,
    /// `MistralForCausalLM`: Llama with a sliding attention window.
    Mistral,
}

impl ModelType {
    /// The HF `model_type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelType::Llama => "llama",
            ModelType::Mistral => "mistral",
        }
    }
}

/// RoPE frequency scaling (`rope_scaling` in `config.json`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// `{"type": "linear", "factor": f}`: positions divided by `factor` (DeepSeek-Coder: 4).
    Linear {
        /// The divisor of positions.
        factor: f64,
    },
    /// `{"rope_type": "llama3", ...}`: LLaMA 3.1's wavelength-dependent scaling of the inverse frequencies.
    Llama3 {
        /// Scaling of long wavelengths.
        factor: f64,
        /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are divided by `factor`.
        low_freq_factor: f64,
        /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The context length the model was pre-trained with.
        original_max_position_embeddings: usize,
    },
}

/// The decoder's hyper-parameters (HF field names and meanings).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// `llama` or `mistral`.
    pub model_type: ModelType,
    /// Vocabulary size (rows of `embed_tokens`).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (GQA when smaller than the query heads; defaults to them).
    pub num_key_value_heads: usize,
    /// Width of one head (defaults to `hidden_size / num_attention_heads`).
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// RoPE scaling, when the checkpoint uses one.
    pub rope_scaling: Option<RopeScaling>,
    /// Longest context the model was trained for.
    pub max_position_embeddings: usize,
    /// Whether `lm_head` shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Mistral's attention window (a key is visible when `query_pos - key_pos < window`).
    pub sliding_window: Option<usize>,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token(s).
    pub eos_token_id: Vec<u32>,
    /// Padding token, when the config names one.
    pub pad_token_id: Option<u32>,
    /// The `config.json` this was read from (or that [`ModelConfig::to_json`] builds), for round-tripping.
    pub raw: Map<String, Value>,
}

struct Fields<'a> {
    path: &'a Path,
    map: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn err(&self, field: &str, reason: impl Into<String>) -> Error {
        Error::Config {
            path: self.path.to_path_buf(),
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    fn present(&self, field: &str) -> Option<&Value> {
        self.map.get(field).filter(|v| !v.is_null())
    }

    fn usize_opt(&self, field: &str) -> Result<Option<usize>> {
        match self.present(field) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    self.err(field, format!("expected a non-negative integer, found {v}"))
                }),
        }
    }

    fn usize(&self, field: &str) -> Result<usize> {
        self.usize_opt(field)?
            .ok_or_else(|| self.err(field, "missing"))
    }

    fn positive(&self, field: &str) -> Result<usize> {
        let n = self.usize(field)?;
        if n == 0 {
            return Err(self.err(field, "must be positive"));
        }
        Ok(n)
    }

    fn f64_or(&self, field: &str, default: f64) -> Result<f64> {
        match self.present(field) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.err(field, format!("expected a number, found {v}"))),
        }
    }

    fn bool_or(&self, field: &str, default: bool) -> Result<bool> {
        match self.present(field) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(field, format!("expected true or false, found {v}"))),
        }
    }

    fn token_id(&self, field: &str, v: &Value) -> Result<u32> {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| self.err(field, format!("expected a token id, found {v}")))
    }

    fn token_opt(&self, field: &str) -> Result<Option<u32>> {
        match self.present(field) {
            None => Ok(None),
            // Some configs store a list for bos/pad too; the first entry is the one used.
            Some(Value::Array(items)) => items.first().map(|v| self.token_id(field, v)).transpose(),
            Some(v) => self.token_id(field, v).map(Some),
        }
    }

    fn token_list(&self, field: &str) -> Result<Vec<u32>> {
        match self.present(field) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items.iter().map(|v| self.token_id(field, v)).collect(),
            Some(v) => Ok(vec![self.token_id(field, v)?]),
        }
    }
}

impl ModelConfig {
    /// Reads and validates an HF `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Parses `config.json` text; `path` only names the source in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let Value::Object(map) = value else {
            return Err(Error::Config {
                path: path.to_path_buf(),
                field: "<root>".into(),
                reason: "expected a JSON object".into(),
            });
        };
        Self::from_map(map, path)
    }

    /// Validates a parsed `config.json` object.
    pub fn from_map(map: Map<String, Value>, path: &Path) -> Result<Self> {
        let map = lift_rope_parameters(map);
        let f = Fields { path, map: &map };
        let model_type = match f.present("model_type").and_then(Value::as_str) {
            Some("llama") => ModelType::Llama,
            Some("mistral") => ModelType::Mistral,
            Some(other) => {
                return Err(f.err(
                    "model_type",
                    format!("`{other}` is not supported (llama, mistral)"),
                ));
            }
            None => return Err(f.err("model_type", "missing (expected \"llama\" or \"mistral\")")),
        };
        if let Some(act) = f.present("hidden_act")
            && act.as_str() != Some("silu")
        {
            return Err(f.err(
                "hidden_act",
                format!("only \"silu\" is supported, found {act}"),
            ));
        }
        for field in ["attention_bias", "mlp_bias"] {
            if f.bool_or(field, false)? {
                return Err(f.err(field, "biases in linear layers are not supported"));
            }
        }
        let hidden_size = f.positive("hidden_size")?;
        let num_attention_heads = f.positive("num_attention_heads")?;
        let num_key_value_heads = f
            .usize_opt("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(f.err(
                "num_key_value_heads",
                format!("{num_key_value_heads} does not divide num_attention_heads = {num_attention_heads}"),
            ));
        }
        let head_dim = match f.usize_opt("head_dim")? {
            Some(d) => d,
            None if hidden_size % num_attention_heads == 0 => hidden_size / num_attention_heads,
            None => {
                return Err(f.err(
                    "head_dim",
                    format!("missing and hidden_size {hidden_size} is not a multiple of {num_attention_heads} heads"),
                ));
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(f.err(
                "head_dim",
                format!("{head_dim} must be positive and even (RoPE rotates pairs)"),
            ));
        }
        let rope_scaling = parse_rope_scaling(&f)?;
        let sliding_window = match model_type {
            // Llama configs sometimes carry `sliding_window: null` or an unused value; only Mistral applies it.
            ModelType::Llama => None,
            ModelType::Mistral => f.usize_opt("sliding_window")?,
        };
        let config = ModelConfig {
            model_type,
            vocab_size: f.positive("vocab_size")?,
            hidden_size,
            intermediate_size: f.positive("intermediate_size")?,
            num_hidden_layers: f.positive("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: f.f64_or("rms_norm_eps", 1e-6)?,
            rope_theta: f.f64_or("rope_theta", 10_000.0)?,
            rope_scaling,
            max_position_embeddings: f.usize_opt("max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: f.bool_or("tie_word_embeddings", false)?,
            sliding_window,
            bos_token_id: f.token_opt("bos_token_id")?,
            eos_token_id: f.token_list("eos_token_id")?,
            pad_token_id: f.token_opt("pad_token_id")?,
            raw: Map::new(),
        };
        Ok(ModelConfig { raw: map, ..config })
    }

    /// A tiny random-initialisable config for tests: GQA (4 query heads, 2 KV heads), 2 layers, vocab 512.
    pub fn tiny() -> Self {
        let mut config = ModelConfig {
            model_type: ModelType::Llama,
            vocab_size: 512,
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 16,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            max_position_embeddings: 256,
            tie_word_embeddings: false,
            sliding_window: None,
            bos_token_id: Some(0),
            eos_token_id: vec![1],
            pad_token_id: Some(2),
            raw: Map::new(),
        };
        config.raw = config.to_json();
        config
    }

    /// Number of query heads sharing one key/value head.
    pub fn kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// The `config.json` to save: the original fields, with every field we interpret overwritten by our value.
    pub fn to_json(&self) -> Map<String, Value> {
        let mut map = self.raw.clone();
        let mut set = |k: &str, v: Value| {
            map.insert(k.to_string(), v);
        };
        set("model_type", self.model_type.as_str().into());
        if !self.raw.contains_key("architectures") {
            let arch = match self.model_type {
                ModelType::Llama => "LlamaForCausalLM",
                ModelType::Mistral => "MistralForCausalLM",
            };
            set("architectures", Value::Array(vec![arch.into()]));
        }
        set("vocab_size", self.vocab_size.into());
        set("hidden_size", self.hidden_size.into());
        set("intermediate_size", self.intermediate_size.into());
        set("num_hidden_layers", self.num_hidden_layers.into());
        set("num_attention_heads", self.num_attention_heads.into());
        set("num_key_value_heads", self.num_key_value_heads.into());
        set("head_dim", self.head_dim.into());
        set("hidden_act", "silu".into());
        set("rms_norm_eps", self.rms_norm_eps.into());
        set("rope_theta", self.rope_theta.into());
        set(
            "max_position_embeddings",
            self.max_position_embeddings.into(),
        );
        set("tie_word_embeddings", self.tie_word_embeddings.into());
        set("attention_bias", false.into());
        let scaling = match &self.rope_scaling {
            None => Value::Null,
            Some(RopeScaling::Linear { factor }) => {
                serde_json::json!({"type": "linear", "rope_type": "linear", "factor": factor})
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                serde_json::json!({
                    "rope_type": "llama3",
                    "factor": factor,
                    "low_freq_factor": low_freq_factor,
                    "high_freq_factor": high_freq_factor,
                    "original_max_position_embeddings": original_max_position_embeddings,
                })
            }
        };
        set("rope_scaling", scaling);
        if self.model_type == ModelType::Mistral {
            set(
                "sliding_window",
                self.sliding_window.map_or(Value::Null, Value::from),
            );
        }
        set(
            "bos_token_id",
            self.bos_token_id.map_or(Value::Null, Value::from),
        );
        set(
            "eos_token_id",
            match self.eos_token_id.as_slice() {
                [] => Value::Null,
                [one] => (*one).into(),
                many => many.iter().copied().map(Value::from).collect(),
            },
        );
        set(
            "pad_token_id",
            self.pad_token_id.map_or(Value::Null, Value::from),
        );
        map
    }

    /// Reads `config.json` from an HF directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_file(&dir.join("config.json"))
    }
}

/// transformers 5 writes the RoPE settings as one `rope_parameters` object (`rope_type`, `rope_theta`, `factor`, …)
/// instead of a top-level `rope_theta` and `rope_scaling`. Reading only the old keys would silently fall back to
/// θ = 10000, so the new object is lifted into the old keys; old keys already present win.
fn lift_rope_parameters(mut map: Map<String, Value>) -> Map<String, Value> {
    let Some(Value::Object(params)) = map.get("rope_parameters").cloned() else {
        return map;
    };
    let absent = |map: &Map<String, Value>, key: &str| map.get(key).is_none_or(Value::is_null);
    if absent(&map, "rope_theta")
        && let Some(theta) = params.get("rope_theta")
    {
        map.insert("rope_theta".into(), theta.clone());
    }
    if absent(&map, "rope_scaling")
        && (params.contains_key("rope_type") || params.contains_key("type"))
    {
        map.insert("rope_scaling".into(), Value::Object(params));
    }
    map
}

fn parse_rope_scaling(f: &Fields<'_>) -> Result<Option<RopeScaling>> {
    let Some(value) = f.present("rope_scaling") else {
        return Ok(None);
    };
    let field = "rope_scaling";
    let Value::Object(obj) = value else {
        return Err(f.err(field, format!("expected an object, found {value}")));
    };
    let kind = obj
        .get("rope_type")
        .or_else(|| obj.get("type"))
        .and_then(Value::as_str)
        .ok_or_else(|| f.err(field, "missing `rope_type` (or `type`)"))?;
    let num = |key: &str| -> Result<f64> {
        obj.get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| f.err(&format!("{field}.{key}"), "missing or not a number"))
    };
    match kind {
        "default" => Ok(None),
        "linear" => {
            let factor = num("factor")?;
            if factor <= 0.0 {
                return Err(f.err("rope_scaling.factor", format!("{factor} must be positive")));
            }
            Ok(Some(RopeScaling::Linear { factor }))
        }
        "llama3" => {
            let original = obj
                .get("original_max_position_embeddings")
                .and_then(Value::as_u64)
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| {
                    f.err(
                        "rope_scaling.original_max_position_embeddings",
                        "missing or not an integer",
                    )
                })?;
            Ok(Some(RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: original,
            }))
        }
        other => Err(f.err(
            field,
            format!("rope type `{other}` is not supported (linear, llama3)"),
        )),
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self::tiny()
    }
}

/// `<in memory>`, the path used in errors for configs that did not come from a file.
pub fn in_memory() -> PathBuf {
    PathBuf::from("<in memory>")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ModelConfig> {
        ModelConfig::from_json_str(text, Path::new("config.json"))
    }

    #[test]
    fn deepseek_linear_scaling_and_mha() {
        let c = parse(
            r#"{"model_type":"llama","vocab_size":32256,"hidden_size":4096,"intermediate_size":11008,
            "num_hidden_layers":32,"num_attention_heads":32,"rope_theta":100000,
            "rope_scaling":{"type":"linear","factor":4.0},"bos_token_id":32013,"eos_token_id":32014}"#,
        )
        .expect("valid config");
        assert_eq!(c.num_key_value_heads, 32);
        assert_eq!(c.head_dim, 128);
        assert_eq!(c.rope_scaling, Some(RopeScaling::Linear { factor: 4.0 }));
        assert_eq!(c.eos_token_id, vec![32014]);
    }

    #[test]
    fn llama3_scaling_and_eos_list() {
        let c = parse(
            r#"{"model_type":"llama","vocab_size":128256,"hidden_size":4096,"intermediate_size":14336,
            "num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"rope_theta":500000.0,
            "rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
            "original_max_position_embeddings":8192,"rope_type":"llama3"},"eos_token_id":[128001,128008,128009]}"#,
        )
        .expect("valid config");
        assert_eq!(c.kv_groups(), 4);
        assert!(matches!(
            c.rope_scaling,
            Some(RopeScaling::Llama3 {
                original_max_position_embeddings: 8192,
                ..
            })
        ));
        assert_eq!(c.eos_token_id.len(), 3);
    }

    #[test]
    fn errors_name_the_field() {
        let err = parse(r#"{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":2,"rope_scaling":{"type":"yarn","factor":2}}"#)
        .expect_err("yarn unsupported");
        assert!(err.to_string().contains("rope_scaling"), "{err}");
        let err = parse(r#"{"model_type":"gpt2"}"#).expect_err("gpt2 unsupported");
        assert!(err.to_string().contains("model_type"), "{err}");
        let err = parse(r#"{"model_type":"llama","hidden_size":8}"#).expect_err("missing fields");
        assert!(
            err.to_string()
                .contains("config.json: field `num_attention_heads`: missing"),
            "{err}"
        );
    }

    #[test]
    fn to_json_round_trips() {
        let c = ModelConfig::tiny();
        let back = ModelConfig::from_map(c.to_json(), Path::new("x")).expect("round trip");
        assert_eq!(
            ModelConfig {
                raw: Map::new(),
                ..back
            },
            ModelConfig {
                raw: Map::new(),
                ..c
            }
        );
    }

    #[test]
    fn reads_transformers5_rope_parameters() {
        let c = ModelConfig::from_json_str(
            r#"{"model_type":"llama","vocab_size":8,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":2,
            "rope_parameters":{"rope_type":"linear","rope_theta":100000.0,"factor":4.0}}"#,
            Path::new("config.json"),
        )
        .expect("config");
        assert_eq!(c.rope_theta, 100_000.0);
        assert_eq!(c.rope_scaling, Some(RopeScaling::Linear { factor: 4.0 }));
        let c = ModelConfig::from_json_str(
            r#"{"model_type":"llama","vocab_size":8,"hidden_size":8,"intermediate_size":16,
            "num_hidden_layers":1,"num_attention_heads":2,
            "rope_parameters":{"rope_type":"default","rope_theta":100000.0}}"#,
            Path::new("config.json"),
        )
        .expect("config");
        assert_eq!(c.rope_theta, 100_000.0);
        assert_eq!(c.rope_scaling, None);
    }
}
