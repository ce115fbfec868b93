//! The Python client (`clients/python`, module `callboard_client`) against the real server:
//! its pytest suite runs on a server started here (the demo cast on the scripted model, 20 ms
//! per text delta): the SDK's `chat_stream` example, events with the SDK's attributes, a
//! dropped connection that resumes with nothing lost or repeated, cancel, an auth error.
//!
//! Needs `python3` with `websockets` and `pytest` (`pip install ./clients/python pytest`;
//! add `openai` to check openai's own event classes). Without them it says what is missing
//! and skips, unless `CALLBOARD_REQUIRE_PYTHON=1` (then it fails).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CONFIG: &str = r#"
[[auth.keys]]
key = "key-acme"
tenant = "acme"

[models.default]
provider = "scripted"
delay_ms = 20
"#;

/// Why the Python tests cannot run here, if they cannot.
fn missing() -> Option<String> {
    let out = Command::new("python3")
        .args(["-c", "import websockets, pytest"])
        .output();
    match out {
        Err(e) => Some(format!(
            "`python3` could not be run ({e}); install Python 3.9 or later"
        )),
        Ok(o) if !o.status.success() => Some(format!(
            "python3 lacks a package ({}); run `pip install ./clients/python pytest`",
            String::from_utf8_lossy(&o.stderr)
                .trim()
                .lines()
                .last()
                .unwrap_or("")
        )),
        Ok(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_against_a_real_server() {
    if let Some(why) = missing() {
        if std::env::var("CALLBOARD_REQUIRE_PYTHON").as_deref() == Ok("1") {
            panic!("CALLBOARD_REQUIRE_PYTHON=1 but {why}");
        }
        eprintln!("skipping the Python client tests: {why}");
        return;
    }
    let srv = common::start(CONFIG).await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python");
    let mut child = Command::new("python3")
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
        .current_dir(&dir)
        // The tree's package, whatever an earlier `pip install` left in site-packages.
        .env("PYTHONPATH", &dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("CALLBOARD_URL", format!("http://{}", srv.addr))
        .env("CALLBOARD_KEY", "key-acme")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python3");
    let read = |p: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut p) = p {
                let _ = p.read_to_string(&mut s);
            }
            s
        })
    };
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for python3") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the Python tests ran over 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = format!(
        "{}{}",
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default()
    );
    assert!(
        status.success(),
        "the Python client's tests failed:\n{text}"
    );
    if std::env::var("CALLBOARD_REQUIRE_PYTHON").as_deref() == Ok("1") {
        // CI installs openai too, so the openai-typed events are checked there.
        assert!(!text.contains(" skipped"), "a Python test skipped:\n{text}");
    }
    eprintln!("{text}");
}
