//! A YAML loader with PyYAML `safe_load_all` semantics (pure-Python `SafeLoader`, YAML 1.1 resolution; spec §3.6).
//!
//! Syntax comes from `saphyr-parser` (a maintained, pure-Rust, event-level YAML 1.2 parser that reports scalar
//! styles, anchors, aliases and tags). On top of its events this module adds what PyYAML does differently:
//!
//! - input checks PyYAML's reader and scanner make and saphyr does not: non-printable characters anywhere, and tabs
//!   anywhere outside quoted scalars, block-scalar content and comments;
//! - YAML 1.1 implicit resolution of plain scalars (`yes`/`on` are bools, `010` is octal, `1:30` is 90, `1e3` is a
//!   string, dates and timestamps), PyYAML's constructors (and their failures: impossible dates, a plain `=`,
//!   unknown tags, unhashable keys), merge keys `<<`, and duplicate keys (last value wins, first position kept).
//!
//! Loading is all-or-nothing, as `list(yaml.safe_load_all(text))` is: any error anywhere fails the whole stream.

use crate::fasthash::FxHashMap as HashMap;
use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// Why a YAML stream failed to load (where PyYAML would raise).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum YamlError {
    /// A character PyYAML's reader rejects (C0 controls other than tab/LF/CR, DEL, C1 controls other than NEL,
    /// U+FFFE, U+FFFF).
    #[error("non-printable character {character:?} at character {index}")]
    NonPrintable {
        /// The offending character.
        character: char,
        /// Its index in the input, in characters.
        index: usize,
    },
    /// A tab where PyYAML's scanner only accepts spaces (indentation, between tokens, inside plain scalars).
    #[error(
        "tab character at line {line} (PyYAML only accepts tabs in quoted or block scalars and comments)"
    )]
    Tab {
        /// The 1-based line of the tab.
        line: usize,
    },
    /// The event parser rejected the syntax.
    #[error("syntax error: {0}")]
    Syntax(String),
    /// An alias names an anchor that has not been defined (or is still being defined).
    #[error("undefined or recursive alias")]
    UndefinedAlias,
    /// An anchor name defined twice in one document.
    #[error("found duplicate anchor {0:?}")]
    DuplicateAnchor(String),
    /// A tag `SafeLoader` has no constructor for (including the implicit `=` value tag).
    #[error("no constructor for tag {0:?}")]
    UnknownTag(String),
    /// A tag used on the wrong kind of node (e.g. `!!map` on a sequence).
    #[error("tag {tag:?} cannot be applied to a {kind}")]
    TagKindMismatch {
        /// The tag.
        tag: String,
        /// The node kind it was put on.
        kind: &'static str,
    },
    /// A scalar that its (implicit or explicit) type cannot construct, e.g. the date `2023-13-45`.
    #[error("cannot construct {tag} from {value:?}")]
    BadScalar {
        /// The resolved tag.
        tag: &'static str,
        /// The scalar text.
        value: String,
    },
    /// A mapping key that is a list or mapping (Python cannot hash it).
    #[error("found unhashable key")]
    UnhashableKey,
    /// A merge key `<<` whose value is not a mapping or a list of mappings.
    #[error("merge key expects a mapping or a list of mappings")]
    BadMerge,
}

/// A Python integer as PyYAML builds it (unbounded: values beyond `i128` keep their exact decimal digits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Int {
    /// A value that fits in `i128`.
    Small(i128),
    /// A larger value, as its canonical decimal text (optional `-`, no leading zeros).
    Big(String),
}

/// A calendar date (`datetime.date`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Date {
    /// Year, 1..=9999.
    pub year: u16,
    /// Month, 1..=12.
    pub month: u8,
    /// Day of the month.
    pub day: u8,
}

/// A date and time (`datetime.datetime`), naive or with a fixed UTC offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DateTime {
    /// The calendar date.
    pub date: Date,
    /// Hour, 0..=23.
    pub hour: u8,
    /// Minute, 0..=59.
    pub minute: u8,
    /// Second, 0..=59.
    pub second: u8,
    /// Microsecond, 0..=999_999.
    pub microsecond: u32,
    /// Offset from UTC in minutes, `None` for a naive datetime.
    pub utc_offset_minutes: Option<i32>,
}

/// A loaded YAML value, typed as PyYAML's `SafeLoader` types it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `None`.
    Null,
    /// `bool`.
    Bool(bool),
    /// `int`.
    Int(Int),
    /// `float`.
    Float(f64),
    /// `str`.
    Str(String),
    /// `datetime.date`.
    Date(Date),
    /// `datetime.datetime`.
    DateTime(DateTime),
    /// `list`.
    Seq(Vec<Value>),
    /// `dict`, in insertion order.
    Map(Mapping),
}

/// A Python `dict`: insertion-ordered, keys unique under Python `==` (so `1`, `1.0` and `True` are one key).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Mapping {
    entries: Vec<(Value, Value)>,
}

impl Mapping {
    /// The entries in insertion order.
    pub fn entries(&self) -> &[(Value, Value)] {
        &self.entries
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the mapping has no keys.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value for `key` under Python key equality.
    pub fn get(&self, key: &Value) -> Option<&Value> {
        self.entries
            .iter()
            .find(|(k, _)| python_eq(k, key))
            .map(|(_, v)| v)
    }

    /// `dict[key] = value`: replaces the value of an equal key in place, or appends.
    fn insert(&mut self, key: Value, value: Value) {
        match self.entries.iter_mut().find(|(k, _)| python_eq(k, &key)) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key, value)),
        }
    }
}

impl fmt::Display for Int {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Int::Small(value) => write!(f, "{value}"),
            Int::Big(digits) => f.write_str(digits),
        }
    }
}

/// `list(yaml.safe_load_all(text))`.
pub fn load_all(text: &str) -> Result<Vec<Value>, YamlError> {
    check_printable(text)?;
    // PyYAML skips one BOM at the very start of the stream.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // YAML 1.1 (PyYAML) also breaks lines at NEL, LS and PS; YAML 1.2 (saphyr) does not. PyYAML turns NEL into
    // `\n`, so substituting it is exact. LS/PS stay their own characters inside PyYAML's scalars, so they are left
    // alone: that matches PyYAML inside scalars, and differs only where one separates tokens (a documented gap).
    let normalised: String;
    let text = if text.contains('\u{85}') {
        normalised = text.replace('\u{85}', "\n");
        &normalised
    } else {
        text
    };
    compose_with_line_separators(text)
}

