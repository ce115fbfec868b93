//! Session memory: the SDK's session semantics on every implementation, runs through the
//! `Runner` with a session, and the SQLite store's durability, recovery, migrations, errors
//! and concurrency policy.

use std::sync::Arc;
use std::time::Duration;

use callboard::items::{Item, MessageItem};
use callboard::model::scripted::{ScriptedModel, ScriptedTurn};
use callboard::session::sqlite::__migrate_file_to;
use callboard::session::{
    MemorySession, RunEnd, RunStart, RunStatus, Session, SessionError, SqliteStore, StoreOptions,
    DEFAULT_TENANT,
};
use callboard::{Agent, Runner, Usage};
use serde_json::json;

const T: Duration = Duration::from_secs(20);

fn user(t: &str) -> Item {
    Item::Message(MessageItem::user(t))
}

fn assistant(id: &str, t: &str) -> Item {
    Item::Message(MessageItem::assistant(id, t))
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(T, f).await.expect("timed out")
}

/// The implementations under test: each call gives a fresh session with that id.
struct Backends {
    _dir: tempfile::TempDir,
    file: SqliteStore,
    mem: SqliteStore,
}

impl Backends {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = SqliteStore::open(dir.path().join("s.db").to_str().unwrap()).unwrap();
        let mem = SqliteStore::open(":memory:").unwrap();
        Backends {
            _dir: dir,
            file,
            mem,
        }
    }

    fn all(&self, id: &str) -> Vec<(&'static str, Arc<dyn Session>)> {
        vec![
            (
                "memory",
                Arc::new(MemorySession::new(id)) as Arc<dyn Session>,
            ),
            ("sqlite-file", self.file.session(DEFAULT_TENANT, id)),
            ("sqlite-memory", self.mem.session(DEFAULT_TENANT, id)),
        ]
    }
}

#[tokio::test]
async fn direct_add_get_clear() {
    let b = Backends::new();
    for (name, s) in b.all("direct_test") {
        assert_eq!(s.session_id(), "direct_test");
        assert!(s.get_items(None).await.unwrap().is_empty(), "{name}");
        s.add_items(vec![user("Hello"), assistant("msg_1", "Hi there!")])
            .await
            .unwrap();
        let got = s.get_items(None).await.unwrap();
        assert_eq!(
            got,
            vec![user("Hello"), assistant("msg_1", "Hi there!")],
            "{name}"
        );
        s.clear_session().await.unwrap();
        assert!(s.get_items(None).await.unwrap().is_empty(), "{name}");
        // Adding nothing is allowed and changes nothing.
        s.add_items(vec![]).await.unwrap();
        assert!(s.get_items(None).await.unwrap().is_empty(), "{name}");
    }
}

#[tokio::test]
async fn pop_item_newest_first_then_none() {
    let b = Backends::new();
    for (name, s) in b.all("pop_test") {
        assert_eq!(s.pop_item().await.unwrap(), None, "{name}");
        s.add_items(vec![
            user("Hello"),
            assistant("m1", "Hi"),
            user("How are you?"),
        ])
        .await
        .unwrap();
        assert_eq!(s.get_items(None).await.unwrap().len(), 3);
        assert_eq!(
            s.pop_item().await.unwrap(),
            Some(user("How are you?")),
            "{name}"
        );
        assert_eq!(
            s.get_items(None).await.unwrap(),
            vec![user("Hello"), assistant("m1", "Hi")],
            "{name}"
        );
        assert_eq!(s.pop_item().await.unwrap(), Some(assistant("m1", "Hi")));
        assert_eq!(s.pop_item().await.unwrap(), Some(user("Hello")));
        assert_eq!(s.pop_item().await.unwrap(), None, "{name}");
        // A new item after popping comes last.
        s.add_items(vec![user("a")]).await.unwrap();
        s.add_items(vec![user("b")]).await.unwrap();
        assert_eq!(s.pop_item().await.unwrap(), Some(user("b")), "{name}");
    }
}

