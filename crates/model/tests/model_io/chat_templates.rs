//! The fetched Llama 3 chat templates render exactly as transformers renders them
//! (goldens: `fixtures/assets/llama3-chat.json`, written by `scripts/make_fixtures.py --assets`).

use model::chat::{ChatMessage, ChatTemplate};
use model::text::TextCodec;

use super::support::{asset, fixture, read_json};

fn messages(conversation: &serde_json::Value) -> Vec<ChatMessage> {
    conversation
        .as_array()
        .expect("a message list")
        .iter()
        .map(|m| {
            ChatMessage::new(
                m["role"].as_str().expect("role"),
                m["content"].as_str().expect("content"),
            )
        })
        .collect()
}

#[test]
fn llama3_templates_match_transformers() {
    let golden = read_json(&fixture("assets/llama3-chat.json"));
    let bos = golden["bos_token"].as_str().expect("bos");
    let eos = golden["eos_token"].as_str().expect("eos");
    let codec = TextCodec::from_dir(&asset("tokenizers/llama3")).expect("llama3 tokenizer loads");
    let from_config = codec
        .chat_template()
        .expect("the llama3 tokenizer_config.json has a chat_template");
    let jinja_path = asset("chat-templates/meta-llama-Llama-3.1-8B-Instruct.jinja");
    let jinja = std::fs::read_to_string(&jinja_path).expect("template file reads");
    let from_file = ChatTemplate::new(&jinja, bos, eos).expect("Llama 3.1 template compiles");

    let cases = golden["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 8);
    for case in cases {
        let template = match case["template"].as_str().expect("template") {
            "tokenizers/llama3/tokenizer_config.json" => from_config,
            "chat-templates/meta-llama-Llama-3.1-8B-Instruct.jinja" => &from_file,
            other => panic!("unknown template {other}"),
        };
        let conversation = case["conversation"].as_str().expect("conversation");
        let msgs = messages(&golden["conversations"][conversation]);
        let generation = case["add_generation_prompt"].as_bool().expect("bool");
        let rendered = template.render(&msgs, generation).expect("renders");
        assert_eq!(
            rendered,
            case["rendered"].as_str().expect("golden"),
            "{case}"
        );
    }
}

#[test]
fn llama3_chat_prompt_tokenizes_its_special_markers() {
    let codec = TextCodec::from_dir(&asset("tokenizers/llama3")).expect("llama3 tokenizer loads");
    let ids = codec
        .encode_chat_prompt("Create a Pod.")
        .expect("encodes")
        .expect("has a template");
    // <|begin_of_text|> <|start_header_id|> user <|end_header_id|> …
    assert_eq!(ids[..2], [128000, 128006]);
    assert_eq!(
        ids.iter().filter(|&&id| id == 128000).count(),
        1,
        "exactly one BOS"
    );
    assert_eq!(
        ids.last(),
        Some(&271),
        "ends with the \\n\\n after the assistant header"
    );
}
