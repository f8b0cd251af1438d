//! Extra metric: Kubernetes schema validity of each YAML document, against the strict JSON schemas of
//! `kubernetes-validate` (`.cache/assets/k8s-schemas/v1.37.0-local-strict/`, fetched by `scripts/fetch-assets.sh`).
//!
//! [`SchemaValidator::from_dir`] reads every schema file of the directory once (the only file I/O in this crate);
//! kind validators are compiled on first use and cached. A document's schema file is
//! `<kind lowercased>-<API group without its domain>-<version>.json` (`apps/v1` → `apps-v1`,
//! `rbac.authorization.k8s.io/v1` → `rbac-v1`, `v1` → `v1`), the rule of the Python `kubernetes-validate` tool.
//! Documents are loaded with [`crate::yaml::load_all`], so YAML 1.1 typing applies (`on` is a boolean).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::Value as Json;

use crate::yaml::{self, Int, Value};

/// The `$id` under which the kind schemas reference the shared definitions.
const DEFINITIONS_ID: &str = "https://kubernetes.io/api/_definitions.json";

/// Why the schema directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The directory or a file in it could not be read (run `scripts/fetch-assets.sh`).
    #[error("cannot read {path} (run scripts/fetch-assets.sh): {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A schema file is not JSON.
    #[error("{path} is not JSON: {source}")]
    Json {
        /// The path.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// The definitions could not be registered or a kind schema could not be compiled.
    #[error("schema {name}: {message}")]
    Compile {
        /// The schema file name.
        name: String,
        /// The compiler's message.
        message: String,
    },
}

/// The verdict for one YAML document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocValidity {
    /// The document validates against its kind's schema.
    Valid,
    /// The document violates its kind's schema; the first error.
    Invalid {
        /// JSON pointer of the offending value, e.g. `/spec/replicas`.
        path: String,
        /// The validator's message.
        message: String,
    },
    /// No schema for the document: it is not a mapping, lacks `kind`/`apiVersion`, or names an unknown kind.
    UnknownKind {
        /// `kind` if present.
        kind: Option<String>,
        /// `apiVersion` if present.
        api_version: Option<String>,
    },
}

/// Validates Kubernetes manifests against one directory of strict JSON schemas.
pub struct SchemaValidator {
    registry: jsonschema::Registry<'static>,
    schemas: HashMap<String, Json>,
    compiled: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

impl std::fmt::Debug for SchemaValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaValidator")
            .field("schemas", &self.schemas.len())
            .finish()
    }
}