#[tokio::test]
async fn pop_and_clear_touch_only_their_session() {
    let b = Backends::new();
    let ones = b.all("session_1");
    let twos = b.all("session_2");
    for ((name, s1), (_, s2)) in ones.into_iter().zip(twos) {
        s1.add_items(vec![user("I like cats")]).await.unwrap();
        s2.add_items(vec![user("I like dogs")]).await.unwrap();
        assert_eq!(
            s1.pop_item().await.unwrap(),
            Some(user("I like cats")),
            "{name}"
        );
        assert_eq!(s2.get_items(None).await.unwrap(), vec![user("I like dogs")]);
        s1.add_items(vec![user("again")]).await.unwrap();
        s2.clear_session().await.unwrap();
        assert_eq!(
            s1.get_items(None).await.unwrap(),
            vec![user("again")],
            "{name}"
        );
    }
}

#[tokio::test]
async fn get_items_with_limit() {
    let b = Backends::new();
    for (name, s) in b.all("limit_test") {
        let items: Vec<Item> = (0..5).map(|i| user(&format!("m{i}"))).collect();
        s.add_items(items.clone()).await.unwrap();
        assert_eq!(
            s.get_items(Some(2)).await.unwrap(),
            items[3..].to_vec(),
            "{name}"
        );
        assert_eq!(
            s.get_items(Some(1)).await.unwrap(),
            items[4..].to_vec(),
            "{name}"
        );
        assert_eq!(s.get_items(Some(10)).await.unwrap(), items, "{name}");
        assert_eq!(s.get_items(Some(5)).await.unwrap(), items, "{name}");
        assert!(s.get_items(Some(0)).await.unwrap().is_empty(), "{name}");
        assert_eq!(s.get_items(None).await.unwrap(), items, "{name}");
    }
}

#[tokio::test]
async fn unicode_special_characters_and_sql_injection() {
    let b = Backends::new();
    for (name, s) in b.all("unicode'; DROP TABLE items; --") {
        let tricky = vec![
            user("こんにちは 😊👍 Здравствуйте"),
            user("Robert'); DROP TABLE items; -- \"quoted\" \\ back\\slash \n\t\0nul"),
            Item::Other(json!({"type": "custom_item", "payload": {"k": [1, 2.5, null, "%_"]}})),
        ];
        s.add_items(tricky.clone()).await.unwrap();
        assert_eq!(s.get_items(None).await.unwrap(), tricky, "{name}");
    }
    // The tables are still there.
    let s = b.file.session(DEFAULT_TENANT, "after");
    s.add_items(vec![user("x")]).await.unwrap();
    assert_eq!(s.get_items(None).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_keep_every_batch_whole() {
    let b = Backends::new();
    for (name, s) in b.all("concurrent") {
        let mut tasks = Vec::new();
        for w in 0..8 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                for k in 0..10 {
                    let batch: Vec<Item> =
                        (0..3).map(|j| user(&format!("w{w}-k{k}-j{j}"))).collect();
                    s.add_items(batch).await.unwrap();
                }
            }));
        }
        for t in tasks {
            within(t).await.unwrap();
        }
        let items = s.get_items(None).await.unwrap();
        assert_eq!(items.len(), 8 * 10 * 3, "{name}");
        // Each add_items call's items are contiguous and in order.
        for chunk in items.chunks(3) {
            let texts: Vec<String> = chunk
                .iter()
                .map(|i| {
                    serde_json::to_value(i).unwrap()["content"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                })
                .collect();
            let prefix = texts[0].trim_end_matches("j0");
            assert_eq!(texts[1], format!("{prefix}j1"), "{name}");
            assert_eq!(texts[2], format!("{prefix}j2"), "{name}");
        }
    }
    for store in [&b.file, &b.mem] {
        let st = store.stats();
        assert_eq!(st.items_written, 240);
        assert_eq!(st.writes, 80);
        assert!(st.batches >= 1 && st.batches <= 80, "{st:?}");
        assert!(st.largest_batch >= 1);
        assert_eq!(st.failed_writes, 0);
        assert_eq!(st.queued_writes, 0);
    }
}

