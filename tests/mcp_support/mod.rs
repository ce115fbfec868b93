//! Finding and starting the real MCP servers the tests use: `@modelcontextprotocol/server-everything`
//! (npm, installed into `tests/mcp-servers` by `npm ci`) and `mcp-server-time` (PyPI). A test
//! whose server is missing says what to install and skips, unless `CALLBOARD_REQUIRE_MCP=1`
//! (set by `.ci/run`, which installs both), when it fails.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn required() -> bool {
    std::env::var("CALLBOARD_REQUIRE_MCP").is_ok_and(|v| v == "1")
}

fn missing(what: &str, how: &str) {
    if required() {
        panic!("CALLBOARD_REQUIRE_MCP=1 but {what} is missing: {how}");
    }
    eprintln!("SKIPPED: {what} is missing ({how}); set CALLBOARD_REQUIRE_MCP=1 to fail instead");
}

fn have_program(p: &str, arg: &str) -> bool {
    Command::new(p)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The `mcp-server-everything` entry point, or `None` (after saying why) when Node or the
/// package is missing.
pub fn everything() -> Option<PathBuf> {
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(
        "tests/mcp-servers/node_modules/@modelcontextprotocol/server-everything/dist/index.js",
    );
    if !have_program("node", "--version") {
        missing("Node.js (`node`)", "apt-get install nodejs npm");
        return None;
    }
    if !bin.exists() {
        missing(
            "the npm package @modelcontextprotocol/server-everything",
            "npm ci --prefix tests/mcp-servers",
        );
        return None;
    }
    Some(bin)
}

/// The Python with `mcp-server-time` (and the `mcp` package): the virtualenv `.ci/run` makes
/// in `tests/mcp-servers/.venv`, else `python3`.
pub fn python() -> String {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp-servers/.venv/bin/python");
    if venv.exists() {
        venv.to_string_lossy().into_owned()
    } else {
        "python3".into()
    }
}

/// `python -m mcp_server_time`'s command line, or `None` (after saying why).
pub fn time_server() -> Option<(String, Vec<String>)> {
    let ok = Command::new(python())
        .args(["-c", "import mcp_server_time"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        missing(
            "the PyPI package mcp-server-time",
            "python3 -m venv tests/mcp-servers/.venv && tests/mcp-servers/.venv/bin/pip install mcp-server-time",
        );
        return None;
    }
    Some((
        python(),
        vec![
            "-m".into(),
            "mcp_server_time".into(),
            "--local-timezone".into(),
            "UTC".into(),
        ],
    ))
}

/// `server-everything` over streamable HTTP on a loopback port; stopped when dropped.
pub struct HttpEverything {
    child: Child,
    pub url: String,
}

impl HttpEverything {
    /// Starts it and waits (at most 30 s) until it accepts connections.
    pub fn start(bin: &PathBuf) -> HttpEverything {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").expect("a free port");
            l.local_addr().expect("its address").port()
        };
        let child = Command::new("node")
            .arg(bin)
            .arg("streamableHttp")
            .env("PORT", port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("node starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "server-everything (streamableHttp) did not listen on {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        HttpEverything {
            child,
            url: format!("http://127.0.0.1:{port}/mcp"),
        }
    }
}

impl Drop for HttpEverything {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills the process `pid` (a server's child that the test's server started).
pub fn kill(pid: u32) {
    // SAFETY: sending a signal to a process id has no memory effects.
    let r = unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert_eq!(r, 0, "kill({pid}) failed");
}
