//! "Changes since the previous step": a unified diff of each step's `src/` against the
//! previous step's, so a chapter can show exactly what it added.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use similar::{ChangeTag, TextDiff};

use super::{File, banner, step_file};
use crate::workspace::{self, Step};

/// `book/generated/step-NN-changes.md`.
pub const SUFFIX: &str = "-changes";

/// One file per step that has a previous step. Step 00 does not count as one: it is no chat
/// server, so a diff from it to step 01 would compare two unrelated programs.
pub fn generate(root: &Path, steps: &[Step]) -> Result<Vec<File>> {
    steps
        .windows(2)
        .filter(|pair| pair[0].number != 0)
        .map(|pair| {
            Ok(File {
                path: step_file(&pair[1], SUFFIX),
                contents: render(root, &pair[0], &pair[1])?,
            })
        })
        .collect()
}

/// The `.rs` files under a step's `src/`, relative to the step directory, with their text
/// minus anchor comments (the book never shows those either).
fn sources(root: &Path, step: &Step) -> Result<Vec<(PathBuf, String)>> {
    let dir = root.join(step.rel_dir());
    let mut out = Vec::new();
    for path in workspace::files_with_ext(&dir.join("src"), "rs")? {
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        out.push((workspace::rel(&dir, &path), strip_anchors(&text)));
    }
    Ok(out)
}

/// Drops `// ANCHOR: x` and `// ANCHOR_END: x` lines.
fn strip_anchors(text: &str) -> String {
    text.lines()
        .filter(|l| {
            let t = l.trim_start();
            !(t.starts_with("// ANCHOR:") || t.starts_with("// ANCHOR_END:"))
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// A fence longer than any run of backticks in `text`, so code cannot close it early.
pub fn fence_for(text: &str) -> String {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    "`".repeat((longest + 1).max(3))
}

fn render(root: &Path, old: &Step, new: &Step) -> Result<String> {
    let before = sources(root, old)?;
    let after = sources(root, new)?;
    let mut names: Vec<&PathBuf> = before.iter().chain(&after).map(|(p, _)| p).collect();
    names.sort();
    names.dedup();

    // The diff is long (thousands of words for the later steps): the chapter summarises it
    // above, and the full text stays folded until a reader opens it.
    let mut body = String::new();
    let (mut added, mut removed, mut files) = (0, 0, 0);
    body.push_str(&format!(
        "\nWhat changed in `src/` from step {:02} (`{}`) to step {:02} (`{}`). Lines starting \
         with `-` were removed, lines starting with `+` were added; anchor comments are left \
         out.\n",
        old.number,
        old.rel_dir().display(),
        new.number,
        new.rel_dir().display(),
    ));
    for name in names {
        let find =
            |set: &[(PathBuf, String)]| set.iter().find(|(p, _)| p == name).map(|(_, t)| t.clone());
        let (a, b) = (find(&before), find(&after));
        let shown = name.display().to_string();
        if a == b {
            body.push_str(&format!("\n`{shown}` is unchanged.\n"));
            continue;
        }
        files += 1;
        let a_label = match &a {
            Some(_) => format!("{}/{shown}", old.rel_dir().display()),
            None => "/dev/null".to_string(),
        };
        let b_label = match &b {
            Some(_) => format!("{}/{shown}", new.rel_dir().display()),
            None => "/dev/null".to_string(),
        };
        let (a, b) = (a.unwrap_or_default(), b.unwrap_or_default());
        let diff = TextDiff::from_lines(&a, &b);
        for change in diff.iter_all_changes() {
            match change.tag() {
                ChangeTag::Insert => added += 1,
                ChangeTag::Delete => removed += 1,
                ChangeTag::Equal => {}
            }
        }
        let text = diff
            .unified_diff()
            .context_radius(3)
            .header(&a_label, &b_label)
            .to_string();
        let what = if a.is_empty() {
            "is new"
        } else if b.is_empty() {
            "is gone"
        } else {
            "changed"
        };
        let fence = fence_for(&text);
        body.push_str(&format!("\n`{shown}` {what}:\n\n{fence}diff\n{text}"));
        if !text.ends_with('\n') {
            body.push('\n');
        }
        body.push_str(&format!("{fence}\n"));
    }
    let files = if files == 1 {
        "1 file".to_string()
    } else {
        format!("{files} files")
    };
    let mut out = banner("cargo xtask gen");
    out.push_str(&format!(
        "\n<details>\n<summary>The full diff: {added} lines added, {removed} removed, in \
         {files}</summary>\n{body}\n</details>\n"
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Anchor comments are left out of the diff.
    #[test]
    fn anchors_are_stripped() {
        let text = "a\n    // ANCHOR: x\nb\n// ANCHOR_END: x\n";
        assert_eq!(strip_anchors(text), "a\nb\n");
    }

    /// Code containing backticks cannot close the fence around it.
    #[test]
    fn fences_outgrow_backticks() {
        assert_eq!(fence_for("no ticks"), "```");
        assert_eq!(fence_for("/// ```rust"), "````");
    }

    /// The diff of two steps shows the changed line and names unchanged files.
    #[test]
    fn renders_a_diff() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        for (name, lib) in [("step-01-a", "fn a() {}\n"), ("step-02-b", "fn b() {}\n")] {
            let src = root.join("steps").join(name).join("src");
            fs::create_dir_all(&src).expect("mkdir");
            fs::write(src.join("lib.rs"), lib).expect("write");
            fs::write(src.join("main.rs"), "fn main() {}\n").expect("write");
            fs::write(root.join("steps").join(name).join("Cargo.toml"), "").expect("write");
        }
        let steps = workspace::steps(root).expect("steps");
        let files = generate(root, &steps).expect("generate");
        assert_eq!(files.len(), 1);
        assert_eq!(
            files[0].path,
            Path::new("book/generated/step-02-changes.md")
        );
        let text = &files[0].contents;
        assert!(text.contains("-fn a() {}\n+fn b() {}\n"), "{text}");
        assert!(text.contains("`src/main.rs` is unchanged."), "{text}");
        assert!(text.contains("--- steps/step-01-a/src/lib.rs"), "{text}");
    }
}
