//! The timeline of one fault as an SVG: one lane per pool, requests per 100 ms by how they
//! ended (stacked bars: ok green, failed orange, hung red, wrong purple, on one scale for all
//! lanes), and under each lane a strip with the worst outcome of each 100 ms (wrong, then
//! hung, then failed, then ok; blank when no request ended), so that a few hung requests show
//! as red even when hundreds of ok ones set the scale; the time a request spent waiting
//! before it was counted hung is shaded pink over the whole lane. Vertical lines mark the fault, the heal
//! and (idle faults) the moment traffic resumed; a grey band is the time the workers were
//! paused. The lane's label says the pool and its verdict (red when it hung, got a wrong
//! reply or did not recover).

use std::path::Path;

use plotters::prelude::*;

const OK: RGBColor = RGBColor(44, 160, 44);
const FAILED: RGBColor = RGBColor(255, 127, 14);
const HUNG: RGBColor = RGBColor(214, 39, 40);
const WRONG: RGBColor = RGBColor(148, 103, 189);
const COLORS: [RGBColor; 4] = [OK, FAILED, HUNG, WRONG];
const FAULT: RGBColor = RGBColor(0, 0, 0);
const HEAL: RGBColor = RGBColor(31, 119, 180);
const RESUME: RGBColor = RGBColor(23, 190, 207);
const PAUSED: RGBColor = RGBColor(225, 225, 225);
const WAITING: RGBColor = RGBColor(250, 205, 205);

/// One pool's lane.
pub struct Lane {
    pub name: String,
    /// `ok`, or what went wrong (`hung 12`, `no recovery`).
    pub verdict: String,
    pub healthy: bool,
    /// A few figures, for the line under the verdict.
    pub detail: String,
    /// `(ok, failed, hung, wrong)` per bucket, from the round's start.
    pub buckets: Vec<[u32; 4]>,
    /// From start to end (ms) of the requests that hung, overlapping ones merged.
    pub hung: Vec<(u32, u32)>,
}

/// The moments of the round, in milliseconds since its start.
pub struct Moments {
    pub fault_ms: u32,
    pub heal_ms: u32,
    /// Idle faults: when the workers were paused and resumed.
    pub paused: Option<(u32, u32)>,
    pub end_ms: u32,
}

const WIDTH: u32 = 1280;
const LANE_H: u32 = 96;
const HEAD_H: u32 = 78;
const AXIS_H: u32 = 44;
const LABEL_W: u32 = 330;

fn err(e: impl std::fmt::Display) -> String {
    format!("plot: {e}")
}

