//! Loaders: a CloudEval directory tree, CloudEval's password-protected `data.zip` (read in memory), or our JSONL.
//!
//! All three return problems in CloudEval's order ([`sort_cloudeval_order`]) and apply the same
//! [`LoadOptions`] filters. The directory and zip loaders share one walker over a list of relative file
//! paths, so they accept exactly the same layout:
//!
//! ```text
//! [<prefix>/]<Lib>/<mode>/q<N>/question.txt             required, non-empty
//!                             question_simplified.txt  optional
//!                             question_translated.txt  optional
//!                             labeled_code.yaml        required, not blank
//!                             unit_test.sh             optional
//!                             anything else            ignored (Envoy unit-test context)
//! ```
//!
//! The prefix (e.g. the `data/` folder inside CloudEval's zip) is detected from where the `question.txt`
//! files sit. Hidden entries (a component starting with `.`) and `__MACOSX/` are ignored. Lib and mode folder
//! names must be ASCII letters, digits or `-` (so the id `<Lib>_<mode>_q<N>` is unambiguous); problem
//! folders must be `q<N>` with `N` written without leading zeros.
//!
//! Text files are decoded as UTF-8 and their line endings translated as Python's text mode does
//! ([`universal_newlines`]), because that is the text CloudEval's harness prompts with and scores against;
//! otherwise they are kept verbatim (the reference keeps its `# *` labels and trailing newline).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Cursor, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::problem::{Problem, Variant};

/// CloudEval's lib order (`config.json` `available_libs`); other libs follow alphabetically.
pub const CLOUDEVAL_LIB_ORDER: [&str; 3] = ["Kubernetes", "Envoy", "Istio"];

/// CloudEval's mode order (`config.json` `available_modes`); other modes follow alphabetically.
pub const CLOUDEVAL_MODE_ORDER: [&str; 27] = [
    "pod",
    "job",
    "deployment",
    "service",
    "cronjob",
    "replicaset",
    "replicationcontroller",
    "statefulset",
    "ingress",
    "configmap",
    "persistentvolume",
    "secret",
    "resourcequota",
    "limitrange",
    "serviceaccount",
    "role",
    "daemonset",
    "endpoint",
    "horizontalpodautoscaler",
    "extend",
    "storageclass",
    "policy",
    "gateway",
    "destinationrule",
    "serviceentry",
    "virtualservice",
    "all",
];

/// What to load. The default loads everything and takes no zip password. `Debug` prints the password as
/// `<redacted>`, so logging the options never leaks it.
#[derive(Clone, Default, PartialEq)]
pub struct LoadOptions {
    /// Keep only these question variants (empty = all). A problem left with no question is dropped.
    pub variants: Vec<Variant>,
    /// Keep only these libs (empty = all), e.g. `["Kubernetes"]`.
    pub libs: Vec<String>,
    /// Keep only these categories (empty = all), e.g. `["pod", "service"]`.
    pub categories: Vec<String>,
    /// Password of an encrypted zip. Never stored or printed by this crate.
    pub zip_password: Option<String>,
}

