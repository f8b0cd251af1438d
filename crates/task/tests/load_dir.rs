//! The directory loader.

use task::{LoadError, LoadOptions, Variant, load};

use crate::common::{
    STANDARD_IDS, Spec, reference_text, repo_root, write_problem, write_standard_tree,
};

fn ids(problems: &[task::Problem]) -> Vec<&str> {
    problems.iter().map(|p| p.id.as_str()).collect()
}

#[test]
fn loads_in_cloudeval_order_with_fields_verbatim() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_standard_tree(dir.path());
    std::fs::write(dir.path().join("README.md"), "not a problem\n").expect("write");
    let problems = load(dir.path(), &LoadOptions::default()).expect("loads");
    assert_eq!(ids(&problems), STANDARD_IDS);
    let pod = &problems[0];
    assert_eq!(
        (
            pod.lib.as_str(),
            pod.mode.as_str(),
            pod.number,
            pod.category.as_str()
        ),
        ("Kubernetes", "pod", 1, "pod")
    );
    assert_eq!(pod.reference, reference_text("pod", 1));
    assert_eq!(pod.questions.len(), 3);
    assert_eq!(
        pod.unit_test.as_deref(),
        Some("echo cloudeval_unit_test_passed\n")
    );
    let envoy = problems.iter().find(|p| p.lib == "Envoy").expect("envoy");
    assert_eq!(envoy.category, "all");
    let service = problems
        .iter()
        .find(|p| p.mode == "service")
        .expect("service");
    assert_eq!(
        service.questions.keys().copied().collect::<Vec<_>>(),
        [Variant::Original]
    );
}

#[test]
fn detects_a_top_level_data_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_standard_tree(&dir.path().join("data"));
    let problems = load(dir.path(), &LoadOptions::default()).expect("loads");
    assert_eq!(ids(&problems), STANDARD_IDS);
}

#[test]
fn filters_variants_libs_and_categories() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_standard_tree(dir.path());
    let opts = LoadOptions {
        libs: vec!["Kubernetes".into()],
        categories: vec!["service".into(), "deployment".into()],
        ..Default::default()
    };
    let problems = load(dir.path(), &opts).expect("loads");
    assert_eq!(
        ids(&problems),
        [
            "Kubernetes_deployment_q1",
            "Kubernetes_service_q5",
            "Kubernetes_service_q6",
            "Kubernetes_service_q7"
        ]
    );

    // Service problems only have the original: a translated-only filter drops them.
    let opts = LoadOptions {
        variants: vec![Variant::Translated],
        libs: vec!["Kubernetes".into()],
        ..Default::default()
    };
    let problems = load(dir.path(), &opts).expect("loads");
    assert!(
        problems
            .iter()
            .all(|p| p.questions.keys().copied().eq([Variant::Translated]))
    );
    assert_eq!(problems.len(), 7);
}

fn expect_error(setup: impl FnOnce(&std::path::Path), check: impl FnOnce(&LoadError, &str)) {
    let dir = tempfile::tempdir().expect("tempdir");
    write_standard_tree(dir.path());
    setup(dir.path());
    let err = load(dir.path(), &LoadOptions::default()).expect_err("must fail");
    let message = err.to_string();
    check(&err, &message);
}

#[test]
fn missing_question_file_names_the_problem_folder() {
    expect_error(
        |root| std::fs::remove_file(root.join("Kubernetes/pod/q3/question.txt")).expect("rm"),
        |err, msg| {
            assert!(matches!(err, LoadError::MissingQuestion { .. }), "{err:?}");
            assert!(
                msg.contains("Kubernetes/pod/q3") && msg.contains("question.txt"),
                "{msg}"
            );
        },
    );
}

#[test]
fn empty_reference_names_the_file() {
    expect_error(
        |root| {
            std::fs::write(root.join("Istio/gateway/q2/labeled_code.yaml"), " \n\n").expect("write")
        },
        |err, msg| {
            assert!(matches!(err, LoadError::EmptyReference { .. }), "{err:?}");
            assert!(msg.contains("Istio/gateway/q2/labeled_code.yaml"), "{msg}");
        },
    );
}

#[test]
fn missing_reference_names_the_problem_folder() {
    expect_error(
        |root| std::fs::remove_file(root.join("Envoy/all/q2/labeled_code.yaml")).expect("rm"),
        |err, msg| {
            assert!(matches!(err, LoadError::MissingReference { .. }), "{err:?}");
            assert!(msg.contains("Envoy/all/q2"), "{msg}");
        },
    );
}

