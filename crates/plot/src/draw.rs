//! Drawing the figures of [`crate::figures`] with plotters, for any backend (PNG and SVG).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, ValueFormatter};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::Error;
use crate::figures::{BarFigure, BarPanel, LossFigure, Rgb};

/// The font every text element asks for; [`register_font`] maps it to the vendored DejaVu Sans.
const FONT: &str = "sans-serif";
/// DejaVu Sans (Bitstream Vera licence, `assets/DejaVuSans-LICENSE.txt`), so no system font library is needed.
const DEJAVU_SANS: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Registers the vendored font once per process.
fn register_font() -> Result<(), Error> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, DEJAVU_SANS).is_ok()
    });
    if ok { Ok(()) } else { Err(Error::Font) }
}

/// A linear f64 axis whose ticks are exactly `ticks`: group centres for bar charts, whole epochs for losses.
///
/// plotters' own `with_key_points` on an f64 range loses the value formatter that `configure_mesh` needs, so
/// this small axis stands in for it; the labels come from each chart's `x_label_formatter`.
struct TickedAxis {
    range: std::ops::Range<f64>,
    ticks: Vec<f64>,
}

impl Ranged for TickedAxis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, (low, high): (i32, i32)) -> i32 {
        let span = self.range.end - self.range.start;
        let fraction = if span > 0.0 {
            (value - self.range.start) / span
        } else {
            0.5
        };
        low + (fraction * f64::from(high - low)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        self.ticks.clone()
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.range.clone()
    }
}

impl ValueFormatter<f64> for TickedAxis {
    fn format(value: &f64) -> String {
        format!("{value}")
    }
}

/// A figure that can draw itself on any backend.
pub(crate) trait Figure {
    /// Size in pixels.
    fn size(&self) -> (u32, u32);
    /// Draws onto `root`, which is already filled white.
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>;
}

impl Figure for BarFigure {
    fn size(&self) -> (u32, u32) {
        self.size
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        draw_bar_figure(root, self)
    }
}

impl Figure for LossFigure {
    fn size(&self) -> (u32, u32) {
        self.size
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        draw_loss_figure(root, self)
    }
}

/// Draws `figure` to `<out>/<stem>.png` and `<out>/<stem>.svg`, each written atomically; returns both paths.
pub(crate) fn write_both<F: Figure>(
    out: &Path,
    stem: &str,
    figure: &F,
) -> Result<Vec<PathBuf>, Error> {
    register_font()?;
    std::fs::create_dir_all(out).map_err(|source| Error::Write {
        path: out.to_path_buf(),
        source,
    })?;

    let png = out.join(format!("{stem}.png"));
    // The bitmap backend picks the encoder from the extension, so the temp file must end in `.png` too.
    let partial = out.join(format!(".{stem}.{}.partial.png", std::process::id()));
    let drawn = (|| {
        let root = BitMapBackend::new(&partial, figure.size()).into_drawing_area();
        root.fill(&WHITE).map_err(text)?;
        figure.draw(&root)?;
        root.present().map_err(text)
    })();
    if let Err(reason) = drawn {
        // Best effort: the partial file is ours and useless; the drawing error is what matters.
        let _ = std::fs::remove_file(&partial);
        return Err(Error::Draw { path: png, reason });
    }
    std::fs::rename(&partial, &png).map_err(|source| Error::Write {
        path: png.clone(),
        source,
    })?;

    let svg = out.join(format!("{stem}.svg"));
    let mut document = String::new();
    {
        let root = SVGBackend::with_string(&mut document, figure.size()).into_drawing_area();
        let drawn = root
            .fill(&WHITE)
            .map_err(text)
            .and_then(|()| figure.draw(&root))
            .and_then(|()| root.present().map_err(text));
        drawn.map_err(|reason| Error::Draw {
            path: svg.clone(),
            reason,
        })?;
    }
    crate::write_atomic(&svg, document.as_bytes())?;
    Ok(vec![png, svg])
}

/// A y-axis tick label with as many decimals as the axis range needs.
fn axis_tick(value: f64, top: f64) -> String {
    if top >= 20.0 {
        format!("{value:.0}")
    } else if top >= 2.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn text(error: impl std::fmt::Display) -> String {
    error.to_string()
}

fn colour((r, g, b): Rgb) -> RGBColor {
    RGBColor(r, g, b)
}

fn font(size: u32) -> TextStyle<'static> {
    TextStyle::from((FONT, size).into_font())
}

