//! The versions the book is written against, read from `Cargo.lock`, the workspace manifest
//! and the pinned mdBook, so the introduction never states a version by hand.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::{DIR, File, banner};

/// `book/generated/versions.md`.
pub const NAME: &str = "versions.md";

/// The crates whose versions a learner should know.
const CRATES: &[(&str, &str)] = &[
    (
        "tokio",
        "the async runtime, TCP, channels, signals, `select!`",
    ),
    (
        "tokio-util",
        "`LinesCodec`, `CancellationToken`, `TaskTracker`",
    ),
    ("futures", "`StreamExt` and `SinkExt` for framed lines"),
];

pub fn generate(root: &Path) -> Result<File> {
    let lock = fs::read_to_string(root.join("Cargo.lock")).context("reading Cargo.lock")?;
    let manifest = fs::read_to_string(root.join("Cargo.toml")).context("reading Cargo.toml")?;
    let rust = value_of(&manifest, "rust-version").context("Cargo.toml has no rust-version")?;
    let edition = value_of(&manifest, "edition").context("Cargo.toml has no edition")?;

    let mut out = banner("cargo xtask gen");
    out.push_str("\n| What | Version | Used for |\n|---|---|---|\n");
    out.push_str(&format!(
        "| Rust | {rust} or newer, edition {edition} | the language and cargo |\n"
    ));
    for (name, what) in CRATES {
        let version = locked_version(&lock, name)?;
        out.push_str(&format!(
            "| [{name}](https://docs.rs/{name}/{version}) | {version} | {what} |\n"
        ));
    }
    out.push_str(&format!(
        "| mdBook | {} | rendering this book (`cargo xtask book` installs it) |\n",
        crate::mdbook::VERSION
    ));
    Ok(File {
        path: PathBuf::from(DIR).join(NAME),
        contents: out,
    })
}

/// `key = "value"` anywhere in a manifest (the first one).
fn value_of(manifest: &str, key: &str) -> Option<String> {
    manifest.lines().find_map(|line| {
        let rest = line
            .trim()
            .strip_prefix(key)?
            .trim_start()
            .strip_prefix('=')?;
        Some(rest.trim().trim_matches('"').to_string())
    })
}

/// The version of `name` in Cargo.lock; fails if it is missing or locked at two versions.
fn locked_version(lock: &str, name: &str) -> Result<String> {
    let mut found = Vec::new();
    let mut current: Option<&str> = None;
    for line in lock.lines() {
        if line.starts_with("[[package]]") {
            current = None;
        } else if let Some(n) = line.strip_prefix("name = ") {
            current = Some(n.trim_matches('"'));
        } else if let Some(v) = line.strip_prefix("version = ") {
            if current == Some(name) {
                found.push(v.trim_matches('"').to_string());
            }
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("Cargo.lock has no package `{name}`"),
        many => bail!("Cargo.lock has `{name}` at several versions: {many:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Versions are read from the lock file, and a duplicate is an error, not a guess.
    #[test]
    fn reads_locked_versions() {
        let lock = "[[package]]\nname = \"tokio\"\nversion = \"1.2.3\"\n\n[[package]]\nname = \"x\"\nversion = \"9\"\n";
        assert_eq!(locked_version(lock, "tokio").expect("found"), "1.2.3");
        assert!(locked_version(lock, "futures").is_err());
        let twice = format!("{lock}[[package]]\nname = \"tokio\"\nversion = \"0.1.0\"\n");
        assert!(locked_version(&twice, "tokio").is_err());
        assert_eq!(
            value_of("edition = \"2024\"\n", "edition").as_deref(),
            Some("2024")
        );
    }
}
