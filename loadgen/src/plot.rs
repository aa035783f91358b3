//! `spate-loadgen plot REPORT.json OUT.svg` (or `--plot OUT.svg` on a run): latency by
//! percentile, drawn as an SVG by hand.
//!
//! The x axis is HdrHistogram's: `log10(1 / (1 - p))`, so 90 %, 99 %, 99.9 %, 99.99 % ...
//! are evenly spaced and the tail gets the room it deserves; the y axis is logarithmic in
//! microseconds. A report gives its ack (and end-to-end) curve; a bench result gives one
//! curve per run.
//!
//! The title is short (a report's stream, shards, producers, rate, record size and
//! duration; a bench result's scenario) and a smaller subtitle holds the longer story (the
//! command line that repeats the run; the scenario's description) on up to two lines.
//! Neither is left to overflow: SVG text does not wrap, so the subtitle is broken at spaces
//! and whatever is still too long is shortened with an ellipsis, by a conservative width
//! estimate ([`text_width`]) against the picture's width.

use std::fmt::Write as _;
use std::path::Path;

use crate::report::Report;
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
    let svg = svg_of(&v).ok_or_else(|| {
        Error::new(format!(
            "{} holds no latency spectrum to plot",
            report.display()
        ))
    })?;
    write(out, &svg)
}

/// Writes the plot of a report in memory (`--plot`): the same picture `plot` draws from
/// the report's JSON.
pub fn plot_report(report: &Report, out: &Path) -> Result<(), Error> {
    let v = serde_json::to_value(report).expect("a report serialises");
    let svg = svg_of(&v).ok_or_else(|| {
        Error::new(format!(
            "nothing to plot in {}: no record was acknowledged in the measured window",
            out.display()
        ))
    })?;
    write(out, &svg)
}

fn write(out: &Path, svg: &str) -> Result<(), Error> {
    std::fs::write(out, svg).map_err(|e| Error::new(format!("cannot write {}: {e}", out.display())))
}

/// The plot of a report or bench result (as JSON); `None` when it has no curve.
pub fn svg_of(v: &serde_json::Value) -> Option<String> {
    let series = series_of(v);
    if series.is_empty() {
        return None;
    }
    let (title, subtitle) = titles_of(v);
    Some(svg(&title, subtitle.as_deref(), &series))
}

