//! `TextCodec` on the committed tiny fixtures: special tokens per family, exact prompt/completion split and loss
//! mask, and agreement with the ids transformers' tokenizer produced (stored in each `reference.json`).

use model::text::TextCodec;

use super::support::{fixture, ids, read_json};

/// Expected conventions per fixture (see crates/model/tests/fixtures/README.md).
struct Expect {
    name: &'static str,
    adds_bos: bool,
    tokenizer_adds_bos: bool,
    eos_ids: &'static [u32],
    pad_id: u32,
}

const FIXTURES: &[Expect] = &[
    Expect {
        name: "tiny-llama",
        adds_bos: true,
        tokenizer_adds_bos: false,
        eos_ids: &[1],
        pad_id: 2,
    },
    Expect {
        name: "tiny-llama3-rope",
        adds_bos: true,
        tokenizer_adds_bos: false,
        eos_ids: &[1, 4],
        pad_id: 2,
    },
    Expect {
        name: "tiny-deepseek",
        adds_bos: true,
        tokenizer_adds_bos: false,
        eos_ids: &[1],
        pad_id: 2,
    },
    Expect {
        name: "tiny-mistral",
        adds_bos: true,
        tokenizer_adds_bos: true,
        eos_ids: &[1],
        pad_id: 1,
    },
    Expect {
        name: "tiny-smollm",
        adds_bos: false,
        tokenizer_adds_bos: false,
        eos_ids: &[1],
        pad_id: 1,
    },
];

const BOS: u32 = 0;

