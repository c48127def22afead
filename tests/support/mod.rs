//! Helpers shared by integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The Python SDKs the real-client tests drive, at their current major
/// versions. `.ci/run` installs the same list.
pub const PYTHON_SDKS: &[&str] = &["openai>=3,<4", "anthropic>=2,<3"];

/// The directory of the Node SDK tests (`tests/sdk/node`), with the
/// official `openai` Node SDK installed in its `node_modules` (by `npm ci`
/// from its `package-lock.json` when missing).
///
/// Panics, saying what to install, when the machine has no `node` or
/// `npm`: a test that skipped itself would pass in a CI that never ran it.
pub fn sdk_node() -> PathBuf {
    let dir = repo_root().join("tests/sdk/node");
    assert!(
        succeeds(
            Command::new("node").arg("--version"),
            Duration::from_secs(30)
        ),
        "node is not installed: the Node SDK test needs it (run .ci/run, which installs it)"
    );
    if !dir.join("node_modules/openai/package.json").exists() {
        let installed = succeeds(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir),
            Duration::from_secs(300),
        );
        assert!(
            installed,
            "npm ci in tests/sdk/node failed (is npm installed? run .ci/run)"
        );
    }
    dir
}

/// A Python interpreter with the official `openai` and `anthropic` SDKs:
/// `<repo>/.venv`, created (and the SDKs installed from PyPI) when missing.
///
/// Panics, saying what to install, when the machine has no `python3`: a
/// test that skipped itself would pass in a CI that never ran it.
pub fn sdk_python() -> PathBuf {
    let python = repo_root().join(".venv/bin/python");
    if has_sdks(&python) {
        return python;
    }
    assert!(
        succeeds(
            Command::new("python3").arg("--version"),
            Duration::from_secs(10),
        ),
        "python3 is not installed: the SDK tests need it (run .ci/run, which installs it)"
    );
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
        Command::new(&python)
            .args(["-m", "pip", "install", "-q"])
            .args(PYTHON_SDKS),
        Duration::from_secs(600),
    );
    assert!(installed, "pip install {PYTHON_SDKS:?} into .venv failed");
    assert!(
        has_sdks(&python),
        "the SDKs are still not importable from .venv"
    );
    python
}

/// Whether `python` imports both SDKs at their pinned major versions.
fn has_sdks(python: &Path) -> bool {
    python.exists()
        && succeeds(
            Command::new(python).args([
                "-c",
                "import openai, anthropic, sys; \
                 sys.exit(not (openai.__version__.startswith('3.') and anthropic.__version__.startswith('2.')))",
            ]),
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