impl std::fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("variants", &self.variants)
            .field("libs", &self.libs)
            .field("categories", &self.categories)
            .field(
                "zip_password",
                &self.zip_password.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl LoadOptions {
    fn keeps_lib(&self, lib: &str) -> bool {
        self.libs.is_empty() || self.libs.iter().any(|l| l == lib)
    }

    fn keeps_category(&self, category: &str) -> bool {
        self.categories.is_empty() || self.categories.iter().any(|c| c == category)
    }

    /// Applies the variant filter to one problem; `None` when it has no question left.
    fn filter_variants(&self, mut problem: Problem) -> Option<Problem> {
        if !self.variants.is_empty() {
            problem.questions.retain(|v, _| self.variants.contains(v));
        }
        (!problem.questions.is_empty()).then_some(problem)
    }
}

/// Why loading failed. Every variant names the file (and, inside a zip, the entry) it is about.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file or directory could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The path that failed.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A problem folder has no `question.txt`.
    #[error("{path}: missing question file question.txt")]
    MissingQuestion {
        /// The problem folder.
        path: String,
    },
    /// A problem folder has no `labeled_code.yaml`.
    #[error("{path}: missing reference file labeled_code.yaml")]
    MissingReference {
        /// The problem folder.
        path: String,
    },
    /// A reference is empty or only whitespace.
    #[error("{path}: empty reference")]
    EmptyReference {
        /// The reference file (or JSONL line).
        path: String,
    },
    /// A question file is empty or only whitespace.
    #[error("{path}: empty question")]
    EmptyQuestion {
        /// The question file (or JSONL line).
        path: String,
    },
    /// A text file is not valid UTF-8.
    #[error("{path}: invalid UTF-8 at byte {offset}")]
    InvalidUtf8 {
        /// The file.
        path: String,
        /// Byte offset of the first invalid sequence.
        offset: usize,
    },
    /// A folder name does not fit the layout (`<Lib>/<mode>/q<N>`).
    #[error("{path}: bad folder name: {reason}")]
    BadFolderName {
        /// The folder.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No problem was found at all.
    #[error(
        "{path}: no problems found (expected <Lib>/<mode>/q<N>/question.txt, optionally under one folder)"
    )]
    NoProblems {
        /// The path given.
        path: String,
    },
    /// `question.txt` files sit at different depths or under different top folders.
    #[error("{path}: problems under two different roots, `{first}` and `{second}`")]
    MixedRoots {
        /// The path given.
        path: String,
        /// One root prefix.
        first: String,
        /// Another root prefix.
        second: String,
    },
    /// The zip is encrypted and no password was given.
    #[error(
        "{path}: the zip is password-protected; pass --zip-password or set CLOUDEVAL_ZIP_PASSWORD"
    )]
    PasswordRequired {
        /// The zip file.
        path: String,
    },
    /// The zip password is wrong (or the entry is corrupt, which ZipCrypto cannot tell apart).
    #[error("{path}: wrong zip password ({detail})")]
    WrongPassword {
        /// The zip file and entry.
        path: String,
        /// What revealed it.
        detail: String,
    },
    /// The zip cannot be read as a zip.
    #[error("{path}: corrupt or unsupported zip: {reason}")]
    CorruptZip {
        /// The zip file (and entry).
        path: String,
        /// The zip reader's message.
        reason: String,
    },
    /// A JSONL line is not a valid problem.
    #[error("{path}:{line}: {reason}")]
    BadJsonl {
        /// The JSONL file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// Two problems share one id.
    #[error("{path}: duplicate problem id {id}")]
    DuplicateId {
        /// Where the second one was found.
        path: String,
        /// The id.
        id: String,
    },
}

/// Loads problems from `path`, dispatching on what it is: a directory (CloudEval layout), a `.zip` file, or a
/// `.jsonl` file (anything else that is a file is read as a zip if it starts with the zip magic `PK`).
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Vec<Problem>, LoadError> {
    let meta = std::fs::metadata(path).map_err(|source| io_error(path, source))?;
    if meta.is_dir() {
        return load_dir(path, opts);
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("jsonl") => load_jsonl(path, opts),
        Some("zip") => load_zip(path, opts),
        _ => {
            let bytes = std::fs::read(path).map_err(|source| io_error(path, source))?;
            if bytes.starts_with(b"PK") {
                load_zip_bytes(bytes, &path.display().to_string(), opts)
            } else {
                load_jsonl(path, opts)
            }
        }
    }
}

/// Loads a CloudEval directory tree (see the module docs for the layout).
pub fn load_dir(root: &Path, opts: &LoadOptions) -> Result<Vec<Problem>, LoadError> {
    let mut files = Vec::new();
    walk_dir(root, "", &mut files)?;
    let mut source = DirSource {
        root: root.to_path_buf(),
    };
    load_tree(&mut source, &files, &root.display().to_string(), opts)
}

