//! Text ⇄ token ids: the one place where strings become ids, for training and for inference.
//!
//! [`TextCodec`] reads a Hugging Face directory's `tokenizer.json`, `tokenizer_config.json` and `config.json`.
//! Invariants:
//! - Text is always encoded **without** the tokenizer's own special tokens; BOS is prepended here when the model
//!   family uses one. So a tokenizer whose post-processor adds BOS (Mistral) and one that does not (the fetched
//!   Llama 3 and DeepSeek-Coder files) both give exactly one BOS.
//! - A prompt and its completion are encoded separately and concatenated, so `encode_prompt(p)` is always a
//!   prefix of `encode_pair(p, c).ids` and the loss mask is exact: 1 on the completion tokens and the final EOS,
//!   0 on BOS and the prompt.
//! - The pad id may equal the EOS id (SmolLM2, DeepSeek-Coder): padding masks must come from lengths, never from
//!   `id == pad_id`.
//!
//! BOS rule: `tokenizer_config.json`'s `add_bos_token` when present; otherwise no BOS for GPT-2-class tokenizers
//! (transformers' default for them), and BOS whenever a BOS token is known for every other class.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::Tokenizer;

use crate::chat::{ChatError, ChatTemplate};

/// Errors from loading a tokenizer directory or encoding and decoding text.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON file is malformed.
    #[error("{path} is not valid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error (with line and column).
        source: serde_json::Error,
    },
    /// `tokenizer.json` could not be loaded by the `tokenizers` crate.
    #[error("cannot load tokenizer {path}: {message}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What `tokenizers` reported.
        message: String,
    },
    /// A field has the wrong type or names a token the vocabulary lacks.
    #[error("{path}: field `{field}`: {reason}")]
    Field {
        /// The file holding the field.
        path: PathBuf,
        /// The field name.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No EOS token is defined anywhere, so completions cannot be terminated.
    #[error(
        "{dir}: no EOS token: neither tokenizer_config.json `eos_token` nor config.json `eos_token_id` is set"
    )]
    NoEos {
        /// The model directory.
        dir: PathBuf,
    },
    /// `add_bos_token` is true but no BOS token is defined.
    #[error(
        "{dir}: add_bos_token is true but neither tokenizer_config.json `bos_token` nor config.json `bos_token_id` is set"
    )]
    NoBos {
        /// The model directory.
        dir: PathBuf,
    },
    /// The tokenizer failed to encode a text.
    #[error("cannot encode text ({chars} chars): {message}")]
    Encode {
        /// Length of the text, in chars (the text itself may be long).
        chars: usize,
        /// What `tokenizers` reported.
        message: String,
    },
    /// The tokenizer failed to decode ids (e.g. an id outside the vocabulary).
    #[error("cannot decode {count} ids: {message}")]
    Decode {
        /// How many ids were given.
        count: usize,
        /// What `tokenizers` reported.
        message: String,
    },
    /// The chat template failed to compile or render.
    #[error("{path}: chat_template: {source}")]
    Chat {
        /// The tokenizer_config.json holding the template.
        path: PathBuf,
        /// The template error.
        source: ChatError,
    },
}

/// A prompt/completion pair encoded for training.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPair {
    /// `[BOS] + prompt ids + completion ids + [EOS]`.
    pub ids: Vec<u32>,
    /// Same length as `ids`: 1 where `ids[i]` is a completion token or the final EOS (a token the model must
    /// predict from the tokens before it), 0 on BOS and the prompt.
    pub loss_mask: Vec<u32>,
    /// Number of leading ids that are BOS + prompt (= `encode_prompt(prompt).len()`).
    pub prompt_len: usize,
}

/// Tokenizer plus the special-token conventions of one model directory.
#[derive(Debug)]
pub struct TextCodec {
    tokenizer: Tokenizer,
    bos_id: Option<u32>,
    add_bos: bool,
    tokenizer_adds_bos: bool,
    eos_id: u32,
    eos_ids: Vec<u32>,
    pad_id: u32,
    chat: Option<ChatTemplate>,
}

