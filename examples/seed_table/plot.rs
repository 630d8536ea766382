//! Time per iteration against slot count, log-log, one panel per test and one line per design.
//! Lower is better.

use std::path::Path;

use plotters::prelude::*;

use crate::{time, Row, MAP_MAX_SLOTS};

const LINES: [(&str, RGBColor); 3] = [
    ("Before (array)", RGBColor(200, 60, 40)),
    ("After (trees)", RGBColor(30, 110, 200)),
    ("vm-memory 0.18", RGBColor(90, 160, 60)),
];

pub(crate) fn write(
    path: &Path,
    tests: &[&str],
    rows: &[Row],
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1200, 760)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        "Time per iteration against slots in use (log-log, lower is better)",
        ("sans-serif", 22),
    )?;
    let map_caption = format!("Map (stops at {MAP_MAX_SLOTS} slots: one page each)");
    let cols = tests.len().clamp(1, 3);
    let panels = root.split_evenly((tests.len().div_ceil(cols), cols));
    for (panel, &test) in panels.iter().zip(tests) {
        let rows: Vec<&Row> = rows.iter().filter(|r| r.test == test).collect();
        let series: Vec<Vec<(f64, f64)>> = (0..LINES.len())
            .map(|i| {
                rows.iter()
                    .filter_map(|r| r.times()[i].map(|t| (r.slots as f64, t)))
                    .collect()
            })
            .collect();
        let all = series.iter().flatten();
        let (mut lo, mut hi) = (f64::MAX, f64::MIN);
        for &(_, t) in all {
            lo = lo.min(t);
            hi = hi.max(t);
        }
        if lo > hi {
            continue;
        }
        let (x_lo, x_hi) = rows.iter().fold((f64::MAX, f64::MIN), |(a, b), r| {
            (a.min(r.slots as f64), b.max(r.slots as f64))
        });
        let mut chart = ChartBuilder::on(panel)
            .caption(
                if test == "Map" {
                    map_caption.as_str()
                } else {
                    test
                },
                ("sans-serif", 18),
            )
            .margin(8)
            .x_label_area_size(34)
            .y_label_area_size(64)
            .build_cartesian_2d(
                (x_lo / 1.5..x_hi * 1.5).log_scale(),
                (lo / 3.0..hi * 3.0).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_desc("slots")
            .y_desc("time / iteration")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| time(*y))
            .draw()?;
        for ((name, color), points) in LINES.iter().zip(&series) {
            if points.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 12))
            .draw()?;
    }
    root.present()?;
    Ok(())
}