/// Composes `text`, treating LS/PS as line breaks where they separate tokens (as PyYAML does) but keeping them as
/// characters inside quoted and block scalars (where PyYAML keeps them in the value).
fn compose_with_line_separators(text: &str) -> Result<Vec<Value>, YamlError> {
    let is_separator = |c: char| matches!(c, '\u{2028}' | '\u{2029}');
    if !text.contains(is_separator) {
        return compose_all(text).map(|(documents, _)| documents);
    }
    let replace_where = |keep: &dyn Fn(usize) -> bool| -> String {
        text.chars()
            .enumerate()
            .map(|(i, c)| if is_separator(c) && !keep(i) { '\n' } else { c })
            .collect()
    };
    match compose_all(text) {
        Ok((documents, safe_spans)) => {
            let inside = |index: usize| span_containing(&safe_spans, index).is_some();
            let outside = text
                .chars()
                .enumerate()
                .any(|(i, c)| is_separator(c) && !inside(i));
            if !outside {
                return Ok(documents);
            }
            compose_all(&replace_where(&inside)).map(|(documents, _)| documents)
        }
        Err(_) => compose_all(&replace_where(&|_| false)).map(|(documents, _)| documents),
    }
}

/// PyYAML's `Reader.check_printable` over the whole input.
fn check_printable(text: &str) -> Result<(), YamlError> {
    let ascii_printable = |b: &u8| matches!(b, b'\t' | b'\n' | b'\r' | b' '..=b'~');
    if text.bytes().all(|b| ascii_printable(&b)) {
        return Ok(());
    }
    for (index, character) in text.chars().enumerate() {
        let printable = matches!(character,
            '\t' | '\n' | '\r' | ' '..='~' | '\u{85}' | '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..);
        if !printable {
            return Err(YamlError::NonPrintable { character, index });
        }
    }
    Ok(())
}

/// A finished node: its constructed value, and whether it is a merge key `<<` (meaningful in key position only).
struct Item {
    value: Value,
    is_merge_key: bool,
}

/// A collection being built while its events arrive. Values are constructed as their events arrive (PyYAML
/// constructs after composing, but every failure fails the whole load either way, so the order does not matter).
enum OpenNode {
    Seq {
        tag: Option<String>,
        anchor: usize,
        items: Vec<Value>,
    },
    Map {
        tag: Option<String>,
        anchor: usize,
        /// Values of `<<` keys, in order.
        merges: Vec<Value>,
        /// The other pairs, in order (duplicates kept until the mapping is built).
        pairs: Vec<(Value, Value)>,
        pending_key: Option<Item>,
    },
}

fn tag_text(tag: Option<&saphyr_parser::Tag>) -> Option<String> {
    tag.map(|tag| {
        if tag.handle == "!" {
            format!("!{}", tag.suffix)
        } else {
            format!("{}{}", tag.handle, tag.suffix)
        }
    })
}

/// Runs the event parser and builds one node graph per document, checking tabs against the scalar spans. Also
/// returns the character spans of quoted and block scalars.
type Composed = (Vec<Value>, Vec<(usize, usize)>);

fn compose_all(text: &str) -> Result<Composed, YamlError> {
    let mut text = std::borrow::Cow::Borrowed(text);
    // Bounded: each round indents one more line.
    for _ in 0..256 {
        match compose_once(&text) {
            Ok(composed) => return Ok(composed),
            Err(ComposeFailure {
                error,
                repair: Some(repair),
            }) => {
                let repaired = match repair {
                    Repair::IndentLine(line) => indent_line(&text, line),
                    Repair::SpaceBeforeComment(index) => Some(insert_space(&text, index)),
                };
                match repaired {
                    Some(repaired) => text = std::borrow::Cow::Owned(repaired),
                    None => return Err(error),
                }
            }
            Err(ComposeFailure { error, .. }) => return Err(error),
        }
    }
    compose_once(&text).map_err(|failure| failure.error)
}

/// A composition error, with the edit that makes saphyr accept what PyYAML accepts, where there is one.
struct ComposeFailure {
    error: YamlError,
    repair: Option<Repair>,
}

/// Input edits that do not change PyYAML's result but get saphyr (YAML 1.2) past a rule PyYAML does not have.
enum Repair {
    /// Saphyr rejected the indentation of a continuation line inside a flow collection or a quoted scalar, where
    /// PyYAML does not check indentation (the line's leading whitespace is insignificant there). 1-based line.
    IndentLine(usize),
    /// Saphyr requires whitespace before a `#` comment that directly follows `]`, `}` or a closing quote; PyYAML
    /// does not. Character index of the `#`.
    SpaceBeforeComment(usize),
}

/// Inserts a space before character `index`.
fn insert_space(text: &str, index: usize) -> String {
    let mut repaired = String::with_capacity(text.len() + 1);
    for (i, c) in text.chars().enumerate() {
        if i == index {
            repaired.push(' ');
        }
        repaired.push(c);
    }
    repaired
}

/// Whether an empty key scalar is saphyr's implicit key before a bare `:` (which PyYAML rejects), rather than the
/// empty key of an explicit `?` entry.
fn is_implicit_empty_key(chars: &[char], (start, end): (usize, usize)) -> bool {
    if start != end || chars.get(start) != Some(&':') {
        return false;
    }
    let previous = chars[..start]
        .iter()
        .rev()
        .find(|c| !matches!(c, ' ' | '\t' | '\n' | '\r'));
    previous != Some(&'?')
}

/// The first non-blank line after 1-based `line` whose indentation is not deeper than that line's.
fn first_shallow_line_after(text: &str, line: usize) -> Option<usize> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let indent = |l: &str| l.len() - l.trim_start_matches(' ').len();
    let base = indent(lines.get(line.checked_sub(1)?)?);
    lines
        .iter()
        .enumerate()
        .skip(line)
        .find(|(_, l)| !l.trim().is_empty() && indent(l) <= base)
        .map(|(i, _)| i + 1)
}

/// Indents 1-based `line` one column deeper than the previous non-blank line, unless it is a document marker.
fn indent_line(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let target = lines.get(line.checked_sub(1)?)?;
    let content = target.trim_start_matches(' ');
    if content.starts_with("---") || content.starts_with("...") {
        return None;
    }
    let previous_indent = lines[..line - 1]
        .iter()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map_or(0, |l| l.len() - l.trim_start_matches(' ').len());
    let current_indent = target.len() - content.len();
    if current_indent > previous_indent {
        return None;
    }
    let mut repaired = String::with_capacity(text.len() + previous_indent + 1);
    for (index, l) in lines.iter().enumerate() {
        if index == line - 1 {
            repaired.push_str(&" ".repeat(previous_indent + 1));
            repaired.push_str(content);
        } else {
            repaired.push_str(l);
        }
    }
    Some(repaired)
}

