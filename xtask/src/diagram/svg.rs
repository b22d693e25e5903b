//! Shared drawing helpers: the palette, text measurement and the SVG document frame.
//!
//! The pictures are opened through `<img>` in every mdBook theme, light or dark, so they carry
//! their own white card background and fixed dark colours instead of following the page.

use std::fmt::Write as _;

use super::parse::EdgeKind;

/// The sans-serif stack: whatever the reader's system has, nothing fetched from the network.
pub const SANS: &str = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', 'DejaVu Sans', Arial, sans-serif";
pub const MONO: &str =
    "ui-monospace, 'SFMono-Regular', Menlo, Consolas, 'DejaVu Sans Mono', monospace";

pub const INK: &str = "#1f2328";
pub const MUTED: &str = "#59636e";

/// Font sizes in px.
pub const TITLE_SIZE: f64 = 16.0;
pub const NODE_SIZE: f64 = 14.0;
pub const LABEL_SIZE: f64 = 12.0;
/// Distance between the baselines of two lines of a label, per px of font size.
pub const LEADING: f64 = 1.3;
/// Distance between the baselines of two lines of a label, in px.
pub const LINE_H: f64 = LABEL_SIZE * LEADING;
/// The margin around every drawing, in px.
pub const PAD: f64 = 24.0;

/// Colour, dash pattern and legend text of each kind of arrow.
pub fn edge_style(kind: EdgeKind) -> (&'static str, Option<&'static str>, &'static str) {
    match kind {
        EdgeKind::Chan => ("#0969da", None, "channel: data flows this way"),
        EdgeKind::Io => ("#6e7781", None, "TCP socket"),
        EdgeKind::Spawn => ("#1a7f37", Some("6 4"), "spawns"),
        EdgeKind::Signal => ("#cf222e", Some("2 3"), "shutdown signal"),
        EdgeKind::Wait => ("#8250df", Some("8 3 2 3"), "waits for"),
    }
}

pub fn kind_name(kind: EdgeKind) -> &'static str {
    match kind {
        EdgeKind::Chan => "chan",
        EdgeKind::Io => "io",
        EdgeKind::Spawn => "spawn",
        EdgeKind::Signal => "signal",
        EdgeKind::Wait => "wait",
    }
}

/// Every kind, in legend order.
pub const KINDS: [EdgeKind; 5] = [
    EdgeKind::Chan,
    EdgeKind::Io,
    EdgeKind::Spawn,
    EdgeKind::Signal,
    EdgeKind::Wait,
];

/// Estimated advance of one character of a proportional sans-serif font, in em.
///
/// There are no font metrics to read at build time, so this errs on the wide side (DejaVu Sans,
/// the usual Linux fallback, is wider than Helvetica): a box a little too wide looks fine, text
/// overflowing its box does not.
fn sans_advance(c: char) -> f64 {
    match c {
        'i' | 'j' | 'l' | '\'' | '|' | '.' | ',' | ':' | ';' | '!' => 0.30,
        ' ' | 'f' | 't' | 'r' | 'I' | '(' | ')' | '[' | ']' | '-' => 0.38,
        'm' | 'w' | 'M' | 'W' | '@' => 0.92,
        'A'..='Z' => 0.72,
        '0'..='9' => 0.62,
        '×' | '→' | '—' => 0.85,
        _ => 0.60,
    }
}

/// Monospace fonts advance 0.6 em per character; a little more for safety.
const MONO_ADVANCE: f64 = 0.62;

/// Splits one line of a label into (text, is_code) runs at backticks.
pub fn runs(line: &str) -> Vec<(&str, bool)> {
    line.split('`')
        .enumerate()
        .filter(|(_, s)| !s.is_empty())
        .map(|(i, s)| (s, i % 2 == 1))
        .collect()
}

