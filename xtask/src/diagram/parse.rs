//! The text format of the book's diagrams: one statement per line, `#` starts a comment.
//!
//! A task graph (boxes on a grid of columns and rows, arrows for channels):
//!
//! ```text
//! tasks "Step 02: reader -> broker -> writer"
//! node accept 0,0 "accept loop"
//! node reader 1,0 "reader" many
//! node broker 2,0 "broker"
//! node writer 3,0 "writer" many
//! edge accept -> reader "spawn" kind=spawn
//! edge reader -> broker "mpsc `Event`"
//! edge broker -> writer "mpsc `String`" route=below
//! group tracked "TaskTracker" reader broker writer
//! caption "One broker owns the map of peers."
//! ```
//!
//! A sequence diagram (lifelines, numbered arrows in order):
//!
//! ```text
//! sequence "Step 04: shutdown"
//! actor main "main"
//! actor broker "broker"
//! msg main -> broker "drop the sender" kind=signal
//! self broker "drain"
//! end broker
//! ```
//!
//! In labels, `\n` starts a new line and text between backticks is set in a monospace font.

use std::fmt;

/// What a node stands for; each kind is drawn differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    /// A tokio task (rounded box).
    Task,
    /// Something outside our tasks: clients, the OS, a socket (grey box).
    Ext,
    /// A synchronisation object shared by tasks: `Notify`, a token, a tracker (pill).
    Sync,
}

/// What an arrow carries; each kind has its own colour and dash pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EdgeKind {
    /// A channel carrying data (mpsc, per-peer queues, the disconnect channel).
    Chan,
    /// Bytes on a TCP socket.
    Io,
    /// One task spawns another.
    Spawn,
    /// A shutdown signal: `Notify`, a oneshot that is dropped, a `CancellationToken`.
    Signal,
    /// One task waits for others to finish: a join, `TaskTracker::wait`, draining.
    Wait,
}

impl EdgeKind {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "chan" => Self::Chan,
            "io" => Self::Io,
            "spawn" => Self::Spawn,
            "signal" => Self::Signal,
            "wait" => Self::Wait,
            _ => return None,
        })
    }
}

/// How an arrow is routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Straight if the boxes share a row or column, else one bend.
    Auto,
    /// Up from the top of both boxes and across, above the higher one's row.
    Above,
    /// Down from the bottom of both boxes and across, below the lower one's row.
    Below,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: String,
    pub col: usize,
    pub row: usize,
    pub label: String,
    pub kind: NodeKind,
    /// One per client: drawn as a stack with "×N".
    pub many: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    pub from: String,
    pub to: String,
    pub label: String,
    pub kind: EdgeKind,
    pub route: Route,
}

/// A dashed frame around some nodes, e.g. the tasks a `TaskTracker` tracks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub id: String,
    pub label: String,
    pub members: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskGraph {
    pub title: String,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    pub groups: Vec<Group>,
    pub caption: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub id: String,
    pub label: String,
}

/// One row of a sequence diagram, in the order it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeqStep {
    /// A numbered arrow between two lifelines (or a loop back onto one when `from == to`).
    Msg {
        from: usize,
        to: usize,
        label: String,
        kind: EdgeKind,
    },
    /// These lifelines end here (the task has finished).
    End(Vec<usize>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequence {
    pub title: String,
    pub actors: Vec<Actor>,
    pub steps: Vec<SeqStep>,
    pub caption: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Diagram {
    Tasks(TaskGraph),
    Sequence(Sequence),
}

/// A parse error with its 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// One token of a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String),
    Quoted(String),
    Arrow,
}

/// Splits a line into words, quoted strings (with `\"`, `\\` and `\n` escapes) and `->`.
fn tokenize(line: &str) -> Result<Vec<Tok>, String> {
    let mut toks = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '#' {
            break;
        } else if c == '"' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    None => return Err("unterminated string".into()),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some('n') => s.push('\n'),
                        Some('"') => s.push('"'),
                        Some('\\') => s.push('\\'),
                        other => return Err(format!("unknown escape \\{}", other.unwrap_or(' '))),
                    },
                    Some(ch) => s.push(ch),
                }
            }
            toks.push(Tok::Quoted(s));
        } else {
            let mut s = String::new();
            while let Some(&ch) = chars.peek() {
                if ch.is_whitespace() || ch == '"' || ch == '#' {
                    break;
                }
                s.push(ch);
                chars.next();
            }
            toks.push(if s == "->" { Tok::Arrow } else { Tok::Word(s) });
        }
    }
    Ok(toks)
}