#[tokio::test]
async fn tenants_are_isolated() {
    let b = Backends::new();
    let a = b.file.session("acme", "shared-id");
    let z = b.file.session("zeta", "shared-id");
    a.add_items(vec![user("acme's")]).await.unwrap();
    z.add_items(vec![user("zeta's"), user("more")])
        .await
        .unwrap();
    assert_eq!(a.get_items(None).await.unwrap(), vec![user("acme's")]);
    assert_eq!(z.pop_item().await.unwrap(), Some(user("more")));
    let acme = b.file.list_sessions("acme", None).await.unwrap();
    assert_eq!(acme.len(), 1);
    assert_eq!(acme[0].item_count, 1);
    assert!(b.file.delete_session("zeta", "shared-id").await.unwrap());
    assert!(!b.file.delete_session("zeta", "shared-id").await.unwrap());
    assert_eq!(a.get_items(None).await.unwrap(), vec![user("acme's")]);
    assert!(b.file.list_sessions("zeta", None).await.unwrap().is_empty());
}

#[tokio::test]
async fn list_sessions_counts_and_orders() {
    let b = Backends::new();
    for store in [&b.file, &b.mem] {
        let s1 = store.session("t", "one");
        let s2 = store.session("t", "two");
        s1.add_items(vec![user("a"), user("b")]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
        s2.add_items(vec![user("c")]).await.unwrap();
        let list = store.list_sessions("t", None).await.unwrap();
        let ids: Vec<_> = list.iter().map(|s| s.session_id.as_str()).collect();
        assert_eq!(ids, ["two", "one"]);
        assert_eq!(list[0].item_count, 1);
        assert_eq!(list[1].item_count, 2);
        assert!(list[1].created_at <= list[1].updated_at);
        assert_eq!(store.list_sessions("t", Some(1)).await.unwrap().len(), 1);
        s1.clear_session().await.unwrap();
        assert_eq!(store.list_sessions("t", None).await.unwrap().len(), 1);
    }
}

fn text_agent(replies: &[&str]) -> (Agent, Arc<ScriptedModel>) {
    let model = Arc::new(ScriptedModel::new(
        replies
            .iter()
            .map(|r| ScriptedTurn::message(*r, 2))
            .collect(),
    ));
    let agent: Agent = Agent::new("test").model_instance(model.clone());
    (agent, model)
}

#[tokio::test]
async fn runner_with_session_remembers_previous_runs() {
    let b = Backends::new();
    for (name, session) in b.all("runner_session") {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let model = Arc::new(ScriptedModel::from_fn(move |req, _| {
            seen2.lock().unwrap().push(req.input.len());
            let last = match req.input.last() {
                Some(Item::Message(m)) => serde_json::to_value(m).unwrap()["content"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                _ => String::new(),
            };
            ScriptedTurn::message(format!("echo: {last}"), 2)
        }));
        let agent: Agent = Agent::new("test").model_instance(model);
        let runner = Runner::new();
        let r1 = within(
            runner
                .request(&agent, "What city is the Golden Gate Bridge in?")
                .session(session.clone())
                .run(),
        )
        .await
        .unwrap();
        assert_eq!(
            r1.final_output_text(),
            Some("echo: What city is the Golden Gate Bridge in?")
        );
        let r2 = within(
            runner
                .request(&agent, "What state is it in?")
                .session(session.clone())
                .run(),
        )
        .await
        .unwrap();
        assert_eq!(r2.final_output_text(), Some("echo: What state is it in?"));
        // The second run's model saw the first run's question and answer, then its own.
        assert_eq!(*seen.lock().unwrap(), vec![1, 3], "{name}");
        let stored = session.get_items(None).await.unwrap();
        assert_eq!(stored.len(), 4, "{name}");
        assert_eq!(r2.to_input_list(), stored, "{name}");
        // Streamed runs save the same way.
        let streamed = runner
            .request(&agent, "and the country?")
            .session(session.clone())
            .start()
            .unwrap();
        let r3 = within(streamed.wait()).await.unwrap();
        assert_eq!(r3.to_input_list(), session.get_items(None).await.unwrap());
        assert_eq!(session.get_items(None).await.unwrap().len(), 6, "{name}");
    }
}

#[tokio::test]
async fn runner_without_session_has_no_memory() {
    let (agent, _) = text_agent(&["Hello"]);
    let runner = Runner::new();
    let r1 = within(runner.run(&agent, "Hi there")).await.unwrap();
    assert_eq!(r1.input.len(), 1);
    let r2 = within(runner.run(&agent, "Do you remember?"))
        .await
        .unwrap();
    assert_eq!(r2.input.len(), 1);
}

#[tokio::test]
async fn tool_and_handoff_turns_are_stored_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("demo.db");
    let url = format!("sqlite://{}", path.display());
    let expected;
    {
        let store = SqliteStore::open(&url).unwrap();
        let session = store.session("acme", "weather");
        let agent = callboard::demo::cast(Arc::new(callboard::demo::demo_model()));
        let runner = Runner::new();
        let r = within(
            runner
                .request(&agent, "What's the weather in Oslo?")
                .session(session.clone())
                .run(),
        )
        .await
        .unwrap();
        assert_eq!(r.last_agent, "Weather");
        expected = session.get_items(None).await.unwrap();
        assert_eq!(r.to_input_list(), expected);
        let types: Vec<&str> = expected.iter().map(Item::type_name).collect();
        assert!(types.contains(&"function_call"), "{types:?}");
        assert!(types.contains(&"function_call_output"), "{types:?}");
        store.close().await.unwrap();
    }
    let store = SqliteStore::open(&url).unwrap();
    let session = store.session("acme", "weather");
    assert_eq!(session.get_items(None).await.unwrap(), expected);
    let list = store.list_sessions("acme", None).await.unwrap();
    assert_eq!(list[0].item_count as usize, expected.len());
}

#[tokio::test]
async fn reopen_after_drop_keeps_every_item() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    let path = path.to_str().unwrap();
    let mut expected = Vec::new();
    {
        let store = SqliteStore::open(path).unwrap();
        let s = store.session("t", "s");
        for i in 0..50 {
            let turn = vec![user(&format!("q{i}")), assistant(&format!("m{i}"), "a")];
            s.add_items(turn.clone()).await.unwrap();
            expected.extend(turn);
        }
        // Dropped without close: every acknowledged write is already committed.
    }
    let store = SqliteStore::open(path).unwrap();
    assert_eq!(
        store.session("t", "s").get_items(None).await.unwrap(),
        expected
    );
}

