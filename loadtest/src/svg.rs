//! Self-contained SVG chart of latency percentile curves, HdrHistogram style: x is the
//! percentile on a log scale of 1/(1-p) (0%, 90%, 99%, 99.9%, ...), y is latency in ms.
//!
//! Owns: layout and rendering only; input is `(name, curve)` pairs from
//! [`crate::run::stats::Percentiles::curve`]. Invariants: output is a complete standalone SVG
//! (no external fonts, scripts or styles); names are XML-escaped; empty input renders an empty
//! chart rather than failing.

use std::fmt::Write;

/// Chart width, in px.
pub const WIDTH_PX: f64 = 820.0;
/// Chart height, in px.
pub const HEIGHT_PX: f64 = 460.0;
/// Rightmost percentile plotted (99.999%).
pub const MAX_NINES: f64 = 5.0;

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn nines(p: f64) -> f64 {
    if p >= 100.0 {
        MAX_NINES
    } else {
        (-(1.0 - p / 100.0).log10()).clamp(0.0, MAX_NINES)
    }
}

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

/// Renders the chart. Curve values are microseconds.
pub fn percentile_chart(title: &str, series: &[(String, Vec<(f64, u64)>)]) -> String {
    let (l, r, t, b) = (70.0, 160.0, 40.0, 50.0);
    let pw = WIDTH_PX - l - r;
    let ph = HEIGHT_PX - t - b;
    let ymax_ms = nice_max(
        series
            .iter()
            .flat_map(|(_, c)| {
                c.iter()
                    .filter(|(p, _)| *p < 100.0)
                    .map(|(_, v)| *v as f64 / 1e3)
            })
            .fold(0.0, f64::max),
    );
    let x = |p: f64| l + nines(p) / MAX_NINES * pw;
    let y = |ms: f64| t + ph - (ms / ymax_ms).min(1.05) * ph;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH_PX}" height="{HEIGHT_PX}" viewBox="0 0 {WIDTH_PX} {HEIGHT_PX}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        l + pw / 2.0,
        esc(title)
    );
    // Grid and axes.
    for k in 0..=(MAX_NINES as u32) {
        let p = 100.0 * (1.0 - 10f64.powi(-(k as i32)));
        let label = match k {
            0 => "0%".to_string(),
            _ => format!("{}%", trim_float(p)),
        };
        let xv = x(p);
        let _ = write!(
            s,
            r##"<line x1="{xv:.1}" y1="{t}" x2="{xv:.1}" y2="{}" stroke="#ddd"/><text x="{xv:.1}" y="{}" text-anchor="middle">{label}</text>"##,
            t + ph,
            t + ph + 18.0
        );
    }
    for k in 0..=5 {
        let ms = ymax_ms * f64::from(k) / 5.0;
        let yv = y(ms);
        let _ = write!(
            s,
            r##"<line x1="{l}" y1="{yv:.1}" x2="{}" y2="{yv:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            l + pw,
            l - 6.0,
            yv + 4.0,
            trim_float(ms)
        );
    }
    let _ = write!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text><text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">latency (ms)</text>"#,
        l + pw / 2.0,
        HEIGHT_PX - 10.0,
        t + ph / 2.0,
        t + ph / 2.0
    );
    for (i, (name, curve)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> = curve
            .iter()
            .filter(|(p, _)| *p < 100.0)
            .map(|(p, v)| format!("{:.1},{:.1}", x(*p), y(*v as f64 / 1e3)))
            .collect();
        if !pts.is_empty() {
            let _ = write!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                pts.join(" ")
            );
        }
        let ly = t + 10.0 + i as f64 * 20.0;
        let _ = write!(
            s,
            r#"<rect x="{}" y="{}" width="14" height="4" fill="{color}"/><text x="{}" y="{}">{}</text>"#,
            l + pw + 14.0,
            ly - 4.0,
            l + pw + 34.0,
            ly + 1.0,
            esc(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_standalone_svg() {
        let c = vec![(0.0, 100), (90.0, 200), (99.0, 900), (100.0, 5000)];
        let svg = percentile_chart("a <b>", &[("direct".into(), c.clone()), ("x&y".into(), c)]);
        assert!(svg.starts_with("<svg xmlns"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a &lt;b&gt;") && svg.contains("x&amp;y"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("99.9%"));
        let empty = percentile_chart("e", &[]);
        assert!(empty.ends_with("</svg>\n"));
    }

    #[test]
    fn axis_math() {
        assert_eq!(nines(0.0), 0.0);
        assert!((nines(99.0) - 2.0).abs() < 1e-9);
        assert_eq!(nines(100.0), MAX_NINES);
        assert_eq!(nice_max(3.2), 5.0);
        assert_eq!(nice_max(0.0), 1.0);
    }
}