fn compose_once(text: &str) -> Result<Composed, ComposeFailure> {
    let fail = |error: YamlError| ComposeFailure {
        error,
        repair: None,
    };
    let chars: Vec<char> = text.chars().collect();
    let mut flow_stack: Vec<bool> = Vec::new();
    let mut parser = Parser::new_from_str(text);
    let mut documents = Vec::new();
    let mut anchors: HashMap<usize, Value> = HashMap::default();
    let mut stack: Vec<OpenNode> = Vec::new();
    let mut tab_safe_spans: Vec<(usize, usize)> = Vec::new();
    let mut scalar_spans: Vec<(usize, usize)> = Vec::new();
    let mut root: Option<Value> = None;
    let text_chars = chars.len();
    while let Some(next) = parser.next_event() {
        let (event, span): (Event<'_>, Span) = match next {
            Ok(pair) => pair,
            Err(error) => {
                let message = error.info().to_string();
                let in_flow = flow_stack.last() == Some(&true);
                let lenient = message.contains("invalid indentation")
                    && (in_flow || message.contains("quoted scalar"));
                let lenient_line = lenient.then(|| {
                    if message.contains("quoted scalar") {
                        // The marker is the scalar's start; the offending line is the first later one that is not
                        // indented past the scalar's line.
                        first_shallow_line_after(text, error.marker().line())
                    } else {
                        Some(error.marker().line())
                    }
                });
                let mut repair = lenient_line.flatten().map(Repair::IndentLine);
                let at = error.marker().index();
                let after_closer = at
                    .checked_sub(1)
                    .and_then(|i| chars.get(i))
                    .is_some_and(|c| matches!(c, ']' | '}' | '"' | '\''));
                if message.contains("comments must be separated")
                    && chars.get(at) == Some(&'#')
                    && after_closer
                {
                    repair = Some(Repair::SpaceBeforeComment(at));
                }
                return Err(ComposeFailure {
                    error: YamlError::Syntax(error.to_string()),
                    repair,
                });
            }
        };
        let finished: Option<Item> = match event {
            Event::StreamStart | Event::Nothing => None,
            Event::StreamEnd => break,
            Event::DocumentStart(_) => {
                anchors.clear();
                root = None;
                None
            }
            Event::DocumentEnd => {
                documents.push(root.take().unwrap_or(Value::Null));
                None
            }
            Event::Alias(id) => Some(Item {
                value: anchors
                    .get(&id)
                    .cloned()
                    .ok_or(fail(YamlError::UndefinedAlias))?,
                is_merge_key: false,
            }),
            Event::Scalar(value, style, anchor, tag) => {
                let range = (span.start.index(), span.end.index());
                scalar_spans.push(range);
                if matches!(
                    style,
                    ScalarStyle::SingleQuoted
                        | ScalarStyle::DoubleQuoted
                        | ScalarStyle::Literal
                        | ScalarStyle::Folded
                ) {
                    tab_safe_spans.push(range);
                }
                let mut value = value.into_owned();
                if matches!(style, ScalarStyle::Literal | ScalarStyle::Folded)
                    && range.1 >= text_chars
                {
                    value = fix_final_block_scalar(text, range.0, value);
                }
                let is_key = matches!(
                    stack.last(),
                    Some(OpenNode::Map {
                        pending_key: None,
                        ..
                    })
                );
                if is_key
                    && value.is_empty()
                    && anchor == 0
                    && tag.is_none()
                    && is_implicit_empty_key(&chars, range)
                {
                    return Err(fail(YamlError::Syntax(format!(
                        "a mapping value without a key at character {} (PyYAML needs `?` for an empty key)",
                        range.0
                    ))));
                }
                let tag = tag_text(tag.as_deref());
                let is_merge_key = is_key && is_merge_key(&value, style, tag.as_deref());
                let value = if is_merge_key {
                    Value::Null
                } else {
                    construct_scalar(&value, style, tag.as_deref(), is_key).map_err(fail)?
                };
                if anchor > 0 {
                    anchors.insert(anchor, value.clone());
                }
                Some(Item {
                    value,
                    is_merge_key,
                })
            }
            Event::SequenceStart(anchor, tag) => {
                flow_stack.push(chars.get(span.start.index()) == Some(&'['));
                stack.push(OpenNode::Seq {
                    tag: tag_text(tag.as_deref()),
                    anchor,
                    items: Vec::new(),
                });
                None
            }
            Event::MappingStart(anchor, tag) => {
                flow_stack.push(chars.get(span.start.index()) == Some(&'{'));
                stack.push(OpenNode::Map {
                    tag: tag_text(tag.as_deref()),
                    anchor,
                    merges: Vec::new(),
                    pairs: Vec::new(),
                    pending_key: None,
                });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => {
                flow_stack.pop();
                let (value, anchor) = match stack.pop() {
                    Some(OpenNode::Seq { tag, anchor, items }) => {
                        check_collection_tag(tag.as_deref(), "seq", "sequence").map_err(fail)?;
                        (Value::Seq(items), anchor)
                    }
                    Some(OpenNode::Map {
                        tag,
                        anchor,
                        merges,
                        pairs,
                        ..
                    }) => {
                        check_collection_tag(tag.as_deref(), "map", "mapping").map_err(fail)?;
                        (build_mapping(merges, pairs).map_err(fail)?, anchor)
                    }
                    None => {
                        return Err(fail(YamlError::Syntax("unbalanced collection end".into())));
                    }
                };
                if anchor > 0 {
                    anchors.insert(anchor, value.clone());
                }
                Some(Item {
                    value,
                    is_merge_key: false,
                })
            }
        };
        if let Some(item) = finished {
            match stack.last_mut() {
                Some(OpenNode::Seq { items, .. }) => items.push(item.value),
                Some(OpenNode::Map {
                    merges,
                    pairs,
                    pending_key,
                    ..
                }) => match pending_key.take() {
                    Some(key) if key.is_merge_key => merges.push(item.value),
                    Some(key) => pairs.push((key.value, item.value)),
                    None if matches!(item.value, Value::Seq(_) | Value::Map(_)) => {
                        return Err(fail(YamlError::UnhashableKey));
                    }
                    None => *pending_key = Some(item),
                },
                None => root = Some(item.value),
            }
        }
    }
    // Scalars do not nest, so sorted spans allow binary search.
    tab_safe_spans.sort_unstable();
    scalar_spans.sort_unstable();
    check_tabs(text, &tab_safe_spans, &scalar_spans).map_err(fail)?;
    check_duplicate_anchors(text, &scalar_spans).map_err(fail)?;
    Ok((documents, tab_safe_spans))
}

/// Recomputes the trailing line breaks of a block scalar that runs to the end of the input, where saphyr adds a
/// line break PyYAML does not (the last line has none) and keeps whitespace-only final lines as breaks.
///
/// PyYAML: the value is the content plus, for clip chomping, one `\n` if any line break follows the last content
/// character; for keep chomping, every such line break; for strip chomping, nothing.
fn fix_final_block_scalar(text: &str, content_start: usize, value: String) -> String {
    let body = value.trim_end_matches('\n');
    if body.is_empty() {
        return value;
    }
    let chars: Vec<char> = text.chars().collect();
    let Some(last_content) = chars.iter().rposition(|c| !matches!(c, ' ' | '\n' | '\r')) else {
        return value;
    };
    if last_content < content_start {
        return value;
    }
    let mut breaks = 0;
    let mut index = last_content + 1;
    while index < chars.len() {
        match chars[index] {
            '\r' if chars.get(index + 1) == Some(&'\n') => {
                breaks += 1;
                index += 1;
            }
            '\r' | '\n' => breaks += 1,
            _ => {}
        }
        index += 1;
    }
    let trailing = match block_chomping(&chars[..content_start.min(chars.len())]) {
        Chomping::Strip => 0,
        Chomping::Clip => breaks.min(1),
        Chomping::Keep => breaks,
    };
    format!("{body}{}", "\n".repeat(trailing))
}

/// A block scalar's chomping indicator.
enum Chomping {
    Strip,
    Clip,
    Keep,
}

/// Finds the block scalar header (`|` or `>`, then indicators, then an optional comment) closest before the content.
fn block_chomping(before: &[char]) -> Chomping {
    for position in (0..before.len()).rev() {
        if !matches!(before[position], '|' | '>') {
            continue;
        }
        let line_end = before[position + 1..]
            .iter()
            .position(|c| matches!(c, '\n' | '\r'))
            .map(|p| position + 1 + p);
        let Some(line_end) = line_end else { continue };
        let header: String = before[position + 1..line_end].iter().collect();
        let indicators: String = header
            .chars()
            .take_while(|c| matches!(c, '+' | '-' | '0'..='9'))
            .collect();
        let rest = header[indicators.len()..].trim_start_matches([' ', '\t']);
        if indicators.len() <= 2 && (rest.is_empty() || rest.starts_with('#')) {
            return if indicators.contains('+') {
                Chomping::Keep
            } else if indicators.contains('-') {
                Chomping::Strip
            } else {
                Chomping::Clip
            };
        }
    }
    Chomping::Clip
}

/// The span (sorted, non-overlapping `[start, end)` character ranges) that contains `index`.
fn span_containing(spans: &[(usize, usize)], index: usize) -> Option<(usize, usize)> {
    let after = spans.partition_point(|&(start, _)| start <= index);
    let &(start, end) = spans.get(after.checked_sub(1)?)?;
    (index < end).then_some((start, end))
}

/// PyYAML's composer rejects an anchor name defined twice in one document; saphyr silently redefines it.
/// Anchors are found in the text: `&name` starting a token, outside scalars and comments.
fn check_duplicate_anchors(text: &str, scalars: &[(usize, usize)]) -> Result<(), YamlError> {
    if !text.contains('&') {
        return Ok(());
    }
    let chars: Vec<char> = text.chars().collect();
    // A scalar's span starts at its properties (`&a 1`), and a plain scalar cannot start with `&`, so only a `&` past
    // the start of a span is scalar content.
    let inside =
        |index: usize| span_containing(scalars, index).is_some_and(|(start, _)| start < index);
    let mut seen: Vec<String> = Vec::new();
    let mut in_comment = false;
    let mut line_start = true;
    let mut index = 0;
    while index < chars.len() {
        let character = chars[index];
        if matches!(character, '\n' | '\r') {
            in_comment = false;
            line_start = true;
            index += 1;
            continue;
        }
        if line_start {
            line_start = false;
            let rest: String = chars[index..chars.len().min(index + 4)].iter().collect();
            let marker = rest.starts_with("---") || rest.starts_with("...");
            if marker
                && rest[3..]
                    .chars()
                    .next()
                    .is_none_or(|c| matches!(c, ' ' | '\t' | '\n' | '\r'))
            {
                seen.clear();
            }
        }
        let previous = index.checked_sub(1).map(|i| chars[i]);
        let token_start =
            previous.is_none_or(|c| matches!(c, ' ' | '\t' | '\n' | '\r' | '[' | '{' | ','));
        if !in_comment && character == '#' && token_start && !inside(index) {
            in_comment = true;
        } else if !in_comment && character == '&' && token_start && !inside(index) {
            let name: String = chars[index + 1..]
                .iter()
                .take_while(|c| {
                    !matches!(c, ' ' | '\t' | '\n' | '\r' | ',' | '[' | ']' | '{' | '}')
                })
                .collect();
            if seen.contains(&name) {
                return Err(YamlError::DuplicateAnchor(name));
            }
            seen.push(name);
        }
        index += 1;
    }
    Ok(())
}

/// PyYAML's scanner only skips spaces between tokens and ends plain scalars at a tab, so a tab anywhere except in a
/// quoted or block scalar or in a comment is an error there.
fn check_tabs(
    text: &str,
    tab_safe: &[(usize, usize)],
    scalars: &[(usize, usize)],
) -> Result<(), YamlError> {
    if !text.contains('\t') {
        return Ok(());
    }
    let inside = |spans: &[(usize, usize)], index: usize| span_containing(spans, index).is_some();
    let mut line = 1;
    let mut in_comment = false;
    let mut previous: Option<char> = None;
    for (index, character) in text.chars().enumerate() {
        match character {
            '\n' | '\r' => {
                in_comment = false;
                if character == '\n' {
                    line += 1;
                }
            }
            '#' if !in_comment
                && !inside(scalars, index)
                && previous.is_none_or(|c| matches!(c, ' ' | '\t' | '\n' | '\r')) =>
            {
                in_comment = true;
            }
            '\t' if !in_comment && !inside(tab_safe, index) => return Err(YamlError::Tab { line }),
            _ => {}
        }
        previous = Some(character);
    }
    Ok(())
}

const TAG_PREFIX: &str = "tag:yaml.org,2002:";

/// The tag PyYAML resolves for a scalar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScalarTag {
    Null,
    Bool,
    Int,
    Float,
    Str,
    Timestamp,
    Merge,
    Value,
}

