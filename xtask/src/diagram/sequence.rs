//! Lays out and draws a sequence diagram: one lifeline per actor, numbered arrows top to bottom.
//!
//! Lifelines are spaced left to right just far enough for every arrow's label to fit between
//! its two ends; each message takes one row; `end` stops lifelines with a cross, so the picture shows
//! which task finishes before which.

use std::fmt::Write as _;

use super::parse::{EdgeKind, SeqStep, Sequence};
use super::svg::{self, Anchor, LABEL_SIZE, LEADING, LINE_H, NODE_SIZE, PAD, TITLE_SIZE, n};

const HEAD_H: f64 = 36.0;
/// Room for the number badge in front of a label.
const BADGE: f64 = 24.0;
const LOOP_W: f64 = 26.0;

fn head_width(label: &str) -> f64 {
    (svg::text_width(label, NODE_SIZE, true) + 28.0)
        .max(100.0)
        .ceil()
}

/// Width a message label needs: badge, text and some air.
fn label_need(label: &str) -> f64 {
    BADGE + svg::text_width(label, LABEL_SIZE, false)
}

pub fn render(q: &Sequence) -> String {
    let count = q.actors.len();
    let head_w: Vec<f64> = q.actors.iter().map(|a| head_width(&a.label)).collect();

    // Centres of the lifelines: each as far left as its neighbours and labels allow.
    let mut x = vec![0.0_f64; count];
    x[0] = head_w[0] / 2.0;
    for i in 1..count {
        let mut xi = x[i - 1] + (head_w[i - 1] + head_w[i]) / 2.0 + 28.0;
        for st in &q.steps {
            if let SeqStep::Msg {
                from, to, label, ..
            } = st
            {
                let (lo, hi) = ((*from).min(*to), (*from).max(*to));
                if from != to && hi == i {
                    xi = xi.max(x[lo] + label_need(label) + 36.0);
                }
            }
        }
        x[i] = xi.ceil();
    }
    let mut right = x[count - 1] + head_w[count - 1] / 2.0;
    for st in &q.steps {
        if let SeqStep::Msg {
            from, to, label, ..
        } = st
        {
            // A loop's label may cross the lifelines to its right (its halo keeps it legible),
            // but not the edge of the picture.
            if from == to && *from + 1 < count {
                right = right.max(x[*from] + LOOP_W + 10.0 + label_need(label) + 8.0);
            }
        }
    }

    let title_h = TITLE_SIZE * LEADING * svg::line_count(&q.title) as f64 + 14.0;
    let top = PAD + title_h;
    let mut body = String::new();
    let mut rows = String::new();
    let mut y = top + HEAD_H + 22.0;
    let mut ends: Vec<Option<f64>> = vec![None; count];
    let mut number = 0;
    for st in &q.steps {
        match st {
            SeqStep::Msg {
                from,
                to,
                label,
                kind,
            } => {
                number += 1;
                let (color, _, _) = svg::edge_style(*kind);
                let lines = svg::line_count(label) as f64;
                let (xf, xt) = (x[*from], x[*to]);
                let (bx, tx, arrow_y, advance) = if from != to {
                    let arrow_y = y + lines * LINE_H + 4.0;
                    let dir = if xt > xf { 1.0 } else { -1.0 };
                    svg::arrow(
                        &mut rows,
                        &[(xf, arrow_y), (xt - dir * 2.0, arrow_y)],
                        *kind,
                    );
                    let w = label_need(label);
                    let left = (xf + xt) / 2.0 - w / 2.0;
                    (left + 9.0, left + BADGE, arrow_y, lines * LINE_H + 30.0)
                } else {
                    // The last lifeline loops to its left, so the picture does not widen.
                    let side = if *from + 1 == count { -1.0 } else { 1.0 };
                    let y0 = y + 2.0;
                    svg::arrow(
                        &mut rows,
                        &[
                            (xf, y0),
                            (xf + side * LOOP_W, y0),
                            (xf + side * LOOP_W, y0 + 18.0),
                            (xf + side * 3.0, y0 + 18.0),
                        ],
                        *kind,
                    );
                    let left = if side > 0.0 {
                        xf + LOOP_W + 10.0
                    } else {
                        xf - LOOP_W - 10.0 - label_need(label)
                    };
                    (
                        left + 9.0,
                        left + BADGE,
                        y0,
                        (lines * LINE_H).max(20.0) + 22.0,
                    )
                };
                let baseline = if from != to {
                    y + LABEL_SIZE - 2.0
                } else {
                    arrow_y + LABEL_SIZE - 1.0
                };
                let _ = writeln!(
                    rows,
                    r#"<circle cx="{}" cy="{}" r="9" fill="{color}"/>"#,
                    n(bx),
                    n(baseline - 4.0)
                );
                svg::text(
                    &mut rows,
                    bx,
                    baseline,
                    &number.to_string(),
                    "badge",
                    Anchor::Middle,
                    11.0,
                );
                svg::text(
                    &mut rows,
                    tx,
                    baseline,
                    label,
                    "label",
                    Anchor::Start,
                    LABEL_SIZE,
                );
                y += advance;
            }
            SeqStep::End(actors) => {
                let cy = y + 2.0;
                for &a in actors {
                    ends[a] = Some(cy);
                    let _ = writeln!(
                        rows,
                        r##"<path d="M{},{} l12,12 M{},{} l-12,12" stroke="{}" stroke-width="2.2"/>"##,
                        n(x[a] - 6.0),
                        n(cy - 6.0),
                        n(x[a] + 6.0),
                        n(cy - 6.0),
                        svg::INK
                    );
                }
                y += 26.0;
            }
        }
    }
    let bottom = y;

    for (i, actor) in q.actors.iter().enumerate() {
        let end = ends[i].unwrap_or(bottom);
        let _ = writeln!(
            body,
            r##"<line x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="#8c959f" stroke-width="1.2" stroke-dasharray="5 4"/>"##,
            n(top + HEAD_H),
            n(end),
            x = n(x[i])
        );
        let _ = writeln!(
            body,
            r##"<rect x="{}" y="{}" width="{}" height="{HEAD_H}" rx="8" fill="#eaf2fc" stroke="#3b6ea8" stroke-width="1.5"/>"##,
            n(x[i] - head_w[i] / 2.0),
            n(top),
            n(head_w[i])
        );
        svg::text(
            &mut body,
            x[i],
            top + HEAD_H / 2.0 + NODE_SIZE * 0.35,
            &actor.label,
            "node",
            Anchor::Middle,
            NODE_SIZE,
        );
    }
    body.push_str(&rows);

    let content_w = right + head_w[0] / 2.0 - x[0];
    let title_w = svg::text_width(&q.title, TITLE_SIZE, true);
    let caption_w = q
        .caption
        .as_deref()
        .map(|c| svg::text_width(c, LABEL_SIZE, false))
        .unwrap_or(0.0);
    let width = (content_w.max(title_w).max(caption_w).max(420.0) + 2.0 * PAD).ceil();
    let dx = PAD + head_w[0] / 2.0 - x[0] + (width - 2.0 * PAD - content_w) / 2.0;

    let mut out = String::new();
    svg::text(
        &mut out,
        PAD,
        PAD + TITLE_SIZE,
        &q.title,
        "title",
        Anchor::Start,
        TITLE_SIZE,
    );
    let _ = writeln!(out, r#"<g transform="translate({},0)">"#, n(dx));
    out.push_str(&body);
    out.push_str("</g>\n");
    let y = bottom + 8.0;
    let mut kinds: Vec<EdgeKind> = q
        .steps
        .iter()
        .filter_map(|s| match s {
            SeqStep::Msg { kind, .. } => Some(*kind),
            SeqStep::End(_) => None,
        })
        .collect();
    kinds.sort();
    kinds.dedup();
    let ends = q.steps.iter().any(|s| matches!(s, SeqStep::End(_)));
    let footer = svg::Footer {
        kinds: &kinds,
        note: ends.then_some("×: the task has finished"),
        caption: q.caption.as_deref(),
    };
    svg::finish(out, width, y, &q.title, footer)
}
