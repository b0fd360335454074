//! Gives the binary the git commit it was built from (`vigia --version`), or
//! `VIGIA_COMMIT` from the environment when there is no git checkout (a source tarball).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=VIGIA_COMMIT");
    let commit = std::env::var("VIGIA_COMMIT").ok().or_else(|| {
        let git = |args: &[&str]| {
            Command::new("git")
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let hash = git(&["rev-parse", "--short=12", "HEAD"])?;
        // Rebuilt when HEAD moves (a commit, a checkout).
        // (Only files that exist: a missing one would rerun this at every build.)
        if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
            let mut watch = vec![format!("{dir}/HEAD"), format!("{dir}/packed-refs")];
            if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
                watch.push(format!("{dir}/{head}"));
            }
            for f in watch.iter().filter(|f| std::path::Path::new(f).exists()) {
                println!("cargo:rerun-if-changed={f}");
            }
        }
        Some(hash)
    });
    println!(
        "cargo:rustc-env=VIGIA_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".into())
    );
}
