//! `cargo xtask exercises`: where a learner (or a room of them) stands, one line per exercise:
//! gaps left, checks passing, and the next failing check in one line. And `cargo xtask watch
//! NN`: an exercise's check rerun on every save, by bacon (a maintained watcher that runs
//! cargo), installed into `target/tools` on first use like mdBook.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::process;
use crate::starters::{self, Exercise};
use crate::workspace::{self, Step};

/// The bacon version `cargo xtask watch` installs. Change it here and nowhere else.
const BACON_VERSION: &str = "3.26.0";

/// The outcome of one exercise's check: `cargo test -p exercise-NN --no-fail-fast`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Check {
    pub passed: usize,
    pub failed: usize,
    /// The first failing test, with the first line of what it said.
    pub next: Option<(String, String)>,
    /// The first compile error, when the crate does not build.
    pub compile_error: Option<String>,
}

/// Runs one exercise's check as a learner would (all test files, every failing test), with
/// short panic reports whatever the caller's shell says.
pub fn run_check(root: &Path, package: &str) -> Result<(bool, String)> {
    // One pipe for both streams, so that cargo's `Running tests/x.rs` lines (stderr) stay
    // next to the results of that file (stdout).
    let (mut reader, writer) = std::io::pipe().context("creating a pipe")?;
    let mut cargo = process::cargo(root);
    cargo
        .args(["test", "--locked", "-p", package, "--no-fail-fast"])
        .env("RUST_BACKTRACE", "0")
        .stdin(std::process::Stdio::null())
        .stdout(writer.try_clone().context("cloning a pipe")?)
        .stderr(writer);
    let mut child = cargo
        .spawn()
        .with_context(|| format!("running the check of {package}"))?;
    // Our copies of the writing end went with `cargo`: the read ends when cargo exits.
    drop(cargo);
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut text)
        .with_context(|| format!("reading the check of {package}"))?;
    let status = child.wait()?;
    Ok((
        status.success(),
        String::from_utf8_lossy(&text).into_owned(),
    ))
}

/// Reads libtest's output: which tests passed and failed, and what the first failure said.
pub fn parse(text: &str) -> Check {
    let mut check = Check::default();
    // The first failing test: of the first test file with a failure (cargo runs them in a
    // fixed order), the first by name (tests in a file finish in any order).
    let mut first_failed: Option<String> = None;
    let mut in_first_failing_file = true;
    for line in text.lines() {
        if line.trim_start().starts_with("Running ") && first_failed.is_some() {
            in_first_failing_file = false;
        }
        let Some(rest) = line.strip_prefix("test ") else {
            continue;
        };
        if rest.ends_with(" ... ok") {
            check.passed += 1;
        } else if let Some(name) = rest.strip_suffix(" ... FAILED") {
            check.failed += 1;
            if in_first_failing_file && first_failed.as_deref().is_none_or(|f| name < f) {
                first_failed = Some(name.to_string());
            }
        }
    }
    if let Some(name) = first_failed {
        let said = what_it_said(text, &name).unwrap_or_else(|| "(no message)".to_string());
        check.next = Some((name, said));
    }
    check.compile_error = text
        .lines()
        .find(|l| l.starts_with("error[E") || l.starts_with("error: could not compile"))
        .map(str::to_string);
    check
}

/// The line that says most about why test `name` failed: a `todo!()` the code reached (it
/// names the gap), else the first line of the test's own panic message.
fn what_it_said(text: &str, name: &str) -> Option<String> {
    let header = format!("---- {name} stdout ----");
    let section: Vec<&str> = text
        .lines()
        .skip_while(|l| *l != header)
        .skip(1)
        .take_while(|l| !l.starts_with("---- ") && *l != "failures:")
        .collect();
    if let Some(todo) = section.iter().find(|l| l.contains("not yet implemented")) {
        return Some(todo.trim().to_string());
    }
    // After "panicked in 'x' at place:" (the test kit's report) or Rust's own
    // "thread 'x' panicked at place:" comes the message.
    let at = section
        .iter()
        .position(|l| l.contains("panicked") && l.trim_end().ends_with(':'))?;
    section.get(at + 1).map(|l| l.trim().to_string())
}

/// How many `todo!(` gaps are left in an exercise's sources.
fn gaps_left(root: &Path, ex: &Exercise) -> Result<usize> {
    let mut n = 0;
    for path in workspace::files_with_ext(&root.join(&ex.dir).join("src"), "rs")? {
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        n += text
            .lines()
            .filter(|l| l.trim_start().starts_with("todo!("))
            .count();
    }
    Ok(n)
}

/// `cargo xtask exercises [NN...]`: runs each exercise's check and prints the table.
pub fn table(root: &Path, only: &[String]) -> Result<()> {
    let exercises = select(root, only)?;
    let mut rows = vec![[
        "exercise".to_string(),
        "step".to_string(),
        "gaps left".to_string(),
        "checks passing".to_string(),
        "next failing check".to_string(),
    ]];
    for (step, ex) in &exercises {
        eprintln!("checking {}…", ex.package);
        let total = starters::regions_in(root, step)?;
        let gaps = gaps_left(root, ex)?;
        let (success, text) = run_check(root, &ex.package)?;
        let check = parse(&text);
        let next = match (&check.compile_error, &check.next) {
            (Some(error), _) => format!("does not compile: {error}"),
            (None, Some((name, said))) => format!("{name}: {said}"),
            (None, None) if success => "none: all done".to_string(),
            (None, None) => "cargo test failed before any test ran (run it to see why)".into(),
        };
        rows.push([
            ex.package.clone(),
            ex.solution.display().to_string(),
            format!("{gaps} of {total}"),
            format!("{}/{}", check.passed, check.passed + check.failed),
            next,
        ]);
    }
    let widths: Vec<usize> = (0..4)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let mut line = String::new();
        for (c, width) in widths.iter().enumerate() {
            line.push_str(&format!("{:<width$}  ", row[c]));
        }
        line.push_str(&row[4]);
        println!("{line}");
    }
    println!(
        "\nOne exercise's full report: cargo test -p exercise-NN --no-fail-fast. \
         Rerun on every save: cargo xtask watch NN."
    );
    Ok(())
}

