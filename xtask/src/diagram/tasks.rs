//! Lays out and draws a task graph: boxes on the author's grid, orthogonal arrows between them.
//!
//! The layout is deliberately simple and fully determined by the source: column widths come
//! from the widest box, gaps grow until every label fits, arrows attach at evenly spread points
//! of a box side (ordered by where the other end is, so they do not cross near the box), and
//! `route=above|below` arrows run on numbered tracks outside their row.

use std::fmt::Write as _;

use super::parse::{EdgeKind, NodeKind, Route, TaskGraph};
use super::svg::{self, Anchor, LABEL_SIZE, LEADING, LINE_H, NODE_SIZE, PAD, TITLE_SIZE, n};

const MIN_GAP: f64 = 64.0;
const ROW_GAP: f64 = 60.0;
const TRACK: f64 = 30.0;
const MIN_NODE_W: f64 = 96.0;
/// How far the shadow boxes of a `many` node stick out to the upper right.
const STACK: f64 = 5.0;

#[derive(Clone, Copy, Debug, PartialEq)]
struct Rect {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
}

impl Rect {
    fn cx(&self) -> f64 {
        self.x + self.w / 2.0
    }
    fn cy(&self) -> f64 {
        self.y + self.h / 2.0
    }
    fn right(&self) -> f64 {
        self.x + self.w
    }
    fn bottom(&self) -> f64 {
        self.y + self.h
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    Top,
    Bottom,
    Left,
    Right,
}

/// The bounding box of everything drawn so far, so the canvas fits the drawing exactly.
struct Bounds {
    min_x: f64,
    min_y: f64,
    max_x: f64,
    max_y: f64,
}

impl Bounds {
    fn new() -> Self {
        Self {
            min_x: f64::MAX,
            min_y: f64::MAX,
            max_x: f64::MIN,
            max_y: f64::MIN,
        }
    }
    fn add(&mut self, x: f64, y: f64) {
        self.min_x = self.min_x.min(x);
        self.min_y = self.min_y.min(y);
        self.max_x = self.max_x.max(x);
        self.max_y = self.max_y.max(y);
    }
    fn rect(&mut self, r: Rect) {
        self.add(r.x, r.y);
        self.add(r.right(), r.bottom());
    }
    /// A label drawn with `svg::text` at (x, baseline y).
    fn label(&mut self, x: f64, y: f64, label: &str, anchor: Anchor, size: f64) {
        let w = svg::text_width(label, size, false);
        let x0 = match anchor {
            Anchor::Start => x,
            Anchor::Middle => x - w / 2.0,
            Anchor::End => x - w,
        };
        let lines = svg::line_count(label) as f64;
        self.add(x0 - 2.0, y - size);
        self.add(
            x0 + w + 2.0,
            y + (lines - 1.0) * size * LEADING + size * 0.3,
        );
    }
}

fn node_size(label: &str, many: bool) -> (f64, f64) {
    let mut lines = label.lines();
    let first = svg::line_width(lines.next().unwrap_or(""), NODE_SIZE, true);
    let rest = lines
        .map(|l| svg::line_width(l, LABEL_SIZE, false))
        .fold(0.0, f64::max);
    let extra = (svg::line_count(label) - 1) as f64;
    let w = (first.max(rest) + 32.0).max(MIN_NODE_W) + if many { 2.0 * STACK } else { 0.0 };
    (w.ceil(), 26.0 + NODE_SIZE + extra * LINE_H)
}

/// Where one end of an edge sits: the box it attaches to and the side.
#[derive(Clone, Copy)]
struct End {
    rect: Rect,
    side: Side,
}

/// How an edge is drawn, decided before the ports are spread.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    Horizontal,
    Vertical,
    Track(Side),
    Elbow,
}