/// Loads CloudEval's `data.zip` (or any zip with the same layout) in memory; nothing is unpacked to disk.
/// ZipCrypto and AES entries are decrypted with `opts.zip_password`.
pub fn load_zip(path: &Path, opts: &LoadOptions) -> Result<Vec<Problem>, LoadError> {
    let bytes = std::fs::read(path).map_err(|source| io_error(path, source))?;
    load_zip_bytes(bytes, &path.display().to_string(), opts)
}

/// Loads a zip held in memory; `origin` names it in errors.
pub fn load_zip_bytes(
    bytes: Vec<u8>,
    origin: &str,
    opts: &LoadOptions,
) -> Result<Vec<Problem>, LoadError> {
    let archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| LoadError::CorruptZip {
        path: origin.to_owned(),
        reason: e.to_string(),
    })?;
    let mut files = Vec::new();
    let mut index = BTreeMap::new();
    for i in 0..archive.len() {
        let name = match archive.name_for_index(i) {
            Some(Ok(name)) => name.into_owned(),
            Some(Err(e)) => {
                return Err(LoadError::CorruptZip {
                    path: origin.to_owned(),
                    reason: e.to_string(),
                });
            }
            None => continue,
        };
        if name.ends_with('/') {
            continue;
        }
        let clean = name.trim_start_matches("./").to_owned();
        index.insert(clean.clone(), i);
        files.push(clean);
    }
    let mut source = ZipSource {
        archive,
        index,
        origin: origin.to_owned(),
        password: opts.zip_password.clone(),
    };
    load_tree(&mut source, &files, origin, opts)
}

/// One line of our JSONL format. `number` may be omitted: it is then read from the id's `_q<N>` suffix.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonlProblem {
    id: String,
    lib: String,
    mode: String,
    #[serde(default)]
    number: Option<u32>,
    category: String,
    questions: BTreeMap<Variant, String>,
    reference: String,
    #[serde(default)]
    unit_test: Option<String>,
}

/// Loads our JSONL format: one [`Problem`] per line (`id, lib, mode, category, questions{original,…},
/// reference, unit_test?`, optional `number`). Blank lines are skipped. Errors name the file and line.
pub fn load_jsonl(path: &Path, opts: &LoadOptions) -> Result<Vec<Problem>, LoadError> {
    let origin = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| io_error(path, source))?;
    let reader = std::io::BufReader::new(file);
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, line) in reader.split(b'\n').enumerate() {
        let line_no = i + 1;
        let bad = |reason: String| LoadError::BadJsonl {
            path: origin.clone(),
            line: line_no,
            reason,
        };
        let bytes = line.map_err(|source| io_error(path, source))?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| bad(format!("invalid UTF-8 at byte {}", e.valid_up_to())))?;
        if text.trim().is_empty() {
            continue;
        }
        let raw: JsonlProblem = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let number = match raw.number {
            Some(n) => n,
            None => raw
                .id
                .rsplit_once("_q")
                .and_then(|(_, n)| parse_problem_number(&format!("q{n}")))
                .ok_or_else(|| {
                    bad(format!(
                        "id `{}` does not end in _q<N> and no `number` is given",
                        raw.id
                    ))
                })?,
        };
        let expected = Problem::make_id(&raw.lib, &raw.mode, number);
        if raw.id != expected {
            return Err(bad(format!(
                "id `{}` does not match lib/mode/number (expected `{expected}`)",
                raw.id
            )));
        }
        if raw.reference.trim().is_empty() {
            return Err(LoadError::EmptyReference {
                path: format!("{origin}:{line_no}"),
            });
        }
        if !raw.questions.contains_key(&Variant::Original) {
            return Err(bad("questions has no `original`".to_owned()));
        }
        if let Some((variant, _)) = raw.questions.iter().find(|(_, q)| q.trim().is_empty()) {
            return Err(LoadError::EmptyQuestion {
                path: format!("{origin}:{line_no} ({variant})"),
            });
        }
        if !seen.insert(raw.id.clone()) {
            return Err(LoadError::DuplicateId {
                path: format!("{origin}:{line_no}"),
                id: raw.id,
            });
        }
        let problem = Problem {
            id: raw.id,
            lib: raw.lib,
            mode: raw.mode,
            number,
            category: raw.category,
            questions: raw.questions,
            reference: raw.reference,
            unit_test: raw.unit_test,
        };
        if opts.keeps_lib(&problem.lib)
            && opts.keeps_category(&problem.category)
            && let Some(problem) = opts.filter_variants(problem)
        {
            problems.push(problem);
        }
    }
    if problems.is_empty() && seen.is_empty() {
        return Err(LoadError::NoProblems { path: origin });
    }
    sort_cloudeval_order(&mut problems);
    Ok(problems)
}

