//! Measures the model on this machine (release build recommended):
//!
//! ```sh
//! # forward + backward + AdamW step, SmolLM2-135M shape, batch 2 × 256, f32
//! cargo run --release -p model --example measure -- step lora [MODEL]
//! cargo run --release -p model --example measure -- step full [MODEL]
//! # batched greedy decoding, batch 8 × 64 new tokens
//! cargo run --release -p model --example measure -- generate [MODEL]
//! # what one training forward keeps for backward (one row of T tokens, default 190), by shape
//! cargo run --release -p model --example measure -- census lora|full [T]
//! ```
//!
//! `MODEL` is anything `ModelSource` resolves (an HF directory, a `.gguf` file); without it the model has random
//! weights of SmolLM2-135M's configuration. Run LoRA and full in separate processes: peak RSS is per process.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use model::source::{ModelSource, ResolveOptions};
use model::{CausalLm, GenerateOptions, LoraConfig, ModelConfig, Trainable, generate};

const SMOLLM2_135M: &str = r#"{"model_type":"llama","vocab_size":49152,"hidden_size":576,"intermediate_size":1536,
"num_hidden_layers":30,"num_attention_heads":9,"num_key_value_heads":3,"rms_norm_eps":1e-5,"rope_theta":100000,
"max_position_embeddings":8192,"tie_word_embeddings":true,"bos_token_id":1,"eos_token_id":2}"#;

fn load(source: Option<&str>, trainable: &Trainable) -> Result<CausalLm> {
    Ok(match source {
        Some(s) => {
            let dir = ModelSource::parse(s)
                .resolve(&ResolveOptions::default())
                .context("resolving the model")?;
            CausalLm::load(&dir, DType::F32, &Device::Cpu, trainable, 0)?
        }
        None => {
            let config = ModelConfig::from_json_str(SMOLLM2_135M, Path::new("<smollm2-135m>"))?;
            CausalLm::random(config, DType::F32, &Device::Cpu, trainable, 0)?
        }
    })
}

/// Peak resident set size of this process (`VmHWM`), in MiB.
fn peak_rss_mib() -> Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("VmHWM")?;
    let kb: f64 = line
        .split_whitespace()
        .nth(1)
        .context("VmHWM value")?
        .parse()?;
    Ok(kb / 1024.0)
}

/// CPU time (user, system) this process has used so far, in seconds (`/proc/self/stat`, 100 ticks/s): on a
/// shared, overloaded machine this is the number to compare, not wall time.
fn cpu_secs() -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15 (1-based).
    let rest = stat.rsplit_once(')').context("/proc/self/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> Result<f64> {
        Ok(fields.get(i).context("stat field")?.parse::<f64>()? / 100.0)
    };
    Ok((tick(11)?, tick(12)?))
}

