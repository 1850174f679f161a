//! Server-side charts: inline SVG, no script. One line per series over a shared x axis of
//! labels (days); a point per value with a `<title>` tooltip; gaps where a series has no
//! value.

use std::fmt::Write;

use super::html::{count, esc};

/// One line of a chart: a value (or none) per x label.
#[derive(Debug, Clone)]
pub(crate) struct Series {
    pub(crate) label: String,
    pub(crate) points: Vec<Option<f64>>,
}

/// How the y axis is scaled and labelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum YAxis {
    /// Rates in `[0, 1]` shown as percentages; the bottom follows the lowest value so
    /// that differences between 90% and 99% show.
    Percent,
    /// Counts from zero.
    Count,
}

/// Ten distinguishable colours (Tableau 10); series beyond ten reuse them.
const COLOURS: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];

pub(crate) fn colour(i: usize) -> &'static str {
    COLOURS[i % COLOURS.len()]
}

const W: f64 = 960.0;
const H: f64 = 240.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 28.0;

/// A rounded-up axis maximum: 1, 2 or 5 times a power of ten.
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let exp = v.log10().floor();
    let base = 10f64.powf(exp);
    for m in [1.0, 2.0, 5.0, 10.0] {
        if v <= m * base {
            return m * base;
        }
    }
    10.0 * base
}

fn y_label(axis: YAxis, v: f64) -> String {
    match axis {
        YAxis::Percent => format!("{:.0}%", v * 100.0),
        YAxis::Count => count(v.round() as u64),
    }
}

/// The chart as an `<svg>` element followed by its legend; `title` is its accessible
/// name. Every label is escaped.
pub(crate) fn line_chart(
    title: &str,
    x_labels: &[String],
    series: &[Series],
    axis: YAxis,
) -> String {
    let values = series
        .iter()
        .flat_map(|s| s.points.iter().flatten().copied());
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    let (y0, y1) = match axis {
        YAxis::Percent => {
            let bottom = if lo.is_finite() {
                ((lo - 0.05) * 10.0).floor() / 10.0
            } else {
                0.0
            };
            (bottom.clamp(0.0, 0.9), 1.0)
        }
        YAxis::Count => (0.0, nice_max(if hi.is_finite() { hi } else { 1.0 })),
    };
    let n = x_labels.len().max(1);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let x = |i: usize| {
        if n == 1 {
            LEFT + plot_w / 2.0
        } else {
            LEFT + plot_w * i as f64 / (n - 1) as f64
        }
    };
    let y = |v: f64| TOP + plot_h * (1.0 - ((v - y0) / (y1 - y0)).clamp(0.0, 1.0));
    let mut svg = String::with_capacity(8192);
    let _ = write!(
        svg,
        "<svg viewBox=\"0 0 {W} {H}\" width=\"100%\" role=\"img\" aria-label=\"{}\" xmlns=\"http://www.w3.org/2000/svg\">",
        esc(title)
    );
    for k in 0..=4 {
        let v = y0 + (y1 - y0) * f64::from(k) / 4.0;
        let py = y(v);
        let _ = write!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{py:.1}\" y2=\"{py:.1}\" stroke=\"#e4e7ec\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 6.0,
            py + 4.0,
            esc(&y_label(axis, v))
        );
    }
    let every = n.div_ceil(12).max(1);
    for (i, label) in x_labels.iter().enumerate() {
        if i % every == 0 || i + 1 == n {
            // `2026-11-25` shows as `11-25`.
            let short = label.get(5..).unwrap_or(label);
            // The last label ends at the plot's edge instead of running past it.
            let anchor = if i + 1 == n && n > 1 { "end" } else { "middle" };
            let _ = write!(
                svg,
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"{anchor}\">{}</text>",
                x(i),
                H - 8.0,
                esc(short)
            );
        }
    }
    for (si, s) in series.iter().enumerate() {
        let c = colour(si);
        // A polyline per run of consecutive values.
        let mut run: Vec<String> = Vec::new();
        let flush = |run: &mut Vec<String>, svg: &mut String| {
            if run.len() > 1 {
                let _ = write!(
                    svg,
                    "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>",
                    run.join(" ")
                );
            }
            run.clear();
        };
        for (i, p) in s.points.iter().enumerate() {
            match p {
                Some(v) if v.is_finite() => run.push(format!("{:.1},{:.1}", x(i), y(*v))),
                _ => flush(&mut run, &mut svg),
            }
        }
        flush(&mut run, &mut svg);
        for (i, p) in s.points.iter().enumerate() {
            if let Some(v) = p.filter(|v| v.is_finite()) {
                let label = x_labels.get(i).map_or("", String::as_str);
                let _ = write!(
                    svg,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{c}\"><title>{} {}: {}</title></circle>",
                    x(i),
                    y(v),
                    esc(&s.label),
                    esc(label),
                    esc(&match axis {
                        YAxis::Percent => format!("{:.1}%", v * 100.0),
                        YAxis::Count => count(v.round() as u64),
                    })
                );
            }
        }
    }
    svg.push_str("</svg><ul class=\"legend\">");
    for (si, s) in series.iter().enumerate() {
        let _ = write!(
            svg,
            "<li><i style=\"background:{}\"></i>{}</li>",
            colour(si),
            esc(&s.label)
        );
    }
    svg.push_str("</ul>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_break_at_gaps_and_labels_are_escaped() {
        let days: Vec<String> = ["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04"]
            .map(String::from)
            .to_vec();
        let svg = line_chart(
            "match <rate>",
            &days,
            &[Series {
                label: "v1 <b>".into(),
                points: vec![Some(0.9), Some(0.95), None, Some(0.8)],
            }],
            YAxis::Percent,
        );
        // One polyline (the first two points); the lone last point is a circle only.
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains("aria-label=\"match &lt;rate&gt;\""));
        assert!(svg.contains("v1 &lt;b&gt; 2026-11-04: 80.0%"));
        assert!(!svg.contains("<b>"));
        // The axis starts below the lowest value, at a tenth.
        assert!(svg.contains(">70%</text>"));
    }

    #[test]
    fn count_axes_round_up_to_a_nice_maximum() {
        assert_eq!(nice_max(730.0), 1000.0);
        assert_eq!(nice_max(120.0), 200.0);
        assert_eq!(nice_max(4.0), 5.0);
        assert_eq!(nice_max(0.0), 1.0);
    }
}
