//! PNG line charts for the report, drawn with `plotters`.
//!
//! Pure: data in, PNG file out. A [`Chart`] is a set of named [`Series`]; every [`Point`] may carry
//! a confidence interval (`lo`/`hi`) that is drawn as a vertical error bar with caps. Charts are
//! drawn into an in-memory RGB buffer ([`render_rgb`], [`render_panels_rgb`]) and encoded as PNG,
//! which [`line_chart`] and [`panels`] write atomically (temp file in the target directory, then
//! rename).
//!
//! Text uses DejaVu Sans, embedded in the binary and registered with plotters' `ab_glyph`
//! backend, so rendering needs no system font library.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

mod canvas;

use ab_glyph::FontRef;
use canvas::Canvas;

use anyhow::{Context, Result, bail, ensure};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

/// One data point. `lo`/`hi` are the ends of its confidence interval (either may be absent).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub lo: Option<f64>,
    pub hi: Option<f64>,
}

impl Point {
    /// A point without an error bar.
    pub fn new(x: f64, y: f64) -> Self {
        Self {
            x,
            y,
            lo: None,
            hi: None,
        }
    }

    /// A point with a confidence interval `[lo, hi]`.
    pub fn with_ci(x: f64, y: f64, lo: f64, hi: f64) -> Self {
        Self {
            x,
            y,
            lo: Some(lo),
            hi: Some(hi),
        }
    }
}

/// A named line of points, drawn in data order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<Point>,
}

/// What one chart (or one panel of [`panels`]) shows.
#[derive(Debug, Clone, Copy)]
pub struct Chart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: &'a [Series],
}

/// Largest accepted image side, in pixels (guards against absurd allocations).
const MAX_SIDE: u32 = 16_384;

