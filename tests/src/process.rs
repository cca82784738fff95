//! The `tidings` binary as a child process, on port 0 with a data directory
//! of the test's.
//!
//! `make test` builds the binary first; `TIDINGS_BIN` may point elsewhere.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::{API_KEY, SECRET, WAIT};

/// The `tidings` binary next to the test binaries, or `TIDINGS_BIN`.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TIDINGS_BIN") {
        return path.into();
    }
    // target/debug/deps/<test>-<hash> → target/debug/tidings
    let exe = std::env::current_exe().expect("the test binary's path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .join("tidings");
    assert!(
        path.exists(),
        "{} is missing: build it first with `cargo build --workspace --bins` (make test does)",
        path.display()
    );
    path
}

/// Starts the binary over `data` with `args` and returns it with the HTTP
/// address it prints.
pub async fn spawn<I, S>(data: &Path, args: I) -> (Child, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    spawn_in(None, "127.0.0.1:0", data, args).await
}

/// Like [`spawn`], listening on `listen`, inside the network namespace
/// `netns` if given.
pub async fn spawn_in<I, S>(
    netns: Option<&str>,
    listen: &str,
    data: &Path,
    args: I,
) -> (Child, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let command = match netns {
        // `ip netns exec` execs the binary: the child's pid is the node's.
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(binary());
            c
        }
        None => Command::new(binary()),
    };
    launch(command, listen, data, args).await
}

/// Like [`spawn`], with the open-file limit lowered to `soft` (the hard
/// limit kept) the way a login shell's `ulimit -Sn` would.
pub async fn spawn_with_soft_file_limit(data: &Path, soft: u64) -> (Child, String) {
    let mut command = Command::new("sh");
    // `exec` keeps the child's pid the node's.
    command
        .args(["-c", r#"ulimit -Sn "$0" && exec "$@""#])
        .arg(soft.to_string())
        .arg(binary());
    launch(command, "127.0.0.1:0", data, std::iter::empty::<&str>()).await
}

async fn launch<I, S>(mut command: Command, listen: &str, data: &Path, args: I) -> (Child, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut child = command
        .args(["--listen", listen, "--data-dir"])
        .arg(data)
        .args(args)
        .env("TIDINGS_AUTH_SECRET", SECRET)
        .env("TIDINGS_API_KEY", API_KEY)
        .env("TIDINGS_LOG", node_log())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the tidings binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("the node says where it listens")
        .expect("stdout is readable")
        .expect("a line on stdout");
    let addr = line
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (child, addr)
}

/// What the nodes log: `TIDINGS_TEST_LOG` (an `EnvFilter`), or warnings.
pub fn node_log() -> String {
    std::env::var("TIDINGS_TEST_LOG").unwrap_or_else(|_| "warn,openraft=off".to_owned())
}
