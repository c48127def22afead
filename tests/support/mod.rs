//! Helpers shared by integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A Python interpreter with the official `openai` SDK: `<repo>/.venv`,
/// created (and `openai` installed from PyPI) when missing. `None`, after a
/// loud SKIP message, when the machine has no `python3` at all.
pub fn openai_python() -> Option<PathBuf> {
    let python = repo_root().join(".venv/bin/python");
    if has_openai(&python) {
        return Some(python);
    }
    if !succeeds(
        Command::new("python3").arg("--version"),
        Duration::from_secs(10),
    ) {
        eprintln!(
            "\n*** SKIP: python3 is not installed, so the openai SDK test cannot run. \
             Install python3 (and run .ci/run) to run it. ***\n"
        );
        return None;
    }
    if !python.exists() {
        let created = succeeds(
            Command::new("python3")
                .args(["-m", "venv", ".venv"])
                .current_dir(repo_root()),
            Duration::from_secs(120),
        );
        assert!(
            created,
            "python3 -m venv .venv failed (is python3-venv installed?)"
        );
    }
    let installed = succeeds(
        Command::new(&python).args(["-m", "pip", "install", "-q", "openai>=1.40,<3"]),
        Duration::from_secs(600),
    );
    assert!(installed, "pip install openai into .venv failed");
    assert!(
        has_openai(&python),
        "openai still not importable from .venv"
    );
    Some(python)
}

fn has_openai(python: &Path) -> bool {
    python.exists()
        && succeeds(
            Command::new(python).args(["-c", "import openai"]),
            Duration::from_secs(60),
        )
}

/// Runs `command` to completion within `limit` (killed after it); whether
/// it exited successfully.
fn succeeds(command: &mut Command, limit: Duration) -> bool {
    let Ok(mut child) = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
    else {
        return false;
    };
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}