impl SchemaValidator {
    /// Reads `_definitions.json` and every kind schema (`*.json`) from `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self, SchemaError> {
        let read_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SchemaError::Read { path, source }
        };
        let mut files = HashMap::new();
        for entry in std::fs::read_dir(dir).map_err(read_error(dir))? {
            let path = entry.map_err(read_error(dir))?.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string)
            else {
                continue;
            };
            if !name.ends_with(".json") || name == "all.json" {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(read_error(&path))?;
            let json: Json =
                serde_json::from_str(&text).map_err(|source| SchemaError::Json { path, source })?;
            files.insert(name, json);
        }
        Self::from_schemas(files)
    }

    /// Builds from schema contents keyed by file name (`_definitions.json`, `deployment-apps-v1.json`, …).
    pub fn from_schemas(mut schemas: HashMap<String, Json>) -> Result<Self, SchemaError> {
        let compile_error = |name: &str| {
            let name = name.to_string();
            move |error: jsonschema::ReferencingError| SchemaError::Compile {
                name,
                message: error.to_string(),
            }
        };
        let definitions =
            schemas
                .remove("_definitions.json")
                .ok_or_else(|| SchemaError::Compile {
                    name: "_definitions.json".into(),
                    message: "missing (run scripts/fetch-assets.sh)".into(),
                })?;
        let registry = jsonschema::Registry::new()
            .add(DEFINITIONS_ID, definitions)
            .map_err(compile_error("_definitions.json"))?
            .prepare()
            .map_err(compile_error("_definitions.json"))?;
        Ok(SchemaValidator {
            registry,
            schemas,
            compiled: Mutex::new(HashMap::new()),
        })
    }

    /// Number of kind schemas available.
    pub fn kinds(&self) -> usize {
        self.schemas.len()
    }

    /// Loads `yaml_text` (PyYAML rules) and judges every document.
    pub fn validate(&self, yaml_text: &str) -> Result<Vec<DocValidity>, yaml::YamlError> {
        let documents = yaml::load_all(yaml_text)?;
        Ok(documents
            .iter()
            .map(|document| self.validate_document(document))
            .collect())
    }

    /// Judges one loaded document.
    pub fn validate_document(&self, document: &Value) -> DocValidity {
        let field = |name: &str| match document {
            Value::Map(mapping) => match mapping.get(&Value::Str(name.into())) {
                Some(Value::Str(text)) => Some(text.clone()),
                _ => None,
            },
            _ => None,
        };
        let (kind, api_version) = (field("kind"), field("apiVersion"));
        let unknown = || DocValidity::UnknownKind {
            kind: kind.clone(),
            api_version: api_version.clone(),
        };
        let (Some(kind_name), Some(version)) = (&kind, &api_version) else {
            return unknown();
        };
        let file = schema_file_name(kind_name, version);
        let Some(validator) = self.validator(&file) else {
            return unknown();
        };
        let instance = to_json(document);
        match validator.iter_errors(&instance).next() {
            None => DocValidity::Valid,
            Some(error) => DocValidity::Invalid {
                path: error.instance_path().to_string(),
                message: error.to_string(),
            },
        }
    }

    fn validator(&self, file: &str) -> Option<Arc<jsonschema::Validator>> {
        let mut compiled = self
            .compiled
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(validator) = compiled.get(file) {
            return Some(validator.clone());
        }
        let schema = self.schemas.get(file)?;
        let validator = jsonschema::options()
            .offline()
            .with_registry(&self.registry)
            .build(schema)
            .ok()?;
        let validator = Arc::new(validator);
        compiled.insert(file.to_string(), validator.clone());
        Some(validator)
    }
}

/// `<kind lowercased>-<group without domain>-<version>.json`, or `<kind>-<version>.json` for the core group.
pub fn schema_file_name(kind: &str, api_version: &str) -> String {
    let kind = kind.to_lowercase();
    match api_version.split_once('/') {
        Some((group, version)) => {
            let group = group.split('.').next().unwrap_or(group);
            format!("{kind}-{group}-{}.json", version.to_lowercase())
        }
        None => format!("{kind}-{}.json", api_version.to_lowercase()),
    }
}

/// JSON form of a loaded value; keys become Python `str(key)`, dates ISO strings.
pub fn to_json(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(Int::Small(i)) => match i64::try_from(*i) {
            Ok(small) => Json::from(small),
            Err(_) => u64::try_from(*i)
                .map(Json::from)
                .unwrap_or_else(|_| Json::from(*i as f64)),
        },
        Value::Int(Int::Big(digits)) => digits.parse::<f64>().map(Json::from).unwrap_or(Json::Null),
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Json::Number)
            .unwrap_or_else(|| Json::String(f.to_string())),
        Value::Str(s) => Json::String(s.clone()),
        Value::Date(d) => Json::String(format!("{:04}-{:02}-{:02}", d.year, d.month, d.day)),
        Value::DateTime(dt) => Json::String(format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            dt.date.year, dt.date.month, dt.date.day, dt.hour, dt.minute, dt.second
        )),
        Value::Seq(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Map(mapping) => Json::Object(
            mapping
                .entries()
                .iter()
                .map(|(k, v)| (python_str(k), to_json(v)))
                .collect(),
        ),
    }
}

/// Python `str(key)` for scalar keys.
fn python_str(key: &Value) -> String {
    match key {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Str(s) => s.clone(),
        Value::Int(int) => int.to_string(),
        other => match to_json(other) {
            Json::String(s) => s,
            json => json.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_file_names_follow_kubernetes_validate() {
        assert_eq!(
            schema_file_name("Deployment", "apps/v1"),
            "deployment-apps-v1.json"
        );
        assert_eq!(schema_file_name("Service", "v1"), "service-v1.json");
        assert_eq!(
            schema_file_name("Role", "rbac.authorization.k8s.io/v1"),
            "role-rbac-v1.json"
        );
        assert_eq!(
            schema_file_name("Ingress", "networking.k8s.io/v1"),
            "ingress-networking-v1.json"
        );
    }
}
