//! GGUF → HF conversion.
//!
//! - Synthetic: a GGUF written here from a tiny fixture exactly as llama.cpp's converter lays it out (llama.cpp
//!   names, permuted q/k rows, vocabulary in metadata) converts back to the fixture's weights bit for bit, with
//!   the same config and a tokenizer that encodes the same ids.
//! - Real: the fetched SmolLM2-135M-Instruct Q4_1 GGUF converts to weights whose checksums match transformers' own
//!   GGUF conversion (goldens in `fixtures/assets/smollm2-gguf.json`), and its metadata tokenizer encodes the same
//!   ids as transformers' GGUF tokenizer.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use model::gguf::{self, GgufError};
use model::source::{ModelSource, ResolveOptions};
use model::text::TextCodec;

use super::support::{asset, fixture, ids, read_json};

fn load_safetensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot load {}: {e}", path.display()))
}

fn gguf_name(hf: &str) -> String {
    let plain = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = plain.iter().find(|(h, _)| *h == hf) {
        return (*g).to_owned();
    }
    let rest = hf.strip_prefix("model.layers.").expect("a layer tensor");
    let (layer, suffix) = rest.split_once('.').expect("layer.suffix");
    let g = match suffix {
        "input_layernorm.weight" => "attn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        other => panic!("unexpected tensor {other}"),
    };
    format!("blk.{layer}.{g}")
}

/// Writes `fixture_dir` as a GGUF the way llama.cpp's converter does (f32 tensors, so the round trip is exact).
fn write_gguf(fixture_dir: &Path, out: &Path, architecture: &str) {
    let config = read_json(&fixture_dir.join("config.json"));
    let heads = config["num_attention_heads"].as_u64().expect("heads") as usize;
    let kv_heads = config["num_key_value_heads"].as_u64().expect("kv heads") as usize;
    let hidden = config["hidden_size"].as_u64().expect("hidden") as usize;
    let head_dim = hidden / heads;
    let weights = load_safetensors(&fixture_dir.join("model.safetensors"));
    let mut qtensors = Vec::new();
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort();
    for hf in names {
        let w = &weights[hf];
        let w = if hf.ends_with("q_proj.weight") {
            gguf::permute_rotary(w, heads, head_dim).expect("permute q")
        } else if hf.ends_with("k_proj.weight") {
            gguf::permute_rotary(w, kv_heads, head_dim).expect("permute k")
        } else {
            w.clone()
        };
        qtensors.push((
            gguf_name(hf),
            QTensor::quantize(&w, GgmlDType::F32).expect("f32 qtensor"),
        ));
    }

    let tokenizer = read_json(&fixture_dir.join("tokenizer.json"));
    let vocab = tokenizer["model"]["vocab"].as_object().expect("vocab");
    let mut tokens = vec![String::new(); vocab.len()];
    for (token, id) in vocab {
        tokens[id.as_u64().expect("id") as usize] = token.clone();
    }
    let merges: Vec<Value> = tokenizer["model"]["merges"]
        .as_array()
        .expect("merges")
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => Value::String(s.clone()),
            pair => Value::String(format!(
                "{} {}",
                pair[0].as_str().expect("left"),
                pair[1].as_str().expect("right")
            )),
        })
        .collect();
    let token_types: Vec<Value> = (0..tokens.len())
        .map(|i| Value::I32(if i < 5 { 3 } else { 1 }))
        .collect();
    let u32_of = |key: &str| Value::U32(config[key].as_u64().expect(key) as u32);
    let mut metadata: Vec<(String, Value)> = vec![
        (
            "general.architecture".into(),
            Value::String(architecture.into()),
        ),
        ("llama.block_count".into(), u32_of("num_hidden_layers")),
        (
            "llama.context_length".into(),
            u32_of("max_position_embeddings"),
        ),
        ("llama.embedding_length".into(), u32_of("hidden_size")),
        (
            "llama.feed_forward_length".into(),
            u32_of("intermediate_size"),
        ),
        (
            "llama.attention.head_count".into(),
            u32_of("num_attention_heads"),
        ),
        (
            "llama.attention.head_count_kv".into(),
            u32_of("num_key_value_heads"),
        ),
        (
            "llama.rope.freq_base".into(),
            Value::F32(config["rope_theta"].as_f64().expect("theta") as f32),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(1e-5),
        ),
        (
            "llama.rope.dimension_count".into(),
            Value::U32(head_dim as u32),
        ),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(token_types),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(0)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.padding_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)),
    ];
    metadata.sort_by(|a, b| a.0.cmp(&b.0));
    let meta_refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> =
        qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(out).expect("create gguf");
    candle_core::quantized::gguf_file::write(&mut file, &meta_refs, &tensor_refs)
        .expect("write gguf");
}

