//! Builders for synthetic CloudEval-layout data.

use std::path::{Path, PathBuf};

use task::Variant;

/// One synthetic problem to write.
pub struct Spec<'a> {
    pub lib: &'a str,
    pub mode: &'a str,
    pub number: u32,
    pub variants: &'a [Variant],
}

pub fn question_text(lib: &str, mode: &str, number: u32, variant: Variant) -> String {
    format!("Create a {mode} number {number} for {lib} ({variant}).\n")
}

pub fn reference_text(mode: &str, number: u32) -> String {
    format!("apiVersion: v1\nkind: {mode}\nmetadata:\n  name: item-{number} # *\n")
}

/// Writes one problem folder under `root` and returns its path.
pub fn write_problem(root: &Path, spec: &Spec<'_>) -> PathBuf {
    let dir = root
        .join(spec.lib)
        .join(spec.mode)
        .join(format!("q{}", spec.number));
    std::fs::create_dir_all(&dir).expect("create problem dir");
    for &variant in spec.variants {
        std::fs::write(
            dir.join(variant.file_name()),
            question_text(spec.lib, spec.mode, spec.number, variant),
        )
        .expect("write question");
    }
    std::fs::write(
        dir.join("labeled_code.yaml"),
        reference_text(spec.mode, spec.number),
    )
    .expect("write reference");
    std::fs::write(
        dir.join("unit_test.sh"),
        "echo cloudeval_unit_test_passed\n",
    )
    .expect("write unit test");
    dir
}

/// A small tree: Kubernetes pod ×6, service ×3, deployment ×1; Envoy all ×2; Istio gateway ×2; Zeta extra ×1.
pub fn write_standard_tree(root: &Path) {
    let all = &Variant::ALL[..];
    for n in [1, 2, 3, 10, 11, 12] {
        write_problem(
            root,
            &Spec {
                lib: "Kubernetes",
                mode: "pod",
                number: n,
                variants: all,
            },
        );
    }
    for n in [5, 6, 7] {
        write_problem(
            root,
            &Spec {
                lib: "Kubernetes",
                mode: "service",
                number: n,
                variants: &[Variant::Original],
            },
        );
    }
    write_problem(
        root,
        &Spec {
            lib: "Kubernetes",
            mode: "deployment",
            number: 1,
            variants: all,
        },
    );
    for n in [2, 1] {
        let dir = write_problem(
            root,
            &Spec {
                lib: "Envoy",
                mode: "all",
                number: n,
                variants: all,
            },
        );
        // Envoy problems carry unit-test context files, some in sub-folders; they must be ignored.
        std::fs::create_dir_all(dir.join("service")).expect("mkdir");
        std::fs::write(dir.join("service/Dockerfile"), "FROM scratch\n").expect("write");
        std::fs::write(dir.join("docker-compose.yaml"), "services: {}\n").expect("write");
    }
    for n in [1, 2] {
        write_problem(
            root,
            &Spec {
                lib: "Istio",
                mode: "gateway",
                number: n,
                variants: all,
            },
        );
    }
    write_problem(
        root,
        &Spec {
            lib: "Zeta",
            mode: "extra",
            number: 1,
            variants: all,
        },
    );
}

/// The ids `write_standard_tree` produces, in CloudEval order.
pub const STANDARD_IDS: [&str; 15] = [
    "Kubernetes_pod_q1",
    "Kubernetes_pod_q2",
    "Kubernetes_pod_q3",
    "Kubernetes_pod_q10",
    "Kubernetes_pod_q11",
    "Kubernetes_pod_q12",
    "Kubernetes_deployment_q1",
    "Kubernetes_service_q5",
    "Kubernetes_service_q6",
    "Kubernetes_service_q7",
    "Envoy_all_q1",
    "Envoy_all_q2",
    "Istio_gateway_q1",
    "Istio_gateway_q2",
    "Zeta_extra_q1",
];

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}
