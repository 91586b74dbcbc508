//! `--plot FILE.svg`: the latency distributions of a run, one line per series: the share of
//! its samples at or under each latency, on a log scale, drawn with `plotters` (SVG).

use std::path::Path;

use plotters::prelude::*;

/// Draws `series` (a label and its samples in milliseconds each) to the SVG file `path`.
pub fn write(path: &Path, series: &[(String, Vec<f64>)]) -> Result<(), String> {
    let samples = || series.iter().flat_map(|(_, s)| s.iter().copied());
    let (Some(low), Some(high)) = (
        samples().filter(|v| *v > 0.0).reduce(f64::min),
        samples().reduce(f64::max),
    ) else {
        return Err("no latency series to plot".to_string());
    };
    let error = |e: &dyn std::fmt::Display| format!("plot {}: {e}", path.display());
    let root = SVGBackend::new(path, (1100, 650)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| error(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "traforato start-up: latency distributions",
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d((low * 0.8..high * 1.25).log_scale(), 0f64..1f64)
        .map_err(|e| error(&e))?;
    chart
        .configure_mesh()
        .x_desc("latency, ms (log scale)")
        .y_desc("share of samples at or under")
        .draw()
        .map_err(|e| error(&e))?;
    for (i, (label, values)) in series.iter().enumerate() {
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len() as f64;
        let points: Vec<(f64, f64)> = sorted
            .iter()
            .enumerate()
            .map(|(k, v)| (v.max(low), (k + 1) as f64 / n))
            .collect();
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| error(&e))?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| error(&e))?;
    root.present().map_err(|e| error(&e))
}