fn start(run_id: &str, tenant: &str) -> RunStart {
    RunStart {
        run_id: run_id.into(),
        tenant: tenant.into(),
        session_id: Some("s".into()),
        starting_agent: "Triage".into(),
        trace_id: Some("trace_0123".into()),
        seq_reserved: None,
        status: RunStatus::Running,
        request: None,
        node_id: None,
    }
}

#[tokio::test]
async fn run_records_and_crash_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.db");
    let path = path.to_str().unwrap();
    {
        let store = SqliteStore::open(path).unwrap();
        assert_eq!(store.recovered_runs(), 0);
        store
            .record_run_start(start("run_done", "acme"))
            .await
            .unwrap();
        store
            .record_run_start(start("run_failed", "acme"))
            .await
            .unwrap();
        store
            .record_run_start(start("run_inflight", "acme"))
            .await
            .unwrap();
        let running = store
            .get_run("acme", "run_inflight")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(running.status, RunStatus::Running);
        assert_eq!(running.last_agent.as_deref(), Some("Triage"));
        let usage = Usage {
            requests: 2,
            input_tokens: 10,
            output_tokens: 5,
            total_tokens: 15,
            ..Default::default()
        };
        assert!(store
            .record_run_end(
                "acme",
                "run_done",
                RunEnd::completed(json!("Sunny"), "Weather", usage.clone())
            )
            .await
            .unwrap());
        let err = callboard::AgentsError::MaxTurnsExceeded { max_turns: 3 };
        assert!(store
            .record_run_end("acme", "run_failed", RunEnd::failed(&err, None, None))
            .await
            .unwrap());
        // Ending twice, or another tenant's run, changes nothing.
        assert!(!store
            .record_run_end("acme", "run_done", RunEnd::cancelled(None, None))
            .await
            .unwrap());
        assert!(!store
            .record_run_end("zeta", "run_inflight", RunEnd::cancelled(None, None))
            .await
            .unwrap());
        let done = store.get_run("acme", "run_done").await.unwrap().unwrap();
        assert_eq!(done.status, RunStatus::Completed);
        assert_eq!(done.final_output, Some(json!("Sunny")));
        assert_eq!(done.last_agent.as_deref(), Some("Weather"));
        assert_eq!(done.usage, Some(usage));
        assert_eq!(done.trace_id.as_deref(), Some("trace_0123"));
        assert!(done.finished_at.is_some());
        let failed = store.get_run("acme", "run_failed").await.unwrap().unwrap();
        assert_eq!(failed.status, RunStatus::Failed);
        let e = failed.error.unwrap();
        assert_eq!(e.error_type, "MaxTurnsExceeded");
        assert_eq!(e.message, "Max turns (3) exceeded");
        assert_eq!(store.get_run("zeta", "run_done").await.unwrap(), None);
        // The process "crashes" here: run_inflight never gets an end.
    }
    let store = SqliteStore::open(path).unwrap();
    assert_eq!(store.recovered_runs(), 1);
    let r = store
        .get_run("acme", "run_inflight")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, RunStatus::Interrupted);
    assert_eq!(r.error.unwrap().error_type, "Interrupted");
    assert!(r.finished_at.is_some());
    assert!(!store
        .record_run_end("acme", "run_inflight", RunEnd::cancelled(None, None))
        .await
        .unwrap());
    let done = store.get_run("acme", "run_done").await.unwrap().unwrap();
    assert_eq!(done.status, RunStatus::Completed);
    // The JSON the server shows.
    let v = serde_json::to_value(&done).unwrap();
    assert_eq!(v["status"], "completed");
    assert_eq!(v["usage"]["total_tokens"], 15);
    // New runs work after recovery.
    tokio::time::sleep(Duration::from_millis(3)).await;
    store
        .record_run_start(start("run_new", "acme"))
        .await
        .unwrap();
    drop(store);
    assert_eq!(SqliteStore::open(path).unwrap().recovered_runs(), 1);
}

