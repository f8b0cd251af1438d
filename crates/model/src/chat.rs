//! Chat templates: the Jinja `chat_template` of a Hugging Face `tokenizer_config.json`, rendered with minijinja.
//!
//! Rendering follows transformers' `apply_chat_template`: `trim_blocks` and `lstrip_blocks` on, loop controls on,
//! the variables `messages`, `bos_token`, `eos_token` and `add_generation_prompt`, a `raise_exception(msg)`
//! function that aborts rendering, and Python string methods (`.strip()`, `.startswith()` …) through
//! minijinja-contrib's pycompat callback. The output is a string: the caller tokenizes it (without adding BOS
//! again when the template already starts with `bos_token`).

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, ErrorKind, Value, context};

/// Name under which the template is stored in its private minijinja environment.
const TEMPLATE_NAME: &str = "chat_template";

/// Errors from compiling or rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The template has a Jinja syntax error (or a construct minijinja does not support).
    #[error("chat template does not compile: {0:#}")]
    Compile(minijinja::Error),
    /// The template called `raise_exception(message)`, e.g. for a role it does not accept.
    #[error("chat template raised an exception: {0}")]
    Raised(String),
    /// Rendering failed for another reason (unknown filter or method, type error, …).
    #[error("chat template failed to render: {0:#}")]
    Render(minijinja::Error),
}

/// One chat message as templates expect it: `{"role": ..., "content": ...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant` (templates may accept others).
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        ChatMessage::new("user", content)
    }
}

/// A compiled chat template plus the special-token strings it may reference.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

/// Marker prefix that lets [`ChatTemplate::render`] tell a `raise_exception` call from other render errors.
const RAISED_PREFIX: &str = "raise_exception: ";

impl ChatTemplate {
    /// Compiles `source` (the `chat_template` string). `bos_token` / `eos_token` are the special-token strings
    /// (empty when the tokenizer has none), exposed to the template under those names.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate, ChatError> {
        let mut env = Environment::new();
        // transformers renders with jinja2's trim_blocks + lstrip_blocks; without them, templates written as
        // one block per line emit stray newlines and indentation.
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(ChatError::Compile)?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("{RAISED_PREFIX}{message}"),
                ))
            },
        );
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(ChatError::Compile)?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// Renders a conversation; `add_generation_prompt` appends the header that starts the assistant's turn.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(ChatError::Render)?;
        template
            .render(context! {
                messages => messages_value(messages),
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
                add_generation_prompt => add_generation_prompt,
            })
            .map_err(|e| match raised_message(&e) {
                Some(message) => ChatError::Raised(message),
                None => ChatError::Render(e),
            })
    }

    /// Renders a single user message followed by the generation prompt: the form a prompt takes at inference.
    pub fn render_user(&self, user_message: &str) -> Result<String, ChatError> {
        self.render(&[ChatMessage::user(user_message)], true)
    }
}

/// Messages as the list of `{role, content}` maps that templates index (`message['role']`, `message.content`).
fn messages_value(messages: &[ChatMessage]) -> Value {
    messages
        .iter()
        .map(|m| Value::from_pairs([("role", m.role.as_str()), ("content", m.content.as_str())]))
        .collect::<Vec<Value>>()
        .into()
}

/// The message of a `raise_exception` call, if this error (or its cause chain) is one.
fn raised_message(error: &minijinja::Error) -> Option<String> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(mj) = e.downcast_ref::<minijinja::Error>()
            && let Some(detail) = mj.detail()
            && let Some(message) = detail.strip_prefix(RAISED_PREFIX)
        {
            return Some(message.to_owned());
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{{ bos_token }}{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}\
        {{ raise_exception('Unknown role: ' + m['role']) }}{% endif %}\
        <|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n{% endfor %}\
        {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

    #[test]
    fn renders_messages_and_generation_prompt() {
        let t = ChatTemplate::new(CHATML, "<s>", "</s>").expect("template compiles");
        let with = t.render_user("  Make a Pod. ").expect("renders");
        assert_eq!(
            with,
            "<s><|im_start|>user\nMake a Pod.<|im_end|>\n<|im_start|>assistant\n"
        );
        let without = t
            .render(&[ChatMessage::user("hi")], false)
            .expect("renders");
        assert_eq!(without, "<s><|im_start|>user\nhi<|im_end|>\n");
    }

    #[test]
    fn raise_exception_becomes_its_own_error() {
        let t = ChatTemplate::new(CHATML, "<s>", "</s>").expect("template compiles");
        let err = t
            .render(&[ChatMessage::new("tool", "x")], true)
            .expect_err("role is rejected");
        match err {
            ChatError::Raised(message) => assert_eq!(message, "Unknown role: tool"),
            other => panic!("expected Raised, got {other:?}"),
        }
    }

    #[test]
    fn python_string_methods_and_block_trimming_work() {
        // One block per line, as real templates are written: trim_blocks/lstrip_blocks must eat the newlines
        // and indentation around the tags.
        let source = "{% for m in messages %}\n    {% if m.content.startswith('x') %}\n{{ m.content.upper() }}\n    {% endif %}\n{% endfor %}\n";
        let t = ChatTemplate::new(source, "", "").expect("template compiles");
        let out = t
            .render(&[ChatMessage::user("xy"), ChatMessage::user("ab")], false)
            .expect("renders");
        assert_eq!(out, "XY\n");
    }

    #[test]
    fn syntax_errors_are_reported_at_compile_time() {
        let err = ChatTemplate::new("{% for m in messages %}", "", "").expect_err("unclosed block");
        assert!(matches!(err, ChatError::Compile(_)), "{err:?}");
    }
}