fn codec(name: &str) -> TextCodec {
    TextCodec::from_dir(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn special_tokens_follow_each_family() {
    for e in FIXTURES {
        let c = codec(e.name);
        assert_eq!(c.adds_bos(), e.adds_bos, "{}: adds_bos", e.name);
        assert_eq!(
            c.tokenizer_adds_bos(),
            e.tokenizer_adds_bos,
            "{}: tokenizer_adds_bos",
            e.name
        );
        assert_eq!(c.eos_ids(), e.eos_ids, "{}: eos_ids", e.name);
        assert_eq!(c.eos_id(), e.eos_ids[0], "{}: eos_id", e.name);
        assert_eq!(c.pad_id(), e.pad_id, "{}: pad_id", e.name);
        assert_eq!(c.bos_id(), Some(BOS), "{}: bos_id", e.name);
        assert_eq!(c.vocab_size(), 512, "{}: vocab", e.name);
    }
}

#[test]
fn encoding_matches_transformers_and_decoding_round_trips() {
    for e in FIXTURES {
        let c = codec(e.name);
        let reference = read_json(&fixture(e.name).join("reference.json"));
        let probes = reference["tokenizer_probes"].as_array().expect("probes");
        assert!(probes.len() >= 5, "{}: too few probes", e.name);
        for probe in probes {
            let text = probe["text"].as_str().expect("text");
            let raw = ids(&probe["ids_no_special"]);
            assert_eq!(
                c.encode_raw(text).expect("encodes"),
                raw,
                "{}: {text:?}",
                e.name
            );
            let mut prompt = if e.adds_bos { vec![BOS] } else { Vec::new() };
            prompt.extend(&raw);
            assert_eq!(
                c.encode_prompt(text).expect("encodes"),
                prompt,
                "{}: prompt {text:?}",
                e.name
            );
            if e.tokenizer_adds_bos {
                // transformers' default call adds BOS through the post-processor: exactly one BOS either way.
                assert_eq!(
                    prompt,
                    ids(&probe["ids_hf_default"]),
                    "{}: {text:?}",
                    e.name
                );
            }
            // Special tokens written in the text (`</s> <s>`) are dropped on decode; everything else round-trips.
            let decoded = c.decode(&raw).expect("decodes");
            let expected = probe["decoded"]
                .as_str()
                .expect("decoded")
                .replace("</s>", "")
                .replace("<s>", "");
            assert_eq!(decoded, expected, "{}: decode {text:?}", e.name);
        }
    }
}

#[test]
fn prompt_is_a_prefix_and_the_mask_covers_exactly_completion_and_eos() {
    let pairs = [
        (
            "Create a Service named web.\n",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n",
        ),
        // A prompt ending mid-word and a completion starting with a space: joint tokenization would merge
        // across the boundary; separate tokenization must not.
        ("kind: Deploy", "ment\nspec:\n  replicas: 3"),
        ("", "apiVersion: v1"),
        ("Only a prompt, empty completion.", ""),
    ];
    for e in FIXTURES {
        let c = codec(e.name);
        for (prompt, completion) in pairs {
            let p = c.encode_prompt(prompt).expect("prompt encodes");
            let pair = c.encode_pair(prompt, completion).expect("pair encodes");
            let completion_ids = c.encode_raw(completion).expect("completion encodes");
            assert_eq!(pair.prompt_len, p.len(), "{}: prompt_len", e.name);
            assert_eq!(
                &pair.ids[..p.len()],
                p.as_slice(),
                "{}: prompt prefix",
                e.name
            );
            assert_eq!(
                &pair.ids[p.len()..pair.ids.len() - 1],
                completion_ids.as_slice(),
                "{}",
                e.name
            );
            assert_eq!(
                pair.ids.last(),
                Some(&c.eos_id()),
                "{}: ends with EOS",
                e.name
            );
            assert_eq!(
                pair.loss_mask.len(),
                pair.ids.len(),
                "{}: mask length",
                e.name
            );
            let expected_mask: Vec<u32> = (0..pair.ids.len())
                .map(|i| u32::from(i >= p.len()))
                .collect();
            assert_eq!(
                pair.loss_mask, expected_mask,
                "{}: mask for {prompt:?}",
                e.name
            );
            assert_eq!(
                pair.loss_mask.iter().sum::<u32>() as usize,
                completion_ids.len() + 1,
                "{}: mask counts completion + EOS",
                e.name
            );
        }
    }
}

#[test]
fn chat_template_renders_like_transformers() {
    for e in FIXTURES {
        let c = codec(e.name);
        let reference = read_json(&fixture(e.name).join("reference.json"));
        match reference["chat"].as_object() {
            None => assert!(
                c.render_chat("x").expect("no template, no error").is_none(),
                "{}",
                e.name
            ),
            Some(chat) => {
                let user = chat["messages"][0]["content"].as_str().expect("message");
                let rendered = c
                    .render_chat(user)
                    .expect("renders")
                    .expect("has a template");
                assert_eq!(
                    rendered,
                    chat["rendered_with_generation_prompt"]
                        .as_str()
                        .expect("golden")
                );
                let messages = [model::chat::ChatMessage::user(user)];
                let template = c.chat_template().expect("has a template");
                let without = template.render(&messages, false).expect("renders");
                assert_eq!(
                    without,
                    chat["rendered_without_generation_prompt"]
                        .as_str()
                        .expect("golden")
                );
                // The rendered text already holds `<s>` and the ChatML markers: they become their ids.
                let ids = c
                    .encode_chat_prompt(user)
                    .expect("encodes")
                    .expect("has a template");
                assert_eq!(ids[..2], [BOS, 3], "{}: <s><|im_start|>", e.name);
            }
        }
    }
}

#[test]
fn missing_or_broken_files_are_named_in_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let err = TextCodec::from_dir(dir.path()).expect_err("no tokenizer.json");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");

    std::fs::copy(
        fixture("tiny-llama").join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .expect("copy tokenizer");
    let err = TextCodec::from_dir(dir.path()).expect_err("no EOS anywhere");
    assert!(err.to_string().contains("no EOS token"), "{err}");

    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"eos_token": "<nope>"}"#,
    )
    .expect("write");
    let err = TextCodec::from_dir(dir.path()).expect_err("unknown token");
    let message = err.to_string();
    assert!(
        message.contains("tokenizer_config.json") && message.contains("eos_token"),
        "{message}"
    );
    assert!(message.contains("<nope>"), "{message}");

    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        "{\n  \"eos_token\": \n",
    )
    .expect("write");
    let err = TextCodec::from_dir(dir.path()).expect_err("bad JSON");
    assert!(
        err.to_string().contains("not valid JSON") && err.to_string().contains("line"),
        "{err}"
    );

    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"eos_token": "</s>", "add_bos_token": "yes"}"#,
    )
    .expect("write");
    let err = TextCodec::from_dir(dir.path()).expect_err("add_bos_token must be a bool");
    assert!(err.to_string().contains("add_bos_token"), "{err}");
}
