//! mdBook, pinned to one version and installed by the project itself under `target/tools`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::process;

/// The mdBook version the book is written for. Change it here and nowhere else.
pub const VERSION: &str = "0.5.4";

/// Where the book is built, relative to the root (must match `build-dir` in `book.toml`).
/// mdBook empties this directory on every build, so it lives under `target/`.
pub const BUILD_DIR: &str = "target/book";

/// Where project tools are installed, relative to the root.
pub const TOOLS_DIR: &str = "target/tools";

/// The path of the pinned mdBook, installing it first when it is missing or another version.
pub fn ensure(root: &Path) -> Result<PathBuf> {
    let tools = root.join(TOOLS_DIR);
    let bin = tools.join("bin").join("mdbook");
    match installed_version(&bin) {
        Some(v) if v == VERSION => return Ok(bin),
        Some(v) => println!("target/tools has mdBook {v}; installing {VERSION}"),
        None => println!("mdBook {VERSION} is not installed yet; installing it into {TOOLS_DIR}"),
    }
    println!("(this compiles mdBook once, a few minutes; later runs reuse it)");
    process::cargo_install(root, "mdbook", VERSION, &tools).context("installing mdBook")?;
    match installed_version(&bin) {
        Some(v) if v == VERSION => Ok(bin),
        other => bail!(
            "installed mdBook, but {} reports version {other:?}, not {VERSION}",
            bin.display()
        ),
    }
}

/// The version `mdbook --version` reports (`mdbook v0.5.4` -> `0.5.4`), or `None` when the
/// binary is missing or does not run.
fn installed_version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().last()?;
    Some(version.trim_start_matches('v').to_string())
}

/// The path part of `site-url` in `book.toml` (`/a-chat/`), or `/` when it sets none.
pub fn site_path(root: &Path) -> Result<String> {
    let path = root.join("book.toml");
    let toml =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let value = toml.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "site-url").then(|| value.trim().trim_matches('"').to_string())
    });
    Ok(value.unwrap_or_else(|| "/".to_string()))
}

/// `cargo xtask book`: serve the book with live reload, as a reader or an author wants it.
pub fn serve(root: &Path) -> Result<()> {
    let bin = ensure(root)?;
    println!("serving the book on http://localhost:3000 (Ctrl-C stops)");
    let status = Command::new(&bin)
        .arg("serve")
        .current_dir(root)
        .status()
        .with_context(|| format!("could not start {}", bin.display()))?;
    if !status.success() {
        bail!("mdbook serve failed ({status})");
    }
    Ok(())
}

/// `mdbook build`, failing when it fails or when its output has an error or a warning (mdBook
/// exits 0 after some of them, e.g. a missing include).
pub fn build(root: &Path) -> Result<()> {
    let bin = ensure(root)?;
    // Start from nothing, so a build that fails half-way cannot leave an older book behind for
    // the browser check to pass on.
    let out_dir = root.join(BUILD_DIR);
    if out_dir.exists() {
        std::fs::remove_dir_all(&out_dir)
            .with_context(|| format!("removing the previous build in {}", out_dir.display()))?;
    }
    let mut cmd = Command::new(&bin);
    cmd.arg("build").current_dir(root);
    let out = process::output(&mut cmd)?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    print!("{text}");
    if !out.status.success() {
        bail!("mdbook build failed ({})", out.status);
    }
    let bad = complaints(&text);
    if !bad.is_empty() {
        bail!(
            "mdbook build printed {} error/warning line(s); the book must build cleanly:\n  {}",
            bad.len(),
            bad.join("\n  ")
        );
    }
    Ok(())
}

/// The lines of mdBook's output that report an error or a warning.
pub fn complaints(output: &str) -> Vec<String> {
    output
        .lines()
        .filter(|line| {
            line.split(|c: char| !c.is_ascii_alphabetic())
                .any(|word| matches!(word, "ERROR" | "WARN" | "WARNING"))
        })
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Warning and error lines in mdBook's log are found; info lines are not.
    #[test]
    fn finds_warnings_and_errors() {
        let log = " INFO Book building has started\n \
                    WARN The command `x` for preprocessor `y` was not found\n\
                   2026-01-01 ERROR Error: missing file\n \
                   INFO HTML book written to `target/book`\n";
        assert_eq!(complaints(log).len(), 2);
        assert!(complaints(" INFO Running the html backend\n").is_empty());
    }
}