fn step(mode: &str, source: Option<&str>) -> Result<()> {
    let trainable = match mode {
        "lora" => Trainable::Lora(LoraConfig::default()),
        "full" => Trainable::Full,
        other => bail!("step mode `{other}`: expected lora or full"),
    };
    let model = load(source, &trainable)?;
    let (b, t) = (2usize, 256usize);
    let vocab = model.config().vocab_size as u32;
    let ids: Vec<u32> = (0..(b * t) as u32)
        .map(|i| (i * 7919 + 13) % vocab)
        .collect();
    let ids = Tensor::from_vec(ids, (b, t), &Device::Cpu)?;
    let mask = Tensor::ones((b, t), DType::U32, &Device::Cpu)?;
    let vars: Vec<_> = model.trainable_vars().into_iter().map(|(_, v)| v).collect();
    let mut opt = AdamW::new(
        vars,
        ParamsAdamW {
            lr: 1e-5,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let (trainable_params, total) = model.param_counts();
    println!(
        "{mode}: {trainable_params} trainable of {total} params; batch {b} x {t}; rss after load {:.0} MiB",
        peak_rss_mib()?
    );
    let steps: usize = std::env::var("MEASURE_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4)
        .max(2);
    let mut times = Vec::new();
    let mut cpu_times = Vec::new();
    for s in 0..steps {
        let start = Instant::now();
        let (user0, sys0) = cpu_secs()?;
        let logits = model.forward(&ids, &mask, true)?;
        let v = logits.dim(2)?;
        let rows = logits.narrow(1, 0, t - 1)?.reshape((b * (t - 1), v))?;
        let target = ids.narrow(1, 1, t - 1)?.reshape((b * (t - 1), 1))?;
        // MEASURE_LOSS=composed: candle's log_softmax + gather (the previous measurement); else the fused op.
        let loss = if std::env::var("MEASURE_LOSS").as_deref() == Ok("composed") {
            let lp = candle_nn::ops::log_softmax(&rows, 1)?;
            lp.gather(&target, 1)?.mean_all()?.neg()?
        } else {
            let n = b * (t - 1);
            let mask = Tensor::ones(n, DType::F32, &Device::Cpu)?;
            (model::ops::masked_nll_rows(&rows, &target.flatten_all()?, &mask)? / n as f64)?
        };
        let forward_secs = start.elapsed().as_secs_f64();
        let grads = loss.backward()?;
        let grad_bytes: usize = grads
            .get_ids()
            .filter_map(|id| grads.get_id(*id))
            .map(|g| g.elem_count() * g.dtype().size_in_bytes())
            .sum();
        opt.step(&grads)?;
        drop(grads);
        let secs = start.elapsed().as_secs_f64();
        let (user1, sys1) = cpu_secs()?;
        let (user, sys) = (user1 - user0, sys1 - sys0);
        if s > 0 {
            cpu_times.push((user, sys));
        }
        println!("step {s}: cpu {user:.2} s user + {sys:.2} s system");
        println!(
            "step {s}: {secs:.2} s (forward {forward_secs:.2} s), loss {:.4}, {:.0} tokens/s, grad store {:.1} MiB, peak rss {:.0} MiB",
            loss.to_scalar::<f32>()?,
            (b * t) as f64 / secs,
            grad_bytes as f64 / 1048576.0,
            peak_rss_mib()?
        );
        if s > 0 {
            times.push(secs);
        }
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let n = cpu_times.len() as f64;
    let user = cpu_times.iter().map(|c| c.0).sum::<f64>() / n;
    let sys = cpu_times.iter().map(|c| c.1).sum::<f64>() / n;
    println!(
        "{mode}: mean cpu of steps 1..{steps}: {user:.2} s user + {sys:.2} s system = {:.0} tokens per cpu-second",
        (b * t) as f64 / (user + sys)
    );
    println!(
        "{mode}: mean of steps 1..{steps}: {mean:.2} s/step = {:.0} tokens/s; peak rss {:.0} MiB",
        (b * t) as f64 / mean,
        peak_rss_mib()?
    );
    Ok(())
}

fn gen_bench(source: Option<&str>) -> Result<()> {
    let model = load(source, &Trainable::Frozen)?;
    let vocab = model.config().vocab_size as u32;
    let prompts: Vec<Vec<u32>> = (0..8u32)
        .map(|r| {
            (0..(20 + 3 * r))
                .map(|i| (i * 31 + r * 101 + 7) % vocab)
                .collect()
        })
        .collect();
    let new = 64;
    let opts = GenerateOptions {
        max_new_tokens: new,
        eos_ids: vec![],
        pad_id: 0,
        stop: None,
    };
    for round in 0..2 {
        let start = Instant::now();
        let (user0, sys0) = cpu_secs()?;
        let out = generate(&model, &prompts, &opts)?;
        let secs = start.elapsed().as_secs_f64();
        let (user1, sys1) = cpu_secs()?;
        let cpu = (user1 - user0) + (sys1 - sys0);
        let tokens_cpu: usize = out.iter().map(|g| g.ids.len()).sum();
        println!(
            "generate round {round}: cpu {:.2} s user + {:.2} s system = {:.0} tokens per cpu-second",
            user1 - user0,
            sys1 - sys0,
            tokens_cpu as f64 / cpu
        );
        let tokens: usize = out.iter().map(|g| g.ids.len()).sum();
        println!(
            "generate round {round}: {tokens} tokens in {secs:.2} s = {:.0} tokens/s (batch 8, prompts 20..41, 64 new)",
            tokens as f64 / secs
        );
    }
    Ok(())
}

/// Walks the graph of one training forward and tallies the activation storages it keeps alive (each storage once,
/// by the shape of the largest node on it; parameters and constants excluded): what the backward will hold.
/// Tensors a custom node keeps inside itself are not graph nodes and are not counted (the frozen-MLP node's gate
/// and up outputs: 2 × intermediate values per token and layer).
fn census(mode: &str, tokens: usize) -> Result<()> {
    use std::collections::BTreeMap;
    let trainable = match mode {
        "lora" => Trainable::Lora(LoraConfig::default()),
        "full" => Trainable::Full,
        other => bail!("census mode `{other}`: expected lora or full"),
    };
    let model = load(None, &trainable)?;
    let vocab = model.config().vocab_size as u32;
    let ids: Vec<u32> = (0..tokens as u32)
        .map(|i| (i * 7919 + 13) % vocab)
        .collect();
    let ids = Tensor::from_vec(ids, (1, tokens), &Device::Cpu)?;
    let mask = Tensor::ones((1, tokens), DType::U32, &Device::Cpu)?;
    let hidden = model.forward_hidden(&ids, &mask, true)?;
    let mut storages: BTreeMap<usize, (usize, Vec<usize>)> = BTreeMap::new();
    for node in hidden.sorted_nodes() {
        if node.is_variable() {
            continue;
        }
        let key = {
            let (s, _) = node.storage_and_layout();
            &*s as *const candle_core::Storage as usize
        };
        let bytes = node.elem_count() * node.dtype().size_in_bytes();
        let entry = storages.entry(key).or_default();
        if bytes > entry.0 {
            *entry = (bytes, node.dims().to_vec());
        }
    }
    let mut by_op: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (bytes, dims) in storages.into_values() {
        let entry = by_op.entry(format!("{dims:?}")).or_default();
        entry.0 += 1;
        entry.1 += bytes;
    }
    let layers = model.num_layers();
    let total: usize = by_op.values().map(|v| v.1).sum();
    println!(
        "{mode}, one row of {tokens} tokens, {layers} layers: storages kept for backward, by shape"
    );
    let mut rows: Vec<_> = by_op.into_iter().collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1.1));
    for (name, (count, bytes)) in rows {
        println!(
            "{:>9.1} MiB {:>6} storages {:>8.0} floats/token/layer  {name}",
            bytes as f64 / 1048576.0,
            count,
            bytes as f64 / 4.0 / (tokens * layers) as f64
        );
    }
    println!(
        "{:>9.1} MiB total = {:.0} floats/token/layer",
        total as f64 / 1048576.0,
        total as f64 / 4.0 / (tokens * layers) as f64
    );
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("step") => step(
            args.get(1).map_or("lora", String::as_str),
            args.get(2).map(String::as_str),
        ),
        Some("generate") => gen_bench(args.get(1).map(String::as_str)),
        Some("census") => census(
            args.get(1).map_or("lora", String::as_str),
            args.get(2)
                .map_or(Ok(190), |t| t.parse())
                .context("census: T")?,
        ),
        _ => bail!(
            "usage: measure step lora|full [MODEL] | measure generate [MODEL] | measure census lora|full [T]"
        ),
    }
}