#[test]
fn invalid_utf8_names_the_file_and_offset() {
    expect_error(
        |root| {
            std::fs::write(
                root.join("Kubernetes/pod/q2/question_simplified.txt"),
                b"ok \xff\xfe",
            )
            .expect("write")
        },
        |err, msg| {
            assert!(
                matches!(err, LoadError::InvalidUtf8 { offset: 3, .. }),
                "{err:?}"
            );
            assert!(
                msg.contains("Kubernetes/pod/q2/question_simplified.txt"),
                "{msg}"
            );
        },
    );
}

#[test]
fn bad_folder_names_are_rejected() {
    expect_error(
        |root| {
            std::fs::create_dir_all(root.join("Kubernetes/pod/question7/sub"))
                .and_then(|_| std::fs::write(root.join("Kubernetes/pod/question7/sub/x"), "x"))
                .expect("mkdir")
        },
        |err, msg| {
            assert!(matches!(err, LoadError::BadFolderName { .. }), "{err:?}");
            assert!(msg.contains("question7"), "{msg}");
        },
    );
    expect_error(
        |root| {
            write_problem(
                root,
                &Spec {
                    lib: "Kubernetes",
                    mode: "pod",
                    number: 0,
                    variants: &[Variant::Original],
                },
            );
            std::fs::rename(
                root.join("Kubernetes/pod/q0"),
                root.join("Kubernetes/pod/q007"),
            )
            .expect("rename");
        },
        |err, msg| {
            assert!(
                matches!(err, LoadError::BadFolderName { .. }) && msg.contains("q007"),
                "{msg}"
            )
        },
    );
    expect_error(
        |root| {
            write_problem(
                root,
                &Spec {
                    lib: "Kube_rnetes",
                    mode: "pod",
                    number: 1,
                    variants: &[Variant::Original],
                },
            );
        },
        |err, msg| {
            assert!(
                matches!(err, LoadError::BadFolderName { .. }) && msg.contains("Kube_rnetes"),
                "{msg}"
            )
        },
    );
}

#[test]
fn empty_question_is_an_error() {
    expect_error(
        |root| {
            std::fs::write(root.join("Kubernetes/pod/q1/question_translated.txt"), "\n")
                .expect("write")
        },
        |err, msg| {
            assert!(matches!(err, LoadError::EmptyQuestion { .. }), "{err:?}");
            assert!(
                msg.contains("Kubernetes/pod/q1/question_translated.txt"),
                "{msg}"
            );
        },
    );
}

#[test]
fn empty_or_missing_directories_fail_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = load(dir.path(), &LoadOptions::default()).expect_err("empty dir");
    assert!(matches!(err, LoadError::NoProblems { .. }), "{err:?}");
    let err = load(&dir.path().join("nope"), &LoadOptions::default()).expect_err("missing");
    assert!(err.to_string().contains("nope"), "{err}");
}

/// `data/sample/` (hand-written problems in CloudEval's layout) loads, if another engineer has committed it.
#[test]
fn sample_data_loads_when_present() {
    let sample = repo_root().join("data/sample");
    if !sample.is_dir() {
        eprintln!("data/sample absent: skipped");
        return;
    }
    let problems = load(&sample, &LoadOptions::default()).expect("data/sample loads");
    assert!(!problems.is_empty());
    for p in &problems {
        assert!(p.questions.contains_key(&Variant::Original), "{}", p.id);
        assert!(!p.reference.trim().is_empty(), "{}", p.id);
        assert_eq!(p.id, task::Problem::make_id(&p.lib, &p.mode, p.number));
    }
    let mut sorted = problems.clone();
    task::load::sort_cloudeval_order(&mut sorted);
    assert_eq!(sorted, problems, "loader output is in CloudEval order");
}

#[test]
fn line_endings_are_read_as_python_text_mode_reads_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_standard_tree(dir.path());
    std::fs::write(
        dir.path().join("Kubernetes/pod/q1/labeled_code.yaml"),
        "a: 1 # *\r\nb: 2\r\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("Kubernetes/pod/q1/question.txt"),
        "line one\rline two\r\n",
    )
    .expect("write");
    let problems = load(dir.path(), &LoadOptions::default()).expect("loads");
    assert_eq!(problems[0].reference, "a: 1 # *\nb: 2\n");
    assert_eq!(
        problems[0].questions[&Variant::Original],
        "line one\nline two\n"
    );
}
