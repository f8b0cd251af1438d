//! Saving and loading checkpoints: full HF directories and PEFT adapters.
//!
//! - Full: `config.json` (the source config with our fields, plus `torch_dtype`) and `model.safetensors` with HF
//!   names (`lm_head.weight` omitted when tied), metadata `{"format": "pt"}` as transformers expects.
//! - Adapter: PEFT's `adapter_config.json` and `adapter_model.safetensors` (f32) with keys
//!   `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight` (`(r, in)`) and `…lora_B.weight`
//!   (`(out, r)`).
//!
//! Every file is written to a temporary name in the target directory and renamed over, so readers never see a
//! partial file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::llama::CausalLm;
use crate::lora::{Adapter, LINEAR_MODULES, LoraConfig};
use crate::ops::Param;

/// `adapter_config.json`.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// `adapter_model.safetensors`.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `bytes` to `path` atomically (temporary file in the same directory + rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// Writes tensors as a safetensors file with `{"format": "pt"}` metadata, atomically.
pub fn write_safetensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let mut cpu: Vec<(String, Tensor)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        cpu.push((name.clone(), t.to_device(&Device::Cpu)?.contiguous()?));
    }
    cpu.sort_by(|a, b| a.0.cmp(&b.0));
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let tmp = temp_path(path);
    safetensors::serialize_to_file(
        cpu.iter().map(|(n, t)| (n.as_str(), t)),
        Some(metadata),
        &tmp,
    )
    .map_err(|e| Error::Weights {
        path: tmp.clone(),
        name: "<all>".into(),
        reason: format!("cannot write: {e}"),
    })?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

fn torch_dtype(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        DType::F64 => "float64",
        _ => "float32",
    }
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

impl CausalLm {
    /// Saves the model as an HF directory transformers can load. With adapters attached, the saved weights are
    /// the merged ones (`W + α/r·B·A`); the model itself is unchanged.
    pub fn save_full(&self, dir: &Path) -> Result<()> {
        create_dir(dir)?;
        let mut tensors = self.base_tensors();
        for (i, layer) in self.layers.iter().enumerate() {
            for (group, module, lin) in layer.linears() {
                if let Some(ad) = &lin.adapter {
                    let name = format!("model.layers.{i}.{group}.{module}.weight");
                    let merged = (lin.weight.tensor() + ad.delta(self.dtype())?)?;
                    tensors.insert(name, merged);
                }
            }
        }
        write_safetensors(&dir.join("model.safetensors"), &tensors)?;
        let mut config = self.config().to_json();
        config.insert("torch_dtype".into(), torch_dtype(self.dtype()).into());
        write_json(&dir.join("config.json"), &Value::Object(config))
    }

    /// Saves the attached adapters in PEFT's format. `base_model_name_or_path` is recorded in the config.
    pub fn save_adapter(&self, dir: &Path, base_model_name_or_path: &str) -> Result<()> {
        let lora = self
            .lora_config()
            .ok_or_else(|| Error::State("the model has no LoRA adapters to save".into()))?;
        create_dir(dir)?;
        let mut tensors = HashMap::new();
        for (prefix, ad) in self.named_adapters() {
            tensors.insert(format!("{prefix}.lora_A.weight"), ad.a.as_tensor().clone());
            tensors.insert(format!("{prefix}.lora_B.weight"), ad.b.as_tensor().clone());
        }
        write_safetensors(&dir.join(ADAPTER_WEIGHTS), &tensors)?;
        write_json(
            &dir.join(ADAPTER_CONFIG),
            &peft_config_json(lora, base_model_name_or_path),
        )
    }

    /// Loads a PEFT LoRA adapter directory onto this model, replacing any attached adapters. The adapters become
    /// trainable f32 variables (so training can resume from them).
    pub fn load_adapter(&mut self, dir: &Path) -> Result<()> {
        let config_path = dir.join(ADAPTER_CONFIG);
        let lora = read_peft_config(&config_path)?;
        let weights_path = dir.join(ADAPTER_WEIGHTS);
        let tensors =
            candle_core::safetensors::load(&weights_path, self.device()).map_err(|e| {
                Error::Weights {
                    path: weights_path.clone(),
                    name: "<all>".into(),
                    reason: format!("cannot load: {e}"),
                }
            })?;
        let mut used = 0usize;
        let device = self.device().clone();
        let adapter_dtype = crate::lora::adapter_dtype(self.dtype());
        for (i, layer) in self.layers_mut().iter_mut().enumerate() {
            for (group, module) in LINEAR_MODULES.iter().map(|m| (module_group(m), *m)) {
                let lin = layer
                    .linear_mut(module)
                    .ok_or_else(|| Error::UnknownLoraTarget(module.to_string()))?;
                if !lora.targets(module) {
                    lin.adapter = None;
                    continue;
                }
                let (out_dim, in_dim) = lin.dims()?;
                let prefix = format!("base_model.model.model.layers.{i}.{group}.{module}");
                let get = |suffix: &str, shape: [usize; 2]| -> Result<Var> {
                    let name = format!("{prefix}.{suffix}");
                    let t = tensors.get(&name).ok_or_else(|| Error::Weights {
                        path: weights_path.clone(),
                        name: name.clone(),
                        reason: "missing".into(),
                    })?;
                    if t.dims() != shape {
                        return Err(Error::Weights {
                            path: weights_path.clone(),
                            name,
                            reason: format!("shape {:?}, expected {shape:?}", t.dims()),
                        });
                    }
                    Ok(Var::from_tensor(
                        &t.to_dtype(adapter_dtype)?.to_device(&device)?,
                    )?)
                };
                let a = get("lora_A.weight", [lora.r, in_dim])?;
                let b = get("lora_B.weight", [out_dim, lora.r])?;
                used += 2;
                lin.adapter = Some(Adapter {
                    a,
                    b,
                    scale: lora.scale(),
                    dropout: lora.dropout,
                });
            }
        }
        if used != tensors.len() {
            let mut extra: Vec<&String> =
                tensors.keys().filter(|k| !k.contains(".layers.")).collect();
            extra.sort();
            return Err(Error::Weights {
                path: weights_path,
                name: extra
                    .first()
                    .map_or_else(|| "<some>".to_string(), |s| s.to_string()),
                reason: format!(
                    "{} tensors in the file, {used} match the model's layers and targets",
                    tensors.len()
                ),
            });
        }
        self.set_lora_config(Some(lora));
        Ok(())
    }