/// A short title and a longer subtitle for a report or bench result (before fitting).
pub fn titles_of(v: &serde_json::Value) -> (String, Option<String>) {
    let text = |v: &serde_json::Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
    if let Some(scenario) = v["scenario"].as_str() {
        let subtitle = text(&v["description"]).or_else(|| text(&v["command"]));
        return (format!("spate-loadgen bench {scenario}"), subtitle);
    }
    let p = &v["params"];
    let Some(stream) = p["stream"].as_str() else {
        return ("latency by percentile".into(), text(&v["command"]));
    };
    let plural = |n: u64, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let mut parts = Vec::new();
    if let Some(shards) = v["shards"].as_u64() {
        parts.push(plural(shards, "shard"));
    }
    if let Some(producers) = p["producers"].as_u64() {
        parts.push(plural(producers, "producer"));
    }
    match p["rate"].as_f64() {
        Some(rate) if rate > 0.0 => parts.push(format!("{rate:.0} records/s")),
        Some(_) => parts.push("closed loop".into()),
        None => {}
    }
    match (p["size"]["min"].as_u64(), p["size"]["max"].as_u64()) {
        (Some(min), Some(max)) if min == max => parts.push(format!("{min} B")),
        (Some(min), Some(max)) => parts.push(format!("{min}-{max} B")),
        _ => {}
    }
    if let Some(d) = p["duration_s"].as_f64() {
        parts.push(format!("{d} s"));
    }
    if let Some(c) = p["consumers"].as_u64().filter(|&c| c > 0) {
        parts.push(match p["consumer_mode"].as_str() {
            Some("push") => plural(c, "push consumer"),
            Some("group") => plural(c, "group worker"),
            _ => plural(c, "consumer group"),
        });
    }
    (
        format!("{stream}: {}", parts.join(", ")),
        text(&v["command"]),
    )
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
/// Room above the plot for the title and the subtitle's lines.
const TOP: f64 = 66.0;
const BOTTOM: f64 = 60.0;
/// Space kept clear on either side of the (centred) title and subtitle.
const TITLE_MARGIN: f64 = 16.0;
const TITLE_FONT: f64 = 14.0;
const SUBTITLE_FONT: f64 = 11.0;
const SUBTITLE_LINES: usize = 2;
const FONT: f64 = 12.0;
const COLORS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn x_of(p: f64) -> f64 {
    // 100 % has no finite position; the maximum is drawn one decade past 99.999 %.
    let p = p.min(99.9999);
    (1.0 / (1.0 - p / 100.0)).log10()
}

/// The SVG text of `series` under `title` (and `subtitle`, smaller), each fitted to the
/// picture's width.
pub fn svg(title: &str, subtitle: Option<&str>, series: &[Series]) -> String {
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
    let title_w = W - 2.0 * TITLE_MARGIN;
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="{FONT}">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="{TITLE_FONT}">{}</text>
"#,
        W / 2.0,
        escape(&fit_text(title, TITLE_FONT, title_w))
    );
    let subtitle = subtitle.map_or_else(Vec::new, |t| {
        wrap_text(t, SUBTITLE_FONT, title_w, SUBTITLE_LINES)
    });
    for (i, line) in subtitle.iter().enumerate() {
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="middle" font-size="{SUBTITLE_FONT}" fill="#555">{}</text>"##,
            W / 2.0,
            38 + 13 * i,
            escape(line)
        );
    }
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
        let legend = format!("{} (max {})", series.label, fmt_latency(max));
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            LEFT + 10.0,
            LEFT + 30.0,
            LEFT + 36.0,
            ly + 4.0,
            escape(&fit_text(&legend, FONT, W - RIGHT - (LEFT + 36.0) - 4.0))
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

/// An upper estimate of how wide `text` is drawn in a sans-serif font of `font_size` px:
/// DejaVu Sans' advance widths (Linux's usual sans-serif, wider than Helvetica or Arial)
/// plus 5 %, and a full em for anything not ASCII.
pub fn text_width(text: &str, font_size: f64) -> f64 {
    text.chars().map(char_em).sum::<f64>() * font_size
}

/// DejaVu Sans' advance width of each printable ASCII character (space to `~`), in
/// hundredths of an em, rounded up.
const ASCII_EM_100: [u8; 95] = [
    32, 41, 46, 84, 64, 96, 78, 28, 40, 40, 50, 84, 32, 37, 32, 34, // space to /
    64, 64, 64, 64, 64, 64, 64, 64, 64, 64, 34, 34, 84, 84, 84, 54, // 0 to ?
    100, 69, 69, 70, 78, 64, 58, 78, 76, 30, 30, 66, 56, 87, 75, 79, // @ to O
    61, 79, 70, 64, 62, 74, 69, 99, 69, 62, 69, 40, 34, 40, 84, 50, // P to _
    50, 62, 64, 55, 64, 62, 36, 64, 64, 28, 28, 58, 28, 98, 64, 62, // ` to o
    64, 64, 42, 53, 40, 64, 60, 82, 60, 60, 53, 64, 34, 64, 84, // p to ~
];

fn char_em(c: char) -> f64 {
    match c {
        ' '..='~' => f64::from(ASCII_EM_100[c as usize - 32]) / 100.0 * 1.05,
        _ => 1.0,
    }
}

/// `text` itself if it fits in `max_width` px at `font_size`, else its longest prefix
/// that fits with an ellipsis after it.
pub fn fit_text(text: &str, font_size: f64, max_width: f64) -> String {
    if text_width(text, font_size) <= max_width {
        return text.to_string();
    }
    let mut width = text_width("…", font_size);
    let mut out = String::new();
    for c in text.chars() {
        width += char_em(c) * font_size;
        if width > max_width {
            break;
        }
        out.push(c);
    }
    out.truncate(out.trim_end().len());
    out.push('…');
    out
}