#[tokio::test]
async fn run_end_from_outcome() {
    use callboard::run::RunOutcome;
    let usage = Usage::default();
    let e = RunEnd::from_outcome(
        &RunOutcome::Completed {
            final_output: json!("hi"),
            last_agent: "B".into(),
        },
        "A",
        usage.clone(),
    );
    assert_eq!(e.status, RunStatus::Completed);
    assert_eq!(e.last_agent.as_deref(), Some("B"));
    let e = RunEnd::from_outcome(
        &RunOutcome::Cancelled(callboard::CancelMode::AfterTurn),
        "A",
        usage.clone(),
    );
    assert_eq!(e.status, RunStatus::Cancelled);
    let e = RunEnd::from_outcome(
        &RunOutcome::Failed(callboard::AgentsError::ModelBehaviorError("bad".into())),
        "A",
        usage,
    );
    assert_eq!(e.error.unwrap().error_type, "ModelBehaviorError");
}

#[tokio::test]
async fn older_schema_is_migrated_and_newer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    // A file as release 1 wrote it: sessions and items, no runs table.
    __migrate_file_to(&path, 1).unwrap();
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute("INSERT INTO sessions VALUES ('t', 's', 1, 1)", [])
            .unwrap();
        c.execute(
            "INSERT INTO items (tenant, session_id, item, created_at)
             VALUES ('t', 's', '{\"role\":\"user\",\"content\":\"from v1\"}', 1)",
            [],
        )
        .unwrap();
        let has_runs: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'runs'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(has_runs, 0);
    }
    let store = SqliteStore::open(path.to_str().unwrap()).unwrap();
    assert_eq!(
        store.session("t", "s").get_items(None).await.unwrap(),
        vec![user("from v1")]
    );
    store.record_run_start(start("r1", "t")).await.unwrap();
    assert!(store.get_run("t", "r1").await.unwrap().is_some());
    store.close().await.unwrap();
    drop(store);
    // A file from a future release.
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute(
            "INSERT INTO callboard_schema (version, applied_at) VALUES (99, 0)",
            [],
        )
        .unwrap();
    }
    match SqliteStore::open(path.to_str().unwrap()) {
        Err(e @ SessionError::Schema { found: 99, .. }) => {
            assert!(e.to_string().contains("upgrade callboard"), "{e}")
        }
        other => panic!("expected a schema error, got {other:?}"),
    }
}

