//! The storm's plots: one SVG per outage, one panel per policy, each a histogram of the
//! connection attempts per 100 ms over time (a step line, log scale), with the crash at 0 s
//! and the server's return marked.

use std::{path::Path, time::Duration};

use plotters::prelude::*;

/// One policy's attempts, as times since the crash.
pub(crate) struct Series<'a> {
    pub(crate) name: &'a str,
    pub(crate) times: Vec<Duration>,
}

/// The bottom of the log scale: empty windows are drawn there.
const FLOOR: f64 = 0.7;
const PANEL_WIDTH: u32 = 720;
const PANEL_HEIGHT: u32 = 250;
const COLUMNS: usize = 2;

/// Draws `series` into the SVG file `path`; `back` is when the server returned (since the
/// crash).
pub(crate) fn draw(
    path: &Path,
    title: &str,
    back: Duration,
    series: &[Series<'_>],
) -> Result<(), Box<dyn std::error::Error>> {
    let window = super::WINDOW.as_secs_f64();
    let last = series
        .iter()
        .flat_map(|s| s.times.iter())
        .max()
        .copied()
        .unwrap_or(back)
        .as_secs_f64();
    // From 1 s before the crash to a little after the last attempt.
    let x_range = -1.0..(last + 1.0).max(back.as_secs_f64() + 2.0) * 1.02;
    let rows = series.len().div_ceil(COLUMNS);
    let size = (
        PANEL_WIDTH * COLUMNS as u32,
        PANEL_HEIGHT * rows as u32 + 40,
    );
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE)?;
    let (header, body) = root.split_vertically(40);
    header.titled(title, ("sans-serif", 20))?;
    let panels = body.split_evenly((rows, COLUMNS));
    let peak = series
        .iter()
        .map(|s| counts(&s.times, window).into_iter().max().unwrap_or(0))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let y_top = (peak * 2.0).max(10.0);
    for (panel, s) in panels.iter().zip(series) {
        let mut chart = ChartBuilder::on(panel)
            .caption(s.name, ("sans-serif", 15))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(48)
            .build_cartesian_2d(x_range.clone(), (FLOOR..y_top).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("seconds since the crash")
            .y_desc("attempts / 100 ms")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .label_style(("sans-serif", 11))
            .axis_desc_style(("sans-serif", 11))
            .light_line_style(WHITE)
            .draw()?;
        // The server is down from 0 s (the crash) to `back`.
        let back = back.as_secs_f64();
        chart.draw_series(std::iter::once(Rectangle::new(
            [(0.0, FLOOR), (back, y_top)],
            RGBColor(255, 228, 228).filled(),
        )))?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(back, FLOOR), (back, y_top)],
            RED.stroke_width(1),
        )))?;
        chart.draw_series(LineSeries::new(
            steps(&s.times, window),
            BLUE.stroke_width(1),
        ))?;
    }
    root.present()?;
    Ok(())
}

/// Attempts per window, the first window starting at the crash (0 s).
fn counts(times: &[Duration], window: f64) -> Vec<usize> {
    let mut counts = Vec::new();
    for time in times {
        let index = (time.as_secs_f64() / window).floor() as usize;
        if counts.len() <= index {
            counts.resize(index + 1, 0);
        }
        counts[index] += 1;
    }
    counts
}

/// The histogram as a step line: each window's count over its width, empty windows at the
/// floor; runs of equal counts make one step.
fn steps(times: &[Duration], window: f64) -> Vec<(f64, f64)> {
    let counts = counts(times, window);
    let level = |count: usize| if count == 0 { FLOOR } else { count as f64 };
    let mut points = vec![(-1.0, FLOOR), (0.0, FLOOR)];
    let mut index = 0;
    while index < counts.len() {
        let count = counts[index];
        let mut end = index + 1;
        while end < counts.len() && counts[end] == count {
            end += 1;
        }
        points.push((index as f64 * window, level(count)));
        points.push((end as f64 * window, level(count)));
        index = end;
    }
    points.push((counts.len() as f64 * window, FLOOR));
    points
}