#[test]
fn synthetic_gguf_round_trips_to_the_fixture() {
    for name in ["tiny-llama", "tiny-smollm"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let gguf_path = dir.path().join(format!("{name}.gguf"));
        write_gguf(&fixture(name), &gguf_path, "llama");
        let cache = dir.path().join("converted");
        let out = gguf::convert_cached(&gguf_path, &cache, None).expect("converts");
        assert!(out.starts_with(&cache), "{}", out.display());

        let original = load_safetensors(&fixture(name).join("model.safetensors"));
        let converted = load_safetensors(&out.join("model.safetensors"));
        let mut keys: Vec<&String> = original.keys().collect();
        keys.sort();
        let mut converted_keys: Vec<&String> = converted.keys().collect();
        converted_keys.sort();
        assert_eq!(keys, converted_keys, "{name}: same tensor names");
        for key in keys {
            let a = original[key]
                .flatten_all()
                .expect("flat")
                .to_vec1::<f32>()
                .expect("f32");
            let b = converted[key]
                .flatten_all()
                .expect("flat")
                .to_vec1::<f32>()
                .expect("f32");
            assert_eq!(
                original[key].dims(),
                converted[key].dims(),
                "{name}: {key} shape"
            );
            assert!(a == b, "{name}: {key} differs after the GGUF round trip");
        }

        let want = read_json(&fixture(name).join("config.json"));
        let got = read_json(&out.join("config.json"));
        for field in [
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "tie_word_embeddings",
            "rope_theta",
            "max_position_embeddings",
        ] {
            assert_eq!(got[field], want[field], "{name}: config field {field}");
        }

        let ours = TextCodec::from_dir(&fixture(name)).expect("fixture codec");
        let converted_codec = TextCodec::from_dir(&out).expect("converted codec");
        let reference = read_json(&fixture(name).join("reference.json"));
        for probe in reference["tokenizer_probes"].as_array().expect("probes") {
            let text = probe["text"].as_str().expect("text");
            assert_eq!(
                converted_codec.encode_raw(text).expect("encodes"),
                ids(&probe["ids_no_special"]),
                "{text:?}"
            );
            assert_eq!(
                converted_codec
                    .decode(&ours.encode_raw(text).expect("encodes"))
                    .expect("decodes"),
                ours.decode(&ours.encode_raw(text).expect("encodes"))
                    .expect("decodes"),
            );
        }
        assert_eq!(converted_codec.eos_id(), 1);
        assert_eq!(converted_codec.pad_id(), 2);
        assert!(
            converted_codec.adds_bos(),
            "tokenizer.ggml.add_bos_token = true"
        );

        // A second resolve reuses the conversion (same directory, nothing rewritten).
        let stamp = std::fs::metadata(out.join("model.safetensors"))
            .expect("stat")
            .modified()
            .expect("mtime");
        let again = ModelSource::Gguf(gguf_path.clone())
            .resolve(&ResolveOptions {
                converted_dir: Some(cache.clone()),
                ..ResolveOptions::default()
            })
            .expect("resolves");
        assert_eq!(again, out);
        let stamp2 = std::fs::metadata(out.join("model.safetensors"))
            .expect("stat")
            .modified()
            .expect("mtime");
        assert_eq!(stamp, stamp2, "cached conversion was rewritten");
        let leftovers: Vec<_> = std::fs::read_dir(&cache)
            .expect("list cache")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "staging directories left behind");
    }
}