pub fn render(g: &TaskGraph) -> String {
    let cols = g.nodes.iter().map(|n| n.col).max().unwrap_or(0) + 1;
    let rows = g.nodes.iter().map(|n| n.row).max().unwrap_or(0) + 1;
    let sizes: Vec<(f64, f64)> = g
        .nodes
        .iter()
        .map(|n| node_size(&n.label, n.many))
        .collect();
    let node_index = |id: &str| g.nodes.iter().position(|n| n.id == id);

    let mut col_w = vec![MIN_NODE_W; cols];
    let mut row_h = vec![40.0_f64; rows];
    for (node, &(w, h)) in g.nodes.iter().zip(&sizes) {
        col_w[node.col] = col_w[node.col].max(w);
        row_h[node.row] = row_h[node.row].max(h);
    }

    // Tracks: arrows routed above or below a row, innermost (shortest) first.
    let mut track_of = vec![0usize; g.edges.len()];
    let mut tracks_above = vec![0usize; rows];
    let mut tracks_below = vec![0usize; rows];
    {
        let mut routed: Vec<(usize, usize, usize)> = Vec::new(); // (span, edge, row)
        for (i, e) in g.edges.iter().enumerate() {
            if e.route != Route::Auto {
                // The parser checked that both ends are nodes of one row.
                let (Some(a), Some(b)) = (node_index(&e.from), node_index(&e.to)) else {
                    continue;
                };
                let (na, nb) = (&g.nodes[a], &g.nodes[b]);
                let span = na.col.abs_diff(nb.col);
                let row = if e.route == Route::Above {
                    na.row.min(nb.row)
                } else {
                    na.row.max(nb.row)
                };
                routed.push((span, i, row));
            }
        }
        routed.sort();
        for (_, i, row) in routed {
            let counter = if g.edges[i].route == Route::Above {
                &mut tracks_above[row]
            } else {
                &mut tracks_below[row]
            };
            *counter += 1;
            track_of[i] = *counter;
        }
    }

    // Gaps between columns grow until the labels of the arrows crossing them fit.
    let mut gap = vec![MIN_GAP; cols.saturating_sub(1)];
    for e in &g.edges {
        let (Some(a), Some(b)) = (node_index(&e.from), node_index(&e.to)) else {
            continue;
        };
        let (na, nb) = (&g.nodes[a], &g.nodes[b]);
        if na.col == nb.col || e.route != Route::Auto {
            continue;
        }
        let need = svg::text_width(&e.label, LABEL_SIZE, false) + 28.0;
        let (lo, hi) = (na.col.min(nb.col), na.col.max(nb.col));
        let between: f64 = (lo + 1..hi).map(|c| col_w[c]).sum();
        let half_target = if na.row == nb.row {
            0.0
        } else {
            col_w[nb.col] / 2.0 - 12.0
        };
        let have: f64 = gap[lo..hi].iter().sum::<f64>() + between + half_target;
        if have < need {
            // Widen the gap next to the source, where the label sits.
            let g_at = if nb.col > na.col { na.col } else { na.col - 1 };
            gap[g_at] += (need - have).ceil();
        }
    }

    let mut col_x = vec![0.0; cols];
    for c in 1..cols {
        col_x[c] = col_x[c - 1] + col_w[c - 1] + gap[c - 1];
    }
    let mut row_y = vec![0.0; rows];
    for r in 1..rows {
        let below = tracks_below[r - 1] as f64 * TRACK;
        let above = tracks_above[r] as f64 * TRACK;
        let vertical_labels = g
            .edges
            .iter()
            .filter_map(|e| {
                let (a, b) = (node_index(&e.from)?, node_index(&e.to)?);
                let (na, nb) = (&g.nodes[a], &g.nodes[b]);
                (na.col == nb.col && na.row.min(nb.row) == r - 1 && na.row.abs_diff(nb.row) == 1)
                    .then(|| svg::line_count(&e.label) as f64 * LINE_H + 24.0)
            })
            .fold(0.0, f64::max);
        row_y[r] = row_y[r - 1] + row_h[r - 1] + (ROW_GAP + below + above).max(vertical_labels);
    }

    let rects: Vec<Rect> = g
        .nodes
        .iter()
        .zip(&sizes)
        .map(|(node, &(w, h))| Rect {
            x: col_x[node.col] + (col_w[node.col] - w) / 2.0,
            y: row_y[node.row] + (row_h[node.row] - h) / 2.0,
            w,
            h,
        })
        .collect();

    // Track heights, measured from the row's boxes.
    let track_y = |i: usize, row: usize, above: bool| {
        if above {
            row_y[row] - track_of[i] as f64 * TRACK
        } else {
            row_y[row] + row_h[row] + track_of[i] as f64 * TRACK
        }
    };

    let track_row = |i: usize| {
        let e = &g.edges[i];
        let (a, b) = (node_index(&e.from)?, node_index(&e.to)?);
        let (ra, rb) = (g.nodes[a].row, g.nodes[b].row);
        Some(if e.route == Route::Above {
            ra.min(rb)
        } else {
            ra.max(rb)
        })
    };

    // Group frames enclose their members and the tracks of arrows between members.
    let group_rects: Vec<Rect> = g
        .groups
        .iter()
        .map(|grp| {
            let mut b = Bounds::new();
            for m in &grp.members {
                if let Some(i) = node_index(m) {
                    b.rect(rects[i]);
                    if g.nodes[i].many {
                        b.add(rects[i].right() + STACK * 2.0, rects[i].y - STACK * 2.0);
                    }
                }
            }
            for (i, e) in g.edges.iter().enumerate() {
                let inside = grp.members.contains(&e.from) && grp.members.contains(&e.to);
                if inside && e.route != Route::Auto {
                    if let Some(row) = track_row(i) {
                        let above = e.route == Route::Above;
                        let y = track_y(i, row, above);
                        b.add(
                            b.min_x,
                            y + if above { -LINE_H - 8.0 } else { LINE_H + 8.0 },
                        );
                    }
                }
            }
            // Room for the label along the bottom edge.
            Rect {
                x: b.min_x - 14.0,
                y: b.min_y - 12.0,
                w: b.max_x - b.min_x + 28.0,
                h: b.max_y - b.min_y + 44.0,
            }
        })
        .collect();
    let rect_of = |id: &str| -> Option<(Rect, Option<(usize, usize)>)> {
        if let Some(i) = node_index(id) {
            return Some((rects[i], Some((g.nodes[i].col, g.nodes[i].row))));
        }
        let gi = g.groups.iter().position(|x| x.id == id)?;
        Some((group_rects[gi], None))
    };

    // Decide each edge's shape and the sides it leaves and enters.
    struct Plan {
        shape: Shape,
        from: End,
        to: End,
    }
    let plans: Vec<Option<Plan>> = g
        .edges
        .iter()
        .map(|e| {
            let (fr, fpos) = rect_of(&e.from)?;
            let (tr, tpos) = rect_of(&e.to)?;
            let toward_x = if tr.cx() > fr.cx() {
                Side::Right
            } else {
                Side::Left
            };
            let back_x = if toward_x == Side::Right {
                Side::Left
            } else {
                Side::Right
            };
            let (shape, fs, ts) = match (e.route, fpos, tpos) {
                (Route::Above, ..) => (Shape::Track(Side::Top), Side::Top, Side::Top),
                (Route::Below, ..) => (Shape::Track(Side::Bottom), Side::Bottom, Side::Bottom),
                (_, Some((_, fr_row)), Some((_, tr_row))) if fr_row == tr_row => {
                    (Shape::Horizontal, toward_x, back_x)
                }
                (_, Some((fc, fr_row)), Some((tc, tr_row))) if fc == tc => {
                    if tr_row > fr_row {
                        (Shape::Vertical, Side::Bottom, Side::Top)
                    } else {
                        (Shape::Vertical, Side::Top, Side::Bottom)
                    }
                }
                // A node under or over a group frame joins it straight up or down.
                (_, None, _) | (_, _, None)
                    if (fpos.is_none() && tr.cx() > fr.x && tr.cx() < fr.right())
                        || (tpos.is_none() && fr.cx() > tr.x && fr.cx() < tr.right()) =>
                {
                    if tr.cy() > fr.cy() {
                        (Shape::Vertical, Side::Bottom, Side::Top)
                    } else {
                        (Shape::Vertical, Side::Top, Side::Bottom)
                    }
                }
                _ => {
                    let down = tr.cy() > fr.cy();
                    (
                        Shape::Elbow,
                        toward_x,
                        if down { Side::Top } else { Side::Bottom },
                    )
                }
            };
            Some(Plan {
                shape,
                from: End { rect: fr, side: fs },
                to: End { rect: tr, side: ts },
            })
        })
        .collect();

    let stacked = |r: Rect| {
        rects
            .iter()
            .zip(&g.nodes)
            .any(|(x, node)| *x == r && node.many)
    };

    // Spread the ports of each box side, ordered by where the other end lies.
    let mut ports: Vec<[(f64, f64); 2]> = vec![[(0.0, 0.0); 2]; g.edges.len()];
    {
        type Key = (i64, i64, i64, i64, Side);
        let key_of = |r: Rect, s: Side| -> Key {
            (
                (r.x * 10.0) as i64,
                (r.y * 10.0) as i64,
                (r.w * 10.0) as i64,
                (r.h * 10.0) as i64,
                s,
            )
        };
        let mut sides: Vec<(Key, i64, usize, usize)> = Vec::new(); // (side, order, edge, end)
        for (i, p) in plans.iter().enumerate() {
            let Some(p) = p else { continue };
            for (end, (this, other)) in [(p.from, p.to), (p.to, p.from)].into_iter().enumerate() {
                let along = match this.side {
                    Side::Top | Side::Bottom => other.rect.cx(),
                    Side::Left | Side::Right => other.rect.cy(),
                };
                sides.push((key_of(this.rect, this.side), (along * 10.0) as i64, i, end));
            }
        }
        sides.sort();
        let mut start = 0;
        while start < sides.len() {
            let mut stop = start;
            while stop < sides.len() && sides[stop].0 == sides[start].0 {
                stop += 1;
            }
            let count = (stop - start) as f64;
            for (k, &(_, _, i, end)) in sides[start..stop].iter().enumerate() {
                let Some(p) = &plans[i] else { continue };
                let this = if end == 0 { p.from } else { p.to };
                let r = this.rect;
                let t = (k as f64 + 1.0) / (count + 1.0);
                let other = if end == 0 { p.to } else { p.from };
                let is_group = group_rects.contains(&r);
                // Keep ports off the rounded corners.
                let along_x = r.x + 12.0 + (r.w - 24.0) * t;
                let along_y = r.y + 6.0 + (r.h - 12.0) * t;
                // On a wide group frame, meet the other end straight on.
                let along_x = if is_group {
                    other.rect.cx().clamp(r.x + 12.0, r.right() - 12.0)
                } else {
                    along_x
                };
                // Arrows meet a `many` node at its back copy's top edge, not under it.
                let lift = if !is_group && stacked(r) {
                    2.0 * STACK
                } else {
                    0.0
                };
                ports[i][end] = match this.side {
                    Side::Top => (along_x, r.y - lift),
                    Side::Bottom => (along_x, r.bottom()),
                    Side::Left => (r.x, along_y),
                    Side::Right => (r.right(), along_y),
                };
            }
            start = stop;
        }
    }

    let mut body = String::new();
    let mut bounds = Bounds::new();

    for (grp, r) in g.groups.iter().zip(&group_rects) {
        let _ = writeln!(
            body,
            r##"<rect x="{}" y="{}" width="{}" height="{}" rx="12" fill="#f6f8fa" stroke="#8250df" stroke-width="1.2" stroke-dasharray="6 4"/>"##,
            n(r.x),
            n(r.y),
            n(r.w),
            n(r.h)
        );
        // Bottom centre: arrows into a group's members mostly arrive from the top or sides.
        let (lx, ly) = (r.cx(), r.bottom() - 10.0);
        svg::text(
            &mut body,
            lx,
            ly,
            &grp.label,
            "label",
            Anchor::Middle,
            LABEL_SIZE,
        );
        bounds.rect(*r);
        bounds.label(lx, ly, &grp.label, Anchor::Middle, LABEL_SIZE);
    }

    for ((node, r), _) in g.nodes.iter().zip(&rects).zip(&sizes) {
        let (fill, stroke, rx, dash) = match node.kind {
            NodeKind::Task => ("#eaf2fc", "#3b6ea8", 8.0, ""),
            NodeKind::Ext => ("#f3f4f6", "#8c959f", 2.0, r#" stroke-dasharray="4 3""#),
            NodeKind::Sync => ("#fff5d6", "#9a6700", r.h / 2.0, ""),
        };
        // A `many` node's own box is the front one; the copies sit behind, up and right.
        let front = if node.many {
            Rect {
                w: r.w - 2.0 * STACK,
                ..*r
            }
        } else {
            *r
        };
        if node.many {
            for k in [2.0, 1.0] {
                let _ = writeln!(
                    body,
                    r#"<rect x="{}" y="{}" width="{}" height="{}" rx="{rx}" fill="{fill}" stroke="{stroke}" stroke-width="1.2"{dash}/>"#,
                    n(front.x + k * STACK),
                    n(front.y - k * STACK),
                    n(front.w),
                    n(front.h)
                );
            }
            bounds.add(front.right() + 2.0 * STACK, front.y - 2.0 * STACK);
        }
        let _ = writeln!(
            body,
            r#"<rect x="{}" y="{}" width="{}" height="{}" rx="{}" fill="{fill}" stroke="{stroke}" stroke-width="1.5"{dash}/>"#,
            n(front.x),
            n(front.y),
            n(front.w),
            n(front.h),
            n(rx)
        );
        bounds.rect(*r);
        let extra = (svg::line_count(&node.label) - 1) as f64;
        let text_h = NODE_SIZE + extra * LINE_H;
        let mut baseline = front.cy() - text_h / 2.0 + NODE_SIZE * 0.8;
        for (i, line) in node.label.lines().enumerate() {
            let (class, size) = if i == 0 {
                ("node", NODE_SIZE)
            } else {
                ("sub", LABEL_SIZE)
            };
            svg::text(
                &mut body,
                front.cx(),
                baseline,
                line,
                class,
                Anchor::Middle,
                size,
            );
            baseline += if i == 0 { LINE_H + 1.0 } else { LINE_H };
        }
        if node.many {
            let bx = front.right() - 4.0;
            let by = front.y;
            let _ = writeln!(
                body,
                r##"<rect x="{}" y="{}" width="26" height="16" rx="8" fill="#3b6ea8"/>"##,
                n(bx - 13.0),
                n(by - 8.0)
            );
            svg::text(&mut body, bx, by + 4.0, "×N", "badge", Anchor::Middle, 11.0);
        }
    }

    // Arrows, then their labels on top so that no line crosses a label's text.
    let mut labels = String::new();
    for (i, e) in g.edges.iter().enumerate() {
        let Some(p) = &plans[i] else { continue };
        let (s, t) = (ports[i][0], ports[i][1]);
        let lines = svg::line_count(&e.label) as f64 - 1.0;
        let (points, lx, ly, anchor) = match p.shape {
            Shape::Horizontal => {
                let pts = if (s.1 - t.1).abs() < 0.5 {
                    vec![s, t]
                } else {
                    let mx = (s.0 + t.0) / 2.0;
                    vec![s, (mx, s.1), (mx, t.1), t]
                };
                // Of two arrows between one pair of boxes, the lower one has its label below.
                let lower_twin = g.edges.iter().enumerate().any(|(j, o)| {
                    j != i
                        && plans[j]
                            .as_ref()
                            .is_some_and(|q| q.shape == Shape::Horizontal)
                        && ((o.from == e.from && o.to == e.to)
                            || (o.from == e.to && o.to == e.from))
                        && ports[j][0].1.min(ports[j][1].1) < s.1.min(t.1)
                });
                let y = if lower_twin {
                    s.1.max(t.1) + LABEL_SIZE + 4.0
                } else {
                    s.1.min(t.1) - 7.0 - lines * LINE_H
                };
                (pts, (s.0 + t.0) / 2.0, y, Anchor::Middle)
            }
            Shape::Vertical => {
                // A node's port may sit off-centre; the group's port is aligned with it.
                let x = if plans[i]
                    .as_ref()
                    .is_some_and(|p| group_rects.contains(&p.to.rect))
                {
                    s.0
                } else if group_rects.contains(&p.from.rect) {
                    t.0
                } else {
                    (s.0 + t.0) / 2.0
                };
                let pts = vec![(x, s.1), (x, t.1)];
                let y = (s.1 + t.1) / 2.0 - lines * LINE_H / 2.0 + LABEL_SIZE * 0.35;
                // Of two arrows between one pair of boxes, the left one has its label left.
                let left_twin = g.edges.iter().enumerate().any(|(j, o)| {
                    j != i
                        && plans[j]
                            .as_ref()
                            .is_some_and(|q| q.shape == Shape::Vertical)
                        && ((o.from == e.from && o.to == e.to)
                            || (o.from == e.to && o.to == e.from))
                        && ports[j][0].0 > x
                });
                if left_twin {
                    (pts, x - 8.0, y, Anchor::End)
                } else {
                    (pts, x + 8.0, y, Anchor::Start)
                }
            }
            Shape::Track(side) => {
                let row = track_row(i).unwrap_or(0);
                let ty = track_y(i, row, side == Side::Top);
                let pts = vec![s, (s.0, ty), (t.0, ty), t];
                let y = if side == Side::Top {
                    ty - 7.0 - lines * LINE_H
                } else {
                    ty + LABEL_SIZE + 4.0
                };
                (pts, (s.0 + t.0) / 2.0, y, Anchor::Middle)
            }
            Shape::Elbow => {
                let pts = vec![s, (t.0, s.1), t];
                // The label sits on the horizontal leg, short of the bend.
                let x = (s.0 + t.0) / 2.0;
                (pts, x, s.1 - 7.0 - lines * LINE_H, Anchor::Middle)
            }
        };
        svg::arrow(&mut body, &points, e.kind);
        for &(x, y) in &points {
            bounds.add(x, y);
        }
        if !e.label.is_empty() {
            svg::text(&mut labels, lx, ly, &e.label, "label", anchor, LABEL_SIZE);
            bounds.label(lx, ly, &e.label, anchor, LABEL_SIZE);
        }
    }
    body.push_str(&labels);

    // Frame: title above, legend and caption below, everything shifted to the padding.
    let title_lines = svg::line_count(&g.title) as f64;
    let title_h = TITLE_SIZE * LEADING * title_lines + 14.0;
    let content_w = bounds.max_x - bounds.min_x;
    let title_w = svg::text_width(&g.title, TITLE_SIZE, true);
    let mut kinds: Vec<EdgeKind> = g.edges.iter().map(|e| e.kind).collect();
    kinds.sort();
    kinds.dedup();
    let caption_w = g
        .caption
        .as_deref()
        .map(|c| svg::text_width(c, LABEL_SIZE, false))
        .unwrap_or(0.0);
    let width = (content_w.max(title_w).max(caption_w).max(420.0) + 2.0 * PAD).ceil();
    let dx = PAD - bounds.min_x + (width - 2.0 * PAD - content_w) / 2.0;
    let dy = PAD + title_h - bounds.min_y;

    let mut out = String::new();
    svg::text(
        &mut out,
        PAD,
        PAD + TITLE_SIZE,
        &g.title,
        "title",
        Anchor::Start,
        TITLE_SIZE,
    );
    let _ = writeln!(out, r#"<g transform="translate({},{})">"#, n(dx), n(dy));
    out.push_str(&body);
    out.push_str("</g>\n");
    let y = PAD + title_h + (bounds.max_y - bounds.min_y) + 18.0;
    let many = g.nodes.iter().any(|n| n.many);
    let footer = svg::Footer {
        kinds: &kinds,
        note: many.then_some("×N: one task per connected client"),
        caption: g.caption.as_deref(),
    };
    svg::finish(out, width, y, &g.title, footer)
}
