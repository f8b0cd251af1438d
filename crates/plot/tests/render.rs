//! Figures and summary.md from fixture records.

use std::path::Path;

use task::Method;

use crate::fixtures::{self, MEMORY_DEFINITION, read};

/// Asserts `<dir>/<stem>.{png,svg}` exist with more than trivial content; returns the SVG text.
fn figure(dir: &Path, stem: &str) -> String {
    let png = std::fs::read(dir.join(format!("{stem}.png"))).expect("png written");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{stem}.png is a PNG");
    assert!(
        png.len() > 10_000,
        "{stem}.png has only {} bytes",
        png.len()
    );
    let svg = read(&dir.join(format!("{stem}.svg")));
    assert!(svg.starts_with("<svg"), "{stem}.svg is an SVG");
    assert!(svg.len() > 5_000, "{stem}.svg has only {} bytes", svg.len());
    svg
}

/// An SVG text element's content as plotters writes it.
fn text(content: &str) -> String {
    format!(">\n{content}\n</text>")
}

fn assert_contains_all(text: &str, what: &str, needles: &[&str]) {
    for needle in needles {
        assert!(text.contains(needle), "{what} lacks {needle:?}:\n{text}");
    }
}

#[test]
fn full_matrix_draws_every_figure_and_tabulates_every_number() {
    let temp = tempfile::tempdir().expect("temp dir");
    let results = temp.path().join("results");
    fixtures::full_matrix(&results);

    let options = plot::Options::for_results(&results);
    let report = plot::run(&options).expect("plot runs");
    assert_eq!(report.train_runs, 4);
    assert_eq!(report.score_reports, 9);
    assert_eq!(report.written.len(), 7, "{:?}", report.written);
    assert!(
        report.notes.is_empty(),
        "nothing is missing: {:?}",
        report.notes
    );

    let figures = results.join("figures");
    let fig3 = figure(&figures, "fig3");
    assert_contains_all(
        &fig3,
        "fig3.svg",
        &["LoRA", "full", "Alpha-1B", "Beta-2B", MEMORY_DEFINITION],
    );
    // Mean of 10, 12, 14 s and of 20, 30 s; 1.5 and 5 GiB.
    assert_contains_all(
        &fig3,
        "fig3.svg",
        &[&text("12.0"), &text("25.0"), &text("1.50"), &text("5.00")],
    );

    let fig4 = figure(&figures, "fig4");
    assert_contains_all(
        &fig4,
        "fig4.svg",
        &[
            "vanilla",
            "LoRA",
            "full",
            "Alpha-1B",
            "Beta-2B",
            "baseline: echo",
            "baseline: nearest",
            "baseline: echo-or-nearest",
            "BLEU",
            "KV wildcard",
            "edit distance",
            &text("0.520"),
            &text("0.730"),
        ],
    );

    let loss = figure(&figures, "loss");
    assert_contains_all(
        &loss,
        "loss.svg",
        &["alpha-1b-lora", "beta-2b-full", "train loss", "val loss"],
    );

    let summary = read(&results.join("summary.md"));
    assert_contains_all(
        &summary,
        "summary.md",
        &[
            // Fig. 3 definitions and numbers.
            MEMORY_DEFINITION,
            "Precision: f32",
            "Device: cpu",
            "| Alpha-1B | lora | alpha-1b-lora | 3 | 12.00 | 10.00 | 14.00 | 1.500 |",
            "| Beta-2B | full | beta-2b-full | 2 | 25.00 | 20.00 | 30.00 | 5.000 |",
            "1234 / 567890",
            // Fig. 4: split, the five scores, extras, baselines.
            "Split: sample/problem",
            "| Alpha-1B | lora | alpha-1b-lora | 24 | 0.5200 | 0.6200 | 0.1300 | 0.3600 | 0.7200 | 0.8750 | 0.6250 | 0.0625 | 42.5 |",
            "| nearest | baseline-nearest | baseline-nearest-test | 24 | 0.3500 |",
            "| echo-or-nearest | baseline-echo-or-nearest |",
            // Stripped reference and the signature.
            "0.1111 | 0.2222",
            "`alpha-1b-lora`: `bleu:nltk-method3|edit:difflib`",
            // Loss table.
            "| alpha-1b-lora | 2 | 20 | 1.0000 | 1.2500 | 12.00 |",
            "Nothing was skipped.",
            "figures/fig3.png",
        ],
    );
}

