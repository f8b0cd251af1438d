//! GGUF → Hugging Face directory conversion (llama architecture).
//!
//! [`convert_cached`] turns a `.gguf` file into `config.json` + `model.safetensors` (f32) + `tokenizer.json` +
//! `tokenizer_config.json` under `<cache root>/<stem>-<sha256 prefix>/`, once: the key hashes the GGUF bytes, the
//! optional tokenizer override and [`CONVERTER_VERSION`], and the directory is written under a temporary name and
//! renamed into place, so a reader never sees half a conversion.
//!
//! What the conversion undoes:
//! - llama.cpp tensor names (`token_embd`, `blk.N.attn_q`, …) → HF names (`model.embed_tokens`,
//!   `model.layers.N.self_attn.q_proj`, …);
//! - quantisation: every tensor is dequantised to f32 by candle (bit-identical to Python `gguf`'s dequantiser);
//! - the rotary permutation llama.cpp's converter applies to `attn_q` / `attn_k` rows (HF's rotate-half layout →
//!   interleaved pairs): rows are put back with `w.reshape(heads, head_dim/2, 2, in).swap(1, 2)`;
//! - `config.json` from the `llama.*` metadata (tied embeddings when `output.weight` is absent);
//! - `tokenizer.json` from the `tokenizer.ggml.*` metadata (GPT-2-style byte-level BPE only), or copied from a
//!   caller-supplied `tokenizer.json` (SentencePiece vocabularies need that).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};

/// Bumped whenever the output layout changes, so stale conversions in the cache are not reused.
pub const CONVERTER_VERSION: &str = "kubetune-gguf-1";

