//! Where things are: the repository root, the step crates under `steps/`, the target directory.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The repository root (the directory holding the workspace `Cargo.toml` and `book.toml`).
pub fn root() -> PathBuf {
    // The xtask crate sits directly under the root; its manifest dir is fixed at compile time,
    // so `cargo xtask` works from any directory.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the xtask crate lives one level below the repository root")
        .to_path_buf()
}

/// One step crate: `steps/step-NN-topic`, package `step-NN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The step number, from the directory name.
    pub number: u32,
    /// The directory name, `step-NN-topic`; the chapter is `book/<dir_name>.md`.
    pub dir_name: String,
    /// The package name found in its `Cargo.toml`, if any.
    pub package: Option<String>,
}

impl Step {
    /// The package name this step must have: `step-NN`.
    pub fn expected_package(&self) -> String {
        format!("step-{:02}", self.number)
    }

    /// The step directory, relative to the root.
    pub fn rel_dir(&self) -> PathBuf {
        Path::new("steps").join(&self.dir_name)
    }

    /// The chapter file, relative to `book/`.
    pub fn chapter(&self) -> String {
        format!("{}.md", self.dir_name)
    }
}

/// Parses `step-NN-topic` (or `step-NN`) into its number.
pub fn step_number(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("step-")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    if digits.len() != 2 {
        return None;
    }
    let after = &rest[2..];
    if !(after.is_empty() || after.starts_with('-')) {
        return None;
    }
    digits.parse().ok()
}

/// The steps under `root/steps`, sorted by number. A directory counts once it has a
/// `Cargo.toml` and a `src/` directory, and, in a git checkout, once its `Cargo.toml` is known
/// to git (committed or `git add`ed): a step someone is still writing is skipped rather than
/// failing every tool, and the tools see what a fresh clone sees.
pub fn steps(root: &Path) -> Result<Vec<Step>> {
    let (steps, _) = steps_and_skipped(root)?;
    Ok(steps)
}

/// The step directories [`steps`] leaves out because git does not know them yet.
pub fn skipped_steps(root: &Path) -> Result<Vec<String>> {
    let (_, skipped) = steps_and_skipped(root)?;
    Ok(skipped)
}

fn steps_and_skipped(root: &Path) -> Result<(Vec<Step>, Vec<String>)> {
    let all = all_steps(root)?;
    let Some(tracked) = git_files(root, "steps") else {
        return Ok((all, Vec::new()));
    };
    let (steps, skipped): (Vec<Step>, Vec<Step>) = all.into_iter().partition(|s| {
        let manifest = format!("steps/{}/Cargo.toml", s.dir_name);
        tracked.iter().any(|t| t == &manifest)
    });
    Ok((steps, skipped.into_iter().map(|s| s.dir_name).collect()))
}

/// The files git knows under `dir`, or `None` when `root` is not a git checkout (a tarball).
fn git_files(root: &Path, dir: &str) -> Option<Vec<String>> {
    let out = std::process::Command::new("git")
        .args(["ls-files", "--", dir])
        .current_dir(root)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect(),
    )
}

fn all_steps(root: &Path) -> Result<Vec<Step>> {
    let dir = root.join("steps");
    let mut steps = Vec::new();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(steps),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let Some(number) = step_number(&name) else {
            continue;
        };
        let path = entry.path();
        if !path.join("Cargo.toml").is_file() || !path.join("src").is_dir() {
            continue;
        }
        let manifest = fs::read_to_string(path.join("Cargo.toml"))
            .with_context(|| format!("reading {}", path.join("Cargo.toml").display()))?;
        steps.push(Step {
            number,
            dir_name: name,
            package: package_name(&manifest),
        });
    }
    steps.sort_by(|a, b| (a.number, &a.dir_name).cmp(&(b.number, &b.dir_name)));
    Ok(steps)
}

/// The `name` of the `[package]` table of a `Cargo.toml`, read without a TOML parser: the
/// manifests we read are ours and keep `name = "..."` on one line.
pub fn package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
            continue;
        }
        if !in_package {
            continue;
        }
        if let Some(value) = line.strip_prefix("name") {
            let value = value.trim_start().strip_prefix('=')?.trim();
            return Some(value.trim_matches('"').to_string());
        }
    }
    None
}

/// The package's line number in a manifest (1-based) for error messages; 1 when not found.
pub fn package_name_line(manifest: &str) -> usize {
    manifest
        .lines()
        .position(|l| l.trim_start().starts_with("name"))
        .map_or(1, |i| i + 1)
}

/// Files under `dir` (recursively) whose name ends with `ext`, sorted, as paths.
pub fn files_with_ext(dir: &Path, ext: &str) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match fs::read_dir(&d) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", d.display())),
        };
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == ext) {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// `path` relative to `root`, for messages (unchanged when it is not under `root`).
pub fn rel(root: &Path, path: &Path) -> PathBuf {
    path.strip_prefix(root).unwrap_or(path).to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Step directories are recognised by `step-NN` with exactly two digits.
    #[test]
    fn step_numbers() {
        assert_eq!(step_number("step-01-accept-loop"), Some(1));
        assert_eq!(step_number("step-12"), Some(12));
        assert_eq!(step_number("step-1-x"), None);
        assert_eq!(step_number("step-012-x"), None);
        assert_eq!(step_number("step-01x"), None);
        assert_eq!(step_number("exercise-01"), None);
    }

    /// The package name is read from the `[package]` table only.
    #[test]
    fn package_names() {
        let manifest = "[dependencies]\nname = \"no\"\n\n[package]\nname = \"step-02\"\n";
        assert_eq!(package_name(manifest), Some("step-02".to_string()));
        assert_eq!(package_name("[lib]\nname = \"x\"\n"), None);
    }
}
