//! Decoding: the KV-cached forward equals the full forward at every position; batched generation equals
//! one-prompt-at-a-time generation; weights stored transposed change nothing; EOS, stop checks and max_new_tokens.

use candle_core::{DType, Device, Tensor};
use model::{GenerateOptions, KvCache, Trainable, generate};

use super::support::{FIXTURES, batch, load_fixture, max_abs_diff};

#[test]
fn cached_decoding_equals_full_forward_at_every_position() {
    for name in FIXTURES {
        let model = load_fixture(name, &Trainable::Frozen);
        let t = 9;
        let (ids, mask) = batch(t, model.config().vocab_size as u32);
        let full = model.forward(&ids, &mask, false).expect("full");
        let mut cache =
            KvCache::new(model.config(), 2, t, DType::F32, &Device::Cpu).expect("cache");
        // A 4-token prefill, then one token at a time.
        let pre = model
            .forward_cached(
                &ids.narrow(1, 0, 4).expect("n"),
                &mask.narrow(1, 0, 4).expect("n"),
                &mut cache,
                false,
            )
            .expect("prefill");
        let mut pieces = vec![pre];
        for i in 4..t {
            let step = model
                .forward_cached(
                    &ids.narrow(1, i, 1).expect("n"),
                    &mask.narrow(1, i, 1).expect("n"),
                    &mut cache,
                    true,
                )
                .expect("step");
            pieces.push(step.unsqueeze(1).expect("unsqueeze"));
        }
        let cached = Tensor::cat(&pieces, 1).expect("cat");
        // Row 1's first three positions are padding: not meaningful in either forward.
        let d0 = max_abs_diff(
            &full.narrow(0, 0, 1).expect("r0"),
            &cached.narrow(0, 0, 1).expect("r0"),
        );
        let d1 = max_abs_diff(
            &full
                .narrow(0, 1, 1)
                .and_then(|x| x.narrow(1, 3, t - 3))
                .expect("r1"),
            &cached
                .narrow(0, 1, 1)
                .and_then(|x| x.narrow(1, 3, t - 3))
                .expect("r1"),
        );
        assert!(
            d0 < 1e-5 && d1 < 1e-5,
            "{name}: cached vs full max diff {d0} / {d1}"
        );
    }
}

fn prompts() -> Vec<Vec<u32>> {
    vec![
        vec![0, 334, 30, 306, 87, 19],
        vec![0, 39, 277],
        vec![0, 5, 6, 7, 8, 9, 10, 11, 12],
        vec![0],
    ]
}

#[test]
fn batched_generation_equals_one_at_a_time() {
    for name in FIXTURES {
        let model = load_fixture(name, &Trainable::Frozen);
        let opts = GenerateOptions {
            max_new_tokens: 12,
            eos_ids: vec![],
            pad_id: 2,
            stop: None,
        };
        let batched = generate(&model, &prompts(), &opts).expect("batched");
        for (p, want) in prompts().iter().zip(&batched) {
            let single = generate(&model, std::slice::from_ref(p), &opts).expect("single");
            assert_eq!(&single[0], want, "{name}: prompt {p:?}");
            assert_eq!(want.ids.len(), 12);
            assert!(!want.stopped);
        }
    }
}

#[test]
fn weights_stored_transposed_give_the_same_logits_and_generations() {
    for name in FIXTURES {
        let model = load_fixture(name, &Trainable::Frozen);
        let mut relaid = load_fixture(name, &Trainable::Frozen);
        relaid.store_linears_transposed().expect("relayout");
        let (ids, mask) = batch(9, model.config().vocab_size as u32);
        let a = model.forward(&ids, &mask, false).expect("forward");
        let b = relaid.forward(&ids, &mask, false).expect("forward");
        // Row 1's first three positions are padding; compare the real positions of both rows.
        let diff = max_abs_diff(
            &a.narrow(1, 3, 6).expect("n"),
            &b.narrow(1, 3, 6).expect("n"),
        );
        assert!(diff < 1e-5, "{name}: logits differ by {diff}");
        let opts = GenerateOptions {
            max_new_tokens: 12,
            eos_ids: vec![],
            pad_id: 2,
            stop: None,
        };
        assert_eq!(
            generate(&model, &prompts(), &opts).expect("generate"),
            generate(&relaid, &prompts(), &opts).expect("generate"),
            "{name}"
        );
    }
}

#[test]
fn generation_stops_on_eos_and_on_the_callers_check() {
    let model = load_fixture("tiny-llama", &Trainable::Frozen);
    let free = generate(
        &model,
        &prompts(),
        &GenerateOptions {
            max_new_tokens: 8,
            eos_ids: vec![],
            pad_id: 2,
            stop: None,
        },
    )
    .expect("free run");
    // Declare row 0's third generated token an EOS: row 0 stops before it, without it.
    let eos = free[0].ids[2];
    let with_eos = generate(
        &model,
        &prompts(),
        &GenerateOptions {
            max_new_tokens: 8,
            eos_ids: vec![eos],
            pad_id: 2,
            stop: None,
        },
    )
    .expect("eos run");
    let first = free[0].ids.iter().position(|&t| t == eos).expect("present");
    assert_eq!(with_eos[0].ids, free[0].ids[..first].to_vec());
    assert!(with_eos[0].stopped);
    // A stop check after 5 tokens keeps those 5.
    let stop = |ids: &[u32]| ids.len() >= 5;
    let stopped = generate(
        &model,
        &prompts(),
        &GenerateOptions {
            max_new_tokens: 8,
            eos_ids: vec![],
            pad_id: 2,
            stop: Some(&stop),
        },
    )
    .expect("stop run");
    for (s, f) in stopped.iter().zip(&free) {
        assert_eq!(s.ids, f.ids[..5].to_vec());
        assert!(s.stopped);
    }
}

#[test]
fn bad_prompts_are_errors_not_panics() {
    let model = load_fixture("tiny-llama", &Trainable::Frozen);
    let opts = GenerateOptions {
        max_new_tokens: 2,
        eos_ids: vec![],
        pad_id: 2,
        stop: None,
    };
    assert!(generate(&model, &[vec![]], &opts).is_err());
    assert!(generate(&model, &[vec![0, 100_000]], &opts).is_err());
    assert!(
        generate(&model, &[], &opts)
            .expect("empty batch")
            .is_empty()
    );
}