/// YAML 1.1 implicit resolution (PyYAML `Resolver`), tried in PyYAML's order for the first character.
fn resolve_plain(value: &str) -> ScalarTag {
    let first = value.chars().next();
    match first {
        None => return ScalarTag::Null,
        Some('y' | 'Y' | 'n' | 'N' | 't' | 'T' | 'f' | 'F' | 'o' | 'O') if is_bool(value) => {
            return ScalarTag::Bool;
        }
        _ => {}
    }
    if matches!(first, Some('-' | '+' | '0'..='9' | '.')) && is_float(value) {
        return ScalarTag::Float;
    }
    if matches!(first, Some('-' | '+' | '0'..='9')) && is_int(value) {
        return ScalarTag::Int;
    }
    if value == "<<" {
        return ScalarTag::Merge;
    }
    if matches!(value, "~" | "null" | "Null" | "NULL") {
        return ScalarTag::Null;
    }
    if matches!(first, Some('0'..='9'))
        && parse_timestamp(value).is_some_and(|ts| ts.resolves_implicitly)
    {
        return ScalarTag::Timestamp;
    }
    if value == "=" {
        return ScalarTag::Value;
    }
    ScalarTag::Str
}

fn is_bool(value: &str) -> bool {
    matches!(
        value,
        "yes"
            | "Yes"
            | "YES"
            | "no"
            | "No"
            | "NO"
            | "true"
            | "True"
            | "TRUE"
            | "false"
            | "False"
            | "FALSE"
            | "on"
            | "On"
            | "ON"
            | "off"
            | "Off"
            | "OFF"
    )
}