/// Title on top, panels side by side, then a shared legend and the caption lines.
fn draw_bar_figure<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    figure: &BarFigure,
) -> Result<(), String> {
    let (width, height) = root.dim_in_pixel();
    let title_height = 44;
    let legend_height = 36;
    let footer_height = 24 * figure.footer.len() as u32 + 8;
    let panels_height = height.saturating_sub(title_height + legend_height + footer_height);

    let (title_area, rest) = root.split_vertically(title_height);
    let (panels_area, bottom) = rest.split_vertically(panels_height);
    let (legend_area, footer_area) = bottom.split_vertically(legend_height);

    title_area
        .draw(&Text::new(
            figure.title.clone(),
            (width as i32 / 2, 12),
            font(24).pos(Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(text)?;

    let panel_areas = panels_area.split_evenly((1, figure.panels.len().max(1)));
    for (area, panel) in panel_areas.iter().zip(&figure.panels) {
        draw_bar_panel(area, figure, panel)?;
    }

    let mut entries: Vec<LegendEntry> = figure
        .series
        .iter()
        .map(|s| LegendEntry {
            name: s.name.clone(),
            colour: colour(s.colour),
            mark: Mark::Box,
        })
        .collect();
    entries.extend(figure.references.iter().map(|s| LegendEntry {
        name: s.name.clone(),
        colour: colour(s.colour),
        mark: Mark::Dashed,
    }));
    draw_legend_row(&legend_area, &entries)?;
    draw_footer(&footer_area, &figure.footer)
}

fn draw_bar_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    figure: &BarFigure,
    panel: &BarPanel,
) -> Result<(), String> {
    let groups = figure.groups.len().max(1);
    let group_count = groups as f64;
    let mut top = panel.min_top;
    for bar in panel.bars.iter().flatten().flatten() {
        top = top.max(bar.value);
        if let Some((_, high)) = bar.range {
            top = top.max(high);
        }
    }
    for reference in panel.references.iter().flatten() {
        top = top.max(*reference);
    }
    // Headroom for the value printed above each bar.
    let top = if top > 0.0 { top * 1.15 } else { 1.0 };
    let centres: Vec<f64> = (0..groups).map(|g| g as f64 + 0.5).collect();
    // A gutter right of the bars holds the reference lines' values, clear of bars and lines.
    let has_references = panel.references.iter().any(Option::is_some);
    let right = if has_references {
        group_count + 0.4
    } else {
        group_count
    };

    let mut chart = ChartBuilder::on(area)
        .caption(panel.title.clone(), font(18))
        .margin(12)
        .x_label_area_size(34)
        .y_label_area_size(70)
        .build_cartesian_2d(
            TickedAxis {
                range: 0.0..right,
                ticks: centres,
            },
            0.0..top,
        )
        .map_err(text)?;
    let group_label = |x: &f64| {
        let index = (*x - 0.5).round();
        if index >= 0.0 {
            figure
                .groups
                .get(index as usize)
                .cloned()
                .unwrap_or_default()
        } else {
            String::new()
        }
    };
    let y_format = |y: &f64| axis_tick(*y, top);
    chart
        .configure_mesh()
        .disable_x_mesh()
        .bold_line_style(RGBColor(215, 215, 215))
        .light_line_style(TRANSPARENT)
        .x_label_formatter(&group_label)
        .y_label_formatter(&y_format)
        .y_desc(panel.y_label.clone())
        .label_style(font(14))
        .axis_desc_style(font(14))
        .draw()
        .map_err(text)?;

    let slot = 0.8 / figure.series.len().max(1) as f64;
    for (s, series) in figure.series.iter().enumerate() {
        let fill = colour(series.colour);
        let Some(row) = panel.bars.get(s) else {
            continue;
        };
        for (g, bar) in row.iter().enumerate() {
            let left = g as f64 + 0.1 + s as f64 * slot;
            let right = left + slot * 0.9;
            let centre = (left + right) / 2.0;
            let Some(bar) = bar else {
                chart
                    .draw_series(std::iter::once(Text::new(
                        "n/a".to_string(),
                        (centre, 0.0),
                        font(12)
                            .color(&RGBColor(110, 110, 110))
                            .pos(Pos::new(HPos::Center, VPos::Bottom)),
                    )))
                    .map_err(text)?;
                continue;
            };
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(left, 0.0), (right, bar.value)],
                    fill.filled(),
                )))
                .map_err(text)?;
            let mut label_at = bar.value;
            if let Some((low, high)) = bar.range {
                chart
                    .draw_series(std::iter::once(ErrorBar::new_vertical(
                        centre,
                        low,
                        bar.value,
                        high,
                        BLACK.stroke_width(1),
                        8,
                    )))
                    .map_err(text)?;
                label_at = label_at.max(high);
            }
            chart
                .draw_series(std::iter::once(Text::new(
                    panel.format.format(bar.value),
                    (centre, label_at + top * 0.01),
                    font(12).pos(Pos::new(HPos::Center, VPos::Bottom)),
                )))
                .map_err(text)?;
        }
    }

    let mut labels = Vec::new();
    for (line, value) in figure.references.iter().zip(&panel.references) {
        let Some(value) = *value else {
            continue;
        };
        let stroke = colour(line.colour);
        chart
            .draw_series(DashedLineSeries::new(
                vec![(0.0, value), (group_count, value)],
                8,
                5,
                stroke.stroke_width(2),
            ))
            .map_err(text)?;
        labels.push((chart.backend_coord(&(group_count, value)), value, stroke));
    }
    // Values of close lines would print over each other: push each label at least one text line below the one
    // above it.
    labels.sort_by_key(|((_, y), _, _)| *y);
    let (base_x, base_y) = area.get_base_pixel();
    let mut previous_y = i32::MIN;
    for ((x, y), value, stroke) in labels {
        let y = y.max(previous_y.saturating_add(13));
        previous_y = y;
        area.draw(&Text::new(
            panel.format.format(value),
            (x - base_x + 4, y - base_y),
            font(12)
                .color(&stroke)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(text)?;
    }
    Ok(())
}

/// How a legend entry marks its series.
#[derive(Debug, Clone, Copy)]
enum Mark {
    /// A filled square (bars).
    Box,
    /// A solid line.
    Line,
    /// A dashed line.
    Dashed,
}

struct LegendEntry {
    name: String,
    colour: RGBColor,
    mark: Mark,
}

const SWATCH: i32 = 26;

fn draw_mark<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    (x, y): (i32, i32),
    entry: &LegendEntry,
) -> Result<(), String> {
    match entry.mark {
        Mark::Box => area
            .draw(&Rectangle::new(
                [(x + 6, y - 7), (x + 20, y + 7)],
                entry.colour.filled(),
            ))
            .map_err(text),
        Mark::Line => area
            .draw(&PathElement::new(
                vec![(x, y), (x + SWATCH, y)],
                entry.colour.stroke_width(2),
            ))
            .map_err(text),
        Mark::Dashed => {
            for start in [0, 10, 20] {
                area.draw(&PathElement::new(
                    vec![(x + start, y), (x + (start + 6).min(SWATCH), y)],
                    entry.colour.stroke_width(2),
                ))
                .map_err(text)?;
            }
            Ok(())
        }
    }
}