/// Series colors (matplotlib's tab10), cycled.
const PALETTE: [(u8, u8, u8); 10] = [
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

/// Number of distinct marker shapes, cycled independently of the colors.
const SHAPES: usize = 4;

/// The color series `index` is drawn in (lines, markers, error bars and its legend entry).
pub fn series_color(index: usize) -> (u8, u8, u8) {
    PALETTE[index % PALETTE.len()]
}

/// Draws `chart` as a PNG of `width` x `height` pixels at `path`: lines with markers, a vertical
/// error bar with caps for every point with `lo`/`hi`, a legend with the series names, axis
/// ranges fitted to the data (error bars included) with a 5% margin, and integer x ticks when
/// every x is an integer. Points with a non-finite x or y are skipped (the line breaks there).
pub fn line_chart(path: &Path, chart: &Chart, width: u32, height: u32) -> Result<()> {
    let buf = render_rgb(chart, width, height)?;
    write_png_atomic(path, &buf, width, height)
        .with_context(|| format!("writing chart {:?} to {}", chart.title, path.display()))
}

/// Draws `charts` side by side in one PNG: `cols` panels per row (as many rows as needed), each
/// panel `panel_w` x `panel_h` pixels and drawn as [`line_chart`] draws a chart. The image is
/// `cols * panel_w` wide; unused cells of the last row stay white.
pub fn panels(
    path: &Path,
    charts: &[Chart],
    cols: usize,
    panel_w: u32,
    panel_h: u32,
) -> Result<()> {
    let (buf, w, h) = render_panels_rgb(charts, cols, panel_w, panel_h)?;
    write_png_atomic(path, &buf, w, h).with_context(|| {
        format!(
            "writing {} chart panels to {}",
            charts.len(),
            path.display()
        )
    })
}

/// Draws `chart` into a `width * height * 3` RGB buffer (row-major, no padding), exactly as
/// [`line_chart`] draws it.
pub fn render_rgb(chart: &Chart, width: u32, height: u32) -> Result<Vec<u8>> {
    check_size(width, height)?;
    let mut buf = vec![255u8; width as usize * height as usize * 3];
    {
        let bitmap = BitMapBackend::with_buffer(&mut buf, (width, height));
        let root = Canvas::new(bitmap, font()?).into_drawing_area();
        draw_chart(&root, chart)?;
        root.present().context("finishing the bitmap")?;
    }
    Ok(buf)
}

/// Draws `charts` as [`panels`] does; returns the RGB buffer and its width and height.
pub fn render_panels_rgb(
    charts: &[Chart],
    cols: usize,
    panel_w: u32,
    panel_h: u32,
) -> Result<(Vec<u8>, u32, u32)> {
    ensure!(!charts.is_empty(), "no charts to lay out in panels");
    ensure!(cols > 0, "panels need at least one column");
    let rows = charts.len().div_ceil(cols);
    let width = u32::try_from(cols)
        .ok()
        .and_then(|c| c.checked_mul(panel_w));
    let height = u32::try_from(rows)
        .ok()
        .and_then(|r| r.checked_mul(panel_h));
    let (Some(width), Some(height)) = (width, height) else {
        bail!("panel grid {cols} x {rows} of {panel_w} x {panel_h} pixels is too large");
    };
    check_size(width, height)?;
    let mut buf = vec![255u8; width as usize * height as usize * 3];
    {
        let bitmap = BitMapBackend::with_buffer(&mut buf, (width, height));
        let root = Canvas::new(bitmap, font()?).into_drawing_area();
        let cells = root.split_evenly((rows, cols));
        for (chart, cell) in charts.iter().zip(&cells) {
            draw_chart(cell, chart)?;
        }
        root.present().context("finishing the bitmap")?;
    }
    Ok((buf, width, height))
}

fn check_size(width: u32, height: u32) -> Result<()> {
    ensure!(
        width > 0 && height > 0,
        "image size {width} x {height} has a zero side"
    );
    ensure!(
        width <= MAX_SIDE && height <= MAX_SIDE,
        "image size {width} x {height} exceeds {MAX_SIDE} pixels per side"
    );
    Ok(())
}

/// The embedded font, parsed once and also registered under plotters' "sans-serif" family
/// (plotters measures text through that registration in a few places; [`Canvas`] draws it).
fn font() -> Result<&'static FontRef<'static>> {
    static FONT_TTF: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");
    static FONT: OnceLock<Option<FontRef<'static>>> = OnceLock::new();
    FONT.get_or_init(|| {
        let font = FontRef::try_from_slice(FONT_TTF).ok()?;
        register_font("sans-serif", FontStyle::Normal, FONT_TTF).ok()?;
        Some(font)
    })
    .as_ref()
    .context("the embedded DejaVu Sans font could not be parsed")
}

/// The finite part of one point: its coordinates and the error-bar ends, if any.
struct Mark {
    x: f64,
    y: f64,
    lo: Option<f64>,
    hi: Option<f64>,
}

fn finite(v: Option<f64>) -> Option<f64> {
    v.filter(|v| v.is_finite())
}

/// Splits a series into runs of consecutive finite points (a non-finite point breaks the line).
fn segments(series: &Series) -> Vec<Vec<Mark>> {
    let mut out = vec![Vec::new()];
    for p in &series.points {
        if p.x.is_finite() && p.y.is_finite() {
            let mark = Mark {
                x: p.x,
                y: p.y,
                lo: finite(p.lo),
                hi: finite(p.hi),
            };
            out.last_mut().expect("never empty").push(mark);
        } else if !out.last().expect("never empty").is_empty() {
            out.push(Vec::new());
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

/// Inclusive data extent.
#[derive(Clone, Copy)]
struct Extent {
    min: f64,
    max: f64,
}

impl Extent {
    fn empty() -> Self {
        Self {
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }
    fn add(&mut self, v: f64) {
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }
    /// The axis range: the extent widened by 5% of its span on each side; a degenerate extent
    /// (one value) is padded by 10% of the value (1 when the value is 0, or on an integer axis).
    fn padded(self, integer: bool) -> (f64, f64) {
        let span = self.max - self.min;
        let scale = self.min.abs().max(self.max.abs());
        if span <= scale * 1e-12 || span == 0.0 {
            let pad = if integer || scale == 0.0 {
                1.0
            } else {
                scale * 0.1
            };
            (self.min - pad, self.max + pad)
        } else {
            (self.min - 0.05 * span, self.max + 0.05 * span)
        }
    }
}

/// A tick step of 1, 2, 2.5 or 5 times a power of ten that gives at most `max_ticks` ticks over
/// `span` (integer steps only on an integer axis).
fn nice_step(span: f64, max_ticks: usize, integer: bool) -> f64 {
    let raw = span / max_ticks.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .filter(|s| !integer || s.fract() == 0.0)
        .find(|&s| s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * mag);
    if integer { step.max(1.0).round() } else { step }
}

/// Ticks at multiples of `step` inside `[lo, hi]` (none for a degenerate step or overflowing
/// range).
fn ticks(lo: f64, hi: f64, step: f64) -> Vec<f64> {
    if !(step.is_finite() && step > 0.0 && lo.is_finite() && hi.is_finite()) {
        return Vec::new();
    }
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    if last.saturating_sub(first) > 1000 {
        return Vec::new();
    }
    (first..=last).map(|k| k as f64 * step).collect()
}

/// Decimals needed to print multiples of `step` exactly.
fn decimals(step: f64) -> usize {
    (0..10)
        .find(|&d| {
            let scaled = step * 10f64.powi(d as i32);
            (scaled - scaled.round()).abs() < 1e-6 * scaled.abs().max(1.0)
        })
        .unwrap_or(10)
}

fn format_tick(v: f64, decimals: usize, sci: bool) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if sci {
        let s = format!("{v:.2e}");
        return s.replace(".00e", "e");
    }
    let s = format!("{v:.decimals$}");
    if s.trim_start_matches('-')
        .chars()
        .all(|c| c == '0' || c == '.')
    {
        "0".into()
    } else {
        s
    }
}

struct Axis {
    range: (f64, f64),
    ticks: Vec<f64>,
    decimals: usize,
    sci: bool,
}

impl Axis {
    fn new(extent: Extent, integer: bool, max_ticks: usize) -> Self {
        let range = extent.padded(integer);
        let step = nice_step(range.1 - range.0, max_ticks, integer);
        let ticks = ticks(range.0, range.1, step);
        let big = range.0.abs().max(range.1.abs());
        let sci = big >= 1e6 || step < 1e-4;
        Self {
            range,
            ticks,
            decimals: decimals(step),
            sci,
        }
    }
    fn label(&self, v: f64) -> String {
        format_tick(v, self.decimals, self.sci)
    }
}

/// An f64 axis whose tick marks are exactly [`Axis::ticks`] (plotters' own f64 axis picks its
/// ticks itself, and its `WithKeyPoints` wrapper cannot take a label formatter).
struct TickAxis {
    inner: RangedCoordf64,
    ticks: Vec<f64>,
}

impl Ranged for TickAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.inner.range()
    }
}

impl From<&Axis> for TickAxis {
    fn from(axis: &Axis) -> Self {
        Self {
            inner: (axis.range.0..axis.range.1).into(),
            ticks: axis.ticks.clone(),
        }
    }
}

fn text(size: f64) -> TextStyle<'static> {
    ("sans-serif", size).into_text_style(&(1u32, 1u32))
}

/// The marker shape of series `index` (circle, square, triangle, diamond), cycled so that series
/// sharing a color (every tenth) get different shapes.
fn shape_of(index: usize) -> usize {
    (index / PALETTE.len() + index) % SHAPES
}

/// Picks the legend corner that the fewest drawn points (sampled along the lines) fall into.
fn legend_corner(segs: &[Vec<Vec<Mark>>], x: (f64, f64), y: (f64, f64)) -> SeriesLabelPosition {
    let mut counts = [0usize; 4]; // upper right, upper left, lower right, lower left
    let mut count = |px: f64, py: f64| {
        let u = (px - x.0) / (x.1 - x.0);
        let v = (py - y.0) / (y.1 - y.0);
        let right = u > 0.55;
        let left = u < 0.45;
        let top = v > 0.6;
        let bottom = v < 0.4;
        if top && right {
            counts[0] += 1;
        }
        if top && left {
            counts[1] += 1;
        }
        if bottom && right {
            counts[2] += 1;
        }
        if bottom && left {
            counts[3] += 1;
        }
    };
    for seg in segs.iter().flatten() {
        for (i, m) in seg.iter().enumerate() {
            count(m.x, m.y);
            for end in [m.lo, m.hi].into_iter().flatten() {
                count(m.x, end);
            }
            if let Some(next) = seg.get(i + 1) {
                for k in 1..16 {
                    let t = k as f64 / 16.0;
                    count(m.x + t * (next.x - m.x), m.y + t * (next.y - m.y));
                }
            }
        }
    }
    let best = (0..4).min_by_key(|&i| counts[i]).unwrap_or(0);
    [
        SeriesLabelPosition::UpperRight,
        SeriesLabelPosition::UpperLeft,
        SeriesLabelPosition::LowerRight,
        SeriesLabelPosition::LowerLeft,
    ][best]
        .clone()
}

fn draw_chart(area: &DrawingArea<Canvas<'_>, Shift>, chart: &Chart) -> Result<()> {
    let title = chart.title;
    ensure!(
        !chart.series.is_empty(),
        "chart {title:?} has no series to plot"
    );

    let segs: Vec<Vec<Vec<Mark>>> = chart.series.iter().map(segments).collect();
    let (mut xe, mut ye) = (Extent::empty(), Extent::empty());
    let mut all_int = true;
    for m in segs.iter().flatten().flatten() {
        xe.add(m.x);
        ye.add(m.y);
        for end in [m.lo, m.hi].into_iter().flatten() {
            ye.add(end);
        }
        all_int &= m.x.fract() == 0.0 && m.x.abs() < 1e15;
    }
    ensure!(
        xe.min <= xe.max,
        "chart {title:?} has no finite data points in its {} series",
        chart.series.len()
    );

    let (w, h) = area.dim_in_pixel();
    let s = (w.min(h) as f64 / 480.0).clamp(0.75, 3.0);
    let (title_px, desc_px, tick_px, legend_px) = (22.0 * s, 17.0 * s, 15.0 * s, 15.0 * s);
    let pad = (8.0 * s).round() as u32;

    let x_axis = Axis::new(xe, all_int, ((w as f64 / (90.0 * s)) as usize).clamp(2, 10));
    let y_axis = Axis::new(ye, false, ((h as f64 / (55.0 * s)) as usize).clamp(2, 10));

    // The y label area holds the widest tick label and the rotated axis description.
    let tick_style = text(tick_px);
    let mut widest = 0;
    for &t in &y_axis.ticks {
        widest = widest.max(area.estimate_text_size(&y_axis.label(t), &tick_style)?.0);
    }
    let y_area = widest + desc_px as u32 + 3 * pad;
    let x_area = tick_px as u32 + desc_px as u32 + 3 * pad;

    let mut ctx = ChartBuilder::on(area)
        .caption(title, text(title_px))
        .margin(pad)
        .margin_right(2 * pad)
        .x_label_area_size(x_area)
        .y_label_area_size(y_area)
        .build_cartesian_2d(TickAxis::from(&x_axis), TickAxis::from(&y_axis))?;

    let fx = |v: &f64| x_axis.label(*v);
    let fy = |v: &f64| y_axis.label(*v);
    ctx.configure_mesh()
        .x_desc(chart.x_label)
        .y_desc(chart.y_label)
        .x_label_formatter(&fx)
        .y_label_formatter(&fy)
        .label_style(text(tick_px))
        .axis_desc_style(text(desc_px))
        .bold_line_style(BLACK.mix(0.12))
        .light_line_style(TRANSPARENT)
        .draw()?;

    let stroke = (2.0 * s).round().max(1.0) as u32;
    let r = (4.5 * s).round().max(3.0) as i32;
    let cap = (5.0 * s).round().max(2.0) as i32;
    for (i, (series, segs)) in chart.series.iter().zip(&segs).enumerate() {
        let (cr, cg, cb) = series_color(i);
        let color = RGBColor(cr, cg, cb);
        let line = color.stroke_width(stroke);
        let thin = color.stroke_width((stroke / 2).max(1));

        // Error bars first, under the lines and markers.
        for m in segs.iter().flatten() {
            if m.lo.is_none() && m.hi.is_none() {
                continue;
            }
            let (lo, hi) = (m.lo.unwrap_or(m.y), m.hi.unwrap_or(m.y));
            ctx.draw_series(std::iter::once(PathElement::new(
                vec![(m.x, lo), (m.x, hi)],
                thin,
            )))?;
            let ends = [m.lo, m.hi].into_iter().flatten();
            ctx.draw_series(ends.map(|e| {
                EmptyElement::at((m.x, e)) + PathElement::new(vec![(-cap, 0), (cap, 0)], thin)
            }))?;
        }
        for seg in segs {
            ctx.draw_series(LineSeries::new(seg.iter().map(|m| (m.x, m.y)), line))?;
        }
        // Markers, labelled for the legend (a line sample with the marker on it). Each shape is
        // its own element type, hence the macro.
        let fill = color.filled();
        let half = (10.0 * s) as i32;
        let d = r + 1; // triangle and diamond reach
        let q = if r >= 5 { r - 1 } else { r }; // square half side
        macro_rules! markers {
            ($shape:expr) => {
                ctx.draw_series(
                    segs.iter()
                        .flatten()
                        .map(|m| EmptyElement::at((m.x, m.y)) + $shape),
                )?
                .label(series.name.as_str())
                .legend(move |(lx, ly)| {
                    EmptyElement::at((lx + half, ly))
                        + PathElement::new(vec![(-half, 0), (half, 0)], line)
                        + $shape
                })
            };
        }
        match shape_of(i) {
            0 => markers!(Circle::new((0, 0), r, fill)),
            1 => markers!(Rectangle::new([(-q, -q), (q, q)], fill)),
            2 => markers!(TriangleMarker::new((0, 1), d, fill)),
            _ => markers!(Polygon::new(vec![(0, -d), (d, 0), (0, d), (-d, 0)], fill)),
        };
    }

    ctx.configure_series_labels()
        .position(legend_corner(&segs, x_axis.range, y_axis.range))
        .margin(pad)
        .legend_area_size((26.0 * s) as u32)
        .label_font(text(legend_px))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    Ok(())
}

/// Encodes `rgb` as PNG into a temp file next to `path`, then renames it over `path`.
fn write_png_atomic(path: &Path, rgb: &[u8], width: u32, height: u32) -> Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .context("the output path has no file name")?
        .to_string_lossy();
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| -> Result<()> {
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut out = BufWriter::new(file);
        {
            let mut enc = png::Encoder::new(&mut out, width, height);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            enc.set_compression(png::Compression::High);
            let mut writer = enc.write_header()?;
            writer.write_image_data(rgb)?;
            writer.finish()?;
        }
        out.flush()?;
        out.get_ref().sync_all()?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extent(min: f64, max: f64) -> Extent {
        Extent { min, max }
    }

    #[test]
    fn integer_axes_get_integer_ticks() {
        for (lo, hi, max) in [
            (0.0, 3.0, 10),
            (1.0, 10.0, 4),
            (0.0, 7.0, 10),
            (3.0, 3.0, 10),
            (0.0, 1000.0, 7),
        ] {
            let axis = Axis::new(extent(lo, hi), true, max);
            assert!(!axis.ticks.is_empty());
            assert!(axis.ticks.len() <= max, "{lo}..{hi}: {:?}", axis.ticks);
            assert!(
                axis.ticks.iter().all(|t| t.fract() == 0.0),
                "{lo}..{hi}: {:?}",
                axis.ticks
            );
            assert!(axis.ticks.iter().all(|t| !axis.label(*t).contains('.')));
        }
        // Every iteration gets a tick when there is room.
        assert_eq!(
            Axis::new(extent(0.0, 4.0), true, 10).ticks,
            vec![0.0, 1.0, 2.0, 3.0, 4.0]
        );
    }

    #[test]
    fn ranges_have_a_five_percent_margin_and_degenerate_ranges_are_padded() {
        let (lo, hi) = extent(0.0, 10.0).padded(false);
        assert!((lo + 0.5).abs() < 1e-12 && (hi - 10.5).abs() < 1e-12);
        assert_eq!(extent(3.0, 3.0).padded(true), (2.0, 4.0));
        let (lo, hi) = extent(0.5, 0.5).padded(false);
        assert!(lo < 0.5 && hi > 0.5);
        assert_eq!(extent(0.0, 0.0).padded(false), (-1.0, 1.0));
    }

    #[test]
    fn series_sharing_a_color_get_different_shapes() {
        for i in 0..30 {
            assert_eq!(series_color(i), series_color(i + PALETTE.len()));
            assert_ne!(shape_of(i), shape_of(i + PALETTE.len()), "series {i}");
            assert_ne!(shape_of(i), shape_of(i + 1), "series {i}");
        }
    }

    #[test]
    fn tick_labels_are_short() {
        let axis = Axis::new(extent(0.42, 0.71), false, 6);
        let labels: Vec<_> = axis.ticks.iter().map(|t| axis.label(*t)).collect();
        assert!(labels.iter().all(|l| l.len() <= 5), "{labels:?}");
        assert_eq!(format_tick(-0.0, 2, false), "0");
        assert_eq!(format_tick(0.1 + 0.2, 1, false), "0.3");
    }
}