/// Tokenizer classes for which transformers does not add BOS by default (GPT-2-style BPE tokenizers).
const NO_BOS_BY_DEFAULT: &[&str] = &[
    "GPT2Tokenizer",
    "GPT2TokenizerFast",
    "CodeGenTokenizer",
    "CodeGenTokenizerFast",
];

impl TextCodec {
    /// Loads `dir/tokenizer.json` (required), `dir/tokenizer_config.json` and `dir/config.json` (both optional;
    /// the special-token fields of the first win over the second).
    pub fn from_dir(dir: &Path) -> Result<TextCodec, TextError> {
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| TextError::Tokenizer {
                path: tokenizer_path.clone(),
                message: e.to_string(),
            })?;
        let tok_cfg_path = dir.join("tokenizer_config.json");
        let tok_cfg = read_json_if_exists(&tok_cfg_path)?;
        let model_cfg_path = dir.join("config.json");
        let model_cfg = read_json_if_exists(&model_cfg_path)?;

        let token_field = |field: &str| -> Result<Option<u32>, TextError> {
            let Some(cfg) = &tok_cfg else { return Ok(None) };
            let Some(token) = special_token_string(cfg, field, &tok_cfg_path)? else {
                return Ok(None);
            };
            tokenizer
                .token_to_id(&token)
                .map(Some)
                .ok_or_else(|| TextError::Field {
                    path: tok_cfg_path.clone(),
                    field: field.to_owned(),
                    reason: format!(
                        "token {token:?} is not in the vocabulary of {}",
                        tokenizer_path.display()
                    ),
                })
        };
        let config_ids = |field: &str| -> Result<Vec<u32>, TextError> {
            match &model_cfg {
                Some(cfg) => id_list(cfg, field, &model_cfg_path),
                None => Ok(Vec::new()),
            }
        };

        let bos_id = match token_field("bos_token")? {
            Some(id) => Some(id),
            None => config_ids("bos_token_id")?.first().copied(),
        };
        let config_eos = config_ids("eos_token_id")?;
        let eos_id = match token_field("eos_token")? {
            Some(id) => id,
            None => *config_eos.first().ok_or_else(|| TextError::NoEos {
                dir: dir.to_owned(),
            })?,
        };
        let mut eos_ids = vec![eos_id];
        for id in config_eos {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
        let pad_id = match token_field("pad_token")? {
            Some(id) => id,
            None => config_ids("pad_token_id")?
                .first()
                .copied()
                .unwrap_or(eos_id),
        };

        let explicit_add_bos = match tok_cfg.as_ref().and_then(|c| c.get("add_bos_token")) {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => {
                return Err(TextError::Field {
                    path: tok_cfg_path,
                    field: "add_bos_token".into(),
                    reason: format!("expected true or false, found {other}"),
                });
            }
        };
        let class = tok_cfg
            .as_ref()
            .and_then(|c| c.get("tokenizer_class"))
            .and_then(Value::as_str);
        let add_bos = explicit_add_bos.unwrap_or_else(|| {
            bos_id.is_some() && !class.is_some_and(|c| NO_BOS_BY_DEFAULT.contains(&c))
        });
        if add_bos && bos_id.is_none() {
            return Err(TextError::NoBos {
                dir: dir.to_owned(),
            });
        }
        let tokenizer_adds_bos = match bos_id {
            Some(bos) => tokenizer
                .encode("a", true)
                .map(|enc| enc.get_ids().first() == Some(&bos))
                .map_err(|e| TextError::Encode {
                    chars: 1,
                    message: e.to_string(),
                })?,
            None => false,
        };

        let chat = match &tok_cfg {
            Some(cfg) => {
                let source = chat_template_source(cfg, &tok_cfg_path)?;
                match source {
                    Some(source) => {
                        let bos = special_token_string(cfg, "bos_token", &tok_cfg_path)?
                            .unwrap_or_default();
                        let eos = special_token_string(cfg, "eos_token", &tok_cfg_path)?
                            .unwrap_or_default();
                        let template =
                            ChatTemplate::new(&source, &bos, &eos).map_err(|source| {
                                TextError::Chat {
                                    path: tok_cfg_path.clone(),
                                    source,
                                }
                            })?;
                        Some(template)
                    }
                    None => None,
                }
            }
            None => None,
        };

        Ok(TextCodec {
            tokenizer,
            bos_id,
            add_bos,
            tokenizer_adds_bos,
            eos_id,
            eos_ids,
            pad_id,
            chat,
        })
    }

