//! The book checks that mdBook does not do: it exits 0 on a broken include and renders a
//! missing anchor as an empty code block, so a chapter can drift from the code silently.
//!
//! Every problem is reported as `file:line: sentence`, and all problems are collected before
//! failing, so one run lists everything to fix.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::workspace::{self, Step};

/// One thing wrong with the book's sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file, relative to the root.
    pub file: PathBuf,
    /// The 1-based line.
    pub line: usize,
    /// What is wrong and, where it helps, what to do.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// Runs every source check on the book under `root/book`.
pub fn check(root: &Path) -> Result<Vec<Problem>> {
    let mut problems = Vec::new();
    for md in workspace::files_with_ext(&root.join("book"), "md")? {
        let text = fs::read_to_string(&md).with_context(|| format!("reading {}", md.display()))?;
        check_markdown(root, &md, &text, &mut problems);
    }
    let steps = workspace::steps(root)?;
    check_step_list(root, &steps, &mut problems)?;
    check_source_lengths(root, &steps, &mut problems)?;
    Ok(problems)
}

// ---------------------------------------------------------------------------------------------
// Directives: {{#include}}, {{#rustdoc_include}}, {{#playground}}

/// A `{{#name arg}}` found in a line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Directive {
    name: String,
    arg: String,
}

/// The directives in one line, in order. `\{{#...}}` is mdBook's escape and is skipped.
/// `Err` holds a message for a `{{#` that is never closed on its line.
fn directives(line: &str) -> Vec<Result<Directive, String>> {
    let mut found = Vec::new();
    let mut rest = line;
    let mut offset = 0;
    while let Some(i) = rest.find("{{") {
        let abs = offset + i;
        let after = &rest[i + 2..];
        let escaped = abs > 0 && line.as_bytes()[abs - 1] == b'\\';
        let body = after.trim_start();
        if !body.starts_with('#') || escaped {
            offset = abs + 2;
            rest = &line[offset..];
            continue;
        }
        let Some(end) = body.find("}}") else {
            found.push(Err(
                "`{{#` is not closed by `}}` on the same line; mdBook would leave it as text"
                    .to_string(),
            ));
            break;
        };
        let inner = &body[1..end];
        let name: String = inner
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let arg = inner[name.len()..].trim().to_string();
        found.push(Ok(Directive { name, arg }));
        let consumed = line.len() - body.len() + end + 2;
        offset = consumed;
        rest = &line[offset..];
    }
    found
}

/// What part of a file an include takes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Whole,
    Anchor(String),
    /// 0-based, end exclusive, as mdBook computes it.
    Lines(Option<usize>, Option<usize>),
}

/// Splits `path[:anchor | :start[:end]]` the way mdBook does.
fn parse_target(arg: &str) -> (String, Part) {
    let token = arg.split_whitespace().next().unwrap_or("");
    let mut parts = token.splitn(3, ':');
    let path = parts.next().unwrap_or("").to_string();
    let first = parts.next();
    let second = parts.next();
    let part = match first {
        None => Part::Whole,
        Some(s) => match s.parse::<usize>() {
            Ok(start) => {
                let start = start.saturating_sub(1);
                match second {
                    None => Part::Lines(Some(start), Some(start + 1)),
                    Some(e) => Part::Lines(Some(start), e.parse().ok()),
                }
            }
            Err(_) if s.is_empty() => Part::Lines(None, second.and_then(|e| e.parse().ok())),
            Err(_) => Part::Anchor(s.to_string()),
        },
    };
    (path, part)
}

