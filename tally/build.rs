//! Records the git commit the binary is built from, for `tally_build_info`
//! and `tally --version`. Outside a git checkout (a source tarball) it is
//! `unknown`; `TALLY_GIT_SHA` overrides it (packagers).

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=TALLY_GIT_SHA");
    let git = Path::new("../.git");
    // Rebuilt when HEAD moves: a commit updates the branch's ref file (or
    // packed-refs), a checkout updates HEAD.
    for f in ["HEAD", "packed-refs"] {
        if git.join(f).exists() {
            println!("cargo:rerun-if-changed=../.git/{f}");
        }
    }
    if let Ok(head) = std::fs::read_to_string(git.join("HEAD"))
        && let Some(r) = head.trim().strip_prefix("ref: ")
        && git.join(r).exists()
    {
        println!("cargo:rerun-if-changed=../.git/{r}");
    }
    let sha = std::env::var("TALLY_GIT_SHA").ok().or_else(|| {
        Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    });
    println!(
        "cargo:rustc-env=TALLY_GIT_SHA={}",
        sha.as_deref().unwrap_or("unknown")
    );
}