/// The statement being parsed, consumed token by token.
struct Stmt {
    toks: std::vec::IntoIter<Tok>,
}

impl Stmt {
    fn word(&mut self, what: &str) -> Result<String, String> {
        match self.toks.next() {
            Some(Tok::Word(w)) => Ok(w),
            other => Err(format!("expected {what}, found {}", show(other.as_ref()))),
        }
    }

    fn id(&mut self, what: &str) -> Result<String, String> {
        let w = self.word(what)?;
        if w.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            Ok(w)
        } else {
            Err(format!("{what} `{w}` must be letters, digits, `_` or `-`"))
        }
    }

    fn quoted(&mut self, what: &str) -> Result<String, String> {
        match self.toks.next() {
            Some(Tok::Quoted(s)) => Ok(s),
            other => Err(format!(
                "expected {what} in quotes, found {}",
                show(other.as_ref())
            )),
        }
    }

    fn arrow(&mut self) -> Result<(), String> {
        match self.toks.next() {
            Some(Tok::Arrow) => Ok(()),
            other => Err(format!("expected `->`, found {}", show(other.as_ref()))),
        }
    }

    /// The remaining tokens, which must all be words (flags and `key=value` options).
    fn rest_words(&mut self) -> Result<Vec<String>, String> {
        self.toks
            .by_ref()
            .map(|t| match t {
                Tok::Word(w) => Ok(w),
                other => Err(format!("unexpected {}", show(Some(&other)))),
            })
            .collect()
    }

    fn end(&mut self) -> Result<(), String> {
        match self.toks.next() {
            None => Ok(()),
            Some(t) => Err(format!("unexpected {} at the end", show(Some(&t)))),
        }
    }
}

fn show(t: Option<&Tok>) -> String {
    match t {
        None => "the end of the line".into(),
        Some(Tok::Word(w)) => format!("`{w}`"),
        Some(Tok::Quoted(s)) => format!("\"{s}\""),
        Some(Tok::Arrow) => "`->`".into(),
    }
}

fn edge_kind(value: &str) -> Result<EdgeKind, String> {
    EdgeKind::parse(value)
        .ok_or_else(|| format!("unknown kind `{value}` (chan, io, spawn, signal, wait)"))
}

/// Parses a whole diagram source. The first statement says which kind of diagram it is.
pub fn parse(src: &str) -> Result<Diagram, ParseError> {
    let mut lines = src
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter_map(|(n, l)| match tokenize(l) {
            Ok(t) if t.is_empty() => None,
            Ok(t) => Some(Ok((n, t))),
            Err(message) => Some(Err(ParseError { line: n, message })),
        });
    let (n, first) = match lines.next() {
        None => {
            return Err(ParseError {
                line: 1,
                message: "empty diagram: start with `tasks \"title\"` or `sequence \"title\"`"
                    .into(),
            });
        }
        Some(r) => r?,
    };
    let err = |line: usize| move |message: String| ParseError { line, message };
    let mut head = Stmt {
        toks: first.into_iter(),
    };
    let kind = head.word("`tasks` or `sequence`").map_err(err(n))?;
    let title = head.quoted("a title").map_err(err(n))?;
    head.end().map_err(err(n))?;
    let rest: Vec<(usize, Vec<Tok>)> = lines.collect::<Result<_, _>>()?;
    match kind.as_str() {
        "tasks" => parse_tasks(title, rest).map(Diagram::Tasks),
        "sequence" => parse_sequence(title, rest).map(Diagram::Sequence),
        other => Err(ParseError {
            line: n,
            message: format!("unknown diagram kind `{other}` (tasks, sequence)"),
        }),
    }
}