/// `text` broken at spaces into at most `max_lines` lines that each fit in `max_width`
/// px at `font_size`; what does not fit in the last one is cut off with an ellipsis
/// ([`fit_text`]).
pub fn wrap_text(text: &str, font_size: f64, max_width: f64, max_lines: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() && lines.len() < max_lines {
        if lines.len() + 1 == max_lines || text_width(rest, font_size) <= max_width {
            lines.push(fit_text(rest, font_size, max_width));
            break;
        }
        // The longest run of whole words that fits; a first word too long for a line is
        // cut off there.
        let cut = rest
            .char_indices()
            .filter(|&(i, c)| c == ' ' && i > 0)
            .map(|(i, _)| i)
            .take_while(|&i| text_width(&rest[..i], font_size) <= max_width)
            .last();
        match cut {
            Some(i) => {
                lines.push(rest[..i].trim_end().to_string());
                rest = rest[i..].trim_start();
            }
            None => {
                lines.push(fit_text(rest, font_size, max_width));
                break;
            }
        }
    }
    lines
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
        let text = svg("t <&>", None, &series);
        assert!(text.starts_with("<svg") && text.ends_with("</svg>\n"));
        assert_eq!(text.matches("<polyline").count(), 2);
        assert!(text.contains("t &lt;&amp;&gt;"));
        assert!(text.contains("99.9%") && text.contains("1 ms"));
        // From memory or from its JSON, a report draws the same picture.
        let dir = tempfile::tempdir().unwrap();
        let (json, from_json, from_memory) = (
            dir.path().join("r.json"),
            dir.path().join("a.svg"),
            dir.path().join("b.svg"),
        );
        std::fs::write(&json, serde_json::to_string_pretty(&r).unwrap()).unwrap();
        plot_file(&json, &from_json).unwrap();
        plot_report(&r, &from_memory).unwrap();
        let drawn = std::fs::read_to_string(&from_memory).unwrap();
        assert_eq!(std::fs::read_to_string(&from_json).unwrap(), drawn);
        assert!(
            drawn.contains(">s: 2 shards, 1 producer, closed loop, 1024 B, 10 s</text>"),
            "{drawn}"
        );
        assert!(
            drawn.contains(">spate-loadgen --server x --stream s</text>"),
            "{drawn}"
        );
        let empty = crate::report::Report {
            ack_latency_spectrum_us: Vec::new(),
            e2e_latency_spectrum_us: None,
            ..r
        };
        assert!(plot_report(&empty, &dir.path().join("c.svg")).is_err());
    }

    /// The texts of the `<text ...>` elements whose attributes contain `attr`.
    fn texts_of<'a>(svg: &'a str, attr: &str) -> Vec<&'a str> {
        svg.lines()
            .filter(|l| l.starts_with("<text") && l[..l.find('>').unwrap()].contains(attr))
            .map(|l| {
                let body = &l[l.find('>').unwrap() + 1..];
                &body[..body.find("</text>").unwrap()]
            })
            .collect()
    }

    #[test]
    fn long_titles_are_fitted_to_the_width() {
        let max = W - 2.0 * TITLE_MARGIN;
        let short = "clicks: 4 shards, 4 producers, 50000 records/s, 1024 B, 30 s";
        assert_eq!(fit_text(short, TITLE_FONT, max), short);
        for c in ['i', 'x', 'W', '7', '~', 'é'] {
            let long: String = std::iter::repeat_n(c, 500).collect();
            let fitted = fit_text(&long, TITLE_FONT, max);
            assert!(
                fitted.ends_with('…') && fitted.len() < long.len(),
                "{fitted}"
            );
            assert!(text_width(&fitted, TITLE_FONT) <= max, "{fitted}");
            // One more character would not have fitted.
            let one_more = format!("{}{c}…", fitted.trim_end_matches('…'));
            assert!(text_width(&one_more, TITLE_FONT) > max, "{fitted}");
        }
        let wide = fit_text(&"W".repeat(500), TITLE_FONT, max);
        let narrow = fit_text(&"i".repeat(500), TITLE_FONT, max);
        assert!(wide.chars().count() < narrow.chars().count());
        // The estimate is never below DejaVu Sans' widths (in em: "W" 0.989, "i" 0.278).
        assert!(text_width("W", 1.0) >= 0.989 && text_width("i", 1.0) >= 0.278);
        assert!(text_width("…", 1.0) >= 1.0);

        // Wrapping: whole words per line; the last line takes the rest, ellipsized.
        let words = "spate-loadgen --server 127.0.0.1:7400 --stream clicks --rate 50000";
        assert_eq!(wrap_text(words, 11.0, max, 2), [words]);
        let narrow_w = text_width("spate-loadgen --server", 11.0);
        let lines = wrap_text(words, 11.0, narrow_w, 4);
        assert_eq!(lines.join(" "), words, "{lines:?}");
        assert_eq!(lines[0], "spate-loadgen --server");
        for (k, line) in lines.iter().enumerate() {
            assert!(text_width(line, 11.0) <= narrow_w, "{lines:?}");
            // Greedy: the next line's first word would not have fitted on this one.
            if let Some(next) = lines.get(k + 1) {
                let word = next.split(' ').next().unwrap();
                assert!(text_width(&format!("{line} {word}"), 11.0) > narrow_w);
            }
        }
        let two = wrap_text(words, 11.0, narrow_w, 2);
        assert_eq!(two[0], "spate-loadgen --server");
        assert!(two[1].starts_with("127.0.0.1:7400") && two[1].ends_with('…'));
        assert!(text_width(&two[1], 11.0) <= narrow_w);
        assert!(wrap_text("", 11.0, max, 2).is_empty());
        let one_word = wrap_text(&"x".repeat(500), 11.0, max, 2);
        assert!(one_word.len() == 1 && one_word[0].ends_with('…'));

        // A run with a long stream name and command line: the title stays short (no
        // command line in it), the command goes to the subtitle, and every line fits.
        let mut r = crate::report::tests::sample();
        r.params.stream = "a-stream-with-a-rather-long-name-".repeat(6);
        r.command = format!("spate-loadgen {}", "--option value ".repeat(40));
        let drawn = svg_of(&serde_json::to_value(&r).unwrap()).unwrap();
        let title = texts_of(&drawn, "font-size=\"14\"");
        let subtitle = texts_of(&drawn, "font-size=\"11\"");
        assert_eq!((title.len(), subtitle.len()), (1, 2), "{drawn}");
        assert!(
            title[0].starts_with("a-stream-with") && title[0].ends_with('…'),
            "{title:?}"
        );
        assert!(
            !title[0].contains("--"),
            "the command line is the subtitle's: {title:?}"
        );
        assert!(subtitle[0].starts_with("spate-loadgen --option value --option"));
        assert!(subtitle[1].ends_with('…'), "{subtitle:?}");
        let shown = format!("{} {}", subtitle[0], subtitle[1].trim_end_matches('…'));
        assert!(r.command.starts_with(&shown), "{subtitle:?}");
        for (text, font) in [
            (title[0], TITLE_FONT),
            (subtitle[0], SUBTITLE_FONT),
            (subtitle[1], SUBTITLE_FONT),
        ] {
            assert!(text_width(text, font) <= max, "{text}");
        }
    }

    #[test]
    fn a_bench_result_plots_every_run() {
        let r = serde_json::to_value(crate::report::tests::sample()).unwrap();
        let v = serde_json::json!({ "scenario": "x", "description": "d", "runs": [r.clone(), r] });
        let series = series_of(&v);
        assert_eq!(series.len(), 4);
        assert!(series[2].label.starts_with("run 2 (2 shards, closed loop)"));
        assert!(series_of(&serde_json::json!({})).is_empty());
        assert!(svg_of(&serde_json::json!({})).is_none());
        assert_eq!(
            titles_of(&v),
            ("spate-loadgen bench x".to_string(), Some("d".to_string()))
        );
    }
}