/// Estimated width in px of one line of a label at `size` px (and bold if asked).
pub fn line_width(line: &str, size: f64, bold: bool) -> f64 {
    let w: f64 = runs(line)
        .iter()
        .map(|(s, code)| {
            if *code {
                s.chars().count() as f64 * MONO_ADVANCE
            } else {
                s.chars().map(sans_advance).sum()
            }
        })
        .sum();
    w * size * if bold { 1.07 } else { 1.0 }
}

/// Width of the widest line of a multi-line label.
pub fn text_width(label: &str, size: f64, bold: bool) -> f64 {
    label
        .lines()
        .map(|l| line_width(l, size, bold))
        .fold(0.0, f64::max)
}

pub fn line_count(label: &str) -> usize {
    label.lines().count().max(1)
}

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

/// Formats a coordinate with one decimal, dropping `.0`: short and identical on every run.
pub fn n(v: f64) -> String {
    let r = (v * 10.0).round() / 10.0;
    if r == r.trunc() {
        format!("{}", r as i64)
    } else {
        format!("{r:.1}")
    }
}

/// Where a text's x is measured from.
#[derive(Clone, Copy)]
pub enum Anchor {
    Start,
    Middle,
    End,
}

/// Writes a (possibly multi-line) label whose first baseline is at `y`.
///
/// `class` picks the style; `halo` paints a white outline under the glyphs so a label stays
/// readable where it crosses a line.
pub fn text(out: &mut String, x: f64, y: f64, label: &str, class: &str, anchor: Anchor, size: f64) {
    let anchor = match anchor {
        Anchor::Start => "start",
        Anchor::Middle => "middle",
        Anchor::End => "end",
    };
    for (i, line) in label.lines().enumerate() {
        let ly = y + i as f64 * size * LEADING;
        let _ = write!(
            out,
            r#"<text class="{class}" x="{}" y="{}" text-anchor="{anchor}">"#,
            n(x),
            n(ly)
        );
        for (run, code) in runs(line) {
            if code {
                let _ = write!(out, r#"<tspan class="code">{}</tspan>"#, escape(run));
            } else {
                out.push_str(&escape(run));
            }
        }
        out.push_str("</text>\n");
    }
}

/// What goes under a drawing: the legend of its arrow kinds, an optional note line and an
/// optional caption.
#[derive(Debug)]
pub struct Footer<'a> {
    pub kinds: &'a [EdgeKind],
    pub note: Option<&'a str>,
    pub caption: Option<&'a str>,
}

/// Ends a drawing whose content reaches down to `y`: a rule, the footer, then the document
/// around it all.
pub fn finish(mut out: String, width: f64, mut y: f64, title: &str, footer: Footer) -> String {
    let _ = writeln!(
        out,
        r##"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#d1d9e0"/>"##,
        n(PAD),
        n(y),
        n(width - PAD),
        n(y)
    );
    y += 8.0;
    y += legend(&mut out, PAD, y, width - 2.0 * PAD, footer.kinds);
    for label in [footer.note, footer.caption].into_iter().flatten() {
        y += 4.0;
        text(
            &mut out,
            PAD,
            y + LABEL_SIZE,
            label,
            "caption",
            Anchor::Start,
            LABEL_SIZE,
        );
        y += line_count(label) as f64 * LINE_H + 4.0;
    }
    let height = (y + PAD - 6.0).ceil();
    document(width, height, title, &out)
}

