//! Project tooling, run as `cargo xtask <command>` from anywhere in the repository.
//!
//! One place for everything that is not a step crate: reading the book, the book checks, the
//! generated files (diffs between steps, recorded terminal sessions, diagrams) and `ci`, the
//! single command that CI and the README use to run every check.

mod bench;
mod bookcheck;
mod browser;
mod ci;
mod diagram;
mod exercises;
mod generated;
mod lint;
mod mdbook;
mod process;
mod starters;
mod workspace;

use std::process::ExitCode;

use anyhow::{Result, bail};

/// The commands, with the one-line help `cargo xtask help` prints.
const COMMANDS: &[(&str, &str)] = &[
    (
        "book",
        "install mdBook if needed, then serve the book on http://localhost:3000 \
         (rebuilds when a chapter or a step's code changes)",
    ),
    (
        "gen",
        "regenerate every generated file (step diffs, terminal sessions, diagrams, exercise starters)",
    ),
    (
        "check-book",
        "check the book's sources: includes, anchors, code blocks, step list, source file lengths, freshness",
    ),
    (
        "new-chapter",
        "new-chapter <steps/dir>: write the skeleton chapter of a new step and list it in \
         SUMMARY.md",
    ),
    (
        "exercises",
        "exercises [NN...]: run each exercise's check and print a table: gaps left, checks \
         passing, the next failing check",
    ),
    (
        "watch",
        "watch NN: rerun exercise NN's check on every save (installs bacon into target/tools)",
    ),
    (
        "ci",
        "run every check: fmt, clippy, tests, starters, book checks, spelling, workflows, \
         generated files, mdbook build, browser",
    ),
    (
        "bench",
        "bench [--quick] [--steps 02,05,07] [--runs N]: measure the steps with chat-load \
         (release builds) and write book/generated/measurements.md and .svg; not part of ci",
    ),
    ("help", "list these commands"),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<ExitCode> {
    let root = workspace::root();
    let command = args.first().map(String::as_str).unwrap_or("help");
    let rest = &args[args.len().min(1)..];
    match command {
        "book" => {
            no_args(command, rest)?;
            mdbook::serve(&root)?;
        }
        "gen" => {
            no_args(command, rest)?;
            generated::write_all(&root)?;
        }
        "check-book" => {
            no_args(command, rest)?;
            let problems = bookcheck::check(&root)?;
            let mut problems = problems;
            problems.extend(generated::stale(&root)?);
            if !problems.is_empty() {
                for p in &problems {
                    eprintln!("{p}");
                }
                bail!("{} problem(s) in the book", problems.len());
            }
            println!("book sources OK");
        }
        "new-chapter" => match rest {
            [dir] => bookcheck::new_chapter(&root, dir)?,
            _ => bail!("usage: cargo xtask new-chapter steps/step-NN-topic"),
        },
        "ci" => {
            no_args(command, rest)?;
            return ci::run(&root);
        }
        "bench" => bench::run(&root, rest)?,
        "exercises" => exercises::table(&root, rest)?,
        "watch" => exercises::watch(&root, rest)?,
        "help" | "-h" | "--help" => help(),
        other => {
            help();
            bail!("unknown command `{other}`");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn no_args(command: &str, rest: &[String]) -> Result<()> {
    if rest.is_empty() {
        Ok(())
    } else {
        bail!("`cargo xtask {command}` takes no arguments, got {rest:?}")
    }
}

fn help() {
    println!("usage: cargo xtask <command>\n\ncommands:");
    for (name, what) in COMMANDS {
        println!("  {name:<12} {what}");
    }
}
