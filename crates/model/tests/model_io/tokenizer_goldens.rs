//! The paper models' fetched tokenizers encode reference strings exactly:
//! - Llama 3 and DeepSeek-Coder against llama.cpp's `ggml-vocab-*.gguf.{inp,out}` vectors;
//! - Mistral v0.1 against ids computed with Python `tokenizers` on the same file (whose ids equal SentencePiece's;
//!   goldens in `fixtures/assets/mistral-v0.1-tokenizer.json`).
//!
//! Also the BOS conventions: exactly one BOS from `encode_prompt` whatever the post-processor does.

use model::text::TextCodec;

use super::support::{asset, fixture, ids, read_json};

/// llama.cpp's format: texts separated by `\n__ggml_vocab_test__\n` (one trailing), one line of ids per text.
fn llama_cpp_cases(name: &str) -> Vec<(String, Vec<u32>)> {
    let inp = std::fs::read_to_string(asset(&format!(
        "llama-cpp-vocab/ggml-vocab-{name}.gguf.inp"
    )))
    .expect("inp");
    let out = std::fs::read_to_string(asset(&format!(
        "llama-cpp-vocab/ggml-vocab-{name}.gguf.out"
    )))
    .expect("out");
    let texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    let lines: Vec<&str> = out.split('\n').collect();
    assert_eq!(texts.last(), Some(&""), "{name}.inp ends with a separator");
    assert_eq!(lines.last(), Some(&""), "{name}.out ends with a newline");
    assert_eq!(
        texts.len(),
        lines.len(),
        "{name}: as many texts as id lines"
    );
    texts[..texts.len() - 1]
        .iter()
        .zip(&lines[..lines.len() - 1])
        .map(|(text, line)| {
            let ids = line
                .split_whitespace()
                .map(|t| t.parse().expect("an id"))
                .collect();
            ((*text).to_owned(), ids)
        })
        .collect()
}

fn check_llama_cpp(tokenizer_dir: &str, vocab: &str) {
    let codec = TextCodec::from_dir(&asset(tokenizer_dir)).expect("tokenizer loads");
    let cases = llama_cpp_cases(vocab);
    assert_eq!(
        cases.len(),
        46,
        "{vocab}: llama.cpp ships 46 reference strings"
    );
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(text, expected)| {
            let got = codec.encode_raw(text).expect("encodes");
            (&got != expected).then(|| format!("{text:?}: got {got:?}, expected {expected:?}"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{vocab}: {} of 46 differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn llama3_matches_llama_cpp_reference() {
    check_llama_cpp("tokenizers/llama3", "llama-bpe");
}

#[test]
fn deepseek_coder_matches_llama_cpp_reference() {
    check_llama_cpp("tokenizers/deepseek-coder", "deepseek-coder");
}

#[test]
fn mistral_matches_python_tokenizers_goldens() {
    let codec = TextCodec::from_dir(&asset("tokenizers/mistral-v0.1")).expect("tokenizer loads");
    let golden = read_json(&fixture("assets/mistral-v0.1-tokenizer.json"));
    let cases = golden["cases"].as_array().expect("cases");
    assert!(cases.len() >= 5);
    for case in cases {
        let text = case["text"].as_str().expect("text");
        assert_eq!(
            codec.encode_raw(text).expect("encodes"),
            ids(&case["ids"]),
            "{text:?}"
        );
    }
}

#[test]
fn each_family_gets_exactly_one_bos() {
    // (dir, BOS id, EOS id, pad id, does the post-processor add BOS itself?)
    let families = [
        ("tokenizers/llama3", 128000, 128001, 128001, false),
        ("tokenizers/deepseek-coder", 32013, 32014, 32014, false),
        ("tokenizers/mistral-v0.1", 1, 2, 2, true),
    ];
    for (dir, bos, eos, pad, post_bos) in families {
        let codec = TextCodec::from_dir(&asset(dir)).expect("tokenizer loads");
        assert_eq!(codec.bos_id(), Some(bos), "{dir}");
        assert!(
            codec.adds_bos(),
            "{dir}: the paper's models are trained with BOS"
        );
        assert_eq!(codec.tokenizer_adds_bos(), post_bos, "{dir}");
        assert_eq!(codec.eos_id(), eos, "{dir}");
        assert_eq!(codec.pad_id(), pad, "{dir}");
        let prompt = codec.encode_prompt("kind: Pod").expect("encodes");
        assert_eq!(prompt[0], bos, "{dir}");
        assert_eq!(
            prompt.iter().filter(|&&id| id == bos).count(),
            1,
            "{dir}: one BOS"
        );
        let pair = codec
            .encode_pair("kind: Pod", "\napiVersion: v1")
            .expect("encodes");
        assert_eq!(
            &pair.ids[..prompt.len()],
            prompt.as_slice(),
            "{dir}: prompt is a prefix"
        );
        assert_eq!(pair.ids.last(), Some(&eos), "{dir}");
        assert_eq!(
            pair.ids.iter().filter(|&&id| id == bos).count(),
            1,
            "{dir}: one BOS in the pair"
        );
    }
}