/// Errors from reading a GGUF file or writing its HF conversion.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The GGUF header, metadata or tensor table could not be parsed.
    #[error("{path}: not a readable GGUF file: {message}")]
    Parse {
        /// The GGUF file.
        path: PathBuf,
        /// What candle's reader reported.
        message: String,
    },
    /// A required metadata key is absent.
    #[error("{path}: metadata key `{key}` is missing")]
    MissingKey {
        /// The GGUF file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A metadata value has the wrong type or an impossible value.
    #[error("{path}: metadata key `{key}`: {reason}")]
    BadKey {
        /// The GGUF file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The file describes something this converter does not handle (another architecture, a SentencePiece
    /// vocabulary without a tokenizer override, Llama 3.1 `rope_freqs`, …).
    #[error("{path}: unsupported: {what}")]
    Unsupported {
        /// The GGUF file.
        path: PathBuf,
        /// What is unsupported, and what to do instead.
        what: String,
    },
    /// A tensor name has no HF counterpart.
    #[error("{path}: tensor `{name}` has no Hugging Face llama name")]
    UnknownTensor {
        /// The GGUF file.
        path: PathBuf,
        /// The llama.cpp tensor name.
        name: String,
    },
    /// A tensor every llama layer needs is absent.
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor {
        /// The GGUF file.
        path: PathBuf,
        /// The llama.cpp tensor name.
        name: String,
    },
    /// Reading, dequantising or reshaping one tensor failed.
    #[error("{path}: tensor `{name}`: {source}")]
    Tensor {
        /// The GGUF file.
        path: PathBuf,
        /// The llama.cpp tensor name.
        name: String,
        /// The candle error (boxed: candle's error is large).
        source: Box<candle_core::Error>,
    },
    /// The tokenizer built from the metadata (or the override) does not load.
    #[error("{path}: tokenizer: {message}")]
    Tokenizer {
        /// The file the tokenizer came from.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Writing `model.safetensors` failed.
    #[error("{path}: cannot write safetensors: {message}")]
    Safetensors {
        /// The output file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

type Result<T> = std::result::Result<T, GgufError>;

/// Converts `gguf` once into `<cache_root>/<stem>-<16 hex of the cache key>/` and returns that directory.
/// `tokenizer`, if given, is a `tokenizer.json` used instead of the GGUF's vocabulary (its sibling
/// `tokenizer_config.json` is copied too when present).
pub fn convert_cached(gguf: &Path, cache_root: &Path, tokenizer: Option<&Path>) -> Result<PathBuf> {
    let key = cache_key(gguf, tokenizer)?;
    let stem = gguf
        .file_stem()
        .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
    let target = cache_root.join(format!("{stem}-{}", &key[..16]));
    if target.join("config.json").is_file() {
        return Ok(target);
    }
    std::fs::create_dir_all(cache_root).map_err(|source| io(cache_root, source))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let staging = cache_root.join(format!(".tmp-{stem}-{}-{nanos}", std::process::id()));
    std::fs::create_dir(&staging).map_err(|source| io(&staging, source))?;
    if let Err(e) = convert(gguf, &staging, tokenizer) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    if let Err(source) = std::fs::rename(&staging, &target) {
        let _ = std::fs::remove_dir_all(&staging);
        // Another process finished the same conversion first: its result is as good as ours.
        if !target.join("config.json").is_file() {
            return Err(io(&target, source));
        }
    }
    Ok(target)
}

/// SHA-256 (hex) over the GGUF bytes, the tokenizer override's bytes, and the converter version.
pub fn cache_key(gguf: &Path, tokenizer: Option<&Path>) -> Result<String> {
    let mut hasher = Sha256::new();
    hash_file(&mut hasher, gguf)?;
    if let Some(tok) = tokenizer {
        hasher.update(b"\0tokenizer\0");
        hash_file(&mut hasher, tok)?;
    }
    hasher.update(CONVERTER_VERSION.as_bytes());
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn hash_file(hasher: &mut Sha256, path: &Path) -> Result<()> {
    let mut file = BufReader::new(File::open(path).map_err(|source| io(path, source))?);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|source| io(path, source))?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
    }
}

/// Converts `gguf` into the existing, empty directory `out_dir` (not atomic by itself: see [`convert_cached`]).
pub fn convert(gguf: &Path, out_dir: &Path, tokenizer: Option<&Path>) -> Result<()> {
    let mut reader = BufReader::new(File::open(gguf).map_err(|source| io(gguf, source))?);
    let content = Content::read(&mut reader).map_err(|e| GgufError::Parse {
        path: gguf.to_owned(),
        message: e.to_string(),
    })?;
    let meta = Metadata {
        path: gguf,
        map: &content.metadata,
    };

    let arch = meta.string("general.architecture")?;
    if arch != "llama" {
        return Err(GgufError::Unsupported {
            path: gguf.to_owned(),
            what: format!(
                "architecture `{arch}` (only `llama`, which llama.cpp also uses for Mistral)"
            ),
        });
    }
    if content.tensor_infos.contains_key("rope_freqs.weight") {
        return Err(GgufError::Unsupported {
            path: gguf.to_owned(),
            what: "a `rope_freqs` tensor (Llama 3.1-style rope scaling baked into the file)".into(),
        });
    }
    let dims = Dims::from_metadata(&meta)?;
    let tied = !content.tensor_infos.contains_key("output.weight");

    let tensors = read_weights(gguf, &content, &mut reader, &dims)?;
    let weights_path = out_dir.join("model.safetensors");
    let metadata = HashMap::from([("format".to_owned(), "pt".to_owned())]);
    safetensors::serialize_to_file(
        tensors.iter().map(|(k, v)| (k.as_str(), v)),
        Some(metadata),
        &weights_path,
    )
    .map_err(|e| GgufError::Safetensors {
        path: weights_path.clone(),
        message: e.to_string(),
    })?;

    let vocab_size = match meta.opt_usize("llama.vocab_size")? {
        Some(n) => n,
        None => tensors["model.embed_tokens.weight"]
            .dim(0)
            .map_err(|source| GgufError::Tensor {
                path: gguf.to_owned(),
                name: "token_embd.weight".into(),
                source: Box::new(source),
            })?,
    };
    let config = config_json(&meta, &dims, vocab_size, tied)?;
    write_json(&out_dir.join("config.json"), &config)?;

    match tokenizer {
        Some(tok) => {
            copy(tok, &out_dir.join("tokenizer.json"))?;
            let sibling = tok.with_file_name("tokenizer_config.json");
            if sibling.is_file() {
                copy(&sibling, &out_dir.join("tokenizer_config.json"))?;
            } else {
                write_json(
                    &out_dir.join("tokenizer_config.json"),
                    &tokenizer_config_json(&meta)?,
                )?;
            }
        }
        None => {
            let tokenizer_json = tokenizer_json_from_metadata(&meta)?;
            write_json(&out_dir.join("tokenizer.json"), &tokenizer_json)?;
            write_json(
                &out_dir.join("tokenizer_config.json"),
                &tokenizer_config_json(&meta)?,
            )?;
        }
    }
    // Whatever its source, the tokenizer must load, or the conversion is not usable.
    let tokenizer_path = out_dir.join("tokenizer.json");
    tokenizers::Tokenizer::from_file(&tokenizer_path).map_err(|e| GgufError::Tokenizer {
        path: tokenizer_path.clone(),
        message: e.to_string(),
    })?;

    let provenance = json!({
        "converter": CONVERTER_VERSION,
        "source": gguf.display().to_string(),
        "tokenizer": tokenizer.map_or_else(|| "built from GGUF metadata".to_owned(), |p| p.display().to_string()),
        "dtype": "float32 (dequantised)",
    });
    write_json(&out_dir.join("conversion.json"), &provenance)
}

/// Architecture sizes from the `llama.*` metadata.
struct Dims {
    layers: usize,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Dims {
    fn from_metadata(meta: &Metadata<'_>) -> Result<Dims> {
        let layers = meta.usize("llama.block_count")?;
        let hidden = meta.usize("llama.embedding_length")?;
        let heads = meta.usize("llama.attention.head_count")?;
        let kv_heads = meta
            .opt_usize("llama.attention.head_count_kv")?
            .unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
            return Err(meta.bad(
                "llama.attention.head_count_kv",
                format!("{kv_heads} KV heads for {heads} heads"),
            ));
        }
        let head_dim = match meta.opt_usize("llama.attention.key_length")? {
            Some(d) => d,
            None if hidden % heads == 0 => hidden / heads,
            None => {
                return Err(meta.bad(
                    "llama.attention.head_count",
                    format!("{heads} does not divide {hidden}"),
                ));
            }
        };
        if head_dim % 2 != 0 {
            return Err(meta.bad(
                "llama.attention.key_length",
                format!("odd head dim {head_dim}"),
            ));
        }
        Ok(Dims {
            layers,
            hidden,
            heads,
            kv_heads,
            head_dim,
        })
    }
}

/// llama.cpp per-layer tensor suffix → HF suffix under `model.layers.N.`.
const LAYER_TENSORS: &[(&str, &str)] = &[
    ("attn_norm.weight", "input_layernorm.weight"),
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
];

/// The HF name of a llama.cpp tensor name, if it has one.
pub fn hf_tensor_name(gguf_name: &str) -> Option<String> {
    match gguf_name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (_, hf) = LAYER_TENSORS.iter().find(|(g, _)| *g == suffix)?;
    Some(format!("model.layers.{layer}.{hf}"))
}

fn read_weights(
    path: &Path,
    content: &Content,
    reader: &mut BufReader<File>,
    dims: &Dims,
) -> Result<BTreeMap<String, Tensor>> {
    let mut expected: Vec<String> = vec!["token_embd.weight".into(), "output_norm.weight".into()];
    for layer in 0..dims.layers {
        expected.extend(
            LAYER_TENSORS
                .iter()
                .map(|(g, _)| format!("blk.{layer}.{g}")),
        );
    }
    if let Some(name) = expected
        .iter()
        .find(|n| !content.tensor_infos.contains_key(n.as_str()))
    {
        return Err(GgufError::MissingTensor {
            path: path.to_owned(),
            name: name.clone(),
        });
    }
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut out = BTreeMap::new();
    for name in names {
        let hf = hf_tensor_name(name).ok_or_else(|| GgufError::UnknownTensor {
            path: path.to_owned(),
            name: name.clone(),
        })?;
        let tensor_error = |source| GgufError::Tensor {
            path: path.to_owned(),
            name: name.clone(),
            source: Box::new(source),
        };
        let tensor = content
            .tensor(reader, name, &Device::Cpu)
            .and_then(|q| q.dequantize(&Device::Cpu))
            .map_err(tensor_error)?;
        let tensor = if name.ends_with(".attn_q.weight") {
            unpermute_rotary(&tensor, dims.heads, dims.head_dim).map_err(tensor_error)?
        } else if name.ends_with(".attn_k.weight") {
            unpermute_rotary(&tensor, dims.kv_heads, dims.head_dim).map_err(tensor_error)?
        } else {
            tensor
        };
        out.insert(hf, tensor);
    }
    Ok(out)
}

/// Undoes llama.cpp's q/k row permutation. llama.cpp stores each head's rows as interleaved (x0, x1) pairs,
/// `permute(w) = w.reshape(h, 2, d/2, in).swap(1, 2)`; HF's rotate-half layout is recovered by the inverse,
/// `w.reshape(h, d/2, 2, in).swap(1, 2).reshape(h·d, in)`.
pub fn unpermute_rotary(w: &Tensor, heads: usize, head_dim: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    if rows != heads * head_dim {
        candle_core::bail!("{rows} rows, expected {heads} heads × head dim {head_dim}");
    }
    w.reshape((heads, head_dim / 2, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))
}

/// The inverse of [`unpermute_rotary`]: what llama.cpp's converter does (used to build test GGUFs).
pub fn permute_rotary(w: &Tensor, heads: usize, head_dim: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    if rows != heads * head_dim {
        candle_core::bail!("{rows} rows, expected {heads} heads × head dim {head_dim}");
    }
    w.reshape((heads, 2, head_dim / 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))
}

fn config_json(meta: &Metadata<'_>, dims: &Dims, vocab_size: usize, tied: bool) -> Result<Json> {
    let mut config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": dims.hidden,
        "intermediate_size": meta.usize("llama.feed_forward_length")?,
        "num_hidden_layers": dims.layers,
        "num_attention_heads": dims.heads,
        "num_key_value_heads": dims.kv_heads,
        "head_dim": dims.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": meta.opt_usize("llama.context_length")?.unwrap_or(2048),
        "rms_norm_eps": meta.opt_f64("llama.attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
        "rope_theta": meta.opt_f64("llama.rope.freq_base")?.unwrap_or(10000.0),
        "tie_word_embeddings": tied,
        "attention_bias": false,
        "mlp_bias": false,
        "torch_dtype": "float32",
        "bos_token_id": meta.opt_usize("tokenizer.ggml.bos_token_id")?,
        "eos_token_id": meta.opt_usize("tokenizer.ggml.eos_token_id")?,
        "pad_token_id": meta.opt_usize("tokenizer.ggml.padding_token_id")?,
    });
    if let Some(rotary) = meta.opt_usize("llama.rope.dimension_count")?
        && rotary != dims.head_dim
    {
        return Err(GgufError::Unsupported {
            path: meta.path.to_owned(),
            what: format!(
                "partial rotary embedding ({rotary} of {} head dims)",
                dims.head_dim
            ),
        });
    }
    let scaling_type = meta.opt_string("llama.rope.scaling.type")?;
    match scaling_type.as_deref() {
        None | Some("none") => {}
        Some("linear") => {
            let factor = meta.opt_f64("llama.rope.scaling.factor")?.ok_or_else(|| {
                GgufError::MissingKey {
                    path: meta.path.to_owned(),
                    key: "llama.rope.scaling.factor".into(),
                }
            })?;
            config["rope_scaling"] = json!({"type": "linear", "factor": factor});
        }
        Some(other) => {
            return Err(GgufError::Unsupported {
                path: meta.path.to_owned(),
                what: format!("rope scaling type `{other}` (only `linear`)"),
            });
        }
    }
    Ok(config)
}

fn tokenizer_config_json(meta: &Metadata<'_>) -> Result<Json> {
    let tokens = meta.string_array("tokenizer.ggml.tokens")?;
    let token = |key: &str| -> Result<Json> {
        Ok(match meta.opt_usize(key)? {
            Some(id) => Json::String(
                tokens
                    .get(id)
                    .ok_or_else(|| {
                        meta.bad(key, format!("id {id} ≥ vocabulary size {}", tokens.len()))
                    })?
                    .clone(),
            ),
            None => Json::Null,
        })
    };
    let model = meta.string("tokenizer.ggml.model")?;
    // llama.cpp's default when the flag is absent: BOS for SentencePiece vocabularies, none for GPT-2 BPE.
    let add_bos = meta
        .opt_bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(model == "llama");
    let mut cfg = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("tokenizer.ggml.bos_token_id")?,
        "eos_token": token("tokenizer.ggml.eos_token_id")?,
        "pad_token": token("tokenizer.ggml.padding_token_id")?,
        "unk_token": token("tokenizer.ggml.unknown_token_id")?,
        "add_bos_token": add_bos,
        "add_eos_token": meta.opt_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false),
        "clean_up_tokenization_spaces": false,
    });
    if let Some(template) = meta.opt_string("tokenizer.chat_template")? {
        cfg["chat_template"] = Json::String(template);
    }
    Ok(cfg)
}

