//! Writes sample charts into a directory, to look at by eye:
//! `cargo run --release -p cream-plot --example sample -- /tmp/cream-plot-sample`.

use cream_plot::{Chart, Point, Series, line_chart, panels};

fn main() -> anyhow::Result<()> {
    let dir = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "cream-plot-sample".into()),
    );
    std::fs::create_dir_all(&dir)?;
    let acc = |base: f64, slope: f64, bend: f64| -> Vec<Point> {
        (0..=4)
            .map(|t| {
                let t = t as f64;
                let y = base + slope * t - bend * t * t;
                Point::with_ci(t, y, y - 0.02 - 0.004 * t, y + 0.02 + 0.003 * t)
            })
            .collect()
    };
    let series = vec![
        Series {
            name: "CREAM (Llama-3 8B)".into(),
            points: acc(0.52, 0.035, 0.002),
        },
        Series {
            name: "SRLM".into(),
            points: acc(0.52, 0.04, 0.009),
        },
        Series {
            name: "M0 baseline".into(),
            points: (0..=4).map(|t| Point::new(t as f64, 0.52)).collect(),
        },
    ];
    let chart = Chart {
        title: "ARC-Easy accuracy by iteration (With NaN, kerning: AVAWaTo)",
        x_label: "iteration t",
        y_label: "accuracy",
        series: &series,
    };
    line_chart(&dir.join("chart.png"), &chart, 900, 560)?;
    let consistency = vec![Series {
        name: "Kendall tau (current vs previous)".into(),
        points: (1..=4)
            .map(|t| {
                Point::with_ci(
                    t as f64,
                    0.3 + 0.1 * t as f64,
                    0.25 + 0.1 * t as f64,
                    0.36 + 0.1 * t as f64,
                )
            })
            .collect(),
    }];
    let c2 = Chart {
        title: "Rewarding consistency",
        x_label: "iteration t",
        y_label: "C",
        series: &consistency,
    };
    panels(&dir.join("panels.png"), &[chart, c2], 2, 560, 380)?;
    let edge: Vec<(&str, Vec<Series>)> = vec![
        (
            "one point",
            vec![Series {
                name: "only".into(),
                points: vec![Point::with_ci(3.0, 0.7, 0.6, 0.8)],
            }],
        ),
        (
            "flat y",
            vec![Series {
                name: "flat".into(),
                points: (0..3).map(|t| Point::new(t as f64, 0.5)).collect(),
            }],
        ),
        (
            "NaN gap, big x",
            vec![Series {
                name: "steps".into(),
                points: vec![
                    Point::new(0.0, 1.5),
                    Point::new(500.0, f64::NAN),
                    Point::new(1000.0, 2.5),
                    Point::new(2000.0, 2.0),
                ],
            }],
        ),
        (
            "fractional x",
            vec![
                Series {
                    name: "a".into(),
                    points: (0..6)
                        .map(|t| Point::new(t as f64 * 0.1, (t as f64).sqrt()))
                        .collect(),
                },
                Series {
                    name: "b".into(),
                    points: (0..6)
                        .map(|t| Point::new(t as f64 * 0.1, 2.0 - (t as f64).sqrt()))
                        .collect(),
                },
            ],
        ),
    ];
    let charts: Vec<Chart> = edge
        .iter()
        .map(|(t, s)| Chart {
            title: t,
            x_label: "x",
            y_label: "y",
            series: s,
        })
        .collect();
    panels(&dir.join("edge.png"), &charts, 2, 320, 220)?;
    println!("{}", dir.display());
    Ok(())
}
