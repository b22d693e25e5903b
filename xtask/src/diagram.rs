//! The book's pictures: task/channel graphs and shutdown sequences, rendered to SVG from the
//! text sources in `book/diagrams/*.diagram`.
//!
//! The SVGs are committed next to their sources so the book needs no tool and no network to show
//! them; `generate(root, true)` fails when one is stale, so the two cannot drift. The format is
//! described in `diagram/parse.rs`; layout and drawing are plain Rust, deterministic to the byte.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

mod parse;
mod sequence;
mod svg;
mod tasks;

pub use parse::{Diagram, ParseError, parse};

/// Where the sources and the SVGs live, relative to the repository root.
pub const DIR: &str = "book/diagrams";
/// The extension of a diagram source.
pub const EXT: &str = "diagram";

/// Renders one source to an SVG document.
pub fn render(src: &str) -> Result<String, ParseError> {
    Ok(match parse(src)? {
        Diagram::Tasks(g) => tasks::render(&g),
        Diagram::Sequence(q) => sequence::render(&q),
    })
}

/// The sources in `dir`, sorted by name so that output and error messages are stable.
fn sources(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == EXT) {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// Renders every `book/diagrams/<name>.diagram` under `root` to `book/diagrams/<name>.svg`.
///
/// With `check_only`, writes nothing and fails naming every SVG that is missing, differs from
/// what its source renders to, or has no source at all (a hand-drawn file that nothing checks).
pub fn generate(root: &Path, check_only: bool) -> Result<()> {
    let dir = root.join(DIR);
    let sources = sources(&dir)?;
    if sources.is_empty() {
        bail!("no diagram sources (*.{EXT}) in {}", dir.display());
    }
    let mut stale = Vec::new();
    let mut errors = Vec::new();
    for src_path in &sources {
        let src = fs::read_to_string(src_path)
            .with_context(|| format!("reading {}", src_path.display()))?;
        let svg = match render(&src) {
            Ok(svg) => svg,
            Err(e) => {
                errors.push(format!("{}:{}: {}", src_path.display(), e.line, e.message));
                continue;
            }
        };
        let out = src_path.with_extension("svg");
        let current = fs::read_to_string(&out).ok();
        if current.as_deref() == Some(svg.as_str()) {
            continue;
        }
        if check_only {
            let why = if current.is_none() {
                "missing"
            } else {
                "stale"
            };
            stale.push(format!("{} ({why})", out.display()));
        } else {
            fs::write(&out, &svg).with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {}", out.display());
        }
    }
    // Every SVG here must come from a source: no hand-drawn binaries.
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "svg") && !path.with_extension(EXT).exists() {
            errors.push(format!(
                "{} has no source {}: write one or delete the SVG",
                path.display(),
                path.with_extension(EXT).display()
            ));
        }
    }
    errors.sort();
    if !errors.is_empty() {
        bail!("diagram errors:\n  {}", errors.join("\n  "));
    }
    if !stale.is_empty() {
        bail!(
            "diagrams out of date (run `cargo xtask diagrams`):\n  {}",
            stale.join("\n  ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRAPH: &str = r#"
        tasks "Test graph"
        node a 0,0 "accept loop"
        node r 1,0 "reader\none per client" many
        node b 2,0 "broker"
        node w 3,0 "writer" many
        node m 0,1 "main" kind=ext
        node t 2,1 "Notify" kind=sync
        edge a -> r "spawn" kind=spawn
        edge r -> b "mpsc `Event`"
        edge b -> w "mpsc `String`"
        edge w -> b "disconnect" route=below kind=wait
        edge r -> w "oneshot" route=above kind=signal
        edge m -> a "ctrl_c" kind=signal
        edge m -> g "wait()" kind=wait
        edge t -> r "notified" kind=signal
        group g "TaskTracker" r b w
        caption "A caption & <markup>"
    "#;

    const SEQ: &str = r#"
        sequence "Test sequence"
        actor m "main"
        actor a "accept loop"
        actor b "broker"
        msg m -> a "stop accepting"
        self b "drain"
        msg b -> m "done" kind=wait
        end a b
        msg a -> m "never" kind=chan
    "#;

    /// The same source renders to the same bytes every time (the freshness check relies on it).
    #[test]
    fn rendering_is_deterministic() {
        let seq_ok = SEQ.replace("msg a -> m \"never\" kind=chan", "");
        for src in [GRAPH, seq_ok.as_str()] {
            let first = render(src).unwrap();
            for _ in 0..5 {
                assert_eq!(render(src).unwrap(), first);
            }
        }
    }

    /// A sequence that uses a lifeline after its end is an error, not a picture.
    #[test]
    fn sequence_after_end_is_rejected() {
        let e = render(SEQ).unwrap_err();
        assert!(e.message.contains("after it ended"), "{e}");
        assert_eq!(e.line, 10);
    }

    /// The output is well-formed enough for a browser: balanced tags, escaped text, every label.
    #[test]
    fn svg_contains_every_label_escaped() {
        let svg = render(GRAPH).unwrap();
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.ends_with("</svg>\n"));
        for label in [
            "accept loop",
            "one per client",
            "broker",
            "disconnect",
            "oneshot",
            "ctrl_c",
            "wait()",
            "TaskTracker",
            "×N",
        ] {
            assert!(svg.contains(label), "missing {label}");
        }
        assert!(svg.contains("A caption &amp; &lt;markup&gt;"));
        assert!(svg.contains(r#"<tspan class="code">Event</tspan>"#));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        for tag in ["text", "svg", "g", "style", "defs", "marker"] {
            let open =
                svg.matches(&format!("<{tag} ")).count() + svg.matches(&format!("<{tag}>")).count();
            let close = svg.matches(&format!("</{tag}>")).count();
            assert_eq!(open, close, "unbalanced <{tag}>");
        }
        let seq = render(&SEQ.replace("msg a -> m \"never\" kind=chan", "")).unwrap();
        for label in [
            "main",
            "accept loop",
            "stop accepting",
            "drain",
            "done",
            ">1<",
            ">3<",
        ] {
            assert!(seq.contains(label), "missing {label}");
        }
    }

    /// `generate` writes the SVGs; the check then passes, and fails naming a stale, a missing or
    /// a source-less SVG, and a source with a syntax error (with its line).
    #[test]
    fn check_names_stale_missing_and_orphan_files() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(DIR);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("one.diagram"), GRAPH).unwrap();
        fs::write(
            dir.join("two.diagram"),
            SEQ.replace("msg a -> m \"never\" kind=chan", ""),
        )
        .unwrap();

        let e = generate(root.path(), true).unwrap_err().to_string();
        assert!(
            e.contains("one.svg (missing)") && e.contains("two.svg (missing)"),
            "{e}"
        );

        generate(root.path(), false).unwrap();
        generate(root.path(), true).unwrap();

        fs::write(dir.join("two.svg"), "<svg/>").unwrap();
        let e = generate(root.path(), true).unwrap_err().to_string();
        assert!(
            e.contains("two.svg (stale)") && !e.contains("one.svg"),
            "{e}"
        );
        generate(root.path(), false).unwrap();

        fs::write(dir.join("drawn.svg"), "<svg/>").unwrap();
        let e = generate(root.path(), true).unwrap_err().to_string();
        assert!(e.contains("drawn.svg has no source"), "{e}");
        fs::remove_file(dir.join("drawn.svg")).unwrap();

        fs::write(
            dir.join("bad.diagram"),
            "tasks \"t\"\nnode a 0,0 \"A\"\nedge a -> b \"x\"\n",
        )
        .unwrap();
        let e = generate(root.path(), true).unwrap_err().to_string();
        assert!(e.contains("bad.diagram:3:") && e.contains("`b`"), "{e}");
    }

    /// The committed SVGs are what their sources render to.
    #[test]
    fn committed_diagrams_are_fresh() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        generate(root, true).unwrap();
    }
}