#[tokio::test]
async fn corrupt_and_unwritable_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0xA5u8; 64 * 1024]).unwrap();
    match SqliteStore::open(garbage.to_str().unwrap()) {
        Err(e @ SessionError::Corrupt { .. }) => {
            let m = e.to_string();
            assert!(m.contains("garbage.db") && m.contains("corrupt"), "{m}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // A text file is not a database either.
    let text = dir.path().join("notes.txt");
    std::fs::write(
        &text,
        "these are not the bytes you are looking for\n".repeat(200),
    )
    .unwrap();
    assert!(matches!(
        SqliteStore::open(text.to_str().unwrap()),
        Err(SessionError::Corrupt { .. })
    ));
    // The directory does not exist (its "parent" is a regular file).
    let under_file = text.join("sub").join("s.db");
    match SqliteStore::open(under_file.to_str().unwrap()) {
        Err(e @ SessionError::Open { .. }) => {
            assert!(e.to_string().contains("writable"), "{e}")
        }
        other => panic!("expected Open, got {other:?}"),
    }
    assert!(matches!(
        SqliteStore::open(dir.path().to_str().unwrap()),
        Err(SessionError::Open { .. })
    ));
    assert!(matches!(
        SqliteStore::open("sqlite://"),
        Err(SessionError::Open { .. })
    ));
}

#[tokio::test]
async fn url_forms() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("u.db");
    for url in [
        format!("sqlite://{}", p.display()),
        format!("sqlite:{}", p.display()),
        format!("sqlite://{}?mode=rwc", p.display()),
        p.display().to_string(),
    ] {
        let store = SqliteStore::open(&url).unwrap();
        assert_eq!(store.location(), p.display().to_string());
        store.close().await.unwrap();
    }
    for url in [":memory:", "sqlite://:memory:", "sqlite::memory:"] {
        assert_eq!(SqliteStore::open(url).unwrap().location(), ":memory:");
    }
    let store = SqliteStore::open_async(p.to_str().unwrap(), StoreOptions::default())
        .await
        .unwrap();
    assert_eq!(store.location(), p.display().to_string());
}

#[tokio::test]
async fn closed_store_refuses_writes_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("c.db").to_str().unwrap()).unwrap();
    let s = store.session("t", "s");
    s.add_items(vec![user("kept")]).await.unwrap();
    store.close().await.unwrap();
    assert!(matches!(
        s.add_items(vec![]).await,
        Err(SessionError::Closed)
    ));
    assert!(matches!(s.pop_item().await, Err(SessionError::Closed)));
    assert!(matches!(s.get_items(None).await, Err(SessionError::Closed)));
    assert!(matches!(
        store.list_sessions("t", None).await,
        Err(SessionError::Closed)
    ));
    // Closing twice is fine.
    store.close().await.unwrap();
    let mem = SqliteStore::open(":memory:").unwrap();
    mem.close().await.unwrap();
    assert!(matches!(
        mem.session("t", "s").get_items(None).await,
        Err(SessionError::Closed)
    ));
}

#[tokio::test]
async fn full_durability_works_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("n.db");
    let opts = StoreOptions {
        durability: callboard::session::Durability::Full,
        ..StoreOptions::default()
    };
    {
        let store = SqliteStore::open_with(path.to_str().unwrap(), opts.clone()).unwrap();
        store
            .session("t", "s")
            .add_items(vec![user("x")])
            .await
            .unwrap();
    }
    let store = SqliteStore::open_with(path.to_str().unwrap(), opts).unwrap();
    assert_eq!(
        store.session("t", "s").get_items(None).await.unwrap().len(),
        1
    );
}

