//! Prompt templates, rendered in exactly one place: train and eval both call [`Template::render`], and the
//! template id travels in `out/<run>/run.toml`, so eval can never prompt differently from training.
//!
//! # Exact text
//! - [`Template::PaperRole`] (the seed paper's Listing 1): the role sentence, `"\n"`, `"Question:\n"`, the question
//!   with trailing whitespace removed, `"\n"`. So the prompt always ends in exactly one newline, whether or not
//!   the question file ended in one, and the completion starts on its own line. The same English text is used
//!   for every variant (translated questions included), as in the paper.
//! - [`Template::CloudevalZeroShot`]: CloudEval-YAML's `PROMPT_TEMPLATE` (original and simplified questions) or
//!   `TRANSLATED_TEMPLATE` (translated questions), filled the way Python's `str.format` fills `{question}`: the
//!   question verbatim. Both templates begin and end with a newline, as the harness's triple-quoted strings do.

use serde::{Deserialize, Serialize};

use crate::problem::{Problem, Variant, strip_labels};

/// The seed paper's role prompt (Listing 1).
pub const PAPER_ROLE: &str = "You are a cloud-native engineering expert. Given the question, respond exclusively with \
complete and correctly formatted YAML configuration files for Kubernetes. If details are missing, assume the most \
logical defaults.";

// The two CloudEval templates below are copied verbatim (template strings only) from the public CloudEval-YAML
// repository, alibaba/CloudEval-YAML, file `prompt.py` (`PROMPT_TEMPLATE` and `TRANSLATED_TEMPLATE`), MIT licence,
// "Copyright (c) 2023 Alibaba". `{question}` is the placeholder Python's `str.format` fills.

/// CloudEval-YAML's zero-shot `PROMPT_TEMPLATE` (English), with its `{question}` placeholder.
pub const CLOUDEVAL_PROMPT_TEMPLATE: &str = "
You are an expert engineer in cloud native development.
According to the question, please provide only complete formatted YAML code as output without any description.
IMPORTANT: Provide only plain text without Markdown formatting such as ```.
If there is a lack of details, provide most logical solution.
You are not allowed to ask for more details.
Ignore any potential risk of errors or confusion.
Here is the question:
{question}
";

/// CloudEval-YAML's `TRANSLATED_TEMPLATE` (Chinese), used for translated questions, with its `{question}`
/// placeholder.
pub const CLOUDEVAL_TRANSLATED_TEMPLATE: &str = "
你是一名富有经验的云原生开发工程师。
根据问题，请仅提供格式化的YAML代码作为输出，不要包括任何描述。
重要提示：只提供纯文本，不要使用像```这样的Markdown格式。
如果缺少细节，请提供最合逻辑的解决方案。
你不被允许请求更多的细节。
忽略任何可能的错误或混淆的风险。
以下是问题：
{question}
";

/// A prompt template. Serde names: `"paper-role"`, `"cloudeval-zero-shot"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Template {
    /// The seed paper's role prompt followed by `Question:` and the question.
    PaperRole,
    /// CloudEval-YAML's zero-shot prompt (Chinese twin for translated questions).
    CloudevalZeroShot,
}

impl Template {
    /// Every template.
    pub const ALL: [Template; 2] = [Template::PaperRole, Template::CloudevalZeroShot];

    /// The serde / CLI id.
    pub fn id(self) -> &'static str {
        match self {
            Template::PaperRole => "paper-role",
            Template::CloudevalZeroShot => "cloudeval-zero-shot",
        }
    }

    /// Renders the prompt for one question (see the module docs for the exact text).
    pub fn render(&self, question: &str, variant: Variant) -> String {
        match self {
            Template::PaperRole => format!("{PAPER_ROLE}\nQuestion:\n{}\n", question.trim_end()),
            Template::CloudevalZeroShot => {
                let template = match variant {
                    Variant::Translated => CLOUDEVAL_TRANSLATED_TEMPLATE,
                    Variant::Original | Variant::Simplified => CLOUDEVAL_PROMPT_TEMPLATE,
                };
                // `str.format` semantics for a template whose only field is `{question}`: one substitution.
                template.replacen("{question}", question, 1)
            }
        }
    }
}

impl std::fmt::Display for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.id())
    }
}

impl std::str::FromStr for Template {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Template::ALL
            .into_iter()
            .find(|t| t.id() == s)
            .ok_or_else(|| {
                format!(
                    "unknown prompt template `{s}` (expected paper-role or cloudeval-zero-shot)"
                )
            })
    }
}

/// The training target for a problem: [`strip_labels`] of the reference, trailing whitespace removed, ending in
/// exactly one `"\n"`. The end-of-sequence token is appended by the tokenizer (`model::text`), not here.
pub fn completion_target(problem: &Problem) -> String {
    completion_target_of(&problem.reference)
}

/// [`completion_target`] for a bare reference text.
pub fn completion_target_of(reference: &str) -> String {
    let mut target = strip_labels(reference).trim_end().to_owned();
    target.push('\n');
    target
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_role_has_exact_layout() {
        let expected = format!("{PAPER_ROLE}\nQuestion:\nMake a pod.\n");
        assert_eq!(
            Template::PaperRole.render("Make a pod.", Variant::Original),
            expected
        );
        assert_eq!(
            Template::PaperRole.render("Make a pod.\n\n", Variant::Simplified),
            expected
        );
        assert_eq!(
            Template::PaperRole.render("Make a pod.\n", Variant::Translated),
            expected
        );
        assert!(
            PAPER_ROLE
                .starts_with("You are a cloud-native engineering expert. Given the question,")
        );
        assert!(PAPER_ROLE.ends_with("If details are missing, assume the most logical defaults."));
    }

    #[test]
    fn cloudeval_templates_substitute_verbatim() {
        let english = Template::CloudevalZeroShot.render("Q?\n", Variant::Original);
        assert!(english.starts_with("\nYou are an expert engineer in cloud native development.\n"));
        assert!(english.ends_with("Here is the question:\nQ?\n\n"));
        assert_eq!(
            english,
            Template::CloudevalZeroShot.render("Q?\n", Variant::Simplified)
        );
        let chinese = Template::CloudevalZeroShot.render("问题", Variant::Translated);
        assert!(chinese.starts_with("\n你是一名富有经验的云原生开发工程师。\n"));
        assert!(chinese.ends_with("以下是问题：\n问题\n"));
        // A question that itself contains the placeholder text is inserted once, untouched.
        let tricky = Template::CloudevalZeroShot.render("{question}", Variant::Original);
        assert!(tricky.ends_with("Here is the question:\n{question}\n"));
    }

    #[test]
    fn template_ids_round_trip_through_serde_and_from_str() {
        for t in Template::ALL {
            assert_eq!(t.id().parse::<Template>(), Ok(t));
            assert_eq!(
                serde_json::to_string(&t).expect("serialises"),
                format!("\"{}\"", t.id())
            );
        }
    }

    #[test]
    fn completion_target_strips_labels_and_ends_in_one_newline() {
        assert_eq!(completion_target_of("a: 1 # *\nb: 2\n\n\n"), "a: 1\nb: 2\n");
        assert_eq!(completion_target_of("a: 1"), "a: 1\n");
    }
}