#[test]
fn missing_runs_and_values_are_noted_never_filled_in() {
    let temp = tempfile::tempdir().expect("temp dir");
    let results = temp.path().join("results");
    // Only a LoRA run, unfinished (no summary) and with one epoch, scored; no vanilla, no full, no baselines.
    fixtures::write_train_run(
        &results,
        "solo-lora",
        "x/Solo-9B",
        Method::Lora,
        &[7.5],
        false,
    );
    fixtures::write_scores(
        &results,
        "solo-lora",
        "Solo",
        "lora",
        fixtures::scores(0.25, 0.5, 0.75, 3),
    );
    // A run with predictions that were never scored.
    std::fs::create_dir_all(results.join("pending")).expect("mkdir");
    std::fs::write(results.join("pending/predictions.jsonl"), "").expect("write");

    let report = plot::run(&plot::Options::for_results(&results)).expect("plot runs");
    assert_eq!(report.written.len(), 7);
    let notes = report.notes.join("\n");
    assert_contains_all(
        &notes,
        "notes",
        &[
            "no train_summary.json",
            "no full training run for Solo",
            "no vanilla scores.json for Solo",
            "no full scores.json for Solo",
            "no baseline-echo scores.json",
            "pending has predictions.jsonl but no scores.json",
        ],
    );

    let summary = read(&results.join("summary.md"));
    assert!(summary.contains("## Notes"), "{summary}");
    assert!(
        summary.contains("no full training run for Solo"),
        "{summary}"
    );
    // The training run is shown under its scores' label, and no row exists for what was never run.
    assert!(
        summary.contains("| Solo | lora | solo-lora | 1 | 7.50 | 7.50 | 7.50 | 1.500 |"),
        "{summary}"
    );
    assert!(!summary.contains("| Solo | full |"), "{summary}");
    assert!(!summary.contains("| Solo | vanilla |"), "{summary}");
    let fig4 = read(&results.join("figures/fig4.svg"));
    assert!(fig4.contains("n/a"), "missing bars are marked");
    assert!(
        !fig4.contains("baseline:"),
        "no baseline line without a baseline report"
    );
}

#[test]
fn empty_results_write_a_summary_and_no_figures() {
    let temp = tempfile::tempdir().expect("temp dir");
    let results = temp.path().join("results");
    std::fs::create_dir_all(&results).expect("mkdir");

    let report = plot::run(&plot::Options::for_results(&results)).expect("plot runs");
    assert_eq!(report.written, vec![results.join("summary.md")]);
    assert!(!results.join("figures").exists());
    let summary = read(&results.join("summary.md"));
    assert_contains_all(
        &summary,
        "summary.md",
        &[
            "No training records found.",
            "No scores.json found.",
            "Fig. 3: no train_log.jsonl",
        ],
    );
}

#[test]
fn custom_output_paths_are_honoured() {
    let temp = tempfile::tempdir().expect("temp dir");
    let results = temp.path().join("results");
    fixtures::full_matrix(&results);
    let options = plot::Options {
        results: results.clone(),
        out: temp.path().join("elsewhere/figs"),
        summary: temp.path().join("elsewhere/sum.md"),
    };
    let report = plot::run(&options).expect("plot runs");
    assert!(temp.path().join("elsewhere/figs/fig4.svg").is_file());
    assert!(temp.path().join("elsewhere/sum.md").is_file());
    assert!(!results.join("figures").exists());
    assert!(
        report
            .written
            .iter()
            .all(|p| p.starts_with(temp.path().join("elsewhere")))
    );
}