/// The document around a drawing of `width` × `height`: background card, styles, arrowheads.
pub fn document(width: f64, height: f64, title: &str, body: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{t}">"#,
        w = n(width),
        h = n(height),
        t = escape(&title.replace('\n', " "))
    );
    let _ = writeln!(s, "<title>{}</title>", escape(&title.replace('\n', " ")));
    s.push_str("<!-- Generated by `cargo xtask diagrams` from the .diagram source beside this file. Do not edit. -->\n");
    let _ = writeln!(
        s,
        "<style>\n\
         text {{ font-family: {SANS}; fill: {INK}; }}\n\
         .code {{ font-family: {MONO}; }}\n\
         .title {{ font-size: {TITLE_SIZE}px; font-weight: 600; }}\n\
         .node {{ font-size: {NODE_SIZE}px; font-weight: 600; }}\n\
         .sub {{ font-size: {LABEL_SIZE}px; fill: {MUTED}; }}\n\
         .label {{ font-size: {LABEL_SIZE}px; paint-order: stroke; stroke: #ffffff; stroke-width: 4px; stroke-linejoin: round; }}\n\
         .caption {{ font-size: {LABEL_SIZE}px; fill: {MUTED}; }}\n\
         .badge {{ font-size: 11px; font-weight: 700; fill: #ffffff; }}\n\
         </style>"
    );
    s.push_str("<defs>\n");
    for kind in KINDS {
        let (color, _, _) = edge_style(kind);
        let _ = writeln!(
            s,
            r#"<marker id="arrow-{}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" markerHeight="8" orient="auto-start-reverse"><path d="M0,1 L10,5 L0,9 z" fill="{color}"/></marker>"#,
            kind_name(kind)
        );
    }
    s.push_str("</defs>\n");
    let _ = writeln!(
        s,
        r##"<rect x="0.5" y="0.5" width="{}" height="{}" rx="8" fill="#ffffff" stroke="#d1d9e0"/>"##,
        n(width - 1.0),
        n(height - 1.0)
    );
    s.push_str(body);
    s.push_str("</svg>\n");
    s
}

/// A polyline arrow in the style of `kind`, ending in an arrowhead.
pub fn arrow(out: &mut String, points: &[(f64, f64)], kind: EdgeKind) {
    let (color, dash, _) = edge_style(kind);
    let d: Vec<String> = points
        .iter()
        .enumerate()
        .map(|(i, (x, y))| format!("{}{},{}", if i == 0 { "M" } else { "L" }, n(*x), n(*y)))
        .collect();
    let dash = dash
        .map(|d| format!(r#" stroke-dasharray="{d}""#))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        r#"<path d="{}" fill="none" stroke="{color}" stroke-width="1.8"{dash} marker-end="url(#arrow-{})"/>"#,
        d.join(" "),
        kind_name(kind)
    );
}

/// Height of the legend for `kinds`, laid out in as many rows as `width` needs.
pub fn legend(out: &mut String, x0: f64, y0: f64, width: f64, kinds: &[EdgeKind]) -> f64 {
    let mut x = x0;
    let mut y = y0 + 10.0;
    for &kind in kinds {
        let (_, _, name) = edge_style(kind);
        let w = 34.0 + line_width(name, LABEL_SIZE, false) + 22.0;
        if x > x0 && x + w > x0 + width {
            x = x0;
            y += 20.0;
        }
        arrow(out, &[(x, y), (x + 28.0, y)], kind);
        text(
            out,
            x + 34.0,
            y + 4.0,
            name,
            "caption",
            Anchor::Start,
            LABEL_SIZE,
        );
        x += w;
    }
    y - y0 + 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Backticks switch to code; empty runs vanish.
    #[test]
    fn splits_code_runs() {
        assert_eq!(
            runs("mpsc `Event` now"),
            [("mpsc ", false), ("Event", true), (" now", false)]
        );
        assert_eq!(runs("`a`"), [("a", true)]);
    }

    /// Numbers are printed short and stable.
    #[test]
    fn formats_numbers() {
        assert_eq!(n(12.0), "12");
        assert_eq!(n(12.04), "12");
        assert_eq!(n(-3.26), "-3.3");
        assert_eq!(n(7.54), "7.5");
        assert_eq!(n(-0.01), "0");
    }

    /// Markup characters in labels cannot break the SVG.
    #[test]
    fn escapes_markup() {
        assert_eq!(escape(r#"<a & "b">"#), "&lt;a &amp; &quot;b&quot;&gt;");
    }
}
