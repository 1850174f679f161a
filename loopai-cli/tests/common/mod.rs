//! Helpers shared by the `loopai` end-to-end tests: the binary, the repository's files,
//! the output of a run, stopping a server with SIGTERM.
//!
//! Each test binary includes this module and uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

/// The `loopai` binary under test.
pub fn loopai() -> Command {
    Command::new(env!("CARGO_BIN_EXE_loopai"))
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A file of the spam example (`examples/spam/<name>`).
pub fn example(name: &str) -> PathBuf {
    repo().join("examples/spam").join(name)
}

/// Runs `cmd` to the end.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("loopai runs")
}

/// What a run wrote to stdout.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// What a run wrote to stderr.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Sends SIGTERM to `child` (a server), as a supervisor stopping it would.
pub fn sigterm(child: &Child) {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}
