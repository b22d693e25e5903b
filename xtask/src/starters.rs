//! Workshop starters: for every step but 01, an exercise crate under `exercises/`,
//! generated from the step's own sources with the parts its chapter teaches replaced by
//! `todo!()`.
//!
//! The parts are marked in the step's code with anchors whose names start with `exercise_`:
//!
//! ```text
//! // ANCHOR: exercise_route
//! // Deliver `text` to every destination that is connected; skip unknown names.
//! for name in dest { ... }
//! // ANCHOR_END: exercise_route
//! ```
//!
//! mdBook drops every anchor line from what it includes, so the markers never show in the
//! book, and a chapter can include `exercise_route` to show the solution. In the starter the
//! comment lines at the top of the region stay (they are the hint) and the rest becomes
//! `todo!("<the hint's first sentence>")`. The tests are the step's own, with the crate name changed,
//! so a learner's check runs exactly the over-the-wire tests that the step passes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::generated::File;
use crate::workspace::{self, Step};

/// Where the starters live, relative to the root.
pub const DIR: &str = "exercises";

/// Anchors with this prefix mark what a starter leaves for the learner.
const PREFIX: &str = "exercise_";

/// The steps that have no exercise: step 01's chapter is read, not written.
const NO_EXERCISE: &[u32] = &[1];

/// One exercise: the step it is made from and its crate.
#[derive(Debug, Clone)]
pub struct Exercise {
    pub number: u32,
    /// `exercises/exercise-NN-topic`, relative to the root.
    pub dir: PathBuf,
    /// `exercise-NN`.
    pub package: String,
    /// `steps/step-NN-topic`, relative to the root: the solution.
    pub solution: PathBuf,
}

/// The exercise made from `step`, if the step has one.
pub fn exercise(step: &Step) -> Option<Exercise> {
    (!NO_EXERCISE.contains(&step.number)).then(|| {
        let topic = step
            .dir_name
            .strip_prefix("step-")
            .unwrap_or(&step.dir_name);
        Exercise {
            number: step.number,
            dir: Path::new(DIR).join(format!("exercise-{topic}")),
            package: format!("exercise-{:02}", step.number),
            solution: step.rel_dir(),
        }
    })
}

/// Every starter file, computed from the current step sources. A step that marks no region
/// yet gets no starter here; [`missing`] reports it.
pub fn generate(root: &Path, steps: &[Step]) -> Result<Vec<File>> {
    let mut files = Vec::new();
    for step in steps {
        let Some(ex) = exercise(step) else { continue };
        if regions_in(root, step)? > 0 {
            files.extend(starter(root, step, &ex)?);
        }
    }
    Ok(files)
}

/// The steps that should have an exercise but mark no `exercise_*` region, as sentences.
pub fn missing(root: &Path, steps: &[Step]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for step in steps.iter().filter(|s| exercise(s).is_some()) {
        if regions_in(root, step)? == 0 {
            out.push(format!(
                "{} has no `// ANCHOR: {PREFIX}...` region, so it has no workshop exercise: \
                 mark the code its chapter teaches",
                step.rel_dir().display()
            ));
        }
    }
    Ok(out)
}

/// How many `exercise_*` regions a step's `src/` marks.
pub fn regions_in(root: &Path, step: &Step) -> Result<usize> {
    let mut n = 0;
    for path in workspace::files_with_ext(&root.join(step.rel_dir()).join("src"), "rs")? {
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        n += text
            .lines()
            .filter(|l| l.trim_start().starts_with(&format!("// ANCHOR: {PREFIX}")))
            .count();
    }
    Ok(n)
}

/// Files under `exercises/` that no generator produces (a step was removed, or a file was
/// added by hand): stale, because starters are never edited by hand.
pub fn leftovers(root: &Path, files: &[File]) -> Result<Vec<PathBuf>> {
    let dir = root.join(DIR);
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut left = Vec::new();
    for path in all_files(&dir)? {
        let rel = workspace::rel(root, &path);
        // A failing property test (the starters' tests fail by design) records its case next
        // to the test; git ignores those files, and so do we.
        let recorded_case = path
            .extension()
            .is_some_and(|e| e == "proptest-regressions");
        if !recorded_case && !files.iter().any(|f| f.path == rel) {
            left.push(rel);
        }
    }
    Ok(left)
}