/// Writes problems in our JSONL format (one compact JSON object per line), atomically.
pub fn write_problems_jsonl(
    path: &Path,
    problems: &[Problem],
) -> Result<(), crate::records::RecordError> {
    crate::records::write_jsonl(path, problems)
}

/// Sorts problems in CloudEval's order: libs Kubernetes, Envoy, Istio, then other libs alphabetically; modes in
/// CloudEval's `available_modes` order, then others alphabetically; problems numerically.
pub fn sort_cloudeval_order(problems: &mut [Problem]) {
    problems.sort_by(|a, b| order_key(a).cmp(&order_key(b)));
}

fn rank<'a>(known: &[&str], name: &'a str) -> (usize, &'a str) {
    (
        known.iter().position(|k| *k == name).unwrap_or(known.len()),
        name,
    )
}

fn order_key(p: &Problem) -> ((usize, &str), (usize, &str), u32) {
    (
        rank(&CLOUDEVAL_LIB_ORDER, &p.lib),
        rank(&CLOUDEVAL_MODE_ORDER, &p.mode),
        p.number,
    )
}

/// SHA-256 over the loaded problems' content, in order, independent of where the data lives.
///
/// Each field is fed as its byte length (u64 little-endian) then its bytes, so no two different inputs collide
/// by concatenation: for each problem `id, lib, mode, category, number (decimal)`, then per present variant
/// `variant name, question`, then `reference`, then `unit_test` (the empty string and a missing one are told
/// apart by a leading `0`/`1` field).
pub fn inputs_sha256(problems: &[Problem]) -> String {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    for p in problems {
        field(p.id.as_bytes());
        field(p.lib.as_bytes());
        field(p.mode.as_bytes());
        field(p.category.as_bytes());
        field(p.number.to_string().as_bytes());
        field(p.questions.len().to_string().as_bytes());
        for (variant, question) in &p.questions {
            field(variant.as_str().as_bytes());
            field(question.as_bytes());
        }
        field(p.reference.as_bytes());
        match &p.unit_test {
            Some(test) => {
                field(b"1");
                field(test.as_bytes());
            }
            None => field(b"0"),
        }
    }
    let digest = hasher.finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn io_error(path: &Path, source: std::io::Error) -> LoadError {
    LoadError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// `q<N>` → `N`, rejecting leading zeros, signs and anything else.
fn parse_problem_number(name: &str) -> Option<u32> {
    let digits = name.strip_prefix('q')?;
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    digits.parse().ok()
}

fn is_ignored_component(component: &str) -> bool {
    component.starts_with('.') || component == "__MACOSX"
}

fn check_name(name: &str, what: &str, path: String) -> Result<(), LoadError> {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        Ok(())
    } else {
        Err(LoadError::BadFolderName {
            path,
            reason: format!("{what} folder `{name}` must be ASCII letters, digits or '-'"),
        })
    }
}

/// Somewhere files can be read from by relative, `/`-separated path.
trait Source {
    /// Reads one file; `Ok(None)` when it does not exist.
    fn read(&mut self, rel: &str) -> Result<Option<Vec<u8>>, LoadError>;
    /// How to name `rel` in an error.
    fn describe(&self, rel: &str) -> String;
}

struct DirSource {
    root: PathBuf,
}

impl Source for DirSource {
    fn read(&mut self, rel: &str) -> Result<Option<Vec<u8>>, LoadError> {
        let path = self.root.join(rel);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(io_error(&path, source)),
        }
    }

    fn describe(&self, rel: &str) -> String {
        self.root.join(rel).display().to_string()
    }
}

