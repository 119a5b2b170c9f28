//! End-to-end checks of the PNG charts: file format and size, atomic write, visible content,
//! error bars, and the edge cases (no series, no finite data, NaN points, one point, flat y).

use std::collections::HashSet;
use std::path::Path;

use cream_plot::{
    Chart, Point, Series, line_chart, panels, render_panels_rgb, render_rgb, series_color,
};

/// Width and height from a PNG's signature and IHDR chunk, parsed by hand.
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    assert!(
        bytes.len() > 33,
        "{} is too short for a PNG",
        path.display()
    );
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&bytes[8..12], &13u32.to_be_bytes(), "IHDR length");
    assert_eq!(&bytes[12..16], b"IHDR", "first chunk is IHDR");
    let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    (w, h)
}

/// Decodes an 8-bit RGB PNG into (width, height, pixels).
fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

fn pixels(rgb: &[u8]) -> impl Iterator<Item = (u8, u8, u8)> + '_ {
    rgb.chunks_exact(3).map(|p| (p[0], p[1], p[2]))
}

fn count_color(rgb: &[u8], color: (u8, u8, u8)) -> usize {
    pixels(rgb).filter(|&p| p == color).count()
}

fn non_white(rgb: &[u8]) -> usize {
    pixels(rgb).filter(|&p| p != (255, 255, 255)).count()
}

/// Pixels of `color` inside columns `x0..x1` (image of width `w`).
fn count_color_in_columns(rgb: &[u8], w: u32, x0: u32, x1: u32, color: (u8, u8, u8)) -> usize {
    pixels(rgb)
        .enumerate()
        .filter(|&(i, p)| {
            let x = i as u32 % w;
            p == color && x >= x0 && x < x1
        })
        .count()
}

/// Pixels that series `i` of `series` draws in the plot (line, markers, error bars), not counting
/// its legend entry: its color's count, less the count in the same chart with an empty series of
/// the same name inserted at `i` (which takes over the color and draws only the legend entry;
/// the axes stay the same). Needs fewer than 10 series, so that colors do not repeat.
fn data_pixels(title: &str, series: &[Series], i: usize, w: u32, h: u32) -> usize {
    assert!(series.len() < 10);
    let mut shifted = series.to_vec();
    shifted.insert(
        i,
        Series {
            name: series[i].name.clone(),
            points: Vec::new(),
        },
    );
    let with = count_color(
        &render_rgb(&chart(title, series), w, h).unwrap(),
        series_color(i),
    );
    let legend_only = count_color(
        &render_rgb(&chart(title, &shifted), w, h).unwrap(),
        series_color(i),
    );
    with.saturating_sub(legend_only)
}

fn two_series() -> Vec<Series> {
    vec![
        Series {
            name: "CREAM".into(),
            points: (0..5)
                .map(|t| {
                    let y = 0.50 + 0.04 * t as f64;
                    Point::with_ci(t as f64, y, y - 0.03, y + 0.03)
                })
                .collect(),
        },
        Series {
            name: "SRLM (no consistency)".into(),
            points: (0..5)
                .map(|t| {
                    let y = 0.50 + 0.05 * t as f64 - 0.012 * (t * t) as f64;
                    Point::with_ci(t as f64, y, y - 0.025, y + 0.02)
                })
                .collect(),
        },
    ]
}

fn chart<'a>(title: &'a str, series: &'a [Series]) -> Chart<'a> {
    Chart {
        title,
        x_label: "iteration",
        y_label: "accuracy",
        series,
    }
}

/// Also writes the sample to $CREAM_PLOT_SAMPLE_DIR when set, to look at by eye.
fn sample_path(dir: &Path, name: &str) -> std::path::PathBuf {
    if let Some(d) = std::env::var_os("CREAM_PLOT_SAMPLE_DIR") {
        std::fs::create_dir_all(&d).unwrap();
        return Path::new(&d).join(name);
    }
    dir.join(name)
}

#[test]
fn two_series_with_error_bars_write_a_png_of_the_requested_size() {
    let dir = tempfile::tempdir().unwrap();
    let series = two_series();
    let c = chart("Accuracy by iteration", &series);
    let path = sample_path(dir.path(), "two_series.png");
    line_chart(&path, &c, 320, 200).unwrap();
    assert_eq!(png_size(&path), (320, 200));
    // Overwriting works and leaves no temp file behind.
    line_chart(&path, &c, 640, 400).unwrap();
    assert_eq!(png_size(&path), (640, 400));
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("two_series.png") && n != "two_series.png")
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");

    // The file holds exactly what render_rgb draws, so the pixel checks below cover the files.
    let (w, h, rgb) = decode(&path);
    assert_eq!((w, h), (640, 400));
    assert!(
        rgb == render_rgb(&c, 640, 400).unwrap(),
        "PNG pixels differ from render_rgb"
    );
}

