//! `cargo xtask ci`: every check, in one command, the same on a laptop and in CI.
//!
//! Each stage prints a header; all stages run even when one fails (so one run shows everything
//! that is wrong), then a summary, and the exit code is non-zero if any stage failed.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{bookcheck, browser, generated, lint, mdbook, process};

/// One stage of the check.
struct Stage {
    name: &'static str,
    run: fn(&Path) -> Result<()>,
}

const STAGES: &[Stage] = &[
    Stage {
        name: "tools (the pinned mdBook, typos and actionlint; Chromium and chromedriver for the \
               browser tests)",
        run: tools,
    },
    Stage {
        name: "format (cargo fmt --all --check)",
        run: fmt,
    },
    Stage {
        name: "lints (cargo clippy --workspace --all-targets --locked -- -D warnings)",
        run: clippy,
    },
    Stage {
        name: "tests (cargo test --workspace --locked, without the exercise starters)",
        run: test,
    },
    Stage {
        name: "compile_fail doctests fail with the error codes they name (RUSTC_BOOTSTRAP=1)",
        run: doctest_codes,
    },
    Stage {
        name: "exercise starters compile and fail their checks",
        run: starters_fail,
    },
    Stage {
        name: "book sources (includes, anchors, code blocks, step list, source file lengths)",
        run: book_sources,
    },
    Stage {
        name: "spelling (typos, allow-list in _typos.toml)",
        run: lint::spelling,
    },
    Stage {
        name: "workflows (actionlint on .github/workflows)",
        run: lint::workflows,
    },
    Stage {
        name: "generated files are fresh (diffs, sessions, diagrams)",
        run: fresh,
    },
    Stage {
        name: "mdbook build (no error or warning)",
        run: mdbook::build,
    },
    Stage {
        name: "browser (every page in headless Chromium)",
        run: browser,
    },
];

/// Runs every stage and prints a summary.
pub fn run(root: &Path) -> Result<ExitCode> {
    let started = Instant::now();
    let mut results: Vec<(&str, Duration, Result<()>)> = Vec::new();
    for stage in STAGES {
        println!("\n==> {}", stage.name);
        let t = Instant::now();
        let result = (stage.run)(root);
        if let Err(e) = &result {
            eprintln!("\nFAILED: {}\n{e:#}", stage.name);
        }
        results.push((stage.name, t.elapsed(), result));
    }

    println!("\n==> summary");
    let mut failed = 0;
    for (name, took, result) in &results {
        let mark = if result.is_ok() { "ok  " } else { "FAIL" };
        failed += usize::from(result.is_err());
        println!("  {mark} {:>6.1} s  {name}", took.as_secs_f64());
    }
    let total = started.elapsed().as_secs_f64();
    if failed == 0 {
        println!("\nall {} checks passed in {total:.0} s", results.len());
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "\n{failed} of {} checks failed ({total:.0} s); details above",
            results.len()
        );
        Ok(ExitCode::FAILURE)
    }
}

fn fmt(root: &Path) -> Result<()> {
    ensure_component(root, "fmt", "rustfmt")?;
    process::run(process::cargo(root).args(["fmt", "--all", "--check"]))
        .context("formatting differs: run `cargo fmt --all`")
}

fn clippy(root: &Path) -> Result<()> {
    ensure_component(root, "clippy", "clippy")?;
    process::run(process::cargo(root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))
}

fn test(root: &Path) -> Result<()> {
    process::run(process::cargo(root).args([
        "test",
        "--workspace",
        "--locked",
        "--exclude",
        "exercise-*",
    ]))
}

