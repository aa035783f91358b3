//! Records the git commit the load generator was built from (`SPATE_GIT_SHA`), so a report
//! names it even when run outside the repository. `SPATE_GIT_SHA` in the build's
//! environment wins; without git the value is empty.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SPATE_GIT_SHA");
    // HEAD moves on checkout; the branch's ref file moves on commit.
    println!("cargo:rerun-if-changed=../.git/HEAD");
    if let Ok(head) = std::fs::read_to_string("../.git/HEAD") {
        if let Some(r) = head.strip_prefix("ref: ") {
            println!("cargo:rerun-if-changed=../.git/{}", r.trim());
        }
    }
    let sha = std::env::var("SPATE_GIT_SHA").ok().unwrap_or_else(|| {
        Command::new("git")
            .args(["rev-parse", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    });
    println!("cargo:rustc-env=SPATE_GIT_SHA={sha}");
}