#[test]
fn the_chart_is_not_blank_and_each_series_has_its_own_color() {
    let series = two_series();
    let rgb = render_rgb(&chart("Accuracy by iteration", &series), 640, 400).unwrap();
    let total = 640 * 400;
    let ink = non_white(&rgb);
    assert!(
        ink > total / 50,
        "only {ink} of {total} pixels are not white"
    );
    let distinct: HashSet<_> = pixels(&rgb).collect();
    assert!(
        distinct.len() > 20,
        "only {} distinct colors (text is anti-aliased)",
        distinct.len()
    );
    assert_ne!(series_color(0), series_color(1));
    // Without error bars, each series' line and markers (not just its legend entry) must show:
    // a 2 px line across the ~560 px wide plot is well over 500 pixels.
    let mut bare = series.clone();
    for p in bare.iter_mut().flat_map(|s| s.points.iter_mut()) {
        (p.lo, p.hi) = (None, None);
    }
    for i in 0..2 {
        let n = data_pixels("bare", &bare, i, 640, 400);
        assert!(
            n > 500,
            "series {i} draws only {n} pixels of color {:?}",
            series_color(i)
        );
    }
}

#[test]
fn error_bars_are_drawn() {
    // Series 0 has one point with a tall interval; series 1 pins the y range so that both charts
    // share the same axes and differ only by that error bar.
    let with_bar = |bar: bool| {
        vec![
            Series {
                name: "with interval".into(),
                points: vec![
                    Point::new(0.0, 0.0),
                    if bar {
                        Point::with_ci(1.0, 0.0, -10.0, 10.0)
                    } else {
                        Point::new(1.0, 0.0)
                    },
                    Point::new(2.0, 0.0),
                ],
            },
            Series {
                name: "range".into(),
                points: vec![Point::new(0.0, -10.0), Point::new(2.0, 10.0)],
            },
        ]
    };
    let (a, b) = (with_bar(true), with_bar(false));
    let rgb_a = render_rgb(&chart("bars", &a), 500, 400).unwrap();
    let rgb_b = render_rgb(&chart("bars", &b), 500, 400).unwrap();
    let color = series_color(0);
    // The bar runs down the middle of the plot at x = 1; count series-0 pixels in that band.
    let (na, nb) = (
        count_color_in_columns(&rgb_a, 500, 200, 330, color),
        count_color_in_columns(&rgb_b, 500, 200, 330, color),
    );
    // The bar spans about 300 px of the ~330 px plot height (caps add a few more).
    assert!(
        na >= nb + 200,
        "error bar adds only {} pixels ({na} vs {nb})",
        na as i64 - nb as i64
    );
}

#[test]
fn an_empty_series_list_is_an_error_naming_the_chart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.png");
    let err = line_chart(&path, &chart("Win rate vs iteration", &[]), 400, 300).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("Win rate vs iteration"),
        "error does not name the chart: {msg}"
    );
    assert!(!path.exists(), "a failed chart must not leave a file");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no temp file either"
    );

    // Series that hold no finite point are an error too.
    let nan = vec![Series {
        name: "nan".into(),
        points: vec![Point::new(f64::NAN, 1.0), Point::new(1.0, f64::NAN)],
    }];
    let err = line_chart(&path, &chart("All NaN", &nan), 400, 300).unwrap_err();
    assert!(format!("{err:#}").contains("All NaN"), "{err:#}");

    // In panels, the failing panel is named.
    let ok = two_series();
    let err = render_panels_rgb(
        &[chart("fine", &ok), chart("the empty one", &[])],
        2,
        300,
        200,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("the empty one"), "{err:#}");
}

