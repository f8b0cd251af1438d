//! Gradients: every trainable tensor gets a finite, non-zero gradient; analytic gradients match central finite
//! differences in f64; after a LoRA backward the gradient store holds the trainable variables' gradients only.

use std::collections::HashSet;

use candle_core::{DType, Device, Tensor};
use model::{CausalLm, Trainable};

use super::support::{batch, lora_all, nll, perturb_lora_b, tiny};

fn loss(model: &CausalLm, train: bool) -> Tensor {
    let (ids, mask) = batch(10, model.config().vocab_size as u32);
    let logits = model.forward(&ids, &mask, train).expect("forward");
    nll(&logits, &ids, &mask)
}

fn assert_all_grads_finite_nonzero(model: &CausalLm, train: bool) {
    let grads = loss(model, train).backward().expect("backward");
    let vars = model.trainable_vars();
    assert!(!vars.is_empty());
    for (name, var) in vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name} has no gradient"));
        let g: Vec<f64> = g
            .flatten_all()
            .and_then(|g| g.to_dtype(DType::F64))
            .and_then(|g| g.to_vec1())
            .expect("g");
        assert!(
            g.iter().all(|x| x.is_finite()),
            "{name}: non-finite gradient"
        );
        assert!(g.iter().any(|x| *x != 0.0), "{name}: all-zero gradient");
    }
}

#[test]
fn full_finetuning_every_weight_gets_a_gradient() {
    let model = tiny(DType::F32, &Trainable::Full);
    assert_eq!(model.trainable_vars().len(), 1 + 2 * 9 + 1 + 1);
    assert_all_grads_finite_nonzero(&model, true);
}

#[test]
fn lora_every_adapter_gets_a_gradient_with_dropout_on() {
    let model = tiny(DType::F32, &Trainable::Lora(lora_all()));
    assert_eq!(model.trainable_vars().len(), 2 * 7 * 2);
    perturb_lora_b(&model, 3);
    assert_all_grads_finite_nonzero(&model, true);
}

/// Central differences on a few coordinates of several tensors, in f64.
fn finite_difference_check(model: &CausalLm) {
    let grads = loss(model, false).backward().expect("backward");
    let eps = 1e-5;
    let mut checked = 0;
    for (k, (name, var)) in model.trainable_vars().into_iter().enumerate() {
        if k % 3 != 0 {
            continue; // several tensors of every kind, not all of them
        }
        let g = grads
            .get(var.as_tensor())
            .expect("gradient")
            .flatten_all()
            .expect("flat");
        let g: Vec<f64> = g.to_vec1().expect("f64 grads");
        let base: Vec<f64> = var
            .as_tensor()
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .expect("values");
        let n = base.len();
        for coord in [0, n / 3, (2 * n) / 3 + 1, n - 1] {
            let eval = |delta: f64| -> f64 {
                let mut v = base.clone();
                v[coord] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).expect("t"))
                    .expect("set");
                loss(model, false).to_scalar::<f64>().expect("scalar")
            };
            let numeric = (eval(eps) - eval(-eps)) / (2.0 * eps);
            var.set(&Tensor::from_vec(base.clone(), var.shape(), &Device::Cpu).expect("t"))
                .expect("restore");
            let analytic = g[coord];
            let tol = 1e-6 + 1e-5 * analytic.abs().max(numeric.abs());
            assert!(
                (analytic - numeric).abs() < tol,
                "{name}[{coord}]: analytic {analytic} vs numeric {numeric}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 12, "only {checked} coordinates checked");
}

#[test]
fn full_finetuning_gradients_match_finite_differences() {
    finite_difference_check(&tiny(DType::F64, &Trainable::Full));
}

#[test]
fn lora_gradients_match_finite_differences() {
    let model = tiny(DType::F64, &Trainable::Lora(lora_all()));
    perturb_lora_b(&model, 5);
    finite_difference_check(&model);
}

/// The paper's LoRA (attention projections only): the MLP half of every block is frozen and runs as one fused node
/// on the CPU, and attention as another, so this checks both backwards end to end.
#[test]
fn attention_lora_gradients_match_finite_differences() {
    let lora = model::LoraConfig {
        target_modules: ["q_proj", "k_proj", "v_proj", "o_proj"]
            .map(String::from)
            .to_vec(),
        ..lora_all()
    };
    let model = tiny(DType::F64, &Trainable::Lora(lora));
    perturb_lora_b(&model, 7);
    finite_difference_check(&model);
}

/// Sizes of gradient-store entries that are not gradients of trainable variables.
fn leftover_gradients(model: &CausalLm) -> Vec<Vec<usize>> {
    let grads = loss(model, true).backward().expect("backward");
    let vars = model.trainable_vars();
    let var_ids: HashSet<_> = vars.iter().map(|(_, v)| v.as_tensor().id()).collect();
    for (name, v) in &vars {
        assert!(grads.get(v.as_tensor()).is_some(), "{name} has no gradient");
    }
    grads
        .get_ids()
        .filter(|id| !var_ids.contains(id))
        .map(|id| grads.get_id(*id).expect("listed").dims().to_vec())
        .collect()
}

#[test]
fn lora_backward_stores_no_frozen_weight_gradients() {
    let model = tiny(DType::F32, &Trainable::Lora(lora_all()));
    perturb_lora_b(&model, 9);
    let leftovers = leftover_gradients(&model);
    let frozen_shapes: HashSet<Vec<usize>> = model
        .named_params()
        .into_iter()
        .map(|(_, p)| p.tensor().dims().to_vec())
        .collect();
    for dims in &leftovers {
        assert!(
            !frozen_shapes.contains(dims),
            "a gradient of frozen-weight shape {dims:?} was stored"
        );
    }
    assert!(
        leftovers.is_empty(),
        "gradient store holds non-trainable entries: {leftovers:?}"
    );
}

#[test]
fn full_backward_stores_only_weight_gradients() {
    let model = tiny(DType::F32, &Trainable::Full);
    let leftovers = leftover_gradients(&model);
    assert!(
        leftovers.is_empty(),
        "gradient store holds non-trainable entries: {leftovers:?}"
    );
}