    /// Encodes `text` as is: no BOS, no EOS, no post-processor specials. Added tokens written literally in the
    /// text (e.g. `<|im_start|>`) are recognised, as transformers does by default.
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>, TextError> {
        self.tokenizer
            .encode(text, false)
            .map(|enc| enc.get_ids().to_vec())
            .map_err(|e| TextError::Encode {
                chars: text.chars().count(),
                message: e.to_string(),
            })
    }

    /// `[BOS] + prompt` (BOS only where the family uses one): the ids generation starts from.
    pub fn encode_prompt(&self, prompt: &str) -> Result<Vec<u32>, TextError> {
        let mut ids = Vec::new();
        if self.add_bos
            && let Some(bos) = self.bos_id
        {
            ids.push(bos);
        }
        ids.extend(self.encode_raw(prompt)?);
        Ok(ids)
    }

    /// `encode_prompt(prompt) + completion + [EOS]` with the loss mask over the completion and EOS.
    pub fn encode_pair(&self, prompt: &str, completion: &str) -> Result<EncodedPair, TextError> {
        let mut ids = self.encode_prompt(prompt)?;
        let prompt_len = ids.len();
        ids.extend(self.encode_raw(completion)?);
        ids.push(self.eos_id);
        let mut loss_mask = vec![0; prompt_len];
        loss_mask.resize(ids.len(), 1);
        Ok(EncodedPair {
            ids,
            loss_mask,
            prompt_len,
        })
    }

    /// Decodes ids to text, dropping special tokens (BOS, EOS, pad…).
    pub fn decode(&self, ids: &[u32]) -> Result<String, TextError> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| TextError::Decode {
                count: ids.len(),
                message: e.to_string(),
            })
    }

    /// The EOS id appended after every completion.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Every id that ends generation: [`eos_id`](Self::eos_id) first, then config.json's `eos_token_id` list.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// The id used to fill padded positions (may equal the EOS id).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The BOS id, if the tokenizer defines one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Whether [`encode_prompt`](Self::encode_prompt) prepends BOS.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether the tokenizer's own post-processor adds BOS (ignored here: text is encoded without specials).
    pub fn tokenizer_adds_bos(&self) -> bool {
        self.tokenizer_adds_bos
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The chat template from `tokenizer_config.json`, if it has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat.as_ref()
    }

    /// Renders one user message with the chat template and the generation prompt; `None` without a template.
    pub fn render_chat(&self, user_message: &str) -> Result<Option<String>, ChatError> {
        self.chat
            .as_ref()
            .map(|t| t.render_user(user_message))
            .transpose()
    }

    /// Ids for a rendered chat prompt: the rendered text encoded as is (templates write `bos_token` themselves,
    /// and the literal special tokens in the text become their ids); `None` without a template.
    pub fn encode_chat_prompt(&self, user_message: &str) -> Result<Option<Vec<u32>>, TextError> {
        let Some(template) = &self.chat else {
            return Ok(None);
        };
        let rendered = template
            .render_user(user_message)
            .map_err(|source| TextError::Chat {
                path: PathBuf::from("tokenizer_config.json"),
                source,
            })?;
        self.encode_raw(&rendered).map(Some)
    }
}

fn read_json_if_exists(path: &Path) -> Result<Option<Value>, TextError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(TextError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| TextError::Json {
            path: path.to_owned(),
            source,
        })
}

