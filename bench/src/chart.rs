//! The chart, an SVG: 64-byte UDP throughput (median, min–max whiskers)
//! and one-way latency (p50 and p99) per director kind. (SVG, not PNG: its
//! text is text, so no font file is read or parsed.)

use crate::kinds::Kind;
use crate::report::{Cell, Report};
use crate::scenario::Scenario;
use anyhow::{Result, anyhow};
use plotters::prelude::*;
use std::path::Path;

/// One bar group: label, values drawn over each other, optional whisker.
type Row<const N: usize> = (String, [f64; N], Option<(f64, f64)>);

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing the chart: {e}")
}

/// Draws the chart to `path`.
pub fn draw(report: &Report, path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (left, right) = root.split_horizontally(700);

    let udp: Vec<(Kind, (f64, f64, f64))> = report
        .kinds()
        .into_iter()
        .filter_map(|k| Some((k, report.cell(Scenario::Udp64, k)?.value()?)))
        .collect();
    bars(
        &left,
        "64-byte UDP delivered (Mpps; whiskers: min–max)",
        &udp.iter()
            .map(|(k, v)| (k.to_string(), [v.0], Some((v.1, v.2))))
            .collect::<Vec<_>>(),
    )?;

    let lat: Vec<Row<2>> = report
        .kinds()
        .into_iter()
        .filter_map(|k| {
            let l = report
                .cell(Scenario::Latency, k)
                .and_then(Cell::median_sample)?
                .latency_us?;
            Some((k.to_string(), [l[0], l[2]], None))
        })
        .collect();
    bars(
        &right,
        &format!(
            "One-way latency at {:.0} kpps (µs; p50 solid, p99 light)",
            report.params.latency_pps as f64 / 1e3
        ),
        &lat,
    )?;
    root.present().map_err(err)?;
    Ok(())
}

/// A bar chart: per label, bars drawn over each other (tallest first), and
/// optional whiskers.
fn bars<const N: usize>(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    rows: &[Row<N>],
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let top = rows
        .iter()
        .flat_map(|(_, v, w)| v.iter().copied().chain(w.map(|w| w.1)))
        .fold(0.0f64, f64::max)
        * 1.15;
    let n = rows.len() as u32;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((0..n).into_segmented(), 0.0..top.max(1e-9))
        .map_err(err)?;
    let names: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(rows.len())
        .x_label_style(("sans-serif", 12))
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                names.get(*i as usize).cloned().unwrap_or_default()
            }
            SegmentValue::Last => String::new(),
        })
        .y_label_style(("sans-serif", 12))
        .draw()
        .map_err(err)?;
    let shades = [RGBColor(40, 90, 170), RGBColor(150, 180, 230)];
    for (i, (label, values, whisker)) in rows.iter().enumerate() {
        let i = i as u32;
        let lvc = label.starts_with("lvc");
        let mut order: Vec<(usize, f64)> = values.iter().copied().enumerate().collect();
        order.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (j, v) in order {
            let mut c = shades[j.min(1)];
            if lvc {
                c = RGBColor(c.0.saturating_add(120), c.1 / 2, c.2 / 3);
            }
            chart
                .draw_series(std::iter::once({
                    let mut r = Rectangle::new(
                        [
                            (SegmentValue::Exact(i), 0.0),
                            (SegmentValue::Exact(i + 1), v),
                        ],
                        c.filled(),
                    );
                    r.set_margin(0, 0, 8, 8);
                    r
                }))
                .map_err(err)?;
        }
        if let Some((lo, hi)) = whisker {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![
                        (SegmentValue::CenterOf(i), *lo),
                        (SegmentValue::CenterOf(i), *hi),
                    ],
                    BLACK.stroke_width(2),
                )))
                .map_err(err)?;
        }
    }
    Ok(())
}