/// Llama 3's pre-tokenizer split (also transformers' and llama.cpp's for `llama-bpe`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer for a `tokenizer.ggml.pre` value.
fn pre_tokenizer(meta: &Metadata<'_>) -> Result<Json> {
    let byte_level_regex = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let pre = meta.opt_string("tokenizer.ggml.pre")?;
    Ok(match pre.as_deref() {
        None | Some("default") | Some("gpt2") | Some("gpt-2") => byte_level_regex,
        // llama.cpp splits SmolLM's digits one by one before the GPT-2 regex, as SmolLM's own tokenizer.json does.
        Some("smollm") => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            byte_level_regex,
        ]}),
        Some("llama3") | Some("llama-v3") | Some("llama-bpe") => {
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
            ]})
        }
        Some(other) => {
            return Err(GgufError::Unsupported {
                path: meta.path.to_owned(),
                what: format!(
                    "tokenizer.ggml.pre `{other}`: pass the model's tokenizer.json instead"
                ),
            });
        }
    })
}

/// GPT-2's byte → printable-char table (`bytes_to_unicode`): the alphabet byte-level BPE vocabularies are spelt in.
fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let code = if printable {
            u32::from(b)
        } else {
            extra += 1;
            255 + extra
        };
        table[usize::from(b)] = char::from_u32(code).unwrap_or('\u{FFFD}');
    }
    table
}