/// `cargo xtask watch NN`: reruns exercise NN's check whenever a file changes, with bacon.
pub fn watch(root: &Path, args: &[String]) -> Result<()> {
    let [number] = args else {
        bail!("usage: cargo xtask watch NN (an exercise number, such as 05)");
    };
    let (_, ex) = select(root, std::slice::from_ref(number))?
        .pop()
        .context("select returns one exercise per number")?;
    let bacon = ensure_bacon(root)?;
    println!(
        "rerunning `cargo test -p {} --no-fail-fast` on every save (q quits)",
        ex.package
    );
    let status = Command::new(&bacon)
        .current_dir(root)
        .args(["test", "--"])
        .args(["-p", &ex.package, "--no-fail-fast"])
        .status()
        .with_context(|| format!("could not start {}", bacon.display()))?;
    if !status.success() {
        bail!("bacon failed ({status})");
    }
    Ok(())
}

/// The exercises named by number (`02`, `5`), or all of them, with their steps.
fn select(root: &Path, only: &[String]) -> Result<Vec<(Step, Exercise)>> {
    let all: Vec<(Step, Exercise)> = workspace::steps(root)?
        .into_iter()
        .filter_map(|step| starters::exercise(&step).map(|ex| (step, ex)))
        .filter(|(_, ex)| root.join(&ex.dir).join("Cargo.toml").is_file())
        .collect();
    if only.is_empty() {
        return Ok(all);
    }
    only.iter()
        .map(|n| {
            let number: u32 = n
                .trim_start_matches("exercise-")
                .parse()
                .with_context(|| format!("`{n}` is not an exercise number such as 05"))?;
            all.iter()
                .find(|(_, ex)| ex.number == number)
                .cloned()
                .with_context(|| {
                    let have: Vec<String> = all
                        .iter()
                        .map(|(_, e)| format!("{:02}", e.number))
                        .collect();
                    format!("there is no exercise {n}; there are {}", have.join(", "))
                })
        })
        .collect()
}

/// The path of the pinned bacon, installing it into `target/tools` first when needed.
fn ensure_bacon(root: &Path) -> Result<std::path::PathBuf> {
    let tools = root.join(crate::mdbook::TOOLS_DIR);
    let bin = tools.join("bin").join("bacon");
    let version = Command::new(&bin).arg("--version").output().ok();
    let installed = version
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(BACON_VERSION));
    if installed == Some(true) {
        return Ok(bin);
    }
    println!(
        "installing bacon {BACON_VERSION} into {} (once, a few minutes)",
        crate::mdbook::TOOLS_DIR
    );
    process::cargo_install(root, "bacon", BACON_VERSION, &tools).context("installing bacon")?;
    Ok(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts come from libtest's result lines; the next failing check is the first failed
    /// test by name in the first file with one, described by the `todo!()` it reached when
    /// there is one.
    #[test]
    fn parses_a_failing_check() {
        let out = "\
     Running tests/wire.rs (target/debug/deps/wire-0)

running 3 tests
test tests::login_line ... ok
test trims_whitespace ... FAILED
test delivers_to_named_destination ... FAILED

failures:

---- delivers_to_named_destination stdout ----
panicked in 'delivers_to_named_destination' at exercises/x/src/lib.rs:82:
not yet implemented: Serve until `shutdown` completes.
panicked in 'delivers_to_named_destination' at crates/testkit/src/client.rs:40:
alice: could not connect

---- trims_whitespace stdout ----
thread 'trims_whitespace' panicked at crates/testkit/src/client.rs:40:
bob: expected `from alice: hi` within 5 s, but nothing arrived
note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace

failures:
    delivers_to_named_destination

     Running tests/zzz.rs (target/debug/deps/zzz-0)
test a_later_file ... FAILED
";
        let check = parse(out);
        assert_eq!((check.passed, check.failed), (1, 3));
        assert_eq!(
            check.next,
            Some((
                "delivers_to_named_destination".to_string(),
                "not yet implemented: Serve until `shutdown` completes.".to_string()
            ))
        );
        assert_eq!(
            what_it_said(out, "trims_whitespace").as_deref(),
            Some("bob: expected `from alice: hi` within 5 s, but nothing arrived")
        );
        assert_eq!(check.compile_error, None);
    }

    /// A crate that does not compile says so, with its first error.
    #[test]
    fn parses_a_compile_error() {
        let check = parse("error[E0425]: cannot find value `x` in this scope\n");
        assert_eq!((check.passed, check.failed, check.next), (0, 0, None));
        assert_eq!(
            check.compile_error.as_deref(),
            Some("error[E0425]: cannot find value `x` in this scope")
        );
    }
}