/// One centred row of legend entries.
fn draw_legend_row<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[LegendEntry],
) -> Result<(), String> {
    let style = font(15).pos(Pos::new(HPos::Left, VPos::Center));
    let gap = 28;
    let mut widths = Vec::new();
    for entry in entries {
        let (w, _) = area.estimate_text_size(&entry.name, &style).map_err(text)?;
        widths.push(w as i32);
    }
    let total: i32 = widths.iter().map(|w| SWATCH + 6 + w + gap).sum::<i32>() - gap;
    let (width, height) = area.dim_in_pixel();
    let mut x = ((width as i32 - total) / 2).max(4);
    let y = height as i32 / 2;
    for (entry, w) in entries.iter().zip(widths) {
        draw_mark(area, (x, y), entry)?;
        area.draw(&Text::new(
            entry.name.clone(),
            (x + SWATCH + 6, y),
            style.clone(),
        ))
        .map_err(text)?;
        x += SWATCH + 6 + w + gap;
    }
    Ok(())
}

/// Caption lines, centred, in grey.
fn draw_footer<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    lines: &[String],
) -> Result<(), String> {
    let (width, _) = area.dim_in_pixel();
    let style = font(14)
        .color(&RGBColor(60, 60, 60))
        .pos(Pos::new(HPos::Center, VPos::Top));
    for (i, line) in lines.iter().enumerate() {
        area.draw(&Text::new(
            line.clone(),
            (width as i32 / 2, 4 + 24 * i as i32),
            style.clone(),
        ))
        .map_err(text)?;
    }
    Ok(())
}

