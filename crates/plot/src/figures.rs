//! What each figure shows, as plain data: groups, series, values, reference lines and the caption lines.
//!
//! Building a figure also decides what is missing; every gap becomes a note, never a made-up number.

use std::collections::{BTreeMap, BTreeSet};

use task::{Method, ScoreReport};

use crate::collect::{Collected, TrainRun};

/// An RGB colour.
pub(crate) type Rgb = (u8, u8, u8);

/// Colour of each system, shared by the figures so LoRA and full look the same in Fig. 3 and Fig. 4.
pub(crate) const VANILLA: Rgb = (127, 127, 127);
pub(crate) const LORA: Rgb = (31, 119, 180);
pub(crate) const FULL: Rgb = (255, 127, 14);
/// Baseline reference lines, in the order of [`BASELINES`].
const BASELINE_COLOURS: [Rgb; 3] = [(214, 39, 40), (148, 103, 189), (44, 160, 44)];
/// Colours for anything beyond the known baselines and for loss curves (the tab10 palette).
pub(crate) const PALETTE: [Rgb; 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

/// The model-free baselines `eval` writes, in legend order.
pub(crate) const BASELINES: [&str; 3] = [
    "baseline-echo",
    "baseline-nearest",
    "baseline-echo-or-nearest",
];
/// The systems drawn as bars in Fig. 4, in legend order.
pub(crate) const MODEL_SYSTEMS: [&str; 3] = ["vanilla", "lora", "full"];

/// How a panel prints its values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ValueFormat {
    /// Seconds: fewer decimals as the number grows.
    Seconds,
    /// GiB with two decimals.
    Gib,
    /// A score in [0, 1] with three decimals.
    Score,
}

impl ValueFormat {
    pub(crate) fn format(self, value: f64) -> String {
        match self {
            ValueFormat::Seconds if value >= 100.0 => format!("{value:.0}"),
            ValueFormat::Seconds if value >= 10.0 => format!("{value:.1}"),
            ValueFormat::Seconds => format!("{value:.2}"),
            ValueFormat::Gib => format!("{value:.2}"),
            ValueFormat::Score => format!("{value:.3}"),
        }
    }
}

/// One bar: a value and optionally a whisker range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Bar {
    pub value: f64,
    pub range: Option<(f64, f64)>,
}

/// A named, coloured series (bars) or reference line (dashed).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Series {
    pub name: String,
    pub colour: Rgb,
}

/// One panel of a bar figure.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BarPanel {
    pub title: String,
    pub y_label: String,
    /// `bars[series][group]`.
    pub bars: Vec<Vec<Option<Bar>>>,
    /// One value per reference line of the figure, when that line has one in this panel.
    pub references: Vec<Option<f64>>,
    pub format: ValueFormat,
    /// The y axis reaches at least this high (1.0 for scores, so panels compare at a glance).
    pub min_top: f64,
}

/// Panels side by side sharing groups (x axis), series (bars) and reference lines.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BarFigure {
    pub title: String,
    pub groups: Vec<String>,
    pub series: Vec<Series>,
    pub references: Vec<Series>,
    pub panels: Vec<BarPanel>,
    /// Caption lines under the legend: what the numbers are.
    pub footer: Vec<String>,
    pub size: (u32, u32),
}

/// One run's loss per epoch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LossCurve {
    pub name: String,
    pub colour: Rgb,
    pub train: Vec<(u32, f64)>,
    pub val: Vec<(u32, f64)>,
}

/// Loss curves of every run on one chart.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LossFigure {
    pub title: String,
    pub curves: Vec<LossCurve>,
    pub footer: Vec<String>,
    pub size: (u32, u32),
}

/// Mean, minimum and maximum of a run's epoch wall seconds; `None` when any is not a finite, non-negative number.
pub(crate) fn epoch_seconds(run: &TrainRun) -> Option<(f64, f64, f64)> {
    let seconds: Vec<f64> = run.epochs.iter().map(|e| e.wall_seconds).collect();
    if seconds.is_empty() || seconds.iter().any(|s| !s.is_finite() || *s < 0.0) {
        return None;
    }
    let mean = seconds.iter().sum::<f64>() / seconds.len() as f64;
    let min = seconds.iter().copied().fold(f64::INFINITY, f64::min);
    let max = seconds.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some((mean, min, max))
}

