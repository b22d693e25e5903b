//! Project tooling, run as `cargo xtask <command>`.

fn main() {
    eprintln!("usage: cargo xtask <command>");
}
