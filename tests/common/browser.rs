//! Headless Chromium driven over the DevTools protocol, for the page tests. Needs Debian's
//! `chromium`; [`Browser::launch`] says what is missing and returns `None` (a skip), unless
//! `CALLBOARD_REQUIRE_CHROMIUM=1`, when it fails.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::WAIT;

/// A running headless Chromium with its own profile; killed when dropped.
pub struct Browser(Child, std::path::PathBuf);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn find_chromium() -> Option<String> {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        let ok = Command::new(name)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(name.to_owned());
        }
    }
    None
}

impl Browser {
    /// Starts Chromium (window `width` x `height`) and connects to its page, or `None`
    /// (after saying so) when it is not installed.
    pub async fn launch(tag: &str, width: u32, height: u32) -> Option<(Browser, Cdp)> {
        let Some(chromium) = find_chromium() else {
            let msg = "chromium is not installed: `apt-get update && apt-get install -y chromium` to run this test";
            if std::env::var("CALLBOARD_REQUIRE_CHROMIUM").as_deref() == Ok("1") {
                panic!("{msg} (CALLBOARD_REQUIRE_CHROMIUM=1)");
            }
            eprintln!("SKIPPED: {msg}");
            return None;
        };
        let profile =
            std::env::temp_dir().join(format!("callboard-chromium-{tag}-{}", std::process::id()));
        let mut child = Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
            ])
            .arg(format!("--window-size={width},{height}"))
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        let stderr = child.stderr.take().expect("stderr");
        let browser = Browser(child, profile);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split("DevTools listening on ").nth(1) {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let browser_ws = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("chromium printed its DevTools address");
        let port = browser_ws
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .expect("host:port")
            .to_owned();
        let targets: Value = tokio::time::timeout(WAIT, async {
            reqwest::get(format!("http://{port}/json/list"))
                .await
                .expect("targets")
                .json()
                .await
                .expect("targets JSON")
        })
        .await
        .expect("targets in time");
        let page = targets
            .as_array()
            .expect("target list")
            .iter()
            .find(|t| t["type"] == "page")
            .expect("a page target");
        let (ws, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async(page["webSocketDebuggerUrl"].as_str().expect("url")),
        )
        .await
        .expect("devtools connect in time")
        .expect("devtools connect");
        let mut cdp = Cdp { ws, next_id: 0 };
        cdp.call("Runtime.enable", json!({})).await;
        cdp.call("Page.enable", json!({})).await;
        Some((browser, cdp))
    }
}

/// A DevTools protocol session with one page.
pub struct Cdp {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Cdp {
    /// Calls `method` and returns its answer.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        tokio::time::timeout(WAIT, self.ws.send(Message::text(msg)))
            .await
            .expect("cdp send timed out")
            .expect("cdp send");
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("cdp answer timed out")
                .expect("cdp closed")
                .expect("cdp error");
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(t.as_str()).expect("cdp JSON");
                if v["id"] == id {
                    return v;
                }
            }
        }
    }

    /// Opens `url`.
    pub async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
    }

    /// The value of a JavaScript expression.
    pub async fn eval(&mut self, expr: &str) -> Value {
        let v = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        v["result"]["result"]["value"].clone()
    }

    /// Waits (up to 30 s) until `expr` is true or a non-empty string.
    pub async fn wait_for(&mut self, expr: &str, what: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.eval(expr).await;
            if v.as_bool() == Some(true) || v.as_str().is_some_and(|s| !s.is_empty()) {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG screenshot of the page's viewport.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine;
        let v = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let data = v["result"]["data"].as_str().expect("screenshot data");
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("screenshot base64")
    }
}