    /// Folds every adapter into its base weight (`W + α/r·B·A`) and removes the adapters. Frozen weights stay
    /// frozen; trainable weights keep being variables.
    pub fn merge_adapters(&mut self) -> Result<()> {
        let dtype = self.dtype();
        for layer in self.layers_mut().iter_mut() {
            for module in LINEAR_MODULES {
                let Some(lin) = layer.linear_mut(module) else {
                    continue;
                };
                let Some(ad) = lin.adapter.take() else {
                    continue;
                };
                let merged = (lin.weight.tensor() + ad.delta(dtype)?)?;
                lin.weight = match &lin.weight {
                    Param::Frozen(_) => Param::Frozen(merged),
                    Param::Trainable(_) => Param::Trainable(Var::from_tensor(&merged)?),
                };
            }
        }
        self.set_lora_config(None);
        Ok(())
    }
}

fn module_group(module: &str) -> &'static str {
    if module.ends_with("_proj") && ["gate_proj", "up_proj", "down_proj"].contains(&module) {
        "mlp"
    } else {
        "self_attn"
    }
}

fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

/// PEFT's `adapter_config.json` for a LoRA adapter.
pub fn peft_config_json(lora: &LoraConfig, base_model_name_or_path: &str) -> Value {
    json!({
        "alpha_pattern": {},
        "auto_mapping": null,
        "base_model_name_or_path": base_model_name_or_path,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_pattern": null,
        "layers_to_transform": null,
        "lora_alpha": number(lora.alpha),
        "lora_dropout": lora.dropout,
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": lora.r,
        "rank_pattern": {},
        "revision": null,
        "target_modules": lora.target_modules,
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": false
    })
}

/// Reads a PEFT LoRA `adapter_config.json`, rejecting variants this model does not implement.
pub fn read_peft_config(path: &Path) -> Result<LoraConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let err = |field: &str, reason: String| Error::Config {
        path: path.to_path_buf(),
        field: field.into(),
        reason,
    };
    match v.get("peft_type").and_then(Value::as_str) {
        Some("LORA") => {}
        other => {
            return Err(err(
                "peft_type",
                format!("expected \"LORA\", found {other:?}"),
            ));
        }
    }
    for flag in ["use_dora", "use_rslora", "fan_in_fan_out"] {
        if v.get(flag).and_then(Value::as_bool) == Some(true) {
            return Err(err(flag, "not supported".into()));
        }
    }
    if let Some(bias) = v.get("bias").and_then(Value::as_str)
        && bias != "none"
    {
        return Err(err(
            "bias",
            format!("only \"none\" is supported, found \"{bias}\""),
        ));
    }
    for field in ["rank_pattern", "alpha_pattern"] {
        if v.get(field)
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty())
        {
            return Err(err(
                field,
                "per-module ranks/alphas are not supported".into(),
            ));
        }
    }
    if v.get("layers_to_transform").is_some_and(|x| !x.is_null()) {
        return Err(err(
            "layers_to_transform",
            "adapters on a subset of layers are not supported".into(),
        ));
    }
    let r = v
        .get("r")
        .and_then(Value::as_u64)
        .and_then(|r| usize::try_from(r).ok())
        .ok_or_else(|| err("r", "missing or not an integer".into()))?;
    let alpha = v
        .get("lora_alpha")
        .and_then(Value::as_f64)
        .ok_or_else(|| err("lora_alpha", "missing".into()))?;
    let dropout = v.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0);
    let target_modules: Vec<String> = match v.get("target_modules") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|x| {
                x.as_str()
                    .map(String::from)
                    .ok_or_else(|| err("target_modules", format!("{x} is not a string")))
            })
            .collect::<Result<_>>()?,
        Some(Value::String(s)) => {
            // A regex in PEFT; accept the plain alternatives of module names, which is what tools emit.
            LINEAR_MODULES
                .iter()
                .filter(|m| s.contains(*m))
                .map(|m| m.to_string())
                .collect()
        }
        _ => return Err(err("target_modules", "missing".into())),
    };
    let lora = LoraConfig {
        r,
        alpha,
        dropout,
        target_modules,
    };
    lora.validate()
        .map_err(|e| err("target_modules", e.to_string()))?;
    Ok(lora)
}