fn parse_tasks(title: String, stmts: Vec<(usize, Vec<Tok>)>) -> Result<TaskGraph, ParseError> {
    let mut g = TaskGraph {
        title,
        nodes: Vec::new(),
        edges: Vec::new(),
        groups: Vec::new(),
        caption: None,
    };
    let mut edge_lines = Vec::new();
    for (line, toks) in stmts {
        let mut s = Stmt {
            toks: toks.into_iter(),
        };
        let r: Result<(), String> = (|| {
            match s.word("a statement")?.as_str() {
                "node" => {
                    let id = s.id("a node id")?;
                    let pos = s.word("a position `col,row`")?;
                    let (col, row) = pos
                        .split_once(',')
                        .and_then(|(c, r)| Some((c.parse().ok()?, r.parse().ok()?)))
                        .ok_or_else(|| format!("position `{pos}` is not `col,row`"))?;
                    let label = s.quoted("a label")?;
                    let mut node = Node {
                        id,
                        col,
                        row,
                        label,
                        kind: NodeKind::Task,
                        many: false,
                    };
                    for w in s.rest_words()? {
                        match w.split_once('=') {
                            None if w == "many" => node.many = true,
                            Some(("kind", "task")) => node.kind = NodeKind::Task,
                            Some(("kind", "ext")) => node.kind = NodeKind::Ext,
                            Some(("kind", "sync")) => node.kind = NodeKind::Sync,
                            _ => {
                                return Err(format!(
                                    "unknown node option `{w}` (many, kind=task|ext|sync)"
                                ));
                            }
                        }
                    }
                    if g.nodes.iter().any(|n| n.id == node.id) {
                        return Err(format!("node `{}` is defined twice", node.id));
                    }
                    if let Some(o) = g.nodes.iter().find(|n| (n.col, n.row) == (col, row)) {
                        return Err(format!(
                            "nodes `{}` and `{}` share {col},{row}",
                            o.id, node.id
                        ));
                    }
                    g.nodes.push(node);
                }
                "edge" => {
                    let from = s.id("a node id")?;
                    s.arrow()?;
                    let to = s.id("a node id")?;
                    let label = s.quoted("a label")?;
                    let mut edge = Edge {
                        from,
                        to,
                        label,
                        kind: EdgeKind::Chan,
                        route: Route::Auto,
                    };
                    for w in s.rest_words()? {
                        match w.split_once('=') {
                            Some(("kind", k)) => edge.kind = edge_kind(k)?,
                            Some(("route", "above")) => edge.route = Route::Above,
                            Some(("route", "below")) => edge.route = Route::Below,
                            Some(("route", "auto")) => edge.route = Route::Auto,
                            _ => {
                                return Err(format!(
                                    "unknown edge option `{w}` (kind=..., route=above|below)"
                                ));
                            }
                        }
                    }
                    edge_lines.push(line);
                    g.edges.push(edge);
                }
                "group" => {
                    let id = s.id("a group id")?;
                    let label = s.quoted("a label")?;
                    let members = s.rest_words()?;
                    if members.is_empty() {
                        return Err(format!("group `{id}` has no members"));
                    }
                    for m in &members {
                        if !g.nodes.iter().any(|n| &n.id == m) {
                            return Err(format!("group member `{m}` is not a node defined above"));
                        }
                    }
                    if g.nodes.iter().any(|n| n.id == id) || g.groups.iter().any(|x| x.id == id) {
                        return Err(format!("id `{id}` is defined twice"));
                    }
                    g.groups.push(Group { id, label, members });
                }
                "caption" => {
                    g.caption = Some(s.quoted("a caption")?);
                    s.end()?;
                }
                other => {
                    return Err(format!(
                        "unknown statement `{other}` in a task graph (node, edge, group, caption)"
                    ));
                }
            }
            Ok(())
        })();
        r.map_err(|message| ParseError { line, message })?;
    }
    // Edges may name nodes or groups; check them once everything is defined.
    for (e, &line) in g.edges.iter().zip(&edge_lines) {
        let known =
            |id: &str| g.nodes.iter().any(|n| n.id == id) || g.groups.iter().any(|x| x.id == id);
        for end in [&e.from, &e.to] {
            if !known(end) {
                return Err(ParseError {
                    line,
                    message: format!("edge names `{end}`, which is neither a node nor a group"),
                });
            }
        }
        if e.from == e.to {
            return Err(ParseError {
                line,
                message: format!("edge from `{}` to itself", e.from),
            });
        }
        if e.route != Route::Auto
            && !(g.nodes.iter().any(|n| n.id == e.from) && g.nodes.iter().any(|n| n.id == e.to))
        {
            return Err(ParseError {
                line,
                message: "route=above|below joins two nodes, not a group".into(),
            });
        }
    }
    if g.nodes.is_empty() {
        return Err(ParseError {
            line: 1,
            message: "a task graph needs at least one node".into(),
        });
    }
    Ok(g)
}