#[test]
fn unsupported_files_fail_with_the_reason_and_leave_no_partial_output() {
    let dir = tempfile::tempdir().expect("temp dir");
    let gguf_path = dir.path().join("other.gguf");
    write_gguf(&fixture("tiny-llama"), &gguf_path, "gemma3");
    let cache = dir.path().join("converted");
    let err = gguf::convert_cached(&gguf_path, &cache, None).expect_err("not llama");
    assert!(matches!(err, GgufError::Unsupported { .. }), "{err}");
    assert!(
        err.to_string().contains("gemma3") && err.to_string().contains("other.gguf"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(&cache).expect("cache exists").count(),
        0,
        "nothing left in the cache"
    );

    std::fs::write(dir.path().join("junk.gguf"), b"not a gguf at all").expect("write");
    let err = gguf::convert_cached(&dir.path().join("junk.gguf"), &cache, None).expect_err("junk");
    assert!(matches!(err, GgufError::Parse { .. }), "{err}");

    let err = ModelSource::Gguf(dir.path().join("absent.gguf"))
        .resolve(&ResolveOptions::default())
        .expect_err("absent");
    assert!(err.to_string().contains("absent.gguf"), "{err}");
}

#[test]
fn smollm2_gguf_matches_transformers_conversion() {
    let gguf_path = asset("smollm2-135m-instruct.gguf");
    let golden = read_json(&fixture("assets/smollm2-gguf.json"));
    let dir = tempfile::tempdir().expect("temp dir");
    let out = gguf::convert_cached(&gguf_path, dir.path(), None).expect("converts");

    let config = read_json(&out.join("config.json"));
    for (field, want) in golden["config"].as_object().expect("config") {
        let got = &config[field.as_str()];
        match want.as_f64() {
            Some(w) if !want.is_boolean() => {
                let g = got
                    .as_f64()
                    .unwrap_or_else(|| panic!("config {field}: {got}"));
                assert!(
                    (g - w).abs() <= 1e-12 * w.abs().max(1.0),
                    "config {field}: {g} vs {w}"
                );
            }
            _ => assert_eq!(got, want, "config {field}"),
        }
    }

    let weights = load_safetensors(&out.join("model.safetensors"));
    assert!(
        !weights.contains_key("lm_head.weight"),
        "tied embeddings: no lm_head"
    );
    let mut max_rel = 0f64;
    for (name, sums) in golden["weights"].as_object().expect("weights") {
        let w = weights
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .to_dtype(candle_core::DType::F64)
            .expect("f64");
        let shape: Vec<usize> = sums["shape"]
            .as_array()
            .expect("shape")
            .iter()
            .map(|d| d.as_u64().expect("dim") as usize)
            .collect();
        assert_eq!(w.dims(), shape.as_slice(), "{name}: shape");
        let rows = w.dim(0).expect("rows");
        let row_index = Tensor::arange(1f64, rows as f64 + 1.0, &Device::Cpu).expect("arange");
        let weighted = if w.rank() == 2 {
            w.broadcast_mul(&row_index.unsqueeze(1).expect("col"))
                .expect("mul")
        } else {
            w.mul(&row_index).expect("mul")
        };
        let scalar = |t: Tensor| {
            t.sum_all()
                .expect("sum")
                .to_scalar::<f64>()
                .expect("scalar")
        };
        for (key, got) in [
            ("sum", scalar(w.clone())),
            ("abs_sum", scalar(w.abs().expect("abs"))),
            ("row_weighted_sum", scalar(weighted)),
        ] {
            let want = sums[key].as_f64().expect("number");
            let rel = (got - want).abs() / want.abs().max(1.0);
            max_rel = max_rel.max(rel);
            assert!(rel < 1e-9, "{name}: {key} {got} vs transformers {want}");
        }
        for (row, values) in sums["samples"].as_object().expect("samples") {
            let r: usize = row.parse().expect("row");
            // The goldens hold the shortest decimals that round-trip to f32: compare as f32, exactly.
            let got: Vec<f32> = if w.rank() == 2 {
                let row: Vec<f64> = w
                    .get(r)
                    .expect("row")
                    .narrow(0, 0, 4)
                    .expect("4")
                    .to_vec1()
                    .expect("vec");
                row.into_iter().map(|x| x as f32).collect()
            } else {
                vec![w.get(r).expect("elem").to_scalar::<f64>().expect("scalar") as f32]
            };
            let want: Vec<f32> = values
                .as_array()
                .expect("values")
                .iter()
                .map(|v| v.as_f64().expect("f") as f32)
                .collect();
            assert_eq!(got, want, "{name}: row {r} (q/k rows must be un-permuted)");
        }
    }
    eprintln!("smollm2 GGUF: max relative checksum difference vs transformers = {max_rel:e}");

    let codec = TextCodec::from_dir(&out).expect("converted tokenizer loads");
    for case in golden["tokenizer"].as_array().expect("tokenizer cases") {
        let text = case["text"].as_str().expect("text");
        assert_eq!(
            codec.encode_raw(text).expect("encodes"),
            ids(&case["ids"]),
            "{text:?}"
        );
    }
    let prompt = golden["prompt"].as_str().expect("prompt");
    assert_eq!(
        codec.encode_raw(prompt).expect("encodes"),
        ids(&golden["prompt_ids"])
    );
    let special = &golden["special_ids"];
    assert_eq!(
        Some(codec.bos_id().expect("bos") as u64),
        special["bos"].as_u64()
    );
    assert_eq!(Some(codec.eos_id() as u64), special["eos"].as_u64());
    assert_eq!(Some(codec.pad_id() as u64), special["pad"].as_u64());
    assert!(
        !codec.adds_bos(),
        "SmolLM2's GGUF says add_bos_token = false"
    );
    assert!(
        codec.chat_template().is_some(),
        "the GGUF's chat template is carried over"
    );
}
