//! Kubernetes schema validity (an extra metric) against the fetched strict schemas.
//!
//! These tests need `scripts/fetch-assets.sh` (root overridable with `KUBETUNE_ASSETS`) and fail, never skip, when
//! the schemas are absent.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use metrics::schema::{DocValidity, SchemaValidator};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn validator() -> &'static SchemaValidator {
    static VALIDATOR: OnceLock<SchemaValidator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let assets = std::env::var_os("KUBETUNE_ASSETS")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join(".cache/assets"));
        let dir = assets.join("k8s-schemas/v1.37.0-local-strict");
        assert!(
            dir.join("_definitions.json").is_file(),
            "Kubernetes schemas missing at {}: run scripts/fetch-assets.sh",
            dir.display()
        );
        SchemaValidator::from_dir(&dir).expect("schemas load")
    })
}

#[test]
fn every_sample_reference_is_schema_valid() {
    let pattern_root = workspace_root().join("data/sample");
    let mut files = Vec::new();
    let mut pending = vec![pattern_root.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("data/sample is readable") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path
                .file_name()
                .is_some_and(|name| name == "labeled_code.yaml")
            {
                files.push(path);
            }
        }
    }
    files.sort();
    assert!(
        !files.is_empty(),
        "no data/sample/**/labeled_code.yaml found"
    );
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable");
        match validator().validate(&text) {
            Ok(verdicts) => {
                for (index, verdict) in verdicts.iter().enumerate() {
                    if *verdict != DocValidity::Valid {
                        failures.push(format!("{} document {index}: {verdict:?}", file.display()));
                    }
                }
            }
            Err(error) => failures.push(format!("{}: YAML error {error}", file.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} sample files invalid:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn invalid_and_unknown_documents_are_reported() {
    let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: three\n  \
                selector:\n    matchLabels:\n      app: web\n  template:\n    metadata:\n      labels:\n        \
                app: web\n    spec:\n      containers:\n      - name: web\n        image: nginx\n---\n\
                apiVersion: example.com/v1\nkind: Widget\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: s\n\
                spec:\n  ports:\n  - port: 80\n  typo: 1\n";
    let verdicts = validator().validate(text).expect("loads");
    assert_eq!(verdicts.len(), 3);
    match &verdicts[0] {
        DocValidity::Invalid { path, .. } => assert_eq!(path, "/spec/replicas"),
        other => panic!("expected invalid replicas, got {other:?}"),
    }
    assert_eq!(
        verdicts[1],
        DocValidity::UnknownKind {
            kind: Some("Widget".into()),
            api_version: Some("example.com/v1".into())
        }
    );
    match &verdicts[2] {
        DocValidity::Invalid { path, message } => {
            assert_eq!(path, "/spec");
            assert!(message.contains("typo"), "{message}");
        }
        other => panic!("expected the strict schema to reject `typo`, got {other:?}"),
    }
}