fn strip_sign(value: &str) -> &str {
    value.strip_prefix(['-', '+']).unwrap_or(value)
}

fn all_bytes(text: &str, allowed: impl Fn(u8) -> bool) -> bool {
    text.bytes().all(allowed)
}

fn is_digits_underscores(text: &str) -> bool {
    all_bytes(text, |b| b.is_ascii_digit() || b == b'_')
}

/// `[0-9][0-9_]*` (or `[1-9][0-9_]*` when `nonzero_first`).
fn is_digit_run(text: &str, nonzero_first: bool) -> bool {
    let mut bytes = text.bytes();
    match bytes.next() {
        Some(b'0') if nonzero_first => false,
        Some(b) if b.is_ascii_digit() => bytes.all(|b| b.is_ascii_digit() || b == b'_'),
        _ => false,
    }
}

/// `(:[0-5]?[0-9])+` after a `:` split: every part is one digit or two with the first in 0–5.
fn is_sexagesimal_tail<'a>(mut parts: impl Iterator<Item = &'a str>) -> bool {
    let mut any = false;
    let ok = parts.all(|part| {
        any = true;
        let b = part.as_bytes();
        match b.len() {
            1 => b[0].is_ascii_digit(),
            2 => (b'0'..=b'5').contains(&b[0]) && b[1].is_ascii_digit(),
            _ => false,
        }
    });
    ok && any
}

fn is_int(value: &str) -> bool {
    let body = strip_sign(value);
    if let Some(rest) = body.strip_prefix("0b") {
        return !rest.is_empty() && all_bytes(rest, |b| matches!(b, b'0' | b'1' | b'_'));
    }
    if let Some(rest) = body.strip_prefix("0x") {
        return !rest.is_empty() && all_bytes(rest, |b| b.is_ascii_hexdigit() || b == b'_');
    }
    if body.len() >= 2
        && body.starts_with('0')
        && all_bytes(&body[1..], |b| matches!(b, b'0'..=b'7' | b'_'))
    {
        return true;
    }
    if body == "0" || is_digit_run(body, true) {
        return true;
    }
    let mut parts = body.split(':');
    parts.next().is_some_and(|head| is_digit_run(head, true))
        && body.contains(':')
        && is_sexagesimal_tail(parts)
}

/// `[eE][-+][0-9]+` or nothing.
fn is_optional_exponent(text: &str) -> bool {
    if text.is_empty() {
        return true;
    }
    let b = text.as_bytes();
    b.len() >= 3
        && matches!(b[0], b'e' | b'E')
        && matches!(b[1], b'-' | b'+')
        && b[2..].iter().all(u8::is_ascii_digit)
}

fn is_float(value: &str) -> bool {
    if matches!(value, ".nan" | ".NaN" | ".NAN") {
        return true;
    }
    let body = strip_sign(value);
    if matches!(body, ".inf" | ".Inf" | ".INF") {
        return true;
    }
    // `\.[0-9][0-9_]*([eE][-+][0-9]+)?` takes no sign.
    if let Some(rest) = value.strip_prefix('.') {
        let end = rest.find(['e', 'E']).unwrap_or(rest.len());
        if is_digit_run(&rest[..end], false) && is_optional_exponent(&rest[end..]) {
            return true;
        }
    }
    let Some(dot) = body.find('.') else {
        return false;
    };
    let (head, tail) = (&body[..dot], &body[dot + 1..]);
    if is_digit_run(head, false) {
        let end = tail.find(['e', 'E']).unwrap_or(tail.len());
        if is_digits_underscores(&tail[..end]) && is_optional_exponent(&tail[end..]) {
            return true;
        }
    }
    // Sexagesimal: `[0-9][0-9_]*(:[0-5]?[0-9])+\.[0-9_]*`.
    let mut parts = head.split(':');
    head.contains(':')
        && parts.next().is_some_and(|first| is_digit_run(first, false))
        && is_sexagesimal_tail(parts)
        && is_digits_underscores(tail)
}

/// The groups of PyYAML's `timestamp_regexp`.
#[derive(Debug)]
struct TimestampParts<'a> {
    year: &'a str,
    month: &'a str,
    day: &'a str,
    time: Option<TimeParts<'a>>,
    /// Whether the implicit resolver's (stricter) pattern also matches.
    resolves_implicitly: bool,
}

#[derive(Debug)]
struct TimeParts<'a> {
    hour: &'a str,
    minute: &'a str,
    second: &'a str,
    fraction: &'a str,
    /// `None`: naive; `Some(None)`: `Z`; `Some(Some((sign, hour, minute)))`.
    tz: Option<Option<(char, &'a str, &'a str)>>,
}

/// Takes 1 or 2 (greedy) ASCII digits from the front.
fn take_digits(text: &str, min: usize, max: usize) -> Option<(&str, &str)> {
    let count = text
        .bytes()
        .take(max)
        .take_while(u8::is_ascii_digit)
        .count();
    (count >= min).then(|| text.split_at(count))
}

fn parse_timestamp(value: &str) -> Option<TimestampParts<'_>> {
    let (year, rest) = take_digits(value, 4, 4)?;
    let rest = rest.strip_prefix('-')?;
    let (month, rest) = take_digits(rest, 1, 2)?;
    let rest = rest.strip_prefix('-')?;
    let (day, rest) = take_digits(rest, 1, 2)?;
    if rest.is_empty() {
        let strict = month.len() == 2 && day.len() == 2;
        return Some(TimestampParts {
            year,
            month,
            day,
            time: None,
            resolves_implicitly: strict,
        });
    }
    let rest = match rest.strip_prefix(['T', 't']) {
        Some(rest) => rest,
        None => {
            let trimmed = rest.trim_start_matches([' ', '\t']);
            if trimmed.len() == rest.len() {
                return None;
            }
            trimmed
        }
    };
    let (hour, rest) = take_digits(rest, 1, 2)?;
    let (minute, rest) = take_digits(rest.strip_prefix(':')?, 2, 2)?;
    let (second, rest) = take_digits(rest.strip_prefix(':')?, 2, 2)?;
    let (fraction, rest) = match rest.strip_prefix('.') {
        Some(after) => {
            let count = after.bytes().take_while(u8::is_ascii_digit).count();
            after.split_at(count)
        }
        None => ("", rest),
    };
    let tz = if rest.is_empty() {
        None
    } else {
        let rest = rest.trim_start_matches([' ', '\t']);
        if rest == "Z" {
            Some(None)
        } else {
            let sign = rest.chars().next().filter(|c| matches!(c, '+' | '-'))?;
            let (tz_hour, rest) = take_digits(&rest[1..], 1, 2)?;
            let tz_minute = if rest.is_empty() {
                ""
            } else {
                let (tz_minute, rest) = take_digits(rest.strip_prefix(':')?, 2, 2)?;
                if !rest.is_empty() {
                    return None;
                }
                tz_minute
            };
            Some(Some((sign, tz_hour, tz_minute)))
        }
    };
    let time = TimeParts {
        hour,
        minute,
        second,
        fraction,
        tz,
    };
    Some(TimestampParts {
        year,
        month,
        day,
        time: Some(time),
        resolves_implicitly: true,
    })
}

fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// PyYAML `construct_yaml_timestamp`, with `datetime`'s range checks.
fn construct_timestamp(value: &str) -> Option<Value> {
    let parts = parse_timestamp(value)?;
    let year: u16 = parts.year.parse().ok()?;
    let month: u8 = parts.month.parse().ok()?;
    let day: u8 = parts.day.parse().ok()?;
    if year == 0 || !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let date = Date { year, month, day };
    let Some(time) = parts.time else {
        return Some(Value::Date(date));
    };
    let hour: u8 = time.hour.parse().ok()?;
    let minute: u8 = time.minute.parse().ok()?;
    let second: u8 = time.second.parse().ok()?;
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let microsecond = if time.fraction.is_empty() {
        0
    } else {
        let mut digits: String = time.fraction.chars().take(6).collect();
        while digits.len() < 6 {
            digits.push('0');
        }
        digits.parse().ok()?
    };
    let utc_offset_minutes = match time.tz {
        None => None,
        Some(None) => Some(0),
        Some(Some((sign, tz_hour, tz_minute))) => {
            let hours: i32 = tz_hour.parse().ok()?;
            let minutes: i32 = if tz_minute.is_empty() {
                0
            } else {
                tz_minute.parse().ok()?
            };
            let total = hours * 60 + minutes;
            // `datetime.timezone` needs strictly less than 24 hours.
            if total >= 24 * 60 {
                return None;
            }
            Some(if sign == '-' { -total } else { total })
        }
    };
    Some(Value::DateTime(DateTime {
        date,
        hour,
        minute,
        second,
        microsecond,
        utc_offset_minutes,
    }))
}

/// Python `int(digits, radix)` for ASCII digits (no sign, no underscores), unbounded.
fn parse_radix(digits: &str, radix: u32) -> Option<Int> {
    if digits.is_empty() {
        return None;
    }
    let mut small: Option<i128> = Some(0);
    // Base-1e9 limbs, least significant first, used once `i128` overflows.
    let mut limbs: Vec<u64> = Vec::new();
    for character in digits.chars() {
        let digit = character.to_digit(radix)?;
        if let Some(value) = small {
            small = value
                .checked_mul(radix as i128)
                .and_then(|v| v.checked_add(digit as i128));
            if small.is_none() {
                limbs = to_limbs(value);
                mul_add(&mut limbs, radix as u64, digit as u64);
            }
        } else {
            mul_add(&mut limbs, radix as u64, digit as u64);
        }
    }
    Some(match small {
        Some(value) => Int::Small(value),
        None => Int::Big(limbs_to_decimal(&limbs)),
    })
}

const LIMB: u64 = 1_000_000_000;

fn to_limbs(mut value: i128) -> Vec<u64> {
    let mut limbs = Vec::new();
    while value > 0 {
        limbs.push((value % LIMB as i128) as u64);
        value /= LIMB as i128;
    }
    limbs
}

fn mul_add(limbs: &mut Vec<u64>, multiplier: u64, addend: u64) {
    let mut carry = addend;
    for limb in limbs.iter_mut() {
        let product = *limb * multiplier + carry;
        *limb = product % LIMB;
        carry = product / LIMB;
    }
    while carry > 0 {
        limbs.push(carry % LIMB);
        carry /= LIMB;
    }
}

fn limbs_to_decimal(limbs: &[u64]) -> String {
    let mut text = String::new();
    for (index, limb) in limbs.iter().rev().enumerate() {
        if index == 0 {
            text.push_str(&limb.to_string());
        } else {
            text.push_str(&format!("{limb:09}"));
        }
    }
    if text.is_empty() { "0".into() } else { text }
}

fn negate(int: Int) -> Int {
    match int {
        Int::Small(value) => Int::Small(-value),
        Int::Big(digits) => Int::Big(format!("-{digits}")),
    }
}

/// PyYAML `construct_yaml_int`.
fn construct_int(text: &str) -> Option<Int> {
    let cleaned = text.replace('_', "");
    let negative = cleaned.starts_with('-');
    let body = strip_sign(&cleaned);
    let magnitude = if body == "0" {
        Int::Small(0)
    } else if let Some(binary) = body.strip_prefix("0b") {
        parse_radix(binary, 2)?
    } else if let Some(hex) = body.strip_prefix("0x") {
        parse_radix(hex, 16)?
    } else if body.starts_with('0') {
        parse_radix(body, 8)?
    } else if body.contains(':') {
        let mut total: i128 = 0;
        let mut base: i128 = 1;
        for part in body.split(':').rev() {
            let Int::Small(digit) = parse_radix(part, 10)? else {
                return None;
            };
            total = total.checked_add(digit.checked_mul(base)?)?;
            base = base.checked_mul(60)?;
        }
        Int::Small(total)
    } else {
        parse_radix(body, 10)?
    };
    Some(if negative {
        negate(magnitude)
    } else {
        magnitude
    })
}

/// PyYAML `construct_yaml_float`.
fn construct_float(text: &str) -> Option<f64> {
    let cleaned = text.replace('_', "").to_lowercase();
    let sign = if cleaned.starts_with('-') { -1.0 } else { 1.0 };
    let body = strip_sign(&cleaned);
    if body == ".inf" {
        return Some(sign * f64::INFINITY);
    }
    if body == ".nan" {
        return Some(f64::NAN);
    }
    if body.contains(':') {
        let mut total = 0.0;
        let mut base: i64 = 1;
        for part in body.split(':').rev() {
            total += python_float(part)? * base as f64;
            base = base.checked_mul(60)?;
        }
        return Some(sign * total);
    }
    Some(sign * python_float(body)?)
}