/// A run's peak memory over its epochs, in bytes; `None` when no epoch measured any (0 means "not measured").
pub(crate) fn peak_memory_bytes(run: &TrainRun) -> Option<u64> {
    run.epochs
        .iter()
        .map(|e| e.peak_memory_bytes)
        .max()
        .filter(|&peak| peak > 0)
}

/// Bytes → GiB (2^30 bytes).
pub(crate) fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// Distinct values of a field, in first-seen order, joined with `" / "`.
pub(crate) fn distinct<'a>(values: impl IntoIterator<Item = &'a str>) -> String {
    let mut seen = Vec::new();
    for value in values {
        if !seen.contains(&value) {
            seen.push(value);
        }
    }
    seen.join(" / ")
}

/// The first training run for each (label, method), in directory order; later duplicates become notes.
pub(crate) fn train_runs_by_key<'a>(
    collected: &'a Collected,
    notes: &mut Vec<String>,
) -> BTreeMap<(String, &'static str), &'a TrainRun> {
    let mut chosen: BTreeMap<(String, &'static str), &TrainRun> = BTreeMap::new();
    for run in &collected.train_runs {
        let key = (run.label.clone(), run.method.as_str());
        if let Some(kept) = chosen.get(&key) {
            notes.push(format!(
                "Fig. 3: runs {:?} and {:?} are both {} {}; the figure shows {:?} (both are in the table)",
                kept.run, run.run, run.label, key.1, kept.run
            ));
        } else {
            chosen.insert(key, run);
        }
    }
    chosen
}

/// Fig. 3: (a) seconds per epoch, (b) peak memory; LoRA vs full per model. `None` when no run has training records.
pub(crate) fn fig3(collected: &Collected, notes: &mut Vec<String>) -> Option<BarFigure> {
    if collected.train_runs.is_empty() {
        notes.push("Fig. 3: no train_log.jsonl or train_summary.json found; not drawn".to_string());
        return None;
    }
    let chosen = train_runs_by_key(collected, notes);
    let groups: Vec<String> = chosen
        .keys()
        .map(|(label, _)| label.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let methods = [(Method::Lora, "LoRA", LORA), (Method::Full, "full", FULL)];

    let mut time_bars = Vec::new();
    let mut memory_bars = Vec::new();
    for (method, _, _) in methods {
        let mut times = Vec::new();
        let mut memories = Vec::new();
        for group in &groups {
            let Some(run) = chosen.get(&(group.clone(), method.as_str())) else {
                notes.push(format!(
                    "Fig. 3: no {} training run for {group}",
                    method.as_str()
                ));
                times.push(None);
                memories.push(None);
                continue;
            };
            let time = epoch_seconds(run);
            if time.is_none() {
                notes.push(format!(
                    "Fig. 3: run {:?} has a missing or invalid epoch wall time; time bar skipped",
                    run.run
                ));
            }
            times.push(time.map(|(mean, min, max)| Bar {
                value: mean,
                range: Some((min, max)),
            }));
            let memory = peak_memory_bytes(run);
            if memory.is_none() {
                notes.push(format!(
                    "Fig. 3: run {:?} recorded no peak memory (0 bytes); memory bar skipped",
                    run.run
                ));
            }
            memories.push(memory.map(|bytes| Bar {
                value: gib(bytes),
                range: None,
            }));
        }
        time_bars.push(times);
        memory_bars.push(memories);
    }

    let shown: Vec<&TrainRun> = chosen.values().copied().collect();
    let epochs = shown.iter().flat_map(|run| run.epochs.iter());
    let memory_definition = distinct(epochs.clone().map(|e| e.memory_definition.as_str()));
    let device = distinct(epochs.clone().map(|e| e.device.as_str()));
    let precision = distinct(epochs.clone().map(|e| e.precision.as_str()));
    let optimizer = distinct(epochs.map(|e| e.optimizer.as_str()));

    Some(BarFigure {
        title: "Fig. 3 — fine-tuning cost: LoRA vs full".to_string(),
        groups,
        series: methods
            .iter()
            .map(|(_, name, colour)| Series {
                name: name.to_string(),
                colour: *colour,
            })
            .collect(),
        references: Vec::new(),
        panels: vec![
            BarPanel {
                title: "(a) training time per epoch".to_string(),
                y_label: "seconds per epoch (bar: mean, whiskers: min–max)".to_string(),
                bars: time_bars,
                references: Vec::new(),
                format: ValueFormat::Seconds,
                min_top: 0.0,
            },
            BarPanel {
                title: "(b) peak memory".to_string(),
                y_label: format!("peak memory, GiB — {memory_definition}"),
                bars: memory_bars,
                references: Vec::new(),
                format: ValueFormat::Gib,
                min_top: 0.0,
            },
        ],
        footer: vec![
            format!(
                "memory: {memory_definition} (GiB = 2^30 bytes); time: wall-clock seconds of each epoch"
            ),
            format!("device: {device} · precision: {precision} · optimizer: {optimizer}"),
        ],
        size: (1400, 620),
    })
}

/// The report shown for each (label, system), first in directory order; later duplicates become notes.
pub(crate) fn score_reports_by_key<'a>(
    collected: &'a Collected,
    notes: &mut Vec<String>,
) -> BTreeMap<(String, String), &'a ScoreReport> {
    let mut chosen: BTreeMap<(String, String), &ScoreReport> = BTreeMap::new();
    for scored in &collected.scored_runs {
        let report = &scored.report;
        let key = (report.label.clone(), report.system.clone());
        if let Some(kept) = chosen.get(&key) {
            notes.push(format!(
                "Fig. 4: runs {:?} and {:?} are both {} {}; the figure shows {:?} (both are in the table)",
                kept.run, report.run, report.label, report.system, kept.run
            ));
        } else {
            chosen.insert(key, report);
        }
    }
    chosen
}

/// Reads one overall score from a report.
type ScoreOf = fn(&ScoreReport) -> f64;

/// Fig. 4: (a) BLEU, (b) KV wildcard, (c) edit distance; vanilla vs LoRA vs full per model, baselines as dashed
/// lines. `None` when no model (non-baseline) score report exists.
pub(crate) fn fig4(collected: &Collected, notes: &mut Vec<String>) -> Option<BarFigure> {
    let chosen = score_reports_by_key(collected, notes);
    let mut groups = BTreeSet::new();
    let mut baselines: Vec<(String, &ScoreReport)> = Vec::new();
    for ((label, system), report) in &chosen {
        if MODEL_SYSTEMS.contains(&system.as_str()) {
            groups.insert(label.clone());
        } else if system.starts_with("baseline-") {
            if let Some((_, kept)) = baselines.iter().find(|(s, _)| s == system) {
                notes.push(format!(
                    "Fig. 4: two {system} reports ({:?}, {:?}); the figure shows {:?}",
                    kept.run, report.run, kept.run
                ));
            } else {
                baselines.push((system.clone(), report));
            }
        } else {
            notes.push(format!(
                "Fig. 4: run {:?} has unknown system {system:?}; only in the table",
                report.run
            ));
        }
    }
    // Known baselines first, in their fixed order; any other baseline after them, by name.
    baselines.sort_by_key(|(system, _)| {
        (
            BASELINES
                .iter()
                .position(|b| b == system)
                .unwrap_or(BASELINES.len()),
            system.clone(),
        )
    });
    let groups: Vec<String> = groups.into_iter().collect();
    if groups.is_empty() {
        notes.push("Fig. 4: no vanilla, LoRA or full scores.json found; not drawn".to_string());
        return None;
    }
    for baseline in BASELINES {
        if !baselines.iter().any(|(system, _)| system == baseline) {
            notes.push(format!("Fig. 4: no {baseline} scores.json; line not drawn"));
        }
    }

    let metrics: [(&str, &str, ScoreOf); 3] = [
        ("(a) BLEU", "BLEU", |r| r.overall.bleu),
        ("(b) KV wildcard", "KV wildcard match", |r| {
            r.overall.kv_wildcard_match
        }),
        ("(c) edit distance", "edit-distance score", |r| {
            r.overall.edit_distance
        }),
    ];
    let series_names = ["vanilla", "LoRA", "full"];
    let series_colours = [VANILLA, LORA, FULL];

    let mut panels = Vec::new();
    for (title, y_label, metric) in metrics {
        let mut bars = Vec::new();
        for system in MODEL_SYSTEMS {
            let mut row = Vec::new();
            for group in &groups {
                let value = chosen
                    .get(&(group.clone(), system.to_string()))
                    .map(|report| metric(report));
                row.push(
                    value
                        .filter(|v| v.is_finite())
                        .map(|value| Bar { value, range: None }),
                );
            }
            bars.push(row);
        }
        let references = baselines
            .iter()
            .map(|(_, report)| Some(metric(report)).filter(|v| v.is_finite()))
            .collect();
        panels.push(BarPanel {
            title: title.to_string(),
            y_label: y_label.to_string(),
            bars,
            references,
            format: ValueFormat::Score,
            min_top: 1.0,
        });
    }
    for system in MODEL_SYSTEMS {
        for group in &groups {
            match chosen.get(&(group.clone(), system.to_string())) {
                None => notes.push(format!("Fig. 4: no {system} scores.json for {group}")),
                Some(report) => {
                    let values = [
                        report.overall.bleu,
                        report.overall.kv_wildcard_match,
                        report.overall.edit_distance,
                    ];
                    if values.iter().any(|v| !v.is_finite()) {
                        notes.push(format!(
                            "Fig. 4: run {:?} has a non-finite score; that bar is skipped",
                            report.run
                        ));
                    }
                }
            }
        }
    }

    let shown: Vec<&ScoreReport> = chosen.values().copied().collect();
    let splits = distinct(shown.iter().map(|r| r.split.as_str()));
    let sizes = distinct_counts(shown.iter().map(|r| r.n));
    Some(BarFigure {
        title: "Fig. 4 — output quality: vanilla vs LoRA vs full".to_string(),
        groups,
        series: series_names
            .iter()
            .zip(series_colours)
            .map(|(name, colour)| Series {
                name: name.to_string(),
                colour,
            })
            .collect(),
        references: baselines
            .iter()
            .enumerate()
            .map(|(i, (system, _))| Series {
                name: format!(
                    "baseline: {}",
                    system.strip_prefix("baseline-").unwrap_or(system)
                ),
                colour: BASELINE_COLOURS
                    .get(i)
                    .copied()
                    .unwrap_or(PALETTE[i % PALETTE.len()]),
            })
            .collect(),
        panels,
        footer: vec![
            format!(
                "split: {splits} · rows scored: {sizes} · CloudEval scores vs the labelled reference, mean over rows"
            ),
            "bars: models; dashed lines: model-free baselines".to_string(),
        ],
        size: (1800, 620),
    })
}

/// Distinct counts, in first-seen order, joined with `" / "`.
fn distinct_counts(counts: impl IntoIterator<Item = usize>) -> String {
    let strings: Vec<String> = counts.into_iter().map(|n| n.to_string()).collect();
    distinct(strings.iter().map(String::as_str))
}

/// Train (and validation) loss per epoch for every training run. `None` when no run has a finite loss.
pub(crate) fn loss(collected: &Collected, notes: &mut Vec<String>) -> Option<LossFigure> {
    let mut curves = Vec::new();
    for (i, run) in collected.train_runs.iter().enumerate() {
        let train: Vec<(u32, f64)> = run
            .epochs
            .iter()
            .filter(|e| e.train_loss.is_finite())
            .map(|e| (e.epoch, e.train_loss))
            .collect();
        let val: Vec<(u32, f64)> = run
            .epochs
            .iter()
            .filter_map(|e| e.val_loss.filter(|v| v.is_finite()).map(|v| (e.epoch, v)))
            .collect();
        if train.len() < run.epochs.len() {
            notes.push(format!(
                "loss: run {:?} has {} epochs with a non-finite train loss; those points are skipped",
                run.run,
                run.epochs.len() - train.len()
            ));
        }
        if train.is_empty() && val.is_empty() {
            continue;
        }
        curves.push(LossCurve {
            name: run.run.clone(),
            colour: PALETTE[i % PALETTE.len()],
            train,
            val,
        });
    }
    if curves.is_empty() {
        notes.push("loss: no finite loss in any training run; not drawn".to_string());
        return None;
    }
    Some(LossFigure {
        title: "Training loss per epoch".to_string(),
        curves,
        footer: vec![
            "solid: mean training loss over the epoch's steps · dashed: validation loss after the epoch"
                .to_string(),
        ],
        size: (1200, 640),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_formats() {
        for (format, value, expected) in [
            (ValueFormat::Seconds, 1234.4, "1234"),
            (ValueFormat::Seconds, 12.34, "12.3"),
            (ValueFormat::Seconds, 1.234, "1.23"),
            (ValueFormat::Gib, 0.5, "0.50"),
            (ValueFormat::Score, 0.12345, "0.123"),
        ] {
            assert_eq!(format.format(value), expected);
        }
    }

    #[test]
    fn distinct_keeps_first_seen_order() {
        assert_eq!(distinct(["b", "a", "b", "c", "a"]), "b / a / c");
        assert_eq!(distinct([]), "");
    }

    #[test]
    fn gib_is_binary() {
        assert_eq!(gib(3 << 30), 3.0);
    }
}