fn parse_sequence(title: String, stmts: Vec<(usize, Vec<Tok>)>) -> Result<Sequence, ParseError> {
    let mut q = Sequence {
        title,
        actors: Vec::new(),
        steps: Vec::new(),
        caption: None,
    };
    for (line, toks) in stmts {
        let mut s = Stmt {
            toks: toks.into_iter(),
        };
        let r: Result<(), String> = (|| {
            let find = |actors: &[Actor], id: &str| {
                actors
                    .iter()
                    .position(|a| a.id == id)
                    .ok_or_else(|| format!("`{id}` is not an actor defined above"))
            };
            match s.word("a statement")?.as_str() {
                "actor" => {
                    let id = s.id("an actor id")?;
                    let label = s.quoted("a label")?;
                    s.end()?;
                    if !q.steps.is_empty() {
                        return Err("declare every actor before the first message".into());
                    }
                    if q.actors.iter().any(|a| a.id == id) {
                        return Err(format!("actor `{id}` is defined twice"));
                    }
                    q.actors.push(Actor { id, label });
                }
                verb @ ("msg" | "self") => {
                    let from = find(&q.actors, &s.id("an actor id")?)?;
                    let to = if verb == "msg" {
                        s.arrow()?;
                        find(&q.actors, &s.id("an actor id")?)?
                    } else {
                        from
                    };
                    // An arrow to or from a lifeline that has ended would point into nothing.
                    for a in [from, to] {
                        if q.steps
                            .iter()
                            .any(|st| matches!(st, SeqStep::End(v) if v.contains(&a)))
                        {
                            return Err(format!(
                                "a message uses `{}` after it ended",
                                q.actors[a].id
                            ));
                        }
                    }
                    let label = s.quoted("a label")?;
                    let mut kind = EdgeKind::Signal;
                    for w in s.rest_words()? {
                        match w.split_once('=') {
                            Some(("kind", k)) => kind = edge_kind(k)?,
                            _ => return Err(format!("unknown option `{w}` (kind=...)")),
                        }
                    }
                    q.steps.push(SeqStep::Msg {
                        from,
                        to,
                        label,
                        kind,
                    });
                }
                "end" => {
                    let ids = s.rest_words()?;
                    if ids.is_empty() {
                        return Err("`end` needs at least one actor".into());
                    }
                    let mut ended = Vec::new();
                    for id in ids {
                        let a = find(&q.actors, &id)?;
                        let already = q
                            .steps
                            .iter()
                            .any(|st| matches!(st, SeqStep::End(v) if v.contains(&a)));
                        if already || ended.contains(&a) {
                            return Err(format!("actor `{id}` has already ended"));
                        }
                        ended.push(a);
                    }
                    q.steps.push(SeqStep::End(ended));
                }
                "caption" => {
                    q.caption = Some(s.quoted("a caption")?);
                    s.end()?;
                }
                other => {
                    return Err(format!(
                        "unknown statement `{other}` in a sequence (actor, msg, self, end, caption)"
                    ));
                }
            }
            Ok(())
        })();
        r.map_err(|message| ParseError { line, message })?;
    }
    if q.actors.is_empty() {
        return Err(ParseError {
            line: 1,
            message: "a sequence needs at least one actor".into(),
        });
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every statement of a task graph is parsed into the node, edge and group it describes.
    #[test]
    fn parses_a_task_graph() {
        let src = r#"
            # comment
            tasks "Step \"02\"\nbroker"   # trailing comment
            node reader 1,0 "reader" many
            node broker 2,0 "broker" kind=task
            node main 1,1 "main" kind=ext
            edge reader -> broker "mpsc `Event`"
            edge broker -> reader "back" kind=wait route=below
            edge main -> all "wait" kind=wait
            group all "tracked" reader broker
            caption "cap"
        "#;
        let Diagram::Tasks(g) = parse(src).unwrap() else {
            panic!("not a task graph")
        };
        assert_eq!(g.title, "Step \"02\"\nbroker");
        assert_eq!(g.nodes.len(), 3);
        assert_eq!(
            g.nodes[0],
            Node {
                id: "reader".into(),
                col: 1,
                row: 0,
                label: "reader".into(),
                kind: NodeKind::Task,
                many: true
            }
        );
        assert_eq!(g.nodes[2].kind, NodeKind::Ext);
        assert_eq!(g.edges[0].kind, EdgeKind::Chan);
        assert_eq!(g.edges[0].label, "mpsc `Event`");
        assert_eq!(g.edges[1].kind, EdgeKind::Wait);
        assert_eq!(g.edges[1].route, Route::Below);
        assert_eq!(g.edges[2].to, "all");
        assert_eq!(g.groups[0].members, ["reader", "broker"]);
        assert_eq!(g.caption.as_deref(), Some("cap"));
    }

    /// Messages are numbered by their order; `self` is a message to the same lifeline.
    #[test]
    fn parses_a_sequence() {
        let src = "sequence \"s\"\nactor a \"A\"\nactor b \"B\"\nmsg a -> b \"x\" kind=chan\n\
                   self b \"y\"\nend a b\n";
        let Diagram::Sequence(q) = parse(src).unwrap() else {
            panic!("not a sequence")
        };
        assert_eq!(q.actors.len(), 2);
        assert_eq!(
            q.steps,
            [
                SeqStep::Msg {
                    from: 0,
                    to: 1,
                    label: "x".into(),
                    kind: EdgeKind::Chan
                },
                SeqStep::Msg {
                    from: 1,
                    to: 1,
                    label: "y".into(),
                    kind: EdgeKind::Signal
                },
                SeqStep::End(vec![0, 1]),
            ]
        );
    }

    fn error(src: &str) -> ParseError {
        parse(src).expect_err("the source should be rejected")
    }

    /// Mistakes are reported with their line and what is wrong, not rendered silently.
    #[test]
    fn rejects_mistakes_with_their_line() {
        let e = error("tasks \"t\"\nnode a 0,0 \"A\"\nedge a -> ghost \"x\"\n");
        assert_eq!(e.line, 3);
        assert!(e.message.contains("ghost"), "{e}");

        let e = error("tasks \"t\"\nnode a 0,0 \"A\"\nnode a 1,0 \"B\"\n");
        assert_eq!(e.line, 3);
        assert!(e.message.contains("twice"), "{e}");

        let e = error("tasks \"t\"\nnode a 0,0 \"A\"\nnode b 0,0 \"B\"\n");
        assert!(e.message.contains("share 0,0"), "{e}");

        let e = error("tasks \"t\"\nnode a 0,0 \"A\" kind=blob\n");
        assert!(e.message.contains("kind=blob"), "{e}");

        let e = error("tasks \"t\"\nnode a x \"A\"\n");
        assert!(e.message.contains("col,row"), "{e}");

        let e = error("tasks \"t\nnode a 0,0 \"A\"\n");
        assert_eq!(e.line, 1);
        assert!(e.message.contains("unterminated"), "{e}");

        let e = error(
            "tasks \"t\"\nnode a 0,0 \"A\"\nedge a -> g \"x\" route=above\ngroup g \"G\" a\n",
        );
        assert_eq!(e.line, 3);
        assert!(e.message.contains("not a group"), "{e}");

        let e = error("graph \"t\"\n");
        assert!(e.message.contains("unknown diagram kind"), "{e}");

        let e = error("\n# only a comment\n");
        assert!(e.message.contains("empty diagram"), "{e}");

        let e = error("sequence \"s\"\nactor a \"A\"\nmsg a -> b \"x\"\n");
        assert_eq!(e.line, 3);
        assert!(e.message.contains("`b`"), "{e}");

        let e = error("sequence \"s\"\nactor a \"A\"\nend a\nself a \"x\"\n");
        assert!(e.message.contains("after it ended"), "{e}");

        let e = error("sequence \"s\"\nactor a \"A\"\nfrobnicate a\n");
        assert!(e.message.contains("frobnicate"), "{e}");
    }
}
