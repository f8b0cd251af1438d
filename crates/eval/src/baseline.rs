//! Model-free baselines, scored and written exactly like a model's predictions.
//!
//! - `echo`: the first fenced YAML block of the question (info string empty, `yaml` or `yml`), or the empty string
//!   when the question has none. Many questions embed the object to modify, so copying it back is a strong floor.
//! - `nearest`: the label-stripped reference of the most similar *training-split* question under TF-IDF cosine
//!   similarity over lowercase word unigrams and bigrams ([`crate::similarity`]). Each training row (problem ×
//!   question variant) is one document; ties go to the first row in the split's order.
//! - `echo-or-nearest`: `echo` when the question carries a YAML block, else `nearest`.

use clap::ValueEnum;

use crate::similarity::TfIdfIndex;
use task::Row;

/// A baseline system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Baseline {
    /// The first fenced YAML block of the question, or nothing.
    Echo,
    /// The label-stripped reference of the most similar training question (TF-IDF cosine).
    Nearest,
    /// `echo` when the question has a YAML block, else `nearest`.
    EchoOrNearest,
}

impl Baseline {
    /// The name used in result directories and `ScoreReport::system` (after `baseline-`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Echo => "echo",
            Self::Nearest => "nearest",
            Self::EchoOrNearest => "echo-or-nearest",
        }
    }
}

/// Answers of the `nearest` baseline: the training questions and their label-stripped references.
#[derive(Debug, Clone)]
pub struct NearestNeighbours {
    index: TfIdfIndex,
    answers: Vec<String>,
}

impl NearestNeighbours {
    /// Indexes the training rows' questions; each answers with its problem's label-stripped reference.
    pub fn new(training_rows: &[Row]) -> Self {
        let questions: Vec<&str> = training_rows
            .iter()
            .map(|row| row.question.as_str())
            .collect();
        let answers = training_rows
            .iter()
            .map(|row| task::strip_labels(&row.reference))
            .collect();
        Self {
            index: TfIdfIndex::build(&questions),
            answers,
        }
    }

    /// The answer for the training question most similar to `question`; empty when there is no training row.
    pub fn answer(&self, question: &str) -> &str {
        self.index
            .nearest(question)
            .map_or("", |(index, _)| self.answers[index].as_str())
    }
}

/// The baseline's output for one question (before the harness's extraction, like a model's raw output).
pub fn answer(baseline: Baseline, question: &str, nearest: &NearestNeighbours) -> String {
    match baseline {
        Baseline::Echo => first_yaml_block(question).unwrap_or_default().to_owned(),
        Baseline::Nearest => nearest.answer(question).to_owned(),
        Baseline::EchoOrNearest => match first_yaml_block(question) {
            Some(block) if !block.trim().is_empty() => block.to_owned(),
            _ => nearest.answer(question).to_owned(),
        },
    }
}

/// The body of the first ```` ``` ```` fenced block whose info string is empty, `yaml` or `yml`.
///
/// The body runs from the line after the opening fence to the closing fence (an unclosed fence runs to the end of
/// the text). Blocks tagged with another language (```` ```json ````, ```` ```bash ````) are skipped.
pub fn first_yaml_block(text: &str) -> Option<&str> {
    let mut rest = text;
    while let Some(open) = rest.find("```") {
        let after_fence = &rest[open + 3..];
        let (info, body_start) = match after_fence.find('\n') {
            Some(newline) => (&after_fence[..newline], newline + 1),
            None => (after_fence, after_fence.len()),
        };
        // A fence closed on its own line ("```yaml ... ```" inline) has no body line; treat the info as the body.
        let info_is_tag = !info.contains("```");
        let body_and_more = if info_is_tag {
            &after_fence[body_start..]
        } else {
            after_fence
        };
        let (body, after_block) = match body_and_more.find("```") {
            Some(close) => (&body_and_more[..close], &body_and_more[close + 3..]),
            None => (body_and_more, ""),
        };
        let tag = if info_is_tag {
            info.trim().to_ascii_lowercase()
        } else {
            String::new()
        };
        if matches!(tag.as_str(), "" | "yaml" | "yml") {
            return Some(body);
        }
        rest = after_block;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_takes_the_first_yaml_fence_body() {
        let question = "Given this pod:\n```yaml\napiVersion: v1\nkind: Pod\n```\nadd a label.\n```\nx: 1\n```";
        assert_eq!(
            first_yaml_block(question),
            Some("apiVersion: v1\nkind: Pod\n")
        );
        assert_eq!(first_yaml_block("```\na: 1\n```"), Some("a: 1\n"));
        assert_eq!(first_yaml_block("```YML\na: 1\n```"), Some("a: 1\n"));
    }

    #[test]
    fn echo_skips_other_languages_and_handles_unclosed_fences() {
        let question = "Run:\n```bash\nkubectl get pods\n```\nwith\n```yaml\nkind: Pod\n```";
        assert_eq!(first_yaml_block(question), Some("kind: Pod\n"));
        assert_eq!(
            first_yaml_block("```yaml\nkind: Pod\n"),
            Some("kind: Pod\n")
        );
        assert_eq!(first_yaml_block("no fences at all"), None);
        assert_eq!(first_yaml_block("```json\n{}\n```"), None);
    }

    fn row(id: &str, question: &str, reference: &str) -> Row {
        Row {
            row_id: format!("{id}#original"),
            problem_id: id.to_owned(),
            variant: task::Variant::Original,
            lib: "Kubernetes".to_owned(),
            category: "pod".to_owned(),
            question: question.to_owned(),
            reference: reference.to_owned(),
        }
    }

    #[test]
    fn nearest_answers_with_the_label_stripped_reference() {
        let training = [
            row(
                "Kubernetes_pod_q1",
                "Create a pod running nginx",
                "kind: Pod\nname: web # *\n",
            ),
            row(
                "Kubernetes_job_q1",
                "Create a job computing pi",
                "kind: Job\n",
            ),
        ];
        let nearest = NearestNeighbours::new(&training);
        assert_eq!(
            answer(Baseline::Nearest, "an nginx pod please", &nearest),
            "kind: Pod\nname: web\n"
        );
        assert_eq!(answer(Baseline::Echo, "an nginx pod please", &nearest), "");
        assert_eq!(
            answer(Baseline::EchoOrNearest, "a job for pi", &nearest),
            "kind: Job\n"
        );
        assert_eq!(
            answer(Baseline::EchoOrNearest, "fix ```\nkind: Pod\n```", &nearest),
            "kind: Pod\n"
        );
        assert_eq!(
            answer(Baseline::Nearest, "anything", &NearestNeighbours::new(&[])),
            ""
        );
    }
}