/// A special token in tokenizer_config.json: a string, `null`, or an AddedToken object `{"content": ...}`.
fn special_token_string(
    cfg: &Value,
    field: &str,
    path: &Path,
) -> Result<Option<String>, TextError> {
    match cfg.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(obj)) => match obj.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(TextError::Field {
                path: path.to_owned(),
                field: field.to_owned(),
                reason: "an object without a string `content`".into(),
            }),
        },
        Some(other) => Err(TextError::Field {
            path: path.to_owned(),
            field: field.to_owned(),
            reason: format!("expected a string or {{\"content\": ...}}, found {other}"),
        }),
    }
}

/// An id field in config.json: absent, `null`, one integer, or a list of integers.
fn id_list(cfg: &Value, field: &str, path: &Path) -> Result<Vec<u32>, TextError> {
    let bad = |v: &Value| TextError::Field {
        path: path.to_owned(),
        field: field.to_owned(),
        reason: format!("expected a token id or a list of ids, found {v}"),
    };
    let one = |v: &Value| {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| bad(v))
    };
    match cfg.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(one).collect(),
        Some(v) => Ok(vec![one(v)?]),
    }
}

/// `chat_template` is a string, or (newer transformers) a list of `{"name", "template"}` of which we use
/// `default`.
fn chat_template_source(cfg: &Value, path: &Path) -> Result<Option<String>, TextError> {
    let field_error = |reason: String| TextError::Field {
        path: path.to_owned(),
        field: "chat_template".into(),
        reason,
    };
    match cfg.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(items)) => {
            for item in items {
                if item.get("name").and_then(Value::as_str) == Some("default") {
                    return item
                        .get("template")
                        .and_then(Value::as_str)
                        .map(|s| Some(s.to_owned()))
                        .ok_or_else(|| {
                            field_error("the `default` entry has no string `template`".into())
                        });
                }
            }
            Err(field_error(
                "a list of templates without one named `default`".into(),
            ))
        }
        Some(other) => Err(field_error(format!(
            "expected a string or a list, found {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn special_tokens_accept_strings_objects_and_null() {
        let cfg = json!({"a": "<s>", "b": {"__type": "AddedToken", "content": "</s>"}, "c": null, "d": 3});
        let p = Path::new("tokenizer_config.json");
        assert_eq!(
            special_token_string(&cfg, "a", p).expect("string"),
            Some("<s>".into())
        );
        assert_eq!(
            special_token_string(&cfg, "b", p).expect("object"),
            Some("</s>".into())
        );
        assert_eq!(special_token_string(&cfg, "c", p).expect("null"), None);
        assert_eq!(
            special_token_string(&cfg, "missing", p).expect("absent"),
            None
        );
        let err = special_token_string(&cfg, "d", p).expect_err("a number is not a token");
        assert!(
            err.to_string().contains("tokenizer_config.json: field `d`"),
            "{err}"
        );
    }

    #[test]
    fn id_fields_accept_one_or_many() {
        let cfg = json!({"one": 2, "many": [1, 4], "none": null, "bad": "x", "neg": [-1]});
        let p = Path::new("config.json");
        assert_eq!(id_list(&cfg, "one", p).expect("one"), vec![2]);
        assert_eq!(id_list(&cfg, "many", p).expect("many"), vec![1, 4]);
        assert!(id_list(&cfg, "none", p).expect("null").is_empty());
        assert!(id_list(&cfg, "bad", p).is_err());
        assert!(id_list(&cfg, "neg", p).is_err());
    }

    #[test]
    fn chat_template_lists_use_the_default_entry() {
        let p = Path::new("tokenizer_config.json");
        let cfg = json!({"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]});
        assert_eq!(
            chat_template_source(&cfg, p).expect("list"),
            Some("D".into())
        );
        let cfg = json!({"chat_template": [{"name": "tool_use", "template": "T"}]});
        assert!(chat_template_source(&cfg, p).is_err());
    }
}