/// Python `float(text)` for the decimal forms the resolver lets through (`1.`, `.5`, `1.e+5`, `1e5` via tags).
fn python_float(text: &str) -> Option<f64> {
    let text = text.trim_matches(crate::pystr::is_py_whitespace);
    let lower = text.to_ascii_lowercase();
    let unsigned = strip_sign(&lower);
    if matches!(unsigned, "inf" | "infinity" | "nan") {
        return lower.parse().ok();
    }
    if !unsigned
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'-' | b'+'))
    {
        return None;
    }
    // Rust rejects a mantissa with no digits after the dot only before an exponent; normalise `1.e5` → `1.0e5`.
    let normalised = lower.replacen(".e", ".0e", 1);
    let normalised = if normalised.ends_with('.') {
        format!("{normalised}0")
    } else {
        normalised
    };
    normalised.parse().ok()
}

fn check_collection_tag(
    tag: Option<&str>,
    expected: &str,
    kind: &'static str,
) -> Result<(), YamlError> {
    match tag {
        None | Some("!") => Ok(()),
        Some(tag) if tag.strip_prefix(TAG_PREFIX) == Some(expected) => Ok(()),
        Some(tag)
            if tag.starts_with(TAG_PREFIX)
                && [
                    "seq",
                    "map",
                    "str",
                    "int",
                    "float",
                    "bool",
                    "null",
                    "timestamp",
                ]
                .contains(&&tag[TAG_PREFIX.len()..]) =>
        {
            Err(YamlError::TagKindMismatch {
                tag: tag.to_string(),
                kind,
            })
        }
        Some(tag) => Err(YamlError::UnknownTag(tag.to_string())),
    }
}

/// PyYAML `flatten_mapping` + `construct_mapping`: merged pairs first (a list of mappings merges the later ones
/// first), then the mapping's own pairs, inserted in order (a repeated key keeps its first position, last value).
///
/// Merged mappings arrive already built; inserting a built mapping's entries gives the same dict as inserting its
/// raw pairs, because insertion keeps first positions and last values either way.
fn build_mapping(merges: Vec<Value>, pairs: Vec<(Value, Value)>) -> Result<Value, YamlError> {
    let mut mapping = Mapping::default();
    for merge in merges {
        match merge {
            Value::Map(merged) => {
                for (key, value) in merged.entries {
                    mapping.insert(key, value);
                }
            }
            Value::Seq(items) => {
                let mut groups = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::Map(merged) => groups.push(merged),
                        _ => return Err(YamlError::BadMerge),
                    }
                }
                for merged in groups.into_iter().rev() {
                    for (key, value) in merged.entries {
                        mapping.insert(key, value);
                    }
                }
            }
            _ => return Err(YamlError::BadMerge),
        }
    }
    for (key, value) in pairs {
        mapping.insert(key, value);
    }
    Ok(Value::Map(mapping))
}

/// Whether a key scalar is the merge key: plain `<<` (or `<<` under the non-specific `!`), or tagged `!!merge`.
fn is_merge_key(value: &str, style: ScalarStyle, tag: Option<&str>) -> bool {
    match tag {
        Some("!") => value == "<<",
        Some(tag) => tag == "tag:yaml.org,2002:merge",
        None => style == ScalarStyle::Plain && value == "<<",
    }
}

/// Resolves and constructs one scalar. `as_key`: PyYAML turns an implicit `=` key into a string.
fn construct_scalar(
    value: &str,
    style: ScalarStyle,
    tag: Option<&str>,
    as_key: bool,
) -> Result<Value, YamlError> {
    let resolved = match tag {
        None if style == ScalarStyle::Plain => resolve_plain(value),
        None => ScalarTag::Str,
        // The non-specific `!` tag resolves as if the scalar were plain, whatever its style.
        Some("!") => resolve_plain(value),
        Some(tag) => match tag.strip_prefix(TAG_PREFIX) {
            Some("str") => ScalarTag::Str,
            Some("int") => ScalarTag::Int,
            Some("float") => ScalarTag::Float,
            Some("bool") => ScalarTag::Bool,
            Some("null") => ScalarTag::Null,
            Some("timestamp") => ScalarTag::Timestamp,
            Some("merge") => ScalarTag::Merge,
            Some("value") => ScalarTag::Value,
            Some(kind @ ("seq" | "map")) => {
                let kind_tag = format!("{TAG_PREFIX}{kind}");
                return Err(YamlError::TagKindMismatch {
                    tag: kind_tag,
                    kind: "scalar",
                });
            }
            _ => return Err(YamlError::UnknownTag(tag.to_string())),
        },
    };
    let bad = |tag: &'static str| YamlError::BadScalar {
        tag,
        value: value.to_string(),
    };
    Ok(match resolved {
        ScalarTag::Null => Value::Null,
        ScalarTag::Str => Value::Str(value.to_string()),
        ScalarTag::Bool => match value.to_lowercase().as_str() {
            "yes" | "true" | "on" => Value::Bool(true),
            "no" | "false" | "off" => Value::Bool(false),
            _ => return Err(bad("bool")),
        },
        ScalarTag::Int => Value::Int(construct_int(value).ok_or_else(|| bad("int"))?),
        ScalarTag::Float => Value::Float(construct_float(value).ok_or_else(|| bad("float"))?),
        ScalarTag::Timestamp => construct_timestamp(value).ok_or_else(|| bad("timestamp"))?,
        ScalarTag::Value if as_key && tag.is_none() => Value::Str(value.to_string()),
        ScalarTag::Value => return Err(YamlError::UnknownTag(format!("{TAG_PREFIX}value"))),
        ScalarTag::Merge => return Err(YamlError::UnknownTag(format!("{TAG_PREFIX}merge"))),
    })
}

/// Python `==` between loaded values: numbers compare across `bool`/`int`/`float` (`1 == 1.0 == True`), `NaN`
/// differs from itself, naive and aware datetimes differ, lists compare in order, dicts by key set.
///
/// Inside lists and dicts, Python compares identical objects as equal first; every `.nan` PyYAML builds is the
/// same object, so two NaNs there are equal.
pub fn python_eq(left: &Value, right: &Value) -> bool {
    eq_with(left, right, false)
}

fn eq_with(left: &Value, right: &Value, nested: bool) -> bool {
    use Value::*;
    match (left, right) {
        (Null, Null) => true,
        (Str(a), Str(b)) => a == b,
        (Date(a), Date(b)) => a == b,
        (DateTime(a), DateTime(b)) => datetimes_equal(a, b),
        (Seq(a), Seq(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| eq_with(x, y, true)),
        (Map(a), Map(b)) => {
            a.len() == b.len()
                && a.entries
                    .iter()
                    .all(|(key, value)| b.get(key).is_some_and(|other| eq_with(value, other, true)))
        }
        (Float(a), Float(b)) if a.is_nan() && b.is_nan() => nested,
        _ => match (as_number(left), as_number(right)) {
            (Some(a), Some(b)) => numbers_equal(&a, &b),
            _ => false,
        },
    }
}

/// A number for cross-type comparison.
enum Number<'a> {
    Int(i128),
    Big(&'a str),
    Float(f64),
}

fn as_number(value: &Value) -> Option<Number<'_>> {
    match value {
        Value::Bool(b) => Some(Number::Int(*b as i128)),
        Value::Int(Int::Small(i)) => Some(Number::Int(*i)),
        Value::Int(Int::Big(digits)) => Some(Number::Big(digits)),
        Value::Float(f) => Some(Number::Float(*f)),
        _ => None,
    }
}