struct ZipSource {
    archive: zip::ZipArchive<Cursor<Vec<u8>>>,
    index: BTreeMap<String, usize>,
    origin: String,
    password: Option<String>,
}

impl Source for ZipSource {
    fn read(&mut self, rel: &str) -> Result<Option<Vec<u8>>, LoadError> {
        let Some(&i) = self.index.get(rel) else {
            return Ok(None);
        };
        let at = self.describe(rel);
        let corrupt = |e: zip::result::ZipError| LoadError::CorruptZip {
            path: at.clone(),
            reason: e.to_string(),
        };
        let encrypted = self.archive.by_index_raw(i).map_err(corrupt)?.encrypted();
        let mut entry = if encrypted {
            let Some(password) = self.password.as_deref() else {
                return Err(LoadError::PasswordRequired {
                    path: self.origin.clone(),
                });
            };
            match self.archive.by_index_decrypt(i, password.as_bytes()) {
                Ok(entry) => entry,
                Err(zip::result::ZipError::InvalidPassword) => {
                    return Err(LoadError::WrongPassword {
                        path: at.clone(),
                        detail: "the password check failed".to_owned(),
                    });
                }
                Err(e) => return Err(corrupt(e)),
            }
        } else {
            self.archive.by_index(i).map_err(corrupt)?
        };
        let mut bytes = Vec::new();
        if let Err(e) = entry.read_to_end(&mut bytes) {
            // ZipCrypto's header check passes 1 wrong password in 256; the CRC then fails on read.
            return Err(if encrypted {
                LoadError::WrongPassword {
                    path: at.clone(),
                    detail: format!("decrypted data is invalid: {e}"),
                }
            } else {
                LoadError::CorruptZip {
                    path: at.clone(),
                    reason: e.to_string(),
                }
            });
        }
        Ok(Some(bytes))
    }

    fn describe(&self, rel: &str) -> String {
        format!("{}:{rel}", self.origin)
    }
}

fn walk_dir(root: &Path, rel: &str, out: &mut Vec<String>) -> Result<(), LoadError> {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let entries = std::fs::read_dir(&dir).map_err(|source| io_error(&dir, source))?;
    for entry in entries {
        let entry = entry.map_err(|source| io_error(&dir, source))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(LoadError::BadFolderName {
                path: entry.path().display().to_string(),
                reason: "name is not valid UTF-8".to_owned(),
            });
        };
        if is_ignored_component(name) {
            continue;
        }
        let child = if rel.is_empty() {
            name.to_owned()
        } else {
            format!("{rel}/{name}")
        };
        let file_type = entry
            .file_type()
            .map_err(|source| io_error(&entry.path(), source))?;
        // Follow symlinks to directories too: data/sample may be a link to a checkout elsewhere.
        let is_dir = file_type.is_dir() || (file_type.is_symlink() && entry.path().is_dir());
        if is_dir {
            walk_dir(root, &child, out)?;
        } else {
            out.push(child);
        }
    }
    Ok(())
}