/// Stable rustdoc checks only that a `compile_fail` doctest fails to compile, not why: one that
/// fails on a typo or a missing import passes too. Run as nightly (`RUSTC_BOOTSTRAP=1`), it
/// also checks the error code the doctest names. So every `compile_fail` doctest in a step must
/// name its code, and the steps that have such doctests run them that way, in a target
/// directory of their own: the variable changes cargo's fingerprints, and sharing `target/`
/// would rebuild every dependency now and again at the next stage.
fn doctest_codes(root: &Path) -> Result<()> {
    let mut packages = Vec::new();
    let mut problems = Vec::new();
    for step in crate::workspace::steps(root)? {
        let src = root.join(step.rel_dir()).join("src");
        let mut found = false;
        for file in crate::workspace::files_with_ext(&src, "rs")? {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            for (i, line) in text.lines().enumerate() {
                let Some(info) = compile_fail_info(line) else {
                    continue;
                };
                found = true;
                if !names_error_code(info) {
                    problems.push(format!(
                        "{}:{}: a `compile_fail` doctest without an error code proves only that \
                         the snippet fails, not why: write ```compile_fail,E0XXX with the code \
                         rustc gives",
                        crate::workspace::rel(root, &file).display(),
                        i + 1
                    ));
                }
            }
        }
        if found {
            packages.push(step.expected_package());
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    if packages.is_empty() {
        println!("no step has a compile_fail doctest");
        return Ok(());
    }
    let mut cmd = process::cargo(root);
    cmd.args(["test", "--doc", "--locked"])
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_DIR", root.join("target/doctest-codes"));
    for package in &packages {
        cmd.args(["-p", package]);
    }
    process::run(&mut cmd).context(
        "a doctest failed; for a `compile_fail` one, rustc's error code is not the one it names \
         (see \"Some expected error codes were not found\" above)",
    )
}

/// The info string of a doc-comment line that opens a `compile_fail` code block.
fn compile_fail_info(line: &str) -> Option<&str> {
    let text = line.trim_start();
    let text = text
        .strip_prefix("//!")
        .or_else(|| text.strip_prefix("///"))?
        .trim_start();
    let info = text.strip_prefix("```")?.trim();
    info.split(',')
        .any(|word| word.trim() == "compile_fail")
        .then_some(info)
}

/// Whether a code block's info string names an error code, such as `E0373`.
fn names_error_code(info: &str) -> bool {
    info.split(',').map(str::trim).any(|word| {
        word.len() == 5 && word.starts_with('E') && word[1..].chars().all(|c| c.is_ascii_digit())
    })
}

fn starters_fail(root: &Path) -> Result<()> {
    crate::starters::prove_starters_fail(root)
}

fn book_sources(root: &Path) -> Result<()> {
    report(bookcheck::check(root)?)
}

fn fresh(root: &Path) -> Result<()> {
    report(generated::stale(root)?)
}

fn report(problems: Vec<bookcheck::Problem>) -> Result<()> {
    if problems.is_empty() {
        println!("ok");
        return Ok(());
    }
    for p in &problems {
        eprintln!("{p}");
    }
    bail!("{} problem(s)", problems.len())
}

/// Installs a rustup component (rustfmt, clippy) when `cargo <sub>` is missing, so a minimal
/// toolchain works too.
fn ensure_component(root: &Path, sub: &str, component: &str) -> Result<()> {
    let works = process::output(process::cargo(root).args([sub, "--version"]))
        .is_ok_and(|o| o.status.success());
    if works {
        return Ok(());
    }
    if !process::on_path("rustup") {
        bail!("`cargo {sub}` is not installed and there is no rustup to add `{component}`");
    }
    println!("installing the {component} component");
    process::run(Command::new("rustup").args(["component", "add", component]))
}

/// Opens the built book in headless Chromium, installing Debian's `chromium` and
/// `chromium-driver` first when they are missing.
/// Installs what later stages need before any of them runs, so that the browser check's own
/// unit test (in the test stage) runs against a real Chromium instead of being skipped.
fn tools(root: &Path) -> Result<()> {
    ensure_chromium()?;
    let mdbook = mdbook::ensure(root)?;
    println!("mdBook: {}", workspace_rel(root, &mdbook));
    lint::ensure_tools(root)?;
    Ok(())
}

fn browser(root: &Path) -> Result<()> {
    let html = root.join(mdbook::BUILD_DIR);
    if !html.join("index.html").is_file() {
        bail!(
            "there is no built book in {}: the mdbook stage failed",
            html.display()
        );
    }
    ensure_chromium()?;
    let out = root.join("target/browser-check");
    browser::check(&html, &out, &mdbook::site_path(root)?)?;
    println!("screenshots in {}", workspace_rel(root, &out));
    Ok(())
}

fn workspace_rel(root: &Path, path: &Path) -> String {
    crate::workspace::rel(root, path).display().to_string()
}

/// Installs `chromium` and `chromium-driver` with apt-get when either is missing.
fn ensure_chromium() -> Result<()> {
    if process::on_path("chromium") && process::on_path("chromedriver") {
        return Ok(());
    }
    apt_install(
        "the browser check needs Chromium and chromedriver",
        &["chromium", "chromium-driver"],
    )?;
    if !(process::on_path("chromium") && process::on_path("chromedriver")) {
        bail!(
            "apt-get installed chromium and chromium-driver, but `chromium` or `chromedriver` is still not on PATH"
        );
    }
    Ok(())
}

/// Installs Debian `packages` with apt-get, as root directly, otherwise through `sudo -n`
/// (never prompting: CI has no stdin). `why` says which check needs them.
pub fn apt_install(why: &str, packages: &[&str]) -> Result<()> {
    let list = packages.join(" ");
    if !process::on_path("apt-get") {
        bail!(
            "{why}, and this machine has no apt-get to install them: install the Debian \
             packages `{list}` (or their equivalents) and run again"
        );
    }
    let root_user = process::output(Command::new("id").arg("-u"))
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let prefix: &[&str] = if root_user {
        &[]
    } else if process::on_path("sudo") {
        &["sudo", "-n"]
    } else {
        bail!(
            "{why}: the Debian packages `{list}`; installing them needs root, and this user is \
             not root and has no sudo. Run `apt-get install {list}` as root, then run again"
        );
    };
    println!("installing {list} with apt-get");
    let apt = |args: &[&str]| {
        let all: Vec<&str> = prefix
            .iter()
            .chain(["apt-get"].iter())
            .chain(args)
            .copied()
            .collect();
        let mut cmd = Command::new(all[0]);
        cmd.args(&all[1..]).env("DEBIAN_FRONTEND", "noninteractive");
        process::run(&mut cmd)
    };
    apt(&["update"]).with_context(|| format!("apt-get update (before installing {list})"))?;
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend(packages);
    apt(&install).with_context(|| {
        format!("installing {list} with apt-get (with sudo, the user needs passwordless sudo)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `compile_fail` blocks are found in doc comments, and only a five-character `E` plus
    /// digits counts as their error code.
    #[test]
    fn compile_fail_blocks_and_codes() {
        assert_eq!(
            compile_fail_info("//! ```compile_fail,E0373"),
            Some("compile_fail,E0373")
        );
        assert_eq!(
            compile_fail_info("    /// ```rust,compile_fail"),
            Some("rust,compile_fail")
        );
        assert_eq!(compile_fail_info("//! ```rust"), None);
        assert_eq!(compile_fail_info("// ```compile_fail"), None);
        assert!(names_error_code("compile_fail,E0373"));
        assert!(names_error_code("compile_fail, E0277"));
        assert!(!names_error_code("compile_fail"));
        assert!(!names_error_code("compile_fail,E037"));
        assert!(!names_error_code("compile_fail,edition2024"));
    }
}