fn all_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn starter(root: &Path, step: &Step, ex: &Exercise) -> Result<Vec<File>> {
    let step_dir = root.join(step.rel_dir());
    let crate_ident = format!("step_{:02}", step.number);
    let new_ident = ex.package.replace('-', "_");
    let package = step.expected_package();

    let mut files = Vec::new();
    let mut regions = 0;
    for sub in ["src", "tests"] {
        for path in workspace::files_with_ext(&step_dir.join(sub), "rs")? {
            let rel = workspace::rel(&step_dir, &path);
            let label = step.rel_dir().join(&rel);
            let text =
                fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let (body, n) = blank_regions(&text, &label)?;
            regions += n;
            let body = body.replace(&crate_ident, &new_ident).replace(
                &format!("CARGO_BIN_EXE_{package}"),
                &format!("CARGO_BIN_EXE_{}", ex.package),
            );
            // Every module opens with `//!` lines; a file without them is a snippet that a
            // doctest includes (step 00's refused programs), and it is copied as it is.
            let is_module = body.lines().any(|l| l.starts_with("//!"));
            let contents = if sub == "src" && is_module {
                with_header(&body, &label, &ex.package)
            } else if sub == "src" {
                body
            } else {
                format!(
                    "// Generated by `cargo xtask gen` from {}: the step's own tests.\n{body}",
                    label.display()
                )
            };
            files.push(File {
                path: ex.dir.join(&rel),
                contents: rustfmt(root, &contents).with_context(|| {
                    format!("formatting the starter made from {}", label.display())
                })?,
            });
        }
    }

    let manifest = step_dir.join("Cargo.toml");
    let toml =
        fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
    files.push(File {
        path: ex.dir.join("Cargo.toml"),
        contents: manifest_for(&toml, step, ex)?,
    });
    files.push(File {
        path: ex.dir.join("README.md"),
        contents: readme_for(step, ex, regions),
    });
    Ok(files)
}

/// Replaces each `exercise_*` region with its hint and a `todo!()`, and drops every other
/// anchor line. Returns the new text and how many regions it blanked.
pub fn blank_regions(text: &str, label: &Path) -> Result<(String, usize)> {
    let mut out = String::new();
    let mut count = 0;
    // Inside a region: its name, its indentation, and whether we are still in the hint.
    let mut region: Option<(String, String, bool)> = None;
    let mut hint = String::new();
    // Whether the hint's first sentence (the `todo!` message) is complete.
    let mut sentence_done = false;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let at = || format!("{}:{}", label.display(), i + 1);
        if let Some(name) = trimmed.strip_prefix("// ANCHOR:") {
            let name = name.trim();
            if let Some(name) = name.strip_prefix(PREFIX) {
                if let Some((open, ..)) = &region {
                    bail!("{}: region `{PREFIX}{name}` starts inside `{open}`", at());
                }
                region = Some((format!("{PREFIX}{name}"), indent.to_string(), true));
                hint.clear();
                sentence_done = false;
            }
            continue;
        }
        if let Some(name) = trimmed.strip_prefix("// ANCHOR_END:") {
            let name = name.trim();
            if name.starts_with(PREFIX) {
                let Some((open, indent, _)) = region.take() else {
                    bail!("{}: `ANCHOR_END: {name}` without its start", at());
                };
                if open != name {
                    bail!("{}: `ANCHOR_END: {name}` closes `{open}`", at());
                }
                if hint.is_empty() {
                    bail!(
                        "{}: region `{name}` has no hint: start it with a `//` comment that \
                         says what to write",
                        at()
                    );
                }
                let message = hint.replace('\\', "\\\\").replace('"', "\\\"");
                out.push_str(&format!("{indent}todo!(\"{message}\")\n"));
                count += 1;
            }
            continue;
        }
        match &mut region {
            None => {
                out.push_str(line);
                out.push('\n');
            }
            Some((_, _, in_hint)) => {
                let is_comment = trimmed.starts_with("//") && !trimmed.starts_with("///");
                if *in_hint && is_comment {
                    out.push_str(line);
                    out.push('\n');
                    if !sentence_done {
                        let words = trimmed.trim_start_matches('/').trim();
                        if !hint.is_empty() {
                            hint.push(' ');
                        }
                        hint.push_str(words);
                        sentence_done = words.ends_with(['.', '!', '?']);
                    }
                } else {
                    *in_hint = false;
                }
            }
        }
    }
    if let Some((open, ..)) = region {
        bail!("{}: region `{open}` is never closed", label.display());
    }
    Ok((out, count))
}

