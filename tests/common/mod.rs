//! Test helpers: a real server on 127.0.0.1:0 built with the production `app`, and a small
//! WebSocket client. Every wait has a timeout.
#![allow(dead_code)]

pub mod browser;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use callboard::config::Config;
use callboard::server::{serve, Core};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single wait may take.
pub const WAIT: Duration = Duration::from_secs(30);

/// A running server.
pub struct TestServer {
    pub addr: SocketAddr,
    pub core: Arc<Core>,
    stop: Option<oneshot::Sender<()>>,
    pub handle: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: Option<tempfile::TempDir>,
    /// The PostgreSQL schema of its store, dropped with the server.
    _schema: Option<PgSchema>,
}

impl TestServer {
    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }
    /// Starts graceful shutdown.
    pub fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A config with two tenants' keys and the demo cast on the scripted demo model.
pub const TWO_TENANTS: &str = r#"
[[auth.keys]]
key = "key-acme"
tenant = "acme"

[[auth.keys]]
key = "key-globex"
tenant = "globex"

[[auth.keys]]
key = "key-ops"
tenant = "ops"
admin = true

[models.default]
provider = "scripted"
"#;

/// Which session store a test server keeps its sessions in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// `[sessions] store = "memory"`.
    Memory,
    /// An SQLite file in a temporary folder.
    Sqlite,
    /// A schema of its own in the test PostgreSQL database (see [`postgres_url`]).
    Postgres,
}

/// The PostgreSQL database the tests use: `CALLBOARD_TEST_POSTGRES`, by default
/// `postgres://postgres@127.0.0.1:5432/test` (trust auth).
pub fn postgres_url() -> String {
    std::env::var("CALLBOARD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Whether the test PostgreSQL answers. When it does not, the test is skipped with a message
/// saying how to get it, unless `CALLBOARD_REQUIRE_POSTGRES=1`, which makes it a failure.
pub async fn postgres_ready() -> bool {
    if cfg!(not(feature = "postgres")) {
        eprintln!("skipped: callboard was built without the `postgres` feature (on by default)");
        return false;
    }
    let url = postgres_url();
    let authority = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .map(|a| a.rsplit('@').next().unwrap_or(a).to_owned())
        .unwrap_or_default();
    let reachable = matches!(
        tokio::time::timeout(
            Duration::from_secs(3),
            tokio::net::TcpStream::connect(authority.as_str())
        )
        .await,
        Ok(Ok(_))
    );
    if reachable {
        return true;
    }
    let msg = format!(
        "PostgreSQL is not reachable at {url}: install and start it (Debian: apt-get install postgresql; service postgresql start) or set CALLBOARD_TEST_POSTGRES"
    );
    if std::env::var("CALLBOARD_REQUIRE_POSTGRES").as_deref() == Ok("1") {
        panic!("{msg} (CALLBOARD_REQUIRE_POSTGRES=1)");
    }
    eprintln!("skipped: {msg}");
    false
}

/// A fresh schema name for one test's PostgreSQL store.
pub fn fresh_schema() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "t_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    )
}

/// Runs `sql` on the test database at `url` (a schema's URL runs it in that schema).
#[cfg(feature = "postgres")]
pub async fn pg_execute(url: &str, sql: &str) {
    tokio::time::timeout(WAIT, callboard::session::postgres::__execute(url, sql))
        .await
        .expect("PostgreSQL answered in time")
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// A test's PostgreSQL schema, dropped (with its tables) when this is dropped.
pub struct PgSchema {
    /// The schema's name.
    pub name: String,
}

impl PgSchema {
    /// A new schema name (created by the store that opens it).
    pub fn new() -> Self {
        PgSchema {
            name: fresh_schema(),
        }
    }
    /// The store URL that keeps its tables in this schema.
    pub fn url(&self) -> String {
        format!("{}?schema={}", postgres_url(), self.name)
    }
}

impl Default for PgSchema {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let name = self.name.clone();
        // On a thread of its own: Drop may run inside the test's runtime.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                #[cfg(feature = "postgres")]
                {
                    let r = rt.block_on(async {
                        tokio::time::timeout(
                            WAIT,
                            callboard::session::postgres::__drop_schema(&postgres_url(), &name),
                        )
                        .await
                    });
                    if !matches!(r, Ok(Ok(()))) {
                        eprintln!("could not drop the test schema {name}: {r:?}");
                    }
                }
                let _ = (rt, name);
            }
        })
        .join();
    }
}