/// `tokenizer.json` for a GPT-2-style byte-level BPE vocabulary stored in GGUF metadata.
fn tokenizer_json_from_metadata(meta: &Metadata<'_>) -> Result<Json> {
    let model = meta.string("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(GgufError::Unsupported {
            path: meta.path.to_owned(),
            what: format!(
                "tokenizer.ggml.model `{model}` (only gpt2 byte-level BPE): pass a tokenizer.json"
            ),
        });
    }
    let tokens = meta.string_array("tokenizer.ggml.tokens")?;
    let merges = meta.string_array("tokenizer.ggml.merges")?;
    let types = meta.opt_i64_array("tokenizer.ggml.token_type")?;
    let table = byte_to_char();
    let alphabet: std::collections::HashSet<char> = table.iter().copied().collect();
    // Tokens spelt outside the byte alphabet (a raw space, say) are respelt byte by byte, as transformers does.
    let spell = |t: &str| -> String {
        if t.chars().all(|c| alphabet.contains(&c)) {
            t.to_owned()
        } else {
            t.bytes().map(|b| table[usize::from(b)]).collect()
        }
    };
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, token) in tokens.iter().enumerate() {
        let spelt = spell(token);
        let kind = types.as_ref().and_then(|t| t.get(id)).copied();
        // 3 = CONTROL (special: `<|im_start|>`), 4 = USER_DEFINED (added, not special).
        if matches!(kind, Some(3) | Some(4)) && spelt == *token {
            added.push(json!({
                "id": id, "content": token, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": kind == Some(3),
            }));
        }
        vocab.insert(spelt, json!(id));
    }
    if vocab.len() != tokens.len() {
        return Err(meta.bad(
            "tokenizer.ggml.tokens",
            "duplicate tokens after byte-level spelling".into(),
        ));
    }
    let mut merge_pairs = Vec::with_capacity(merges.len());
    for (i, merge) in merges.iter().enumerate() {
        let (a, b) = merge.split_once(' ').ok_or_else(|| {
            meta.bad(
                "tokenizer.ggml.merges",
                format!("entry {i} {merge:?} is not `left right`"),
            )
        })?;
        merge_pairs.push(json!([a, b]));
    }
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(meta)?,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merge_pairs,
        },
    }))
}