/// Formats generated code as `cargo fmt` would (a `todo!("long hint")` may need wrapping), so
/// that the starters pass `cargo fmt --check` like every other crate.
fn rustfmt(root: &Path, code: &str) -> Result<String> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new("rustfmt")
        .args(["--edition", "2024", "--emit", "stdout", "--config-path"])
        .arg(root.join("rustfmt.toml"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running rustfmt (install it with `rustup component add rustfmt`)")?;
    child
        .stdin
        .take()
        .context("rustfmt's stdin was piped")?
        .write_all(code.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("rustfmt failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Puts the starter's note and its lint allowances after the file's `//!` and `#![doc]` lines
/// (inner attributes must come before any item).
fn with_header(body: &str, label: &Path, package: &str) -> String {
    let mut lines = body.lines().peekable();
    let mut out = String::new();
    // The crate's docs may include files (`#![doc = include_str!(..)]`): keep them together.
    while let Some(line) = lines.next_if(|l| l.starts_with("//!") || l.starts_with("#![doc")) {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&format!(
        "//\n// Workshop starter, generated by `cargo xtask gen` from {}. Replace each `todo!()`;\n\
         // `cargo test -p {package}` tells you what works so far.\n\
         // Until every gap is filled, some code and imports are unused: allow that here. Once no\n\
         // `todo!()` is left, delete the next line: warnings about unused code then point at\n\
         // anything you forgot to use.\n\
         #![allow(unused, unreachable_code)]\n",
        label.display()
    ));
    for line in lines {
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn manifest_for(toml: &str, step: &Step, ex: &Exercise) -> Result<String> {
    let mut out = format!(
        "# Generated by `cargo xtask gen` from {}/Cargo.toml: do not edit.\n",
        step.rel_dir().display()
    );
    let mut named = false;
    for line in toml.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        match key {
            "name" if !named => {
                out.push_str(&format!("name = \"{}\"\n", ex.package));
                named = true;
            }
            "description" => out.push_str(&format!(
                "description = \"a-chat workshop exercise {:02}: fill in the gaps of {}\"\n",
                ex.number,
                step.rel_dir().display()
            )),
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    if !named {
        bail!(
            "{}/Cargo.toml has no package name",
            step.rel_dir().display()
        );
    }
    Ok(out)
}

fn readme_for(step: &Step, ex: &Exercise, regions: usize) -> String {
    // Step 00 is no server: its tests call its functions directly.
    let tests = if step.number == 0 {
        "the step's own tests"
    } else {
        "the step's own over-the-wire tests"
    };
    format!(
        "<!-- Generated by `cargo xtask gen`: do not edit. -->\n\
         # Exercise {n:02}\n\n\
         This crate is {solution} with {regions} gaps, each a `todo!()` after a comment that says \
         what goes there. Chapter {n:02} of the book (`book/{chapter}`) teaches what you need.\n\n\
         Check your work (it runs {tests}):\n\n\
         ```sh\ncargo test -p {package}\n```\n\n\
         Every test that fails says which behaviour is missing. When they all pass, compare with \
         the solution in `{solution}`. To start over: `git checkout -- {dir}`.\n",
        n = ex.number,
        solution = ex.solution.display(),
        chapter = step.chapter(),
        package = ex.package,
        dir = ex.dir.display(),
    )
}

/// The CI proof that the checks mean something: every starter compiles, and its check (its
/// tests) fails on it. That the step passes the same checks is the step's own test run: the
/// tests are the same files, which the freshness check guarantees.
pub fn prove_starters_fail(root: &Path) -> Result<()> {
    let steps = workspace::steps(root)?;
    let mut problems = Vec::new();
    for ex in steps.iter().filter_map(exercise) {
        if !root.join(&ex.dir).join("Cargo.toml").is_file() {
            problems.push(format!(
                "{} has no starter crate ({} is missing): mark its exercise regions and run \
                 `cargo xtask gen`",
                ex.solution.display(),
                ex.dir.display()
            ));
            continue;
        }
        println!("checking that {} fails its checks…", ex.package);
        let output = Command::new(env!("CARGO"))
            .current_dir(root)
            .args(["test", "--locked", "-p", &ex.package, "--no-fail-fast"])
            // The failing tests mostly wait for lines that never come: run them side by side.
            .args(["--", "--test-threads=32"])
            .output()
            .with_context(|| format!("running the tests of {}", ex.package))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let failed: usize = text
            .lines()
            .filter_map(|l| l.split("test result: FAILED.").nth(1))
            .filter_map(|rest| rest.split(';').nth(1))
            .filter_map(|f| f.trim().strip_suffix(" failed")?.parse::<usize>().ok())
            .sum();
        match starter_verdict(output.status.success(), failed, &text) {
            Ok(()) => println!("  {}: {failed} tests fail, as they should", ex.package),
            Err(why) => problems.push(format!("{} {why}", ex.package)),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("{}", problems.join("\n"))
    }
}

/// Judges one starter's `cargo test` run: `Ok` when it compiled and some of its tests failed.
/// A run that failed before any test could fail (a compile error, a full disk, a killed build)
/// proves nothing either way, and says so with the end of cargo's output instead of claiming
/// the tests passed.
fn starter_verdict(success: bool, failed: usize, text: &str) -> Result<(), String> {
    if text.contains("error[E") {
        return Err("does not compile".to_string());
    }
    if success {
        return Err("passes its checks with the gaps unfilled: its tests prove nothing".into());
    }
    if failed > 0 {
        return Ok(());
    }
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(8)..].join("\n    ");
    Err(format!(
        "could not be checked: `cargo test` failed before any of its tests failed; \
         the end of its output:\n    {tail}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank(text: &str) -> Result<(String, usize)> {
        blank_regions(text, Path::new("x.rs"))
    }

    /// A region becomes its hint plus `todo!()`; other anchors vanish; the rest is kept.
    #[test]
    fn region_becomes_hint_and_todo() {
        let src = "fn f() -> u32 {\n    // ANCHOR: body\n    // ANCHOR: exercise_sum\n    \
                   // Add them up.\n    // Mind overflow.\n    let x = 1;\n    x + 1\n    \
                   // ANCHOR_END: exercise_sum\n    // ANCHOR_END: body\n}\n";
        let (out, n) = blank(src).expect("a well-formed region");
        assert_eq!(n, 1);
        assert_eq!(
            out,
            "fn f() -> u32 {\n    // Add them up.\n    // Mind overflow.\n    \
             todo!(\"Add them up.\")\n}\n"
        );
    }

    /// A region without a hint, an unclosed one and mismatched ends are errors with a place.
    #[test]
    fn malformed_regions_are_errors() {
        let no_hint = "// ANCHOR: exercise_a\nlet x = 1;\n// ANCHOR_END: exercise_a\n";
        assert!(format!("{:#}", blank(no_hint).unwrap_err()).contains("no hint"));
        let open = "// ANCHOR: exercise_a\n// hint\n";
        assert!(format!("{:#}", blank(open).unwrap_err()).contains("never closed"));
        let wrong = "// ANCHOR: exercise_a\n// hint\n// ANCHOR_END: exercise_b\n";
        assert!(format!("{:#}", blank(wrong).unwrap_err()).contains("closes"));
        let nested = "// ANCHOR: exercise_a\n// ANCHOR: exercise_b\n";
        assert!(format!("{:#}", blank(nested).unwrap_err()).contains("inside"));
    }

    /// A first sentence that wraps over several comment lines becomes the whole message.
    #[test]
    fn message_is_the_first_sentence() {
        let src = "// ANCHOR: exercise_s\n// Keep the sender in the map\n// and spawn a writer. Then \
                   more.\n// Later.\nx\n// ANCHOR_END: exercise_s\n";
        let (out, _) = blank(src).expect("a well-formed region");
        assert!(
            out.contains(r#"todo!("Keep the sender in the map and spawn a writer. Then more.")"#),
            "{out}"
        );
    }

    /// Quotes and backslashes in a hint cannot break the generated `todo!` literal.
    #[test]
    fn hint_is_escaped() {
        let src = "// ANCHOR: exercise_q\n// Say \"hi\" \\ bye\nx\n// ANCHOR_END: exercise_q\n";
        let (out, _) = blank(src).expect("a well-formed region");
        assert!(out.contains(r#"todo!("Say \"hi\" \\ bye")"#), "{out}");
    }

    /// The starter's note and allowances go after the `//!` lines, before any item.
    #[test]
    fn header_after_inner_docs() {
        let out = with_header(
            "//! Role.\n//! More.\nuse x;\n",
            Path::new("s/lib.rs"),
            "ex-02",
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(&lines[..2], ["//! Role.", "//! More."]);
        assert!(lines.contains(&"#![allow(unused, unreachable_code)]"));
        assert_eq!(lines.last(), Some(&"use x;"));
    }

    /// A starter's run is judged by what happened: tests failed (good), compile error, all
    /// passed, or cargo stopped before any test ran (a full disk), which is not "passed".
    #[test]
    fn starter_verdicts() {
        let failing = "test result: FAILED. 3 passed; 11 failed; 0 ignored";
        assert_eq!(starter_verdict(false, 11, failing), Ok(()));
        let broken = "error[E0425]: cannot find value `x`";
        assert_eq!(
            starter_verdict(false, 0, broken),
            Err("does not compile".into())
        );
        let passing = "test result: ok. 14 passed; 0 failed";
        assert!(
            starter_verdict(true, 0, passing)
                .unwrap_err()
                .contains("prove nothing")
        );
        let full_disk = "error: could not compile `step-05`\nNo space left on device (os error 28)";
        let why = starter_verdict(false, 0, full_disk).unwrap_err();
        assert!(why.contains("could not be checked"), "{why}");
        assert!(why.contains("No space left on device"), "{why}");
    }
}
