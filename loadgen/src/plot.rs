//! `spate-loadgen plot REPORT.json OUT.svg`: latency by percentile, drawn as an SVG by hand.
//!
//! The x axis is HdrHistogram's: `log10(1 / (1 - p))`, so 90 %, 99 %, 99.9 %, 99.99 % ...
//! are evenly spaced and the tail gets the room it deserves; the y axis is logarithmic in
//! microseconds. A report gives its ack (and end-to-end) curve; a bench result gives one
//! curve per run.

use std::fmt::Write as _;
use std::path::Path;

use crate::Error;

/// One curve: a label and `[percentile, µs]` points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<[f64; 2]>,
}

/// Reads a report or bench result and writes its plot.
pub fn plot_file(report: &Path, out: &Path) -> Result<(), Error> {
    let text = std::fs::read_to_string(report)
        .map_err(|e| Error::new(format!("cannot read {}: {e}", report.display())))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::new(format!("{} is not JSON: {e}", report.display())))?;
    let series = series_of(&v);
    if series.is_empty() {
        return Err(Error::new(format!(
            "{} holds no latency spectrum to plot",
            report.display()
        )));
    }
    let title = v["scenario"]
        .as_str()
        .map(|s| format!("spate-loadgen bench {s}"))
        .or_else(|| v["command"].as_str().map(str::to_string))
        .unwrap_or_else(|| "latency by percentile".into());
    std::fs::write(out, svg(&title, &series))
        .map_err(|e| Error::new(format!("cannot write {}: {e}", out.display())))
}

/// The curves of a report (`ack`, `e2e`) or of every run of a bench result.
pub fn series_of(v: &serde_json::Value) -> Vec<Series> {
    let of_report = |r: &serde_json::Value, prefix: &str| {
        let mut out = Vec::new();
        for (key, name) in [
            ("ack_latency_spectrum_us", "ack"),
            ("e2e_latency_spectrum_us", "end-to-end"),
        ] {
            let points: Vec<[f64; 2]> = r[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| Some([p[0].as_f64()?, p[1].as_f64()?]))
                        .collect()
                })
                .unwrap_or_default();
            if !points.is_empty() {
                out.push(Series {
                    label: format!("{prefix}{name}"),
                    points,
                });
            }
        }
        out
    };
    match v["runs"].as_array() {
        Some(runs) => runs
            .iter()
            .enumerate()
            .flat_map(|(i, r)| {
                let shards = r["shards"].as_u64().unwrap_or(0);
                let rate = r["params"]["rate"].as_f64().unwrap_or(0.0);
                let load = if rate > 0.0 {
                    format!("{rate:.0}/s")
                } else {
                    "closed loop".into()
                };
                of_report(r, &format!("run {} ({shards} shards, {load}): ", i + 1))
            })
            .collect(),
        None => of_report(v, ""),
    }
}

const W: f64 = 860.0;
const H: f64 = 520.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 40.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const COLORS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn x_of(p: f64) -> f64 {
    // 100 % has no finite position; the maximum is drawn one decade past 99.999 %.
    let p = p.min(99.9999);
    (1.0 / (1.0 - p / 100.0)).log10()
}

/// The SVG text of `series` under `title`.
pub fn svg(title: &str, series: &[Series]) -> String {
    let all = series.iter().flat_map(|s| s.points.iter());
    let x_max = all
        .clone()
        .map(|p| x_of(p[0]))
        .fold(1.0f64, f64::max)
        .ceil();
    let (lo, hi) = all.fold((f64::MAX, 1.0f64), |(lo, hi), p| {
        (lo.min(p[1]), hi.max(p[1]))
    });
    let y_lo = lo.max(1.0).log10().floor();
    let y_hi = hi.max(10.0).log10().ceil().max(y_lo + 1.0);
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let sx = |x: f64| LEFT + x / x_max * pw;
    let sy = |us: f64| TOP + ph - (us.max(1.0).log10() - y_lo) / (y_hi - y_lo) * ph;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>
"#,
        W / 2.0,
        escape(title)
    );
    // Grid and axes.
    for d in 0..=(x_max as u32) {
        let x = sx(f64::from(d));
        let label = match d {
            0 => "0%".to_string(),
            d => format!(
                "{:.*}%",
                d.saturating_sub(2) as usize,
                100.0 - 100.0 / 10f64.powi(d as i32)
            ),
        };
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            TOP + ph,
            TOP + ph + 18.0
        );
    }
    for e in (y_lo as i32)..=(y_hi as i32) {
        let us = 10f64.powi(e);
        let y = sy(us);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            y + 4.0,
            fmt_latency(us)
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>
<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>
<text transform="translate(18,{:.1}) rotate(-90)" text-anchor="middle">latency</text>"##,
        LEFT + pw / 2.0,
        H - 12.0,
        TOP + ph / 2.0
    );
    // Curves and legend.
    for (i, series) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = series
            .points
            .iter()
            .map(|p| format!("{:.1},{:.1}", sx(x_of(p[0])), sy(p[1])))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        let max = series.points.last().map_or(0.0, |p| p[1]);
        let ly = TOP + 16.0 + 16.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{} (max {})</text>"#,
            LEFT + 10.0,
            LEFT + 30.0,
            LEFT + 36.0,
            ly + 4.0,
            escape(&series.label),
            fmt_latency(max)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn fmt_latency(us: f64) -> String {
    if us >= 1e6 {
        format!("{} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{} ms", us / 1e3)
    } else {
        format!("{us} µs")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_plots_its_ack_and_e2e_curves() {
        let r = crate::report::tests::sample();
        let v = serde_json::to_value(&r).unwrap();
        let series = series_of(&v);
        assert_eq!(series.len(), 2);
        assert_eq!(series[0].label, "ack");
        let text = svg("t <&>", &series);
        assert!(text.starts_with("<svg") && text.ends_with("</svg>\n"));
        assert_eq!(text.matches("<polyline").count(), 2);
        assert!(text.contains("t &lt;&amp;&gt;"));
        assert!(text.contains("99.9%") && text.contains("1 ms"));
    }

    #[test]
    fn a_bench_result_plots_every_run() {
        let r = serde_json::to_value(crate::report::tests::sample()).unwrap();
        let v = serde_json::json!({ "scenario": "x", "runs": [r.clone(), r] });
        let series = series_of(&v);
        assert_eq!(series.len(), 4);
        assert!(series[2].label.starts_with("run 2 (2 shards, closed loop)"));
        assert!(series_of(&serde_json::json!({})).is_empty());
    }
}