#[test]
fn nan_points_are_skipped() {
    let series = vec![
        Series {
            name: "gappy".into(),
            points: vec![
                Point::with_ci(1.0, 0.4, 0.35, 0.45),
                Point::new(2.0, f64::NAN),
                Point::new(f64::NAN, 0.5),
                Point::new(f64::INFINITY, 0.5),
                Point {
                    x: 4.0,
                    y: 0.6,
                    lo: Some(f64::NAN),
                    hi: Some(0.65),
                },
                Point::with_ci(5.0, 0.55, f64::NEG_INFINITY, 0.6),
            ],
        },
        Series {
            name: "flat".into(),
            points: vec![Point::new(1.0, 0.5), Point::new(5.0, 0.5)],
        },
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = sample_path(dir.path(), "nan.png");
    line_chart(&path, &chart("With NaN", &series), 480, 320).unwrap();
    assert_eq!(png_size(&path), (480, 320));
    for i in 0..2 {
        let n = data_pixels("With NaN", &series, i, 480, 320);
        assert!(n > 200, "series {i} draws only {n} pixels");
    }
}

#[test]
fn one_point_and_flat_series_draw_a_sensible_picture() {
    // Minimum data pixels: a marker (radius 3 at this size) is ~25 pixels, a line ~300 or more.
    for (title, points, min) in [
        ("one point", vec![Point::with_ci(3.0, 0.7, 0.6, 0.8)], 100),
        (
            "flat",
            vec![
                Point::new(0.0, 0.5),
                Point::new(1.0, 0.5),
                Point::new(2.0, 0.5),
            ],
            300,
        ),
        (
            "flat at zero",
            vec![Point::new(0.5, 0.0), Point::new(1.5, 0.0)],
            300,
        ),
        ("single non-integer x", vec![Point::new(0.25, -2.0)], 15),
    ] {
        let series = vec![Series {
            name: title.into(),
            points,
        }];
        let n = data_pixels(title, &series, 0, 400, 300);
        assert!(n > min, "{title}: series drawn with only {n} pixels");
    }
}

#[test]
fn many_series_get_distinct_colors_or_shapes() {
    let colors: HashSet<_> = (0..10).map(series_color).collect();
    assert_eq!(colors.len(), 10);
    let series: Vec<Series> = (0..9)
        .map(|i| Series {
            name: format!("s{i}"),
            points: (0..4)
                .map(|t| Point::new(t as f64, (i * 4 + t) as f64))
                .collect(),
        })
        .collect();
    for i in 0..9 {
        let n = data_pixels("nine series", &series, i, 800, 600);
        assert!(n > 500, "series {i} draws only {n} pixels");
    }
    // More series than colors still draws.
    let twelve: Vec<Series> = (0..12)
        .map(|i| Series {
            name: format!("s{i}"),
            points: vec![Point::new(i as f64, 1.0)],
        })
        .collect();
    render_rgb(&chart("twelve series", &twelve), 800, 600).unwrap();
}

#[test]
fn panels_lay_charts_out_in_a_grid() {
    let dir = tempfile::tempdir().unwrap();
    let a = two_series();
    let b = vec![Series {
        name: "loss".into(),
        points: (1..=6)
            .map(|t| Point::new(t as f64, 1.0 / t as f64))
            .collect(),
    }];
    let charts = [chart("left", &a), chart("middle", &b), chart("right", &a)];

    let path = sample_path(dir.path(), "panels.png");
    panels(&path, &charts, 3, 360, 260).unwrap();
    assert_eq!(png_size(&path), (3 * 360, 260));

    let grid = dir.path().join("grid.png");
    panels(&grid, &charts, 2, 300, 200).unwrap();
    assert_eq!(png_size(&grid), (2 * 300, 2 * 200));

    // Each panel is drawn: series 0's color shows in each third of the one-row image, more than
    // its legend entry alone (~60 pixels at this size) accounts for.
    let (w, _, rgb) = decode(&path);
    for k in 0..3 {
        let n = count_color_in_columns(&rgb, w, k * 360, (k + 1) * 360, series_color(0));
        assert!(n > 300, "panel {k} has only {n} series pixels");
    }

    assert!(panels(&grid, &charts, 0, 300, 200).is_err(), "zero columns");
    assert!(panels(&grid, &[], 2, 300, 200).is_err(), "no charts");
}

#[test]
fn title_and_axis_labels_are_drawn() {
    let series = two_series();
    let (w, h) = (640u32, 400u32);
    let rgb = render_rgb(&chart("Accuracy by iteration", &series), w, h).unwrap();
    // Text is black (anti-aliased); grid lines and the legend border are light gray.
    let dark_in = |x0: u32, x1: u32, y0: u32, y1: u32| {
        pixels(&rgb)
            .enumerate()
            .filter(|&(i, (r, g, b))| {
                let (x, y) = (i as u32 % w, i as u32 / w);
                r.max(g).max(b) < 128 && (x0..x1).contains(&x) && (y0..y1).contains(&y)
            })
            .count()
    };
    let title = dark_in(0, w, 0, 30);
    let y_desc = dark_in(0, 24, 40, h - 60);
    let x_desc = dark_in(200, 440, h - 30, h);
    assert!(title > 100, "title: {title} dark pixels");
    assert!(y_desc > 40, "y label: {y_desc} dark pixels");
    assert!(x_desc > 40, "x label: {x_desc} dark pixels");
}