/// The shared walker: finds `<prefix>/<Lib>/<mode>/q<N>/` folders among `files` and reads each problem.
fn load_tree(
    source: &mut dyn Source,
    files: &[String],
    origin: &str,
    opts: &LoadOptions,
) -> Result<Vec<Problem>, LoadError> {
    let files: Vec<Vec<&str>> = files
        .iter()
        .map(|f| f.split('/').filter(|c| !c.is_empty()).collect::<Vec<_>>())
        .filter(|parts| !parts.iter().any(|c| is_ignored_component(c)))
        .collect();

    // The root prefix is wherever the question.txt files sit four levels up.
    let mut prefix: Option<Vec<&str>> = None;
    for parts in &files {
        if parts.len() >= 4 && parts.last() == Some(&Variant::Original.file_name()) {
            let candidate = parts[..parts.len() - 4].to_vec();
            match &prefix {
                None => prefix = Some(candidate),
                Some(p) if *p == candidate => {}
                Some(p) => {
                    // Envoy problems may carry a question.txt-named context file deeper down; a prefix that is a
                    // strict extension of the known one is such a file, not a second root.
                    if candidate.len() > p.len() && candidate[..p.len()] == p[..] {
                        continue;
                    }
                    if p.len() > candidate.len() && p[..candidate.len()] == candidate[..] {
                        prefix = Some(candidate);
                        continue;
                    }
                    return Err(LoadError::MixedRoots {
                        path: origin.to_owned(),
                        first: p.join("/"),
                        second: candidate.join("/"),
                    });
                }
            }
        }
    }
    let Some(prefix) = prefix else {
        return Err(LoadError::NoProblems {
            path: origin.to_owned(),
        });
    };

    // Collect problem folders: every folder three levels below the prefix.
    let mut folders: BTreeSet<(&str, &str, &str)> = BTreeSet::new();
    for parts in &files {
        if parts.len() < prefix.len() + 4 || parts[..prefix.len()] != prefix[..] {
            continue;
        }
        let rest = &parts[prefix.len()..];
        folders.insert((rest[0], rest[1], rest[2]));
    }

    let join = |parts: &[&str]| parts.join("/");
    let mut problems = Vec::new();
    for (lib, mode, qdir) in folders {
        let lib_path = join(&[&prefix[..], &[lib]].concat());
        let mode_path = join(&[&prefix[..], &[lib, mode]].concat());
        let problem_path = join(&[&prefix[..], &[lib, mode, qdir]].concat());
        check_name(lib, "lib", source.describe(&lib_path))?;
        check_name(mode, "mode", source.describe(&mode_path))?;
        let number = parse_problem_number(qdir).ok_or_else(|| LoadError::BadFolderName {
            path: source.describe(&problem_path),
            reason: format!("problem folder `{qdir}` must be q<N> (N without leading zeros)"),
        })?;
        let category = mode.to_owned();
        if !opts.keeps_lib(lib) || !opts.keeps_category(&category) {
            continue;
        }
        let file = |name: &str| format!("{problem_path}/{name}");
        let mut questions = BTreeMap::new();
        for variant in Variant::ALL {
            let rel = file(variant.file_name());
            let wanted = opts.variants.is_empty() || opts.variants.contains(&variant);
            // The original must exist even when filtered out: its absence means a broken problem.
            if !wanted && variant != Variant::Original {
                continue;
            }
            match read_text(source, &rel)? {
                Some(text) => {
                    if text.trim().is_empty() {
                        return Err(LoadError::EmptyQuestion {
                            path: source.describe(&rel),
                        });
                    }
                    if wanted {
                        questions.insert(variant, text);
                    }
                }
                None if variant == Variant::Original => {
                    return Err(LoadError::MissingQuestion {
                        path: source.describe(&problem_path),
                    });
                }
                None => {}
            }
        }
        let reference_rel = file("labeled_code.yaml");
        let reference =
            read_text(source, &reference_rel)?.ok_or_else(|| LoadError::MissingReference {
                path: source.describe(&problem_path),
            })?;
        if reference.trim().is_empty() {
            return Err(LoadError::EmptyReference {
                path: source.describe(&reference_rel),
            });
        }
        let unit_test = read_text(source, &file("unit_test.sh"))?;
        if questions.is_empty() {
            continue;
        }
        problems.push(Problem {
            id: Problem::make_id(lib, mode, number),
            lib: lib.to_owned(),
            mode: mode.to_owned(),
            number,
            category,
            questions,
            reference,
            unit_test,
        });
    }
    sort_cloudeval_order(&mut problems);
    Ok(problems)
}

fn read_text(source: &mut dyn Source, rel: &str) -> Result<Option<String>, LoadError> {
    let Some(bytes) = source.read(rel)? else {
        return Ok(None);
    };
    let text = String::from_utf8(bytes).map_err(|e| LoadError::InvalidUtf8 {
        path: source.describe(rel),
        offset: e.utf8_error().valid_up_to(),
    })?;
    Ok(Some(universal_newlines(text)))
}