/// Writes the timeline to `path`.
pub fn timeline_svg(
    path: &Path,
    title: &str,
    lanes: &[Lane],
    bucket_ms: u32,
    m: &Moments,
) -> Result<(), String> {
    let height = HEAD_H + LANE_H * lanes.len().max(1) as u32 + AXIS_H;
    let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (head, body) = root.split_vertically(HEAD_H);
    head.draw_text(
        title,
        &("sans-serif", 20).into_font().color(&BLACK),
        (12, 8),
    )
    .map_err(err)?;
    // The legend.
    let small = ("sans-serif", 13).into_font();
    let mut x = 12;
    let items: [(&str, RGBColor, bool); 9] = [
        ("ok", OK, true),
        ("failed (an error)", FAILED, true),
        ("hung (past the deadline)", HUNG, true),
        ("waiting, then hung", WAITING, true),
        ("wrong reply", WRONG, true),
        ("fault", FAULT, false),
        ("heal", HEAL, false),
        ("traffic resumes", RESUME, false),
        ("workers paused", PAUSED, true),
    ];
    for (label, color, block) in items {
        let y = 44;
        if block {
            head.draw(&Rectangle::new([(x, y), (x + 14, y + 14)], color.filled()))
                .map_err(err)?;
        } else {
            head.draw(&PathElement::new(
                vec![(x + 7, y - 2), (x + 7, y + 16)],
                color.stroke_width(2),
            ))
            .map_err(err)?;
        }
        head.draw_text(label, &small.color(&BLACK), (x + 20, y + 1))
            .map_err(err)?;
        x += 30 + (label.chars().count() as i32) * 7;
    }
    head.draw_text(
        &format!(
            "requests per {bucket_ms} ms by how they ended (one scale for all lanes); the \
             strip under each lane: the worst outcome in each {bucket_ms} ms"
        ),
        &small.color(&RGBColor(90, 90, 90)),
        (12, 62),
    )
    .map_err(err)?;

    let (lanes_area, axis_area) = body.split_vertically(LANE_H * lanes.len().max(1) as u32);
    let end_s = f64::from(m.end_ms.max(1)) / 1000.0;
    let ymax = lanes
        .iter()
        .flat_map(|l| l.buckets.iter())
        .map(|b| b.iter().sum::<u32>())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let strip = ymax * 0.28;
    let bucket_s = f64::from(bucket_ms) / 1000.0;
    let areas = lanes_area.split_evenly((lanes.len().max(1), 1));
    for (area, lane) in areas.iter().zip(lanes) {
        let (label, plot) = area.split_horizontally(LABEL_W);
        label
            .draw_text(
                &lane.name,
                &("sans-serif", 15).into_font().color(&BLACK),
                (10, 26),
            )
            .map_err(err)?;
        let (color, weight) = if lane.healthy {
            (RGBColor(30, 120, 30), FontStyle::Normal)
        } else {
            (HUNG, FontStyle::Bold)
        };
        let mark = if lane.healthy { "✓" } else { "✗" };
        label
            .draw_text(
                &format!("{mark} {}", lane.verdict),
                &("sans-serif", 15).into_font().style(weight).color(&color),
                (10, 48),
            )
            .map_err(err)?;
        label
            .draw_text(
                &lane.detail,
                &("sans-serif", 12).into_font().color(&RGBColor(90, 90, 90)),
                (10, 70),
            )
            .map_err(err)?;
        let mut chart = ChartBuilder::on(&plot)
            .margin_top(4)
            .margin_bottom(4)
            .margin_right(16)
            .y_label_area_size(44)
            .build_cartesian_2d(0f64..end_s, -strip..ymax * 1.05)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_labels(3)
            .y_label_formatter(&|v| {
                if *v < 0.0 {
                    String::new()
                } else {
                    format!("{v:.0}")
                }
            })
            .x_labels(0)
            .light_line_style(RGBColor(240, 240, 240))
            .bold_line_style(RGBColor(225, 225, 225))
            .label_style(("sans-serif", 11))
            .draw()
            .map_err(err)?;
        if let Some((from, to)) = m.paused {
            let (a, b) = (f64::from(from) / 1000.0, f64::from(to) / 1000.0);
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(a, -strip), (b, ymax * 1.05)],
                    PAUSED.filled(),
                )))
                .map_err(err)?;
        }
        // The time requests waited for nothing.
        chart
            .draw_series(lane.hung.iter().map(|&(a, b)| {
                let (a, b) = (f64::from(a) / 1000.0, f64::from(b) / 1000.0);
                Rectangle::new([(a, -strip), (b, ymax * 1.05)], WAITING.filled())
            }))
            .map_err(err)?;
        // Stacked bars.
        let mut bars = Vec::new();
        let mut worst = Vec::new();
        for (i, b) in lane.buckets.iter().enumerate() {
            let x0 = i as f64 * bucket_s;
            let x1 = x0 + bucket_s * 0.92;
            let mut y = 0.0;
            for (k, &n) in b.iter().enumerate() {
                if n > 0 {
                    let top = y + f64::from(n);
                    bars.push(Rectangle::new([(x0, y), (x1, top)], COLORS[k].filled()));
                    y = top;
                }
            }
            let w = [3, 2, 1, 0].into_iter().find(|&k| b[k] > 0);
            if let Some(k) = w {
                worst.push(Rectangle::new(
                    [(x0, -strip * 0.92), (x0 + bucket_s, -strip * 0.12)],
                    COLORS[k].filled(),
                ));
            }
        }
        chart.draw_series(bars).map_err(err)?;
        chart.draw_series(worst).map_err(err)?;
        // Markers.
        let mut marks = vec![(m.fault_ms, FAULT)];
        if m.heal_ms != m.fault_ms {
            marks.push((m.heal_ms, HEAL));
        }
        if let Some((_, resume)) = m.paused {
            marks.push((resume, RESUME));
        }
        for (at, color) in marks {
            let x = f64::from(at) / 1000.0;
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(x, -strip), (x, ymax * 1.05)],
                    color.stroke_width(2),
                )))
                .map_err(err)?;
        }
    }

    // The time axis, under the last lane.
    let (_, axis) = axis_area.split_horizontally(LABEL_W);
    let mut chart = ChartBuilder::on(&axis)
        .margin_right(16)
        .y_label_area_size(44)
        .x_label_area_size(AXIS_H - 4)
        .build_cartesian_2d(0f64..end_s, 0f64..1f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .disable_y_axis()
        .x_labels(((end_s / 2.0).ceil() as usize).clamp(2, 30))
        .x_label_formatter(&|v| format!("{v:.0} s"))
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
