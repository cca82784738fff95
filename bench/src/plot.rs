//! The latency-versus-rate plot of `compare --sweep`: p99 (solid) and p50
//! (dashed) send-to-deliver latency against offered rate, one colour per
//! server, both axes logarithmic, and the p99 bound as a grey line.
//!
//! SVG, so the text is `<text>` elements that the viewer renders with its
//! own fonts: plotters is built without font support and needs no system
//! libraries.

use std::path::Path;

use plotters::prelude::*;

use crate::sweep::SweepResult;

/// One colour per server, in the order of `compare`'s targets.
const COLOURS: [RGBColor; 4] = [
    RGBColor(0x4c, 0x72, 0xb0),
    RGBColor(0xdd, 0x52, 0x2f),
    RGBColor(0x55, 0xa8, 0x68),
    RGBColor(0x81, 0x72, 0xb2),
];

/// Writes the plot of `sweeps` to `path` as SVG.
pub(crate) fn latency_vs_rate(path: &Path, sweeps: &[SweepResult]) -> anyhow::Result<()> {
    crate::report::create_parent(path)?;
    let steps = || sweeps.iter().flat_map(|s| &s.steps);
    anyhow::ensure!(steps().next().is_some(), "no sweep steps to plot");
    let rates = steps().map(|s| s.result.rate as f64);
    let (min_rate, max_rate) = rates.fold((f64::MAX, 0f64), |(lo, hi), r| (lo.min(r), hi.max(r)));
    let latencies = steps().flat_map(|s| [s.result.latency.p50_ms, s.result.latency.p99_ms]);
    let (min_ms, max_ms) = latencies.fold((f64::MAX, 0f64), |(lo, hi), l| (lo.min(l), hi.max(l)));
    let bound = sweeps[0].p99_bound_ms;
    let y_range = (min_ms.min(bound) / 2.0).max(0.01)..(max_ms.max(bound) * 2.0);

    let mut x_keys: Vec<f64> = steps().map(|s| s.result.rate as f64).collect();
    x_keys.sort_by(f64::total_cmp);
    x_keys.dedup();
    let y_keys = one_two_five(y_range.start, y_range.end);

    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "rooms: send-to-deliver latency vs offered rate ({} connections)",
                sweeps[0].connections
            ),
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(
            ((min_rate / 1.25)..(max_rate * 1.25))
                .log_scale()
                .with_key_points(x_keys),
            y_range.log_scale().with_key_points(y_keys),
        )?;
    chart
        .configure_mesh()
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .x_desc("offered messages/s")
        .y_desc("latency, ms")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| {
            format!("{y:.2}")
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_owned()
        })
        .draw()?;

    let x_span = (min_rate / 1.25, max_rate * 1.25);
    let grey = RGBColor(0x88, 0x88, 0x88);
    chart
        .draw_series(DashedLineSeries::new(
            [(x_span.0, bound), (x_span.1, bound)],
            6,
            4,
            grey.stroke_width(1),
        ))?
        .label(format!("p99 bound, {bound} ms"))
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], grey));

    for (sweep, colour) in sweeps.iter().zip(COLOURS.iter().cycle()) {
        let mut points: Vec<(f64, f64, f64)> = sweep
            .steps
            .iter()
            .map(|s| {
                let r = &s.result;
                (r.rate as f64, r.latency.p50_ms, r.latency.p99_ms)
            })
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let colour = *colour;
        let name = format!("{:?}", sweep.target);
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.0, p.2)),
                colour.stroke_width(2),
            ))?
            .label(format!("{name} p99"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
        chart.draw_series(
            points
                .iter()
                .map(|p| Circle::new((p.0, p.2), 3, colour.filled())),
        )?;
        chart
            .draw_series(DashedLineSeries::new(
                points.iter().map(|p| (p.0, p.1)),
                5,
                4,
                colour.stroke_width(1),
            ))?
            .label(format!("{name} p50"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 8, y)], colour));
        chart.draw_series(
            points
                .iter()
                .map(|p| Circle::new((p.0, p.1), 2, colour.stroke_width(1))),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// 1, 2 and 5 times the powers of ten between `low` and `high`: labels a
/// logarithmic axis of latencies at round figures.
fn one_two_five(low: f64, high: f64) -> Vec<f64> {
    let first = low.log10().floor() as i32;
    let last = high.log10().ceil() as i32;
    (first..=last)
        .flat_map(|exp| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(exp)))
        .filter(|v| (low..=high).contains(v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::tests::step;
    use crate::Target;

    fn sweep(target: Target, points: &[(u64, f64, f64)]) -> SweepResult {
        let steps = points
            .iter()
            .map(|&(rate, p50_ms, p99_ms)| step(target, rate, p50_ms, p99_ms, p99_ms <= 5.0))
            .collect();
        SweepResult {
            target,
            connections: 400,
            seconds_per_step: 1,
            p99_bound_ms: 5.0,
            max_rate: None,
            bound_crossed: true,
            steps,
        }
    }

    #[test]
    fn writes_an_svg_with_text_and_a_line_per_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plots/latency.svg");
        let sweeps = [
            sweep(Target::Baseline, &[(500, 0.3, 1.0), (2000, 0.4, 3.0)]),
            sweep(Target::Tidings, &[(2000, 4.0, 80.0), (500, 0.9, 4.0)]),
        ];
        latency_vs_rate(&path, &sweeps).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        for text in [
            "Baseline p99",
            "Tidings p50",
            "offered messages/s",
            "\n2000\n",
        ] {
            assert!(svg.contains(text), "{text} in the SVG");
        }
        assert!(svg.matches("<polyline").count() >= 4);
    }

    #[test]
    fn round_latency_labels() {
        assert_eq!(one_two_five(0.15, 12.0), [0.2, 0.5, 1.0, 2.0, 5.0, 10.0]);
    }
}