/// Typed access to GGUF metadata with errors that name the file and key.
struct Metadata<'a> {
    path: &'a Path,
    map: &'a HashMap<String, Value>,
}

impl Metadata<'_> {
    fn bad(&self, key: &str, reason: String) -> GgufError {
        GgufError::BadKey {
            path: self.path.to_owned(),
            key: key.to_owned(),
            reason,
        }
    }

    fn get(&self, key: &str) -> Result<&Value> {
        self.map.get(key).ok_or_else(|| GgufError::MissingKey {
            path: self.path.to_owned(),
            key: key.to_owned(),
        })
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| GgufError::MissingKey {
            path: self.path.to_owned(),
            key: key.to_owned(),
        })
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        let Some(v) = self.map.get(key) else {
            return Ok(None);
        };
        let n = match v {
            Value::U8(n) => Some(u64::from(*n)),
            Value::U16(n) => Some(u64::from(*n)),
            Value::U32(n) => Some(u64::from(*n)),
            Value::U64(n) => Some(*n),
            Value::I8(n) => u64::try_from(*n).ok(),
            Value::I16(n) => u64::try_from(*n).ok(),
            Value::I32(n) => u64::try_from(*n).ok(),
            Value::I64(n) => u64::try_from(*n).ok(),
            _ => None,
        };
        n.and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| self.bad(key, format!("expected a non-negative integer, found {v:?}")))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        let Some(v) = self.map.get(key) else {
            return Ok(None);
        };
        match v {
            Value::F32(x) => Ok(Some(f64::from(*x))),
            Value::F64(x) => Ok(Some(*x)),
            _ => Err(self.bad(key, format!("expected a float, found {v:?}"))),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.bad(key, format!("expected a bool, found {v:?}"))),
        }
    }

    fn string(&self, key: &str) -> Result<String> {
        self.opt_string(key)?.ok_or_else(|| GgufError::MissingKey {
            path: self.path.to_owned(),
            key: key.to_owned(),
        })
    }

    fn opt_string(&self, key: &str) -> Result<Option<String>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.bad(
                key,
                format!("expected a string, found a {:?}", v.value_type()),
            )),
        }
    }

    fn string_array(&self, key: &str) -> Result<Vec<String>> {
        let Value::Array(items) = self.get(key)? else {
            return Err(self.bad(key, "expected an array of strings".into()));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(self.bad(
                    key,
                    format!("entry {i} is a {:?}, not a string", other.value_type()),
                )),
            })
            .collect()
    }

    fn opt_i64_array(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let Some(v) = self.map.get(key) else {
            return Ok(None);
        };
        let Value::Array(items) = v else {
            return Err(self.bad(key, "expected an array of integers".into()));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::I32(n) => Ok(i64::from(*n)),
                Value::U32(n) => Ok(i64::from(*n)),
                Value::I64(n) => Ok(*n),
                Value::U8(n) => Ok(i64::from(*n)),
                Value::I8(n) => Ok(i64::from(*n)),
                other => Err(self.bad(
                    key,
                    format!("entry {i} is a {:?}, not an integer", other.value_type()),
                )),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

fn io(path: &Path, source: std::io::Error) -> GgufError {
    GgufError::Io {
        path: path.to_owned(),
        source,
    }
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|source| io(from, source))
}

fn write_json(path: &Path, value: &Json) -> Result<()> {
    let mut text =
        serde_json::to_string_pretty(value).map_err(|e| io(path, std::io::Error::other(e)))?;
    text.push('\n');
    std::fs::write(path, text).map_err(|source| io(path, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_hf() {
        assert_eq!(
            hf_tensor_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(
            hf_tensor_name("blk.12.attn_q.weight").as_deref(),
            Some("model.layers.12.self_attn.q_proj.weight")
        );
        assert_eq!(
            hf_tensor_name("blk.0.ffn_norm.weight").as_deref(),
            Some("model.layers.0.post_attention_layernorm.weight")
        );
        assert_eq!(
            hf_tensor_name("output.weight").as_deref(),
            Some("lm_head.weight")
        );
        assert_eq!(hf_tensor_name("blk.x.attn_q.weight"), None);
        assert_eq!(hf_tensor_name("blk.0.attn_q.bias"), None);
        assert_eq!(hf_tensor_name("rope_freqs.weight"), None);
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() -> candle_core::Result<()> {
        // 2 heads × head dim 4, 3 input columns; row r holds r*10 + column.
        let rows: Vec<f32> = (0..8)
            .flat_map(|r| (0..3).map(move |c| (r * 10 + c) as f32))
            .collect();
        let w = Tensor::from_vec(rows, (8, 3), &Device::Cpu)?;
        let permuted = permute_rotary(&w, 2, 4)?;
        // llama.cpp interleaves each head's halves: rows (0, 2, 1, 3) then (4, 6, 5, 7).
        let first_col: Vec<f32> = permuted.narrow(1, 0, 1)?.flatten_all()?.to_vec1()?;
        assert_eq!(first_col, [0., 20., 10., 30., 40., 60., 50., 70.]);
        let back = unpermute_rotary(&permuted, 2, 4)?;
        assert_eq!(back.to_vec2::<f32>()?, w.to_vec2::<f32>()?);
        assert!(
            unpermute_rotary(&w, 3, 4).is_err(),
            "rows must equal heads × head dim"
        );
        Ok(())
    }

    #[test]
    fn byte_alphabet_is_gpt2s() {
        let t = byte_to_char();
        assert_eq!(t[usize::from(b' ')], 'Ġ');
        assert_eq!(t[usize::from(b'\n')], 'Ċ');
        assert_eq!(t[usize::from(b'a')], 'a');
        let distinct: std::collections::HashSet<char> = t.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }
}