/// One chart of every run's losses, a legend column on the right, caption lines under it.
fn draw_loss_figure<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    figure: &LossFigure,
) -> Result<(), String> {
    let (width, height) = root.dim_in_pixel();
    let footer_height = 24 * figure.footer.len() as u32 + 8;
    let (main, footer_area) = root.split_vertically(height.saturating_sub(footer_height));
    let legend_width = 300.min(width / 3);
    let (chart_area, legend_area) = main.split_horizontally(width - legend_width);

    let epochs = figure
        .curves
        .iter()
        .flat_map(|c| c.train.iter().chain(&c.val).map(|(epoch, _)| *epoch));
    let first = epochs.clone().min().unwrap_or(1);
    let last = epochs.max().unwrap_or(1);
    let losses = figure
        .curves
        .iter()
        .flat_map(|c| c.train.iter().chain(&c.val).map(|(_, loss)| *loss));
    let low = losses.clone().fold(f64::INFINITY, f64::min).min(0.0);
    let high = losses.fold(f64::NEG_INFINITY, f64::max);
    let high = if high > low { high * 1.1 } else { low + 1.0 };
    // Tick every epoch, or every n-th so at most ~12 labels fit.
    let step = ((last - first) / 12 + 1).max(1);
    let ticks: Vec<f64> = (first..=last)
        .step_by(step as usize)
        .map(f64::from)
        .collect();

    let mut chart = ChartBuilder::on(&chart_area)
        .caption(figure.title.clone(), font(22))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(
            TickedAxis {
                range: f64::from(first) - 0.5..f64::from(last) + 0.5,
                ticks,
            },
            low..high,
        )
        .map_err(text)?;
    let epoch_label = |x: &f64| format!("{x:.0}");
    chart
        .configure_mesh()
        .x_label_formatter(&epoch_label)
        .bold_line_style(RGBColor(215, 215, 215))
        .light_line_style(TRANSPARENT)
        .x_desc("epoch")
        .y_desc("loss (mean token cross-entropy)")
        .label_style(font(14))
        .axis_desc_style(font(15))
        .draw()
        .map_err(text)?;

    for curve in &figure.curves {
        let stroke = colour(curve.colour);
        let train: Vec<(f64, f64)> = curve
            .train
            .iter()
            .map(|(e, l)| (f64::from(*e), *l))
            .collect();
        let val: Vec<(f64, f64)> = curve.val.iter().map(|(e, l)| (f64::from(*e), *l)).collect();
        chart
            .draw_series(LineSeries::new(train.clone(), stroke.stroke_width(2)))
            .map_err(text)?;
        chart
            .draw_series(train.iter().map(|p| Circle::new(*p, 4, stroke.filled())))
            .map_err(text)?;
        if !val.is_empty() {
            chart
                .draw_series(DashedLineSeries::new(
                    val.clone(),
                    8,
                    5,
                    stroke.stroke_width(2),
                ))
                .map_err(text)?;
            chart
                .draw_series(
                    val.iter()
                        .map(|p| Circle::new(*p, 4, stroke.stroke_width(2))),
                )
                .map_err(text)?;
        }
    }

    let mut entries = vec![
        LegendEntry {
            name: "train loss".to_string(),
            colour: BLACK,
            mark: Mark::Line,
        },
        LegendEntry {
            name: "val loss".to_string(),
            colour: BLACK,
            mark: Mark::Dashed,
        },
    ];
    entries.extend(figure.curves.iter().map(|c| LegendEntry {
        name: c.name.clone(),
        colour: colour(c.colour),
        mark: Mark::Box,
    }));
    let style = font(15).pos(Pos::new(HPos::Left, VPos::Center));
    for (i, entry) in entries.iter().enumerate() {
        // A blank row separates the line-style key from the runs.
        let row = if i < 2 { i } else { i + 1 } as i32;
        let y = 70 + 26 * row;
        draw_mark(&legend_area, (8, y), entry)?;
        legend_area
            .draw(&Text::new(
                entry.name.clone(),
                (8 + SWATCH + 6, y),
                style.clone(),
            ))
            .map_err(text)?;
    }
    draw_footer(&footer_area, &figure.footer)
}