#[tokio::test]
async fn background_checkpoint_moves_items_into_the_main_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ck.db");
    let opts = StoreOptions {
        checkpoint_interval: Duration::from_millis(20),
        ..StoreOptions::default()
    };
    let store = SqliteStore::open_with(path.to_str().unwrap(), opts).unwrap();
    let s = store.session("t", "s");
    s.add_items(vec![user("checkpointed")]).await.unwrap();
    // The main file alone (without its WAL) holds the item once a checkpoint has run.
    let copy = dir.path().join("copy.db");
    let mut found = 0;
    for _ in 0..250 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        std::fs::copy(&path, &copy).unwrap();
        let c = rusqlite::Connection::open(&copy).unwrap();
        found = c
            .query_row("SELECT COUNT(*) FROM items", [], |r| r.get::<_, i64>(0))
            .unwrap_or(0);
        drop(c);
        let _ = std::fs::remove_file(&copy);
        if found == 1 {
            break;
        }
    }
    assert_eq!(found, 1, "no checkpoint within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_run_on_a_busy_session_is_refused() {
    let store = SqliteStore::open(":memory:").unwrap();
    let model = Arc::new(
        ScriptedModel::new(vec![ScriptedTurn::message("slow answer", 10)])
            .with_delay(Duration::from_millis(5)),
    );
    let agent: Agent = Agent::new("slow").model_instance(model);
    let runner = Runner::new();
    let claim = store.try_claim("t", "chat").unwrap();
    let first = runner
        .request(&agent, "first")
        .session(store.session("t", "chat"))
        .start()
        .unwrap();
    // While the first run holds the session, a second is refused with Busy.
    match store.try_claim("t", "chat") {
        Err(e @ SessionError::Busy(_)) => assert!(e.to_string().contains("chat")),
        other => panic!("expected Busy, got {other:?}"),
    }
    within(first.wait()).await.unwrap();
    drop(claim);
    let _again = store.try_claim("t", "chat").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_runs_on_one_session_never_interleave() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("q.db").to_str().unwrap()).unwrap();
    let model = Arc::new(
        ScriptedModel::from_fn(|req, _| {
            let n = req.input.len();
            ScriptedTurn::message(format!("answer to {n} items"), 4)
        })
        .with_delay(Duration::from_millis(2)),
    );
    let agent: Agent = Agent::new("q").model_instance(model);
    let runner = Runner::new();
    let mut tasks = Vec::new();
    for i in 0..4 {
        let store = store.clone();
        let runner = runner.clone();
        let agent = agent.clone();
        tasks.push(tokio::spawn(async move {
            let _claim = store
                .locks()
                .claim("t", "q", Duration::from_secs(10))
                .await
                .unwrap();
            runner
                .request(&agent, format!("question {i}"))
                .session(store.session("t", "q"))
                .run()
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        within(t).await.unwrap();
    }
    let items = store.session("t", "q").get_items(None).await.unwrap();
    assert_eq!(items.len(), 8);
    // user, assistant, user, assistant...: every run's pair is together, and each run saw
    // all the earlier runs' items.
    for (k, pair) in items.chunks(2).enumerate() {
        let u = serde_json::to_value(&pair[0]).unwrap();
        let a = serde_json::to_value(&pair[1]).unwrap();
        assert_eq!(u["role"], "user");
        assert!(u["content"].as_str().unwrap().starts_with("question "));
        assert_eq!(a["role"], "assistant");
        let text = a["content"][0]["text"].as_str().unwrap().to_owned();
        assert_eq!(text, format!("answer to {} items", 2 * k + 1));
    }
}

const CHILD_ENV: &str = "CALLBOARD_SIGKILL_CHILD_DB";

/// Not a test of its own: the child process of `sigkill_mid_write_loses_no_committed_turn`.
#[test]
fn sigkill_child_writer() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        use std::io::Write;
        let store = SqliteStore::open(&path).unwrap();
        store.record_run_start(start("run_killed", "t")).await.unwrap();
        let s = store.session("t", "s");
        for i in 0u64.. {
            let turn = vec![
                user(&format!("q{i}")),
                Item::Other(json!({"type": "function_call", "call_id": format!("c{i}"), "name": "f", "arguments": "{}"})),
                assistant(&format!("m{i}"), &"x".repeat(200)),
            ];
            s.add_items(turn).await.unwrap();
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "committed {i}");
            let _ = out.flush();
        }
    });
}

