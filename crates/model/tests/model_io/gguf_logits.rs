//! The SmolLM2 GGUF, converted by us and run by our decoder, gives transformers' logits: the top-20 ids and
//! values at the last three positions of a YAML prompt (goldens from transformers' own GGUF conversion,
//! `fixtures/assets/smollm2-gguf.json`). The weights already match exactly (`gguf_convert`), so this checks
//! the config written from the metadata (rope θ, eps, heads, tied embeddings) end to end.

use candle_core::{DType, Device, Tensor};
use model::source::{ModelSource, ResolveOptions};
use model::{CausalLm, Trainable};

use super::support::{asset, fixture, ids, read_json};

#[test]
fn smollm2_gguf_logits_match_transformers() {
    let golden = read_json(&fixture("assets/smollm2-gguf.json"));
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = ResolveOptions {
        converted_dir: Some(dir.path().to_owned()),
        ..ResolveOptions::default()
    };
    let converted = ModelSource::Gguf(asset("smollm2-135m-instruct.gguf"))
        .resolve(&opts)
        .expect("converts");
    let model =
        CausalLm::load(&converted, DType::F32, &Device::Cpu, &Trainable::Frozen, 0).expect("loads");

    let prompt = ids(&golden["prompt_ids"]);
    let n = prompt.len();
    let input = Tensor::from_vec(prompt, (1, n), &Device::Cpu).expect("ids");
    let mask = Tensor::ones((1, n), DType::U32, &Device::Cpu).expect("mask");
    let logits: Vec<Vec<f32>> = model
        .forward(&input, &mask, false)
        .expect("forward")
        .squeeze(0)
        .expect("row")
        .to_vec2()
        .expect("f32");

    let mut max_diff = 0f32;
    for top in golden["top20"].as_array().expect("top20") {
        let position = top["position"].as_u64().expect("position") as usize;
        let want_ids = ids(&top["ids"]);
        let want_values: Vec<f32> = top["values"]
            .as_array()
            .expect("values")
            .iter()
            .map(|v| v.as_f64().expect("f") as f32)
            .collect();
        let row = &logits[position];
        for (id, want) in want_ids.iter().zip(&want_values) {
            max_diff = max_diff.max((row[*id as usize] - want).abs());
        }
        // Same ranking: our top-5 ids are transformers' top-5 (the tail may swap within float noise).
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        let ours: Vec<u32> = order[..5].iter().map(|&i| i as u32).collect();
        assert_eq!(ours, want_ids[..5], "position {position}: top-5 ids");
    }
    eprintln!(
        "smollm2 GGUF: max |logit difference| vs transformers over 3×20 top logits = {max_diff:e}"
    );
    assert!(
        max_diff < 1e-3,
        "logits differ from transformers by up to {max_diff}"
    );
}
