//! Running other programs: cargo, mdBook, apt-get. Every failure says which command failed.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};

/// A `cargo` command run in `root`, using the same cargo that runs the xtask.
pub fn cargo(root: &Path) -> Command {
    // `cargo run` sets CARGO to its own path: nested commands use the same toolchain.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root);
    cmd
}

/// How a command is shown in messages: `cargo test --workspace`.
pub fn display(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program())
        .file_name()
        .unwrap_or(cmd.get_program())
        .to_string_lossy()
        .into_owned();
    std::iter::once(program)
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `cargo install --locked NAME@VERSION` into `tools` (a project-local root under `target/`),
/// for the project's own tools: mdBook, bacon.
pub fn cargo_install(root: &Path, name: &str, version: &str, tools: &Path) -> Result<()> {
    let bin = tools.join("bin");
    // The tools are run by their full path, never from PATH. With their directory on the
    // installer's PATH, cargo does not end with "be sure to add .../bin to your PATH", which
    // would send a learner to change a setting that nothing needs.
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path)))
        .context("building PATH for cargo install")?;
    let mut install = cargo(root);
    install
        .args(["install", name, "--locked", "--force", "--version", version])
        .arg("--root")
        .arg(tools)
        .env("PATH", path);
    run(&mut install)
}

/// Runs `cmd` with inherited stdio; fails unless it exits with status 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = display(cmd);
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` and captures its output; fails unless it could be started.
pub fn output(cmd: &mut Command) -> Result<Output> {
    let shown = display(cmd);
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{shown}`"))
}

/// Whether `program` can be found on PATH.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}