fn numbers_equal(a: &Number<'_>, b: &Number<'_>) -> bool {
    match (a, b) {
        (Number::Int(x), Number::Int(y)) => x == y,
        (Number::Big(x), Number::Big(y)) => x == y,
        (Number::Float(x), Number::Float(y)) => x == y,
        (Number::Int(i), Number::Float(f)) | (Number::Float(f), Number::Int(i)) => {
            int_equals_float(*i, *f)
        }
        // A big int is beyond i128; an f64 that large is an integer, compare its exact decimal expansion.
        (Number::Big(digits), Number::Float(f)) | (Number::Float(f), Number::Big(digits)) => {
            f.is_finite() && f.fract() == 0.0 && format!("{f:.0}") == *digits
        }
        (Number::Big(_), Number::Int(_)) | (Number::Int(_), Number::Big(_)) => false,
    }
}

/// Python's exact `int == float`.
fn int_equals_float(int: i128, float: f64) -> bool {
    // 2^127 is exactly representable; any finite integral float below it converts exactly.
    float.is_finite()
        && float.fract() == 0.0
        && float.abs() < 2f64.powi(127)
        && float as i128 == int
}

fn datetimes_equal(a: &DateTime, b: &DateTime) -> bool {
    match (a.utc_offset_minutes, b.utc_offset_minutes) {
        (None, None) => a == b,
        (Some(_), Some(_)) => utc_instant(a) == utc_instant(b),
        _ => false,
    }
}

/// Microseconds since 0001-01-01 UTC.
fn utc_instant(value: &DateTime) -> i128 {
    let Date { year, month, day } = value.date;
    let mut days: i128 = 0;
    let y = year as i128 - 1;
    days += y * 365 + y / 4 - y / 100 + y / 400;
    for m in 1..month {
        days += days_in_month(year, m) as i128;
    }
    days += day as i128 - 1;
    let minutes = days * 24 * 60 + value.hour as i128 * 60 + value.minute as i128
        - value.utc_offset_minutes.unwrap_or(0) as i128;
    (minutes * 60 + value.second as i128) * 1_000_000 + value.microsecond as i128
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Value {
        let mut documents = load_all(text).expect("loads");
        assert_eq!(documents.len(), 1, "{text:?}");
        documents.remove(0)
    }

    fn scalar(text: &str) -> Value {
        match one(&format!("k: {text}")) {
            Value::Map(mapping) => mapping.entries()[0].1.clone(),
            other => panic!("not a mapping: {other:?}"),
        }
    }

    #[test]
    fn yaml11_scalars_resolve_as_pyyaml() {
        assert_eq!(scalar("yes"), Value::Bool(true));
        assert_eq!(scalar("Off"), Value::Bool(false));
        assert_eq!(scalar("y"), Value::Str("y".into()));
        assert_eq!(scalar("010"), Value::Int(Int::Small(8)));
        assert_eq!(scalar("09"), Value::Str("09".into()));
        assert_eq!(scalar("0o7"), Value::Str("0o7".into()));
        assert_eq!(scalar("1:30"), Value::Int(Int::Small(90)));
        assert_eq!(scalar("1_000"), Value::Int(Int::Small(1000)));
        assert_eq!(scalar("0x1F"), Value::Int(Int::Small(31)));
        assert_eq!(scalar("1e3"), Value::Str("1e3".into()));
        assert_eq!(scalar("1.5e+5"), Value::Float(150000.0));
        assert_eq!(scalar("1."), Value::Float(1.0));
        assert_eq!(scalar("-.5"), Value::Str("-.5".into()));
        assert_eq!(scalar(".5"), Value::Float(0.5));
        assert_eq!(scalar("1:30.5"), Value::Float(90.5));
        assert_eq!(scalar("~"), Value::Null);
        assert_eq!(scalar(""), Value::Null);
        assert_eq!(scalar("'yes'"), Value::Str("yes".into()));
        assert_eq!(
            scalar("2001-12-14"),
            Value::Date(Date {
                year: 2001,
                month: 12,
                day: 14
            })
        );
        assert_eq!(scalar("2001-1-14"), Value::Str("2001-1-14".into()));
        assert_eq!(
            scalar("123456789012345678901234567890123456789012"),
            Value::Int(Int::Big(
                "123456789012345678901234567890123456789012".into()
            ))
        );
    }

    #[test]
    fn pyyaml_failures_fail() {
        for text in [
            "k: 2023-13-45",
            "k: =",
            "k: !foo x",
            "k:\tv",
            "a: b\x1c",
            "[a]: 1",
            "k: 2001-02-29",
        ] {
            assert!(load_all(text).is_err(), "{text:?} should fail");
        }
    }

    #[test]
    fn merge_keys_and_duplicates() {
        let value = one("base: &b {x: 1, y: 2}\nm:\n  <<: *b\n  y: 3\n  x: 4\n  x: 5\n");
        let Value::Map(root) = value else {
            panic!("mapping")
        };
        let Value::Map(merged) = root.get(&Value::Str("m".into())).expect("m").clone() else {
            panic!("mapping")
        };
        let keys: Vec<_> = merged
            .entries()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(
            keys,
            [
                (Value::Str("x".into()), Value::Int(Int::Small(5))),
                (Value::Str("y".into()), Value::Int(Int::Small(3))),
            ]
        );
    }

    #[test]
    fn documents_and_empty_streams() {
        assert_eq!(load_all("").expect("loads"), []);
        assert_eq!(load_all("# only a comment\n").expect("loads"), []);
        assert_eq!(load_all("a: 1\n---\n").expect("loads").len(), 2);
        assert_eq!(load_all("---\n").expect("loads"), [Value::Null]);
    }

    #[test]
    fn python_equality_crosses_numeric_types() {
        assert!(python_eq(&Value::Int(Int::Small(1)), &Value::Bool(true)));
        assert!(python_eq(&Value::Float(1.0), &Value::Int(Int::Small(1))));
        assert!(!python_eq(
            &Value::Str("1".into()),
            &Value::Int(Int::Small(1))
        ));
        assert!(!python_eq(&Value::Float(f64::NAN), &Value::Float(f64::NAN)));
        assert!(python_eq(
            &Value::Seq(vec![Value::Float(f64::NAN)]),
            &Value::Seq(vec![Value::Float(f64::NAN)])
        ));
    }
}