/// The anchor name on a marker line, if the line has `marker` (`ANCHOR:` or `ANCHOR_END:`).
fn anchor_on(line: &str, marker: &str) -> Option<String> {
    let i = line.find(marker)?;
    // `ANCHOR:` is not a substring of `ANCHOR_END:`, so the markers never match each other; a
    // letter just before the marker means it is part of another word.
    if i > 0 && line.as_bytes()[i - 1].is_ascii_alphanumeric() {
        return None;
    }
    let name: String = line[i + marker.len()..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    (!name.is_empty()).then_some(name)
}

fn is_marker(line: &str) -> bool {
    anchor_on(line, "ANCHOR:").is_some() || anchor_on(line, "ANCHOR_END:").is_some()
}

/// Checks that `part` of `text` exists and is not empty; `Err` is the sentence to report.
fn check_region(text: &str, part: &Part, shown: &str) -> Result<(), String> {
    let lines: Vec<&str> = text.lines().collect();
    let region: Vec<&str> = match part {
        Part::Whole => lines.clone(),
        Part::Anchor(name) => {
            let start = lines
                .iter()
                .position(|l| anchor_on(l, "ANCHOR:").as_deref() == Some(name));
            let end = lines
                .iter()
                .position(|l| anchor_on(l, "ANCHOR_END:").as_deref() == Some(name));
            match (start, end) {
                (None, None) => {
                    return Err(format!(
                        "anchor `{name}` does not exist in {shown}: it has neither \
                         `ANCHOR: {name}` nor `ANCHOR_END: {name}` (was it renamed?)"
                    ));
                }
                (None, Some(_)) => {
                    return Err(format!(
                        "anchor `{name}` in {shown} has an `ANCHOR_END: {name}` but no \
                         `ANCHOR: {name}` line"
                    ));
                }
                (Some(_), None) => {
                    return Err(format!(
                        "anchor `{name}` in {shown} has an `ANCHOR: {name}` but no \
                         `ANCHOR_END: {name}` line"
                    ));
                }
                (Some(s), Some(e)) if e < s => {
                    return Err(format!(
                        "anchor `{name}` in {shown} ends (line {}) before it starts (line {})",
                        e + 1,
                        s + 1
                    ));
                }
                (Some(s), Some(e)) => lines[s + 1..e].to_vec(),
            }
        }
        Part::Lines(start, end) => {
            let start = start.unwrap_or(0);
            let end = end.unwrap_or(lines.len()).min(lines.len());
            if start >= end {
                return Err(format!(
                    "the line range includes nothing: {shown} has {} lines",
                    lines.len()
                ));
            }
            lines[start..end].to_vec()
        }
    };
    let has_code = region.iter().any(|l| !l.trim().is_empty() && !is_marker(l));
    if has_code {
        Ok(())
    } else {
        let what = match part {
            Part::Anchor(name) => format!("anchor `{name}` in {shown}"),
            Part::Lines(..) => format!("the line range of {shown}"),
            Part::Whole => shown.to_string(),
        };
        Err(format!(
            "{what} is empty: the book would show an empty block"
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Markdown: directives and fenced code blocks

/// A fenced code block being read.
struct Fence {
    marker: char,
    len: usize,
    rust: bool,
    label: String,
}

/// Opens or closes a fence: `Some((marker, len, info))` for a fence line.
fn fence_line(line: &str) -> Option<(char, usize, &str)> {
    let indent = line.len() - line.trim_start_matches(' ').len();
    if indent > 3 {
        return None;
    }
    let t = &line[indent..];
    let marker = t.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let len = t.chars().take_while(|c| *c == marker).count();
    (len >= 3).then(|| (marker, len, t[len..].trim()))
}

/// Whether a fence's info string makes it a Rust block (what rustdoc and mdBook treat as Rust;
/// an unlabelled block counts, because `mdbook test` compiles it).
fn is_rust_info(info: &str) -> bool {
    let lang = info
        .split(|c: char| c == ',' || c.is_whitespace())
        .next()
        .unwrap_or("")
        .trim_start_matches('{')
        .trim_start_matches('.');
    lang.is_empty() || lang == "rust"
}

fn check_markdown(root: &Path, md: &Path, text: &str, problems: &mut Vec<Problem>) {
    let rel = workspace::rel(root, md);
    let dir = md.parent().unwrap_or(root);
    let mut report = |line: usize, message: String| {
        problems.push(Problem {
            file: rel.clone(),
            line,
            message,
        })
    };
    let mut fence: Option<Fence> = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if let Some((marker, len, info)) = fence_line(line) {
            match &fence {
                None => {
                    fence = Some(Fence {
                        marker,
                        len,
                        rust: is_rust_info(info),
                        label: if info.is_empty() {
                            "a code block without a language (rustdoc and `mdbook test` treat \
                             it as Rust; label it `text`, `console`, ...)"
                                .to_string()
                        } else {
                            format!("a ```{info} block")
                        },
                    });
                    continue;
                }
                Some(open) if open.marker == marker && len >= open.len && info.is_empty() => {
                    fence = None;
                    continue;
                }
                Some(_) => {}
            }
        }

        let found = directives(line);
        for d in &found {
            match d {
                Err(msg) => report(n, msg.clone()),
                Ok(d) => {
                    if let Some(msg) = check_directive(root, dir, d) {
                        report(n, msg);
                    }
                }
            }
        }

        let Some(open) = &fence else { continue };
        if !open.rust || line.trim().is_empty() {
            continue;
        }
        // A Rust block may hold only includes of `.rs` files inside workspace crates, one per
        // line: code typed into Markdown is never compiled, so it rots.
        let only_directive = found.len() == 1 && {
            let t = line.trim();
            t.starts_with("{{") && t.ends_with("}}")
        };
        match found.first() {
            Some(Ok(d))
                if only_directive && (d.name == "include" || d.name == "rustdoc_include") =>
            {
                let (path, _) = parse_target(&d.arg);
                if let Some(msg) = crate_source(root, dir, &path) {
                    report(n, format!("{} includes {path}, {msg}", open.label));
                }
            }
            _ => report(
                n,
                format!(
                    "{} contains text that is not an include: Rust in the book must come from \
                     a workspace crate with `{{{{#include ../path/file.rs:anchor}}}}` (found `{}`)",
                    open.label,
                    line.trim()
                ),
            ),
        }
    }
    if let Some(open) = fence {
        report(
            text.lines().count(),
            format!("{} is never closed", open.label),
        );
    }
}

/// Checks one directive; `Some(sentence)` when it is broken.
fn check_directive(root: &Path, dir: &Path, d: &Directive) -> Option<String> {
    match d.name.as_str() {
        "include" | "rustdoc_include" | "playground" => {}
        // `{{#title}}` and friends name no file.
        _ => return None,
    }
    let (path, part) = parse_target(&d.arg);
    if path.is_empty() {
        return Some(format!("`{{{{#{}}}}}` names no file", d.name));
    }
    let target = dir.join(&path);
    let shown = workspace::rel(root, &normalize(&target))
        .display()
        .to_string();
    let text = match fs::read_to_string(&target) {
        Ok(text) => text,
        Err(_) => {
            return Some(format!(
                "`{{{{#{} {}}}}}` names {shown}, which does not exist (paths are relative to \
                 this file)",
                d.name, d.arg
            ));
        }
    };
    check_region(&text, &part, &shown)
        .err()
        .map(|e| format!("`{{{{#{} {}}}}}`: {e}", d.name, d.arg))
}

/// `None` when `path` (relative to `dir`) is a `.rs` file inside a workspace crate; otherwise
/// the end of a sentence saying why not.
fn crate_source(root: &Path, dir: &Path, path: &str) -> Option<String> {
    let target = normalize(&dir.join(path));
    if target.extension().is_none_or(|e| e != "rs") {
        return Some("which is not a Rust source file".to_string());
    }
    let Ok(inside) = target.strip_prefix(root) else {
        return Some("which is outside the repository".to_string());
    };
    // Some directory between the file and the root (not the root itself) must be a crate.
    let mut here = inside.parent();
    while let Some(d) = here {
        if d.as_os_str().is_empty() {
            break;
        }
        if root.join(d).join("Cargo.toml").is_file() {
            return None;
        }
        here = d.parent();
    }
    Some("which is not inside a workspace crate (steps/*, crates/*, xtask)".to_string())
}

/// Resolves `.` and `..` without touching the file system (the file may not exist).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The step list: steps/ directories, package names, SUMMARY.md; and the length of step sources

/// The `(line, target)` of every `](target)` link in SUMMARY.md.
fn summary_links(summary: &str) -> Vec<(usize, String)> {
    let mut links = Vec::new();
    for (i, line) in summary.lines().enumerate() {
        let mut rest = line;
        while let Some(start) = rest.find("](") {
            let after = &rest[start + 2..];
            let Some(end) = after.find(')') else { break };
            links.push((i + 1, after[..end].trim().to_string()));
            rest = &after[end..];
        }
    }
    links
}

/// The line for a step in SUMMARY.md.
pub fn summary_entry(step: &Step) -> String {
    format!("- [{}]({})", chapter_title(step), step.chapter())
}

/// `Step 03: Disconnections` from `step-03-disconnections`.
fn chapter_title(step: &Step) -> String {
    let topic = step
        .dir_name
        .splitn(3, '-')
        .nth(2)
        .unwrap_or("")
        .replace('-', " ");
    let mut chars = topic.chars();
    let topic = match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    };
    format!("Step {:02}: {topic}", step.number)
}

/// The most lines a source file of a step may have. A server that would need more is split into
/// modules under `src/`, one role each, that its chapter can teach one at a time.
const MAX_SOURCE_LINES: usize = 600;

/// Every source file of a step (its `src/`, not its `tests/`) is at most [`MAX_SOURCE_LINES`] long.
fn check_source_lengths(root: &Path, steps: &[Step], problems: &mut Vec<Problem>) -> Result<()> {
    for step in steps {
        for file in workspace::files_with_ext(&root.join(step.rel_dir()).join("src"), "rs")? {
            let text =
                fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let lines = text.lines().count();
            if lines > MAX_SOURCE_LINES {
                problems.push(Problem {
                    file: workspace::rel(root, &file),
                    line: MAX_SOURCE_LINES + 1,
                    message: format!(
                        "{lines} lines; a step's source file has at most {MAX_SOURCE_LINES}: split \
                         it into modules under src/, one role each (tests may go to tests/)"
                    ),
                });
            }
        }
    }
    Ok(())
}

fn check_step_list(root: &Path, steps: &[Step], problems: &mut Vec<Problem>) -> Result<()> {
    let summary_path = root.join("book/SUMMARY.md");
    let summary = fs::read_to_string(&summary_path)
        .with_context(|| format!("reading {}", summary_path.display()))?;
    let summary_rel = PathBuf::from("book/SUMMARY.md");

    let mut by_number: BTreeMap<u32, Vec<&Step>> = BTreeMap::new();
    for step in steps {
        by_number.entry(step.number).or_default().push(step);
        let manifest_path = root.join(step.rel_dir()).join("Cargo.toml");
        let manifest = fs::read_to_string(&manifest_path)
            .with_context(|| format!("reading {}", manifest_path.display()))?;
        let expected = step.expected_package();
        if step.package.as_deref() != Some(expected.as_str()) {
            problems.push(Problem {
                file: step.rel_dir().join("Cargo.toml"),
                line: workspace::package_name_line(&manifest),
                message: format!(
                    "the package is named {}, but its directory {} says it must be `{expected}`",
                    step.package
                        .as_deref()
                        .map_or("nothing".to_string(), |p| format!("`{p}`")),
                    step.rel_dir().display()
                ),
            });
        }
    }
    for (number, same) in &by_number {
        if same.len() > 1 {
            let names: Vec<_> = same.iter().map(|s| s.dir_name.as_str()).collect();
            problems.push(Problem {
                file: PathBuf::from("steps"),
                line: 1,
                message: format!(
                    "{} directories claim step {number:02}: {}",
                    same.len(),
                    names.join(", ")
                ),
            });
        }
    }

    let links = summary_links(&summary);
    let step_links: Vec<(usize, &str, u32)> = links
        .iter()
        .filter_map(|(line, target)| {
            let stem = target.strip_suffix(".md")?;
            let number = workspace::step_number(stem)?;
            Some((*line, stem, number))
        })
        .collect();
    let listed: BTreeSet<&str> = step_links.iter().map(|(_, stem, _)| *stem).collect();

    for step in steps {
        if !listed.contains(step.dir_name.as_str()) {
            problems.push(Problem {
                file: summary_rel.clone(),
                line: 1,
                message: format!(
                    "{} exists, but SUMMARY.md has no chapter for it: add `{}` (or run \
                     `cargo xtask new-chapter {}`, which also writes the skeleton chapter)",
                    step.rel_dir().display(),
                    summary_entry(step),
                    step.rel_dir().display()
                ),
            });
        }
        if !root.join("book").join(step.chapter()).is_file() {
            problems.push(Problem {
                file: PathBuf::from("book").join(step.chapter()),
                line: 1,
                message: format!(
                    "the chapter of {} is missing (run `cargo xtask new-chapter {}`)",
                    step.rel_dir().display(),
                    step.rel_dir().display()
                ),
            });
        }
    }
    let mut previous: Option<u32> = None;
    for (line, stem, number) in &step_links {
        if !steps.iter().any(|s| s.dir_name == *stem) {
            problems.push(Problem {
                file: summary_rel.clone(),
                line: *line,
                message: format!(
                    "SUMMARY.md lists {stem}.md, but there is no step directory steps/{stem} \
                     (with a Cargo.toml and src/); rename the entry or add the step"
                ),
            });
        }
        if previous.is_some_and(|p| p >= *number) {
            problems.push(Problem {
                file: summary_rel.clone(),
                line: *line,
                message: format!(
                    "step chapters must be listed in order, once each: {stem}.md comes after \
                     step {:02}",
                    previous.unwrap_or_default()
                ),
            });
        }
        previous = Some(*number);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// `cargo xtask new-chapter`

/// The anchors of a step's sources: `(file relative to the step dir, anchor)`, in file order.
pub fn anchors(root: &Path, step: &Step) -> Result<Vec<(String, String)>> {
    let dir = root.join(step.rel_dir());
    let mut found = Vec::new();
    let mut files = workspace::files_with_ext(&dir.join("src"), "rs")?;
    // lib.rs first: that is where the server lives; main.rs last.
    files.sort_by_key(|f| {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned());
        (
            name.as_deref() == Some("main.rs"),
            name.as_deref() != Some("lib.rs"),
            f.clone(),
        )
    });
    for file in files {
        let text = fs::read_to_string(&file)?;
        let rel = workspace::rel(&dir, &file).display().to_string();
        for line in text.lines() {
            if let Some(name) = anchor_on(line, "ANCHOR:") {
                found.push((rel.clone(), name));
            }
        }
    }
    Ok(found)
}

/// The skeleton of a step's chapter: every section, the code included by anchor, the generated
/// session and diff. Chapter writers replace the placeholder sentences with prose.
pub fn skeleton(root: &Path, step: &Step, previous: Option<&Step>) -> Result<String> {
    let mut s = format!("# {}\n\n", chapter_title(step));
    s.push_str("## What you will learn\n\n_This chapter is being written._\n\n");
    let pictures = [
        ("", "The tasks and channels of step"),
        ("-shutdown", "The order of shutdown in step"),
    ];
    for (suffix, alt) in pictures {
        let svg = format!("diagrams/step-{:02}{suffix}.svg", step.number);
        if root.join("book").join(&svg).is_file() {
            s.push_str(&format!("![{alt} {:02}]({svg})\n\n", step.number));
        }
    }
    // `exercise_*` anchors mark the workshop's gaps; the chapter shows the concepts around them.
    let shown = anchors(root, step)?
        .into_iter()
        .filter(|(_, anchor)| !anchor.starts_with("exercise_"));
    for (file, anchor) in shown {
        s.push_str(&format!(
            "## `{anchor}`\n\n```rust\n{{{{#include ../{}/{file}:{anchor}}}}}\n```\n\n",
            step.rel_dir().display()
        ));
    }
    s.push_str(&format!(
        "## Run it\n\n{{{{#include generated/step-{:02}-session.md}}}}\n\n",
        step.number
    ));
    s.push_str("## What is still wrong\n\n_This section is being written._\n\n");
    if previous.is_some() {
        s.push_str(&format!(
            "## Changes since the previous step\n\n_Five to ten lines: what a reader will find \
             in the diff._\n\n{{{{#include generated/step-{:02}-changes.md}}}}\n\n",
            step.number
        ));
    }
    s.push_str("## Exercises\n\n_The exercises for this chapter are being written._\n");
    Ok(s)
}

/// `cargo xtask new-chapter steps/step-NN-topic`: writes `book/step-NN-topic.md` (when it does
/// not exist yet) and adds the chapter to SUMMARY.md after the last step chapter.
pub fn new_chapter(root: &Path, dir: &str) -> Result<()> {
    let name = Path::new(dir)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let steps = workspace::steps(root)?;
    let Some(index) = steps.iter().position(|s| s.dir_name == name) else {
        bail!("no step directory steps/{name} with a Cargo.toml and src/");
    };
    let step = &steps[index];
    let previous = index.checked_sub(1).map(|i| &steps[i]);
    let chapter = root.join("book").join(step.chapter());
    if chapter.exists() {
        println!("book/{} exists; leaving it alone", step.chapter());
    } else {
        fs::write(&chapter, skeleton(root, step, previous)?)
            .with_context(|| format!("writing {}", chapter.display()))?;
        println!("wrote book/{}", step.chapter());
    }

    let summary_path = root.join("book/SUMMARY.md");
    let summary = fs::read_to_string(&summary_path)?;
    if summary_links(&summary)
        .iter()
        .any(|(_, t)| t == &step.chapter())
    {
        println!("book/SUMMARY.md already lists it");
    } else {
        let mut lines: Vec<String> = summary.lines().map(str::to_string).collect();
        let after = summary_links(&summary)
            .iter()
            .filter(|(_, t)| {
                t.strip_suffix(".md")
                    .and_then(workspace::step_number)
                    .is_some_and(|n| n < step.number)
            })
            .map(|(line, _)| *line)
            .max();
        // With no earlier step chapter (a new step 00), it goes before the first one.
        let first = || {
            summary_links(&summary).iter().find_map(|(line, t)| {
                let is_step = t
                    .strip_suffix(".md")
                    .and_then(workspace::step_number)
                    .is_some();
                is_step.then(|| line - 1)
            })
        };
        let Some(at) = after.or_else(first) else {
            bail!(
                "SUMMARY.md lists no step chapter to put it next to; add `{}` by hand",
                summary_entry(step)
            );
        };
        lines.insert(at, summary_entry(step));
        fs::write(&summary_path, lines.join("\n") + "\n")?;
        println!("added `{}` to book/SUMMARY.md", summary_entry(step));
    }
    println!("next: `cargo xtask gen` writes its session and diff; then write the prose");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary repository with one crate, a step, a SUMMARY and chapters.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    const LIB: &str = "\
//! A step.
// ANCHOR: good
fn good() {}
// ANCHOR_END: good

// ANCHOR: empty

// ANCHOR_END: empty

// ANCHOR: open
fn open() {}

fn end_only() {}
// ANCHOR_END: closed
";

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().expect("creating a temporary directory");
            let f = Fixture { dir };
            f.write(
                "steps/step-01-first/Cargo.toml",
                "[package]\nname = \"step-01\"\n",
            );
            f.write("steps/step-01-first/src/lib.rs", LIB);
            f.write("notes/loose.rs", "fn loose() {}\n");
            f.write(
                "book/SUMMARY.md",
                "# Summary\n\n[Introduction](introduction.md)\n\n- [Step 01: First](step-01-first.md)\n",
            );
            f.write("book/introduction.md", "# Introduction\n");
            f.write("book/step-01-first.md", "# Step 01\n");
            f
        }

        fn root(&self) -> &Path {
            self.dir.path()
        }

        fn write(&self, rel: &str, text: &str) {
            let path = self.root().join(rel);
            fs::create_dir_all(path.parent().expect("fixture paths have a parent"))
                .expect("creating fixture directories");
            fs::write(path, text).expect("writing a fixture file");
        }

        /// Writes a chapter and returns the problems found.
        fn chapter(&self, text: &str) -> Vec<Problem> {
            self.write("book/step-01-first.md", text);
            check(self.root()).expect("the checker runs")
        }
    }

    fn assert_one(problems: &[Problem], line: usize, needle: &str) {
        assert_eq!(
            problems.len(),
            1,
            "expected exactly one problem containing `{needle}`, got {problems:#?}"
        );
        assert_eq!(problems[0].line, line, "wrong line in {:?}", problems[0]);
        assert!(
            problems[0].message.contains(needle),
            "expected `{needle}` in `{}`",
            problems[0]
        );
    }

    /// A well-formed book has no problems (so the failures below are caused by their input).
    #[test]
    fn clean_book_passes() {
        let f = Fixture::new();
        let problems = f.chapter(
            "# Step 01\n\n```rust\n{{#include ../steps/step-01-first/src/lib.rs:good}}\n```\n\n\
             ```rust,ignore\n{{#rustdoc_include ../steps/step-01-first/src/lib.rs:1:3}}\n```\n\n\
             ```text\nplain output\n```\n\nEscaped: \\{{#include nothing.rs}}\n",
        );
        assert!(problems.is_empty(), "{problems:#?}");
    }

    /// A step's source file over the line limit is caught; one at the limit, and a long file
    /// in the step's tests, are not.
    #[test]
    fn long_source_file() {
        let f = Fixture::new();
        f.write(
            "steps/step-01-first/src/at_limit.rs",
            &"// x\n".repeat(MAX_SOURCE_LINES),
        );
        f.write(
            "steps/step-01-first/tests/long.rs",
            &"// x\n".repeat(MAX_SOURCE_LINES * 2),
        );
        f.write(
            "steps/step-01-first/src/too_long.rs",
            &"// x\n".repeat(MAX_SOURCE_LINES + 1),
        );
        let p = f.chapter("# Step 01\n");
        assert_one(
            &p,
            MAX_SOURCE_LINES + 1,
            "601 lines; a step's source file has at most 600",
        );
        assert!(p[0].file.ends_with("src/too_long.rs"), "{p:#?}");
    }

    /// An include naming a file that does not exist is caught, with its line.
    #[test]
    fn missing_file() {
        let f = Fixture::new();
        let p = f.chapter(
            "# Step 01\n\n```rust\n{{#include ../steps/step-01-first/src/gone.rs}}\n```\n",
        );
        assert_one(&p, 4, "does not exist");
    }

    /// An anchor that is not in the file at all is caught.
    #[test]
    fn unknown_anchor() {
        let f = Fixture::new();
        let p = f.chapter("```rust\n{{#include ../steps/step-01-first/src/lib.rs:renamed}}\n```\n");
        assert_one(&p, 2, "anchor `renamed` does not exist");
    }

    /// An anchor without its ANCHOR_END is caught.
    #[test]
    fn anchor_without_end() {
        let f = Fixture::new();
        let p = f.chapter("```rust\n{{#include ../steps/step-01-first/src/lib.rs:open}}\n```\n");
        assert_one(&p, 2, "no `ANCHOR_END: open`");
    }

    /// An anchor without its ANCHOR start line is caught.
    #[test]
    fn anchor_without_start() {
        let f = Fixture::new();
        let p = f.chapter("```rust\n{{#include ../steps/step-01-first/src/lib.rs:closed}}\n```\n");
        assert_one(&p, 2, "no `ANCHOR: closed`");
    }

    /// An anchor around nothing but blank lines is caught.
    #[test]
    fn empty_anchor_region() {
        let f = Fixture::new();
        let p = f.chapter("```rust\n{{#include ../steps/step-01-first/src/lib.rs:empty}}\n```\n");
        assert_one(&p, 2, "is empty");
    }

    /// A line range past the end of the file, or over blank lines only, is caught.
    #[test]
    fn empty_line_range() {
        let f = Fixture::new();
        let p = f.chapter("```rust\n{{#include ../steps/step-01-first/src/lib.rs:100:120}}\n```\n");
        assert_one(&p, 2, "includes nothing");
        let p = f.chapter("```rust\n{{#include ../steps/step-01-first/src/lib.rs:5:5}}\n```\n");
        assert_one(&p, 2, "is empty");
    }

    /// Rust typed into a chapter is caught, as is an unlabelled block.
    #[test]
    fn typed_rust() {
        let f = Fixture::new();
        let p = f.chapter("# Step 01\n\n```rust\nfn main() {}\n```\n");
        assert_one(&p, 4, "not an include");
        let p = f.chapter("```rust,ignore\n{{#include ../steps/step-01-first/src/lib.rs:good}}\nlet x = 1;\n```\n");
        assert_one(&p, 3, "not an include");
        let p = f.chapter("```\nfn main() {}\n```\n");
        assert_one(&p, 2, "without a language");
    }

    /// A Rust block including a file outside every workspace crate is caught.
    #[test]
    fn rust_from_outside_a_crate() {
        let f = Fixture::new();
        let p = f.chapter("```rust\n{{#include ../notes/loose.rs}}\n```\n");
        assert_one(&p, 2, "not inside a workspace crate");
        let p = f.chapter("```rust\n{{#include ../steps/step-01-first/Cargo.toml}}\n```\n");
        assert_one(&p, 2, "not a Rust source file");
    }

    /// A broken include outside a code block (a generated file) is caught too.
    #[test]
    fn missing_markdown_include() {
        let f = Fixture::new();
        let p = f.chapter("# Step 01\n\n{{#include generated/step-01-session.md}}\n");
        assert_one(&p, 3, "does not exist");
    }

    /// A step directory without a SUMMARY entry is caught, and the message names the entry.
    #[test]
    fn step_missing_from_summary() {
        let f = Fixture::new();
        f.write(
            "steps/step-02-second/Cargo.toml",
            "[package]\nname = \"step-02\"\n",
        );
        f.write("steps/step-02-second/src/main.rs", "fn main() {}\n");
        f.write("book/step-02-second.md", "# Step 02\n");
        let p = check(f.root()).expect("the checker runs");
        assert_one(&p, 1, "- [Step 02: Second](step-02-second.md)");
    }

    /// A SUMMARY entry for a step that does not exist is caught.
    #[test]
    fn summary_lists_missing_step() {
        let f = Fixture::new();
        f.write(
            "book/SUMMARY.md",
            "# Summary\n\n- [Step 01](step-01-first.md)\n- [Step 02](step-02-ghost.md)\n",
        );
        let p = check(f.root()).expect("the checker runs");
        assert_one(&p, 4, "no step directory steps/step-02-ghost");
    }

    /// A step whose package name does not match its directory is caught.
    #[test]
    fn package_name_mismatch() {
        let f = Fixture::new();
        f.write(
            "steps/step-01-first/Cargo.toml",
            "[package]\nname = \"first\"\n",
        );
        let p = check(f.root()).expect("the checker runs");
        assert_one(&p, 2, "must be `step-01`");
        assert_eq!(p[0].file, Path::new("steps/step-01-first/Cargo.toml"));
    }

    /// A step with no chapter file is caught.
    #[test]
    fn chapter_file_missing() {
        let f = Fixture::new();
        fs::remove_file(f.root().join("book/step-01-first.md")).expect("removing the chapter");
        let p = check(f.root()).expect("the checker runs");
        assert_one(&p, 1, "chapter of steps/step-01-first is missing");
    }

    /// Directives are found, escapes skipped, and targets split like mdBook splits them.
    #[test]
    fn parsing() {
        assert_eq!(
            directives("a {{#include x.rs:a}} b \\{{#include y}} {{ #title T }}"),
            vec![
                Ok(Directive {
                    name: "include".into(),
                    arg: "x.rs:a".into()
                }),
                Ok(Directive {
                    name: "title".into(),
                    arg: "T".into()
                }),
            ]
        );
        assert_eq!(parse_target("f.rs"), ("f.rs".into(), Part::Whole));
        assert_eq!(
            parse_target("f.rs:2"),
            ("f.rs".into(), Part::Lines(Some(1), Some(2)))
        );
        assert_eq!(
            parse_target("f.rs:2:"),
            ("f.rs".into(), Part::Lines(Some(1), None))
        );
        assert_eq!(
            parse_target("f.rs::4"),
            ("f.rs".into(), Part::Lines(None, Some(4)))
        );
        assert_eq!(
            parse_target("f.rs:run"),
            ("f.rs".into(), Part::Anchor("run".into()))
        );
    }

    /// `new-chapter` writes the skeleton and lists it in SUMMARY.md after the earlier steps,
    /// and the result passes the checks once the generated files exist.
    #[test]
    fn new_chapter_is_listed_in_order() {
        let f = Fixture::new();
        f.write(
            "steps/step-01-first/src/lib.rs",
            "// ANCHOR: good\nfn good() {}\n// ANCHOR_END: good\n",
        );
        f.write(
            "steps/step-02-second/Cargo.toml",
            "[package]\nname = \"step-02\"\n",
        );
        f.write(
            "steps/step-02-second/src/main.rs",
            "// ANCHOR: main\nfn main() {}\n// ANCHOR_END: main\n",
        );
        f.write("book/SUMMARY.md", "# Summary\n\n- [Step 01](step-01-first.md)\n\n# Later\n\n- [Appendix](introduction.md)\n");
        new_chapter(f.root(), "steps/step-02-second").expect("new-chapter works");
        let summary = fs::read_to_string(f.root().join("book/SUMMARY.md")).expect("summary");
        assert!(
            summary.contains(
                "- [Step 01](step-01-first.md)\n- [Step 02: Second](step-02-second.md)\n"
            ),
            "{summary}"
        );
        let p = check(f.root()).expect("the checker runs");
        assert!(
            p.iter().any(|p| p
                .message
                .contains("step-02-session.md, which does not exist")),
            "until `gen` runs, the missing session is reported: {p:#?}"
        );
        f.write("book/generated/step-02-session.md", "session\n");
        f.write("book/generated/step-02-changes.md", "changes\n");
        let p = check(f.root()).expect("the checker runs");
        assert!(p.is_empty(), "{p:#?}");
    }

    /// A new step 00 has no earlier chapter to follow: `new-chapter` lists it before step 01.
    #[test]
    fn new_step_00_is_listed_first() {
        let f = Fixture::new();
        f.write(
            "steps/step-00-zero/Cargo.toml",
            "[package]\nname = \"step-00\"\n",
        );
        f.write(
            "steps/step-00-zero/src/main.rs",
            "// ANCHOR: main\nfn main() {}\n// ANCHOR_END: main\n",
        );
        new_chapter(f.root(), "steps/step-00-zero").expect("new-chapter works");
        let summary = fs::read_to_string(f.root().join("book/SUMMARY.md")).expect("summary");
        assert!(
            summary.contains(
                "\n- [Step 00: Zero](step-00-zero.md)\n- [Step 01: First](step-01-first.md)\n"
            ),
            "{summary}"
        );
    }

    /// The skeleton of a chapter passes the checks it will be held to.
    #[test]
    fn skeleton_is_clean() {
        let f = Fixture::new();
        f.write(
            "steps/step-01-first/src/lib.rs",
            "// ANCHOR: good\nfn good() {}\n// ANCHOR_END: good\n",
        );
        f.write("book/generated/step-01-session.md", "session\n");
        let steps = workspace::steps(f.root()).expect("steps");
        let text = skeleton(f.root(), &steps[0], None).expect("skeleton");
        assert!(text.contains("lib.rs:good}}"), "{text}");
        let p = f.chapter(&text);
        assert!(p.is_empty(), "{p:#?}");
    }
}