thread_local! {
    static STORE: std::cell::Cell<StoreKind> = const { std::cell::Cell::new(StoreKind::Memory) };
}

/// Makes the servers this test thread starts keep sessions in `kind` (see `on_both_stores!`).
pub fn set_store(kind: StoreKind) {
    STORE.with(|s| s.set(kind));
}

/// The store kind servers of this test thread use.
pub fn store_kind() -> StoreKind {
    STORE.with(|s| s.get())
}

/// Each test inside runs on every store: memory, an SQLite file and a PostgreSQL schema of its
/// own (`NAME::memory`, `NAME::sqlite`, `NAME::postgres`), so every rule is checked on each.
/// The PostgreSQL run is skipped when PostgreSQL is not reachable, unless
/// `CALLBOARD_REQUIRE_POSTGRES=1`.
#[macro_export]
macro_rules! on_both_stores {
    ($(async fn $name:ident() $body:block)*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                $crate::common::set_store($crate::common::StoreKind::Memory);
                $body
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $crate::common::set_store($crate::common::StoreKind::Sqlite);
                $body
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if !$crate::common::postgres_ready().await {
                    return;
                }
                $crate::common::set_store($crate::common::StoreKind::Postgres);
                $body
            }
        }
    )*};
}

/// Starts a server on `toml`, its sessions in this thread's store kind.
pub async fn start(toml: &str) -> TestServer {
    let cfg = Config::parse("test.toml", toml).unwrap_or_else(|e| panic!("{e}"));
    #[cfg_attr(not(feature = "postgres"), allow(unused_mut))]
    let mut schema = None;
    let (core, dir) = match store_kind() {
        StoreKind::Memory => (Core::new(cfg).unwrap_or_else(|e| panic!("{e}")), None),
        #[cfg(not(feature = "postgres"))]
        StoreKind::Postgres => panic!("built without the `postgres` feature"),
        #[cfg(feature = "postgres")]
        StoreKind::Postgres => {
            let s = PgSchema::new();
            let store = tokio::time::timeout(WAIT, callboard::session::PgStore::open(&s.url()))
                .await
                .expect("PostgreSQL store opened in time")
                .unwrap_or_else(|e| panic!("{e}"));
            schema = Some(s);
            let core =
                Core::with_store(cfg, std::sync::Arc::new(store)).unwrap_or_else(|e| panic!("{e}"));
            (core, None)
        }
        StoreKind::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("sessions.db");
            let store = callboard::session::SqliteStore::open(path.to_str().unwrap())
                .unwrap_or_else(|e| panic!("{e}"));
            let core =
                Core::with_store(cfg, std::sync::Arc::new(store)).unwrap_or_else(|e| panic!("{e}"));
            (core, Some(dir))
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(serve(listener, core.clone(), async move {
        let _ = rx.await;
    }));
    TestServer {
        addr,
        core,
        stop: Some(tx),
        handle,
        _dir: dir,
        _schema: schema,
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket with an API key (or none).
pub async fn connect(srv: &TestServer, key: Option<&str>) -> Ws {
    try_connect(srv, key)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

pub async fn try_connect(
    srv: &TestServer,
    key: Option<&str>,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut req = srv.ws_url().into_client_request()?;
    if let Some(k) = key {
        req.headers_mut()
            .insert("authorization", format!("Bearer {k}").parse().unwrap());
    }
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("connect timed out")?;
    Ok(ws)
}

pub async fn send(ws: &mut Ws, v: Value) {
    tokio::time::timeout(WAIT, ws.send(Message::text(v.to_string())))
        .await
        .expect("send timed out")
        .expect("send failed");
}

pub async fn send_raw(ws: &mut Ws, text: String) {
    tokio::time::timeout(WAIT, ws.send(Message::text(text)))
        .await
        .expect("send timed out")
        .expect("send failed");
}

/// The next JSON text frame.
pub async fn recv(ws: &mut Ws) -> Value {
    // One deadline for the text frame, so that pings and pongs cannot keep a stuck test waiting.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("no frame in time")
            .expect("socket ended")
            .expect("socket error");
        match m {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("frame is JSON"),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => continue,
        }
    }
}

/// Frames until (and including) the first one whose `type` is in `types`; subscription
/// answers (`session.subscribed`) are skipped unless asked for.
pub async fn recv_until(ws: &mut Ws, types: &[&str]) -> Vec<Value> {
    let mut v = Vec::new();
    loop {
        let f = recv(ws).await;
        if f["type"] == "session.subscribed" && !types.contains(&"session.subscribed") {
            continue;
        }
        let done = types.contains(&f["type"].as_str().unwrap_or(""));
        v.push(f);
        if done {
            return v;
        }
    }
}

/// Frames of a run until its end frame.
pub async fn recv_run(ws: &mut Ws) -> Vec<Value> {
    recv_until(ws, &["run.completed", "run.failed", "run.cancelled"]).await
}

pub fn run_create(id: &str, session: &str, agent: &str, input: &str) -> Value {
    serde_json::json!({"type":"run.create","id":id,"session_id":session,"agent":agent,"input":input})
}

/// A WebSocket over a socket with a tiny receive buffer (a client that reads slowly).
pub async fn connect_small_buffer(srv: &TestServer, rcvbuf: u32) -> Ws {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(rcvbuf).unwrap();
    let stream = sock.connect(srv.addr).await.unwrap();
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(srv.ws_url(), MaybeTlsStream::Plain(stream)),
    )
    .await
    .expect("connect timed out")
    .expect("connect failed");
    ws
}

/// Frames of a run until its end, resubscribing after `lagged` notices.
pub async fn recv_run_resuming(ws: &mut Ws, session: &str) -> Vec<Value> {
    let mut v = Vec::new();
    loop {
        let f = recv(ws).await;
        match f["type"].as_str().unwrap_or("") {
            "lagged" => {
                let after = f["resume_after_seq"].as_u64().unwrap();
                send(
                    ws,
                    serde_json::json!({"type":"session.subscribe","session_id":session,"after_seq":after}),
                )
                .await;
            }
            "run.completed" | "run.failed" | "run.cancelled" => {
                v.push(f);
                return v;
            }
            "session.subscribed" => {}
            _ => v.push(f),
        }
    }
}

/// The real `callboard` binary serving `config_path`, run in the config's folder (where its
/// default database files go); killed when dropped.
pub struct Binary {
    /// The process.
    pub child: std::process::Child,
    /// `host:port` it listens on.
    pub addr: String,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `callboard serve --config config_path` with `envs` and waits for its banner.
pub fn spawn_binary(config_path: &std::path::Path, envs: &[(&str, &str)]) -> Binary {
    spawn_binary_logged(config_path, envs).0
}

/// [`spawn_binary`], keeping every line the server writes to standard error (its logs).
pub fn spawn_binary_logged(
    config_path: &std::path::Path,
    envs: &[(&str, &str)],
) -> (Binary, Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader};
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_callboard"));
    cmd.args(["serve", "--config"])
        .arg(config_path)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    if let Some(dir) = config_path.parent() {
        cmd.current_dir(dir);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start the binary");
    let stderr = child.stderr.take().expect("stderr");
    let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = lines.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
            }
            kept.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    });
    let addr = rx.recv_timeout(WAIT).expect("server start banner");
    (Binary { child, addr }, lines)
}