/// What Python's text-mode `open(path).read()` returns, which is what CloudEval's harness prompts with and scores
/// against: `\r\n` and lone `\r` become `\n`. Text without `\r` is returned unchanged.
pub fn universal_newlines(text: String) -> String {
    if text.contains('\r') {
        text.replace("\r\n", "\n").replace('\r', "\n")
    } else {
        text
    }
}

/// Serialisable summary of what was loaded, for logs and manifests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadSummary {
    /// Number of problems.
    pub problems: usize,
    /// Number of (problem, variant) rows.
    pub rows: usize,
    /// [`inputs_sha256`] of the problems.
    pub inputs_sha256: String,
}

impl LoadSummary {
    /// Summarises loaded problems.
    pub fn of(problems: &[Problem]) -> Self {
        LoadSummary {
            problems: problems.len(),
            rows: problems.iter().map(|p| p.questions.len()).sum(),
            inputs_sha256: inputs_sha256(problems),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_password() {
        let opts = LoadOptions {
            zip_password: Some("hunter2".into()),
            ..Default::default()
        };
        let shown = format!("{opts:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    #[test]
    fn universal_newlines_match_python_text_mode() {
        assert_eq!(universal_newlines("a\r\nb\rc\n\r\n".into()), "a\nb\nc\n\n");
        assert_eq!(universal_newlines("plain\n".into()), "plain\n");
    }

    #[test]
    fn problem_numbers_parse_strictly() {
        assert_eq!(parse_problem_number("q1"), Some(1));
        assert_eq!(parse_problem_number("q118"), Some(118));
        assert_eq!(parse_problem_number("q0"), Some(0));
        for bad in ["q", "q01", "q-1", "q1a", "Q1", "p1", "q+1"] {
            assert_eq!(parse_problem_number(bad), None, "{bad}");
        }
    }

    #[test]
    fn cloudeval_order_sorts_libs_modes_numbers() {
        let mk = |lib: &str, mode: &str, n: u32| Problem {
            id: Problem::make_id(lib, mode, n),
            lib: lib.into(),
            mode: mode.into(),
            number: n,
            category: mode.into(),
            questions: BTreeMap::from([(Variant::Original, "q".into())]),
            reference: "a: 1\n".into(),
            unit_test: None,
        };
        let mut ps = vec![
            mk("Istio", "gateway", 1),
            mk("Aaa", "zzz", 1),
            mk("Kubernetes", "service", 2),
            mk("Envoy", "all", 3),
            mk("Kubernetes", "pod", 10),
            mk("Kubernetes", "pod", 9),
            mk("Kubernetes", "aaa-custom", 1),
        ];
        sort_cloudeval_order(&mut ps);
        let ids: Vec<_> = ps.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "Kubernetes_pod_q9",
                "Kubernetes_pod_q10",
                "Kubernetes_service_q2",
                "Kubernetes_aaa-custom_q1",
                "Envoy_all_q3",
                "Istio_gateway_q1",
                "Aaa_zzz_q1"
            ]
        );
    }

    #[test]
    fn inputs_hash_depends_on_content_only() {
        let p = Problem {
            id: "L_m_q1".into(),
            lib: "L".into(),
            mode: "m".into(),
            number: 1,
            category: "m".into(),
            questions: BTreeMap::from([(Variant::Original, "q".into())]),
            reference: "a: 1\n".into(),
            unit_test: None,
        };
        let h = inputs_sha256(std::slice::from_ref(&p));
        assert_eq!(h.len(), 64);
        assert_eq!(h, inputs_sha256(std::slice::from_ref(&p.clone())));
        let mut q = p.clone();
        q.unit_test = Some(String::new());
        assert_ne!(h, inputs_sha256(&[q]));
        let mut r = p;
        r.reference.push(' ');
        assert_ne!(h, inputs_sha256(&[r]));
    }
}