#[test]
fn sigkill_mid_write_loses_no_committed_turn() {
    use std::io::BufRead;
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("killed.db");
    let exe = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new(exe)
        .args([
            "sigkill_child_writer",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(n) = line.strip_prefix("committed ") {
                if let Ok(n) = n.trim().parse::<u64>() {
                    if tx.send(n).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut last = None;
    while last.is_none_or(|n| n < 300) {
        match rx.recv_timeout(T) {
            Ok(n) => last = Some(n),
            Err(e) => {
                let _ = child.kill();
                panic!("the child stopped reporting commits: {e}");
            }
        }
    }
    // SIGKILL in the middle of the stream of writes.
    child.kill().unwrap();
    let _ = child.wait();
    while let Ok(n) = rx.try_recv() {
        last = Some(n);
    }
    let last = last.unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(path.to_str().unwrap()).unwrap();
        assert_eq!(store.recovered_runs(), 1);
        let run = store.get_run("t", "run_killed").await.unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Interrupted);
        let items = store.session("t", "s").get_items(None).await.unwrap();
        // Every acknowledged turn is there, whole; at most the turns in flight beyond it.
        assert!(
            items.len() as u64 >= 3 * (last + 1),
            "{} < {}",
            items.len(),
            3 * (last + 1)
        );
        assert_eq!(items.len() % 3, 0, "a turn was torn");
        for (i, turn) in items.chunks(3).enumerate() {
            assert_eq!(turn[0], user(&format!("q{i}")));
        }
        // The store takes new writes after the crash.
        store
            .session("t", "s")
            .add_items(vec![user("after")])
            .await
            .unwrap();
    });
}

/// A run that ends before anyone waits on it still reports completion (the `done` flag is
/// stored even with no receiver); a run waited on after it ended used to hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_short_runs_all_finish() {
    let model = Arc::new(ScriptedModel::new(vec![ScriptedTurn::message("ok", 1)]));
    let agent: Agent = Agent::new("quick").model_instance(model);
    let runner = Runner::new();
    for i in 0..200 {
        let run = runner.request(&agent, "hi").start().unwrap();
        if i % 2 == 0 {
            // Let the run finish before waiting on it.
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        tokio::time::timeout(Duration::from_secs(10), run.wait())
            .await
            .unwrap_or_else(|_| panic!("run {i} never finished"))
            .unwrap();
    }
}

/// A write that fails (here a trigger refuses it, as a full disk would) reports an error,
/// leaves none of its items behind, and does not hold back the writes batched with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_write_is_atomic_and_spares_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.db");
    let store = SqliteStore::open(path.to_str().unwrap()).unwrap();
    let s = store.session("t", "s");
    s.add_items(vec![user("before")]).await.unwrap();
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TRIGGER no_boom BEFORE INSERT ON items WHEN NEW.item LIKE '%boom%'
             BEGIN SELECT RAISE(ABORT, 'boom refused'); END;",
        )
        .unwrap();
    }
    match s
        .add_items(vec![user("ok1"), user("boom"), user("ok2")])
        .await
    {
        Err(SessionError::Store(m)) => assert!(m.contains("boom refused"), "{m}"),
        other => panic!("expected a store error, got {other:?}"),
    }
    assert_eq!(s.get_items(None).await.unwrap(), vec![user("before")]);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let s = store.session("t", &format!("c{i}"));
            let text = if i == 7 {
                "boom".to_owned()
            } else {
                format!("w{i}")
            };
            s.add_items(vec![user(&text), user("second")]).await
        }));
    }
    let mut failed = 0;
    for t in tasks {
        if within(t).await.unwrap().is_err() {
            failed += 1;
        }
    }
    assert_eq!(failed, 1);
    for i in 0..16 {
        let got = store
            .session("t", &format!("c{i}"))
            .get_items(None)
            .await
            .unwrap();
        assert_eq!(got.len(), if i == 7 { 0 } else { 2 }, "session c{i}");
    }
    s.add_items(vec![user("after")]).await.unwrap();
    assert_eq!(s.get_items(None).await.unwrap().len(), 2);
    assert_eq!(store.stats().failed_writes, 2);
}
