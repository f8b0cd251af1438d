//! Exports a LoRA adapter (`save_adapter`) and a merged full checkpoint (`save_full`) of `tiny-llama` with
//! non-zero adapters, plus our logits, for `scripts/check_peft_adapter.py` to load into PEFT / transformers.
//! Set `KUBETUNE_PEFT_EXPORT=<dir>` to keep the files (the script does); otherwise they go to a temp dir and the
//! test checks what needs no Python: the adapter and the full checkpoint reload to the same logits.

use candle_core::{DType, Device, Tensor};
use model::{CausalLm, LoraConfig, Trainable};

use super::support::{fixture, ids, read_json};

const SEED: u64 = 20261204;

/// Deterministic values in [-0.2, 0.2) (SplitMix64), so the export does not depend on candle's unseeded RNG.
fn pseudo_random(n: usize, seed: &mut u64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = *seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.4
        })
        .collect()
}

fn batch() -> (Tensor, Tensor, Vec<Vec<u32>>) {
    let reference = read_json(&fixture("tiny-llama").join("reference.json"));
    let rows: Vec<Vec<u32>> = reference["input_ids"]
        .as_array()
        .expect("rows")
        .iter()
        .map(ids)
        .collect();
    let mask: Vec<Vec<u32>> = reference["attention_mask"]
        .as_array()
        .expect("rows")
        .iter()
        .map(ids)
        .collect();
    let t = rows[0].len();
    let flat = |v: &[Vec<u32>]| v.iter().flatten().copied().collect::<Vec<u32>>();
    let input = Tensor::from_vec(flat(&rows), (rows.len(), t), &Device::Cpu).expect("ids");
    let attention = Tensor::from_vec(flat(&mask), (mask.len(), t), &Device::Cpu).expect("mask");
    (input, attention, mask)
}

/// Logits at real (mask = 1) positions only: padded positions are not defined.
fn real_positions(logits: &Tensor, mask: &[Vec<u32>]) -> Vec<Vec<Vec<f32>>> {
    let all: Vec<Vec<Vec<f32>>> = logits.to_vec3().expect("logits");
    all.into_iter()
        .zip(mask)
        .map(|(row, m)| {
            row.into_iter()
                .zip(m)
                .filter(|(_, keep)| **keep == 1)
                .map(|(v, _)| v)
                .collect()
        })
        .collect()
}

fn max_abs_diff(a: &[Vec<Vec<f32>>], b: &[Vec<Vec<f32>>]) -> f32 {
    a.iter()
        .flatten()
        .flatten()
        .zip(b.iter().flatten().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn lora_adapter_and_full_checkpoint_export_for_peft() {
    let keep = std::env::var_os("KUBETUNE_PEFT_EXPORT").map(std::path::PathBuf::from);
    let temp = tempfile::tempdir().expect("temp dir");
    let out = keep.clone().unwrap_or_else(|| temp.path().to_owned());
    std::fs::create_dir_all(&out).expect("export dir");
    let base = fixture("tiny-llama");

    let lora = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: model::lora::LINEAR_MODULES.map(String::from).to_vec(),
    };
    let model = CausalLm::load(
        &base,
        DType::F32,
        &Device::Cpu,
        &Trainable::Lora(lora),
        SEED,
    )
    .expect("loads");
    // Fresh adapters are a no-op (B = 0), which would make the comparison vacuous: fill A and B with values.
    let mut seed = SEED;
    let vars = model.trainable_vars();
    assert_eq!(vars.len(), 2 * 7 * 2, "A and B on 7 modules × 2 layers");
    for (name, var) in &vars {
        let values = pseudo_random(var.elem_count(), &mut seed);
        let t = Tensor::from_vec(values, var.shape(), &Device::Cpu).expect("tensor");
        var.set(&t).unwrap_or_else(|e| panic!("{name}: {e}"));
    }

    let (input, attention, mask) = batch();
    let logits = real_positions(
        &model.forward(&input, &attention, false).expect("forward"),
        &mask,
    );
    let base_model =
        CausalLm::load(&base, DType::F32, &Device::Cpu, &Trainable::Frozen, SEED).expect("base");
    let base_logits = real_positions(
        &base_model
            .forward(&input, &attention, false)
            .expect("forward"),
        &mask,
    );
    assert!(
        max_abs_diff(&logits, &base_logits) > 0.1,
        "the adapters must change the logits"
    );

    let adapter_dir = out.join("adapter");
    model
        .save_adapter(&adapter_dir, &base.display().to_string())
        .expect("save adapter");
    let full_dir = out.join("full");
    model.save_full(&full_dir).expect("save full");
    // save_full writes weights + config; transformers also wants the tokenizer to sit beside them.
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(base.join(file), full_dir.join(file)).expect("copy tokenizer");
    }
    let record = serde_json::json!({
        "base": base.display().to_string(),
        "input_ids": read_json(&base.join("reference.json"))["input_ids"],
        "attention_mask": read_json(&base.join("reference.json"))["attention_mask"],
        "logits_at_real_positions": logits,
    });
    std::fs::write(out.join("our_logits.json"), record.to_string()).expect("write logits");

    let mut reloaded =
        CausalLm::load(&base, DType::F32, &Device::Cpu, &Trainable::Frozen, SEED).expect("base");
    reloaded.load_adapter(&adapter_dir).expect("load adapter");
    let again = real_positions(
        &reloaded
            .forward(&input, &attention, false)
            .expect("forward"),
        &mask,
    );
    let adapter_diff = max_abs_diff(&logits, &again);
    assert!(
        adapter_diff < 1e-5,
        "adapter reload differs by {adapter_diff}"
    );
    let full = CausalLm::load(
        &full_dir,
        DType::F32,
        &Device::Cpu,
        &Trainable::Frozen,
        SEED,
    )
    .expect("full");
    let merged = real_positions(
        &full.forward(&input, &attention, false).expect("forward"),
        &mask,
    );
    let full_diff = max_abs_diff(&logits, &merged);
    assert!(
        full_diff < 1e-4,
        "merged full checkpoint differs by {full_diff}"
    );
}
