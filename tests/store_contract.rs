//! Every session store answers the same: the memory store, SQLite and PostgreSQL (each test
//! in a schema of its own) are put through one set of rules — items, tenants, run records,
//! a turn saved with the run's progress in one write, numbering and runs in flight across a
//! reopen. The PostgreSQL runs skip when PostgreSQL is not reachable, unless
//! `CALLBOARD_REQUIRE_POSTGRES=1`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use callboard::items::{Item, MessageItem};
use callboard::session::{
    MemoryStore, PgStore, RunEnd, RunQuery, RunStart, RunStatus, RunUpdate, SessionError,
    SessionMeta, SqliteStore, Store, StoreOptions, TurnRecord,
};
use callboard::Usage;
use common::PgSchema;
use serde_json::json;

const T: Duration = Duration::from_secs(30);

fn user(t: &str) -> Item {
    Item::Message(MessageItem::user(t))
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(T, f).await.expect("timed out")
}

/// Where a store lives, so a test can open it again.
enum Place {
    Memory(Arc<MemoryStore>),
    Sqlite(tempfile::TempDir),
    Postgres(PgSchema),
}

impl Place {
    async fn open(&self) -> Arc<dyn Store> {
        match self {
            Place::Memory(m) => m.clone(),
            // As the server opens it: runs in flight are the service's to take up again.
            Place::Sqlite(dir) => Arc::new(
                SqliteStore::open_with(
                    dir.path().join("s.db").to_str().unwrap(),
                    StoreOptions {
                        recover_interrupted_runs: false,
                        ..StoreOptions::default()
                    },
                )
                .unwrap_or_else(|e| panic!("{e}")),
            ),
            Place::Postgres(s) => Arc::new(
                within(PgStore::open(&s.url()))
                    .await
                    .unwrap_or_else(|e| panic!("{e}")),
            ),
        }
    }
}

/// The stores under test (PostgreSQL only when reachable or required).
async fn places() -> Vec<(&'static str, Place)> {
    let mut v = vec![
        (
            "memory",
            Place::Memory(Arc::new(MemoryStore::new(100, 100))),
        ),
        ("sqlite", Place::Sqlite(tempfile::tempdir().unwrap())),
    ];
    if common::postgres_ready().await {
        v.push(("postgres", Place::Postgres(PgSchema::new())));
    }
    v
}

fn start(run_id: &str, tenant: &str, session: &str) -> RunStart {
    RunStart {
        run_id: run_id.into(),
        tenant: tenant.into(),
        session_id: Some(session.into()),
        starting_agent: "Triage".into(),
        trace_id: Some("trace_0123".into()),
        seq_reserved: None,
        status: RunStatus::Running,
        request: None,
        node_id: Some("node-a".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_pop_clear_limit_and_tenants() {
    for (name, place) in places().await {
        let store = place.open().await;
        let a = store.session("acme", "shared'; DROP TABLE items; --");
        let z = store.session("zeta", "shared'; DROP TABLE items; --");
        a.add_items(vec![user("one"), user("two"), user("three")])
            .await
            .unwrap();
        z.add_items(vec![user("zeta's")]).await.unwrap();
        assert_eq!(
            a.get_items(Some(2)).await.unwrap(),
            vec![user("two"), user("three")],
            "{name}"
        );
        assert_eq!(a.pop_item().await.unwrap(), Some(user("three")), "{name}");
        assert_eq!(
            z.get_items(None).await.unwrap(),
            vec![user("zeta's")],
            "{name}"
        );
        let listed = store.list_sessions("acme", 10).await.unwrap();
        assert_eq!(listed.len(), 1, "{name}");
        assert_eq!(listed[0].item_count, 2, "{name}");
        assert!(
            store.delete_session("zeta", z.session_id()).await.unwrap(),
            "{name}"
        );
        assert!(
            !store.delete_session("zeta", z.session_id()).await.unwrap(),
            "{name}"
        );
        assert_eq!(a.get_items(None).await.unwrap().len(), 2, "{name}");
        a.clear_session().await.unwrap();
        assert_eq!(a.pop_item().await.unwrap(), None, "{name}");
        assert!(
            store.list_sessions("acme", 10).await.unwrap().is_empty(),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_keep_each_batch_together() {
    for (name, place) in places().await {
        let store = place.open().await;
        let s = store.session("t", "busy");
        let mut tasks = Vec::new();
        for w in 0..6 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                for k in 0..8 {
                    let batch = (0..3).map(|j| user(&format!("{w}-{k}-{j}"))).collect();
                    s.add_items(batch).await.unwrap();
                }
            }));
        }
        for t in tasks {
            within(t).await.unwrap();
        }
        let items = s.get_items(None).await.unwrap();
        assert_eq!(items.len(), 6 * 8 * 3, "{name}");
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
            let prefix = texts[0].trim_end_matches('0');
            assert_eq!(texts[1], format!("{prefix}1"), "{name}");
            assert_eq!(texts[2], format!("{prefix}2"), "{name}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_records_end_once_and_stay_in_their_tenant() {
    for (name, place) in places().await {
        let store = place.open().await;
        // One running run per session (the PostgreSQL store refuses a second).
        for (id, session) in [("run_a", "s0"), ("run_b", "s1"), ("run_c", "s")] {
            store
                .record_run_start(start(id, "acme", session))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let usage = Usage {
            requests: 2,
            total_tokens: 15,
            ..Default::default()
        };
        assert!(store
            .record_run_end(
                "acme",
                "run_a",
                RunEnd::completed(json!("Sunny"), "Weather", usage.clone())
            )
            .await
            .unwrap());
        // Ending twice, or another tenant's run, changes nothing.
        assert!(!store
            .record_run_end("acme", "run_a", RunEnd::cancelled(None, None))
            .await
            .unwrap());
        assert!(!store
            .record_run_end("zeta", "run_b", RunEnd::cancelled(None, None))
            .await
            .unwrap());
        let err = callboard::AgentsError::MaxTurnsExceeded { max_turns: 3 };
        assert!(store
            .record_run_end("acme", "run_b", RunEnd::failed(&err, None, None))
            .await
            .unwrap());
        let a = store.get_run("acme", "run_a").await.unwrap().unwrap();
        assert_eq!(a.status, RunStatus::Completed, "{name}");
        assert_eq!(a.final_output, Some(json!("Sunny")), "{name}");
        assert_eq!(a.last_agent.as_deref(), Some("Weather"), "{name}");
        assert_eq!(a.usage, Some(usage), "{name}");
        assert_eq!(a.node_id.as_deref(), Some("node-a"), "{name}");
        assert!(a.finished_at.is_some(), "{name}");
        let b = store.get_run("acme", "run_b").await.unwrap().unwrap();
        assert_eq!(b.error.unwrap().error_type, "MaxTurnsExceeded", "{name}");
        assert_eq!(
            store.get_run("zeta", "run_a").await.unwrap(),
            None,
            "{name}"
        );
        let all = store
            .list_runs(
                "acme",
                &RunQuery {
                    limit: 10,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let ids: Vec<_> = all.iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(ids, ["run_c", "run_b", "run_a"], "{name}: newest first");
        let running = store
            .list_runs(
                "acme",
                &RunQuery {
                    status: Some(RunStatus::Running),
                    session_id: Some("s".into()),
                    limit: 10,
                },
            )
            .await
            .unwrap();
        assert_eq!(running.len(), 1, "{name}");
        assert!(store
            .list_runs(
                "zeta",
                &RunQuery {
                    limit: 10,
                    ..Default::default()
                }
            )
            .await
            .unwrap()
            .is_empty());
        // A run in flight moves to another node; a finished one does not change.
        assert!(store
            .update_run(
                "acme",
                "run_c",
                RunUpdate {
                    status: RunStatus::Running,
                    state: Some("{\"turn\":1}".into()),
                    node_id: Some("node-b".into()),
                },
            )
            .await
            .unwrap());
        assert!(!store
            .update_run(
                "acme",
                "run_a",
                RunUpdate {
                    status: RunStatus::Running,
                    state: None,
                    node_id: None
                },
            )
            .await
            .unwrap());
        let c = store.run_detail("acme", "run_c").await.unwrap().unwrap();
        assert_eq!(c.record.node_id.as_deref(), Some("node-b"), "{name}");
        assert_eq!(c.state.as_deref(), Some("{\"turn\":1}"), "{name}");
        let flying: Vec<_> = store
            .runs_in_flight()
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.record.run_id)
            .collect();
        assert_eq!(flying, ["run_c"], "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_saves_items_progress_state_and_numbering_together() {
    for (name, place) in places().await {
        let store = place.open().await;
        let mut s = start("run_t", "acme", "conv");
        s.seq_reserved = Some(("e_1".into(), 100));
        store.record_run_start(s).await.unwrap();
        let meta = store.session_meta("acme", "conv").await.unwrap().unwrap();
        assert_eq!(
            (meta.epoch.as_str(), meta.seq_reserved),
            ("e_1", 100),
            "{name}"
        );
        let session = store.session("acme", "conv");
        let turn = TurnRecord {
            run_id: "run_t".into(),
            turn: 1,
            agent: "Billing".into(),
            usage: Usage {
                requests: 1,
                ..Default::default()
            },
            seq_reserved: Some(("e_1".into(), 200)),
            state: Some("{\"state\":1}".into()),
            seq_safe: Some(42),
            pause: None,
        };
        session
            .save_turn(vec![user("hi"), user("there")], &turn)
            .await
            .unwrap();
        let d = store.run_detail("acme", "run_t").await.unwrap().unwrap();
        assert_eq!(d.record.turn, 1, "{name}");
        assert_eq!(d.record.last_agent.as_deref(), Some("Billing"), "{name}");
        assert_eq!(d.state.as_deref(), Some("{\"state\":1}"), "{name}");
        let meta = store.session_meta("acme", "conv").await.unwrap().unwrap();
        assert_eq!((meta.seq_reserved, meta.seq_safe), (200, 42), "{name}");
        // The second turn pauses for approval with a deadline.
        let pause = TurnRecord {
            turn: 2,
            seq_reserved: None,
            seq_safe: Some(50),
            pause: Some(Some(1_000)),
            ..turn.clone()
        };
        session
            .save_turn(vec![user("tool?")], &pause)
            .await
            .unwrap();
        let d = store.run_detail("acme", "run_t").await.unwrap().unwrap();
        assert_eq!(d.record.status, RunStatus::AwaitingApproval, "{name}");
        assert_eq!(store.due_approvals(999).await.unwrap(), vec![], "{name}");
        assert_eq!(
            store.due_approvals(1_000).await.unwrap(),
            vec![("acme".to_owned(), "run_t".to_owned())],
            "{name}"
        );
        // Rollback removes exactly the run's items.
        session
            .add_items(vec![user("not the run's")])
            .await
            .unwrap();
        assert!(
            store
                .delete_run_items("acme", "conv", "run_t")
                .await
                .unwrap(),
            "{name}"
        );
        assert_eq!(
            session.get_items(None).await.unwrap(),
            vec![user("not the run's")],
            "{name}"
        );
        // The end raises seq_safe (never lowers it) in the same epoch.
        let mut end = RunEnd::cancelled(None, None);
        end.seq_safe = Some(("e_1".into(), 60));
        assert!(store.record_run_end("acme", "run_t", end).await.unwrap());
        let meta = store.session_meta("acme", "conv").await.unwrap().unwrap();
        assert_eq!(meta.seq_safe, 60, "{name}");
        assert_eq!(
            store.due_approvals(i64::MAX).await.unwrap(),
            vec![],
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbering_and_runs_in_flight_survive_a_reopen() {
    for (name, place) in places().await {
        {
            let store = place.open().await;
            store
                .set_session_meta(
                    "acme",
                    "conv",
                    SessionMeta {
                        epoch: "e_9".into(),
                        seq_reserved: 1 << 20,
                        seq_safe: 17,
                    },
                )
                .await
                .unwrap();
            let mut q = start("run_q", "acme", "conv");
            q.status = RunStatus::Queued;
            q.request = Some("{\"input\":\"later\"}".into());
            store.record_run_start(q).await.unwrap();
            store
                .record_run_start(start("run_r", "acme", "conv"))
                .await
                .unwrap();
            if !matches!(place, Place::Memory(_)) {
                store.close().await.unwrap();
            }
        }
        let store = place.open().await;
        let meta = store.session_meta("acme", "conv").await.unwrap().unwrap();
        assert_eq!(
            meta,
            SessionMeta {
                epoch: "e_9".into(),
                seq_reserved: 1 << 20,
                seq_safe: 17
            },
            "{name}"
        );
        assert_eq!(
            store.session_meta("zeta", "conv").await.unwrap(),
            None,
            "{name}"
        );
        let flying = store.runs_in_flight().await.unwrap();
        let mut seen: Vec<_> = flying
            .iter()
            .map(|d| {
                (
                    d.record.run_id.as_str(),
                    d.record.status,
                    d.request.as_deref(),
                )
            })
            .collect();
        seen.sort_by_key(|s| s.0);
        assert_eq!(
            seen,
            [
                ("run_q", RunStatus::Queued, Some("{\"input\":\"later\"}")),
                ("run_r", RunStatus::Running, None)
            ],
            "{name}"
        );
        store.close().await.unwrap();
    }
}

/// PostgreSQL only: nodes starting together migrate once; a newer schema is refused; an
/// unreachable server and a bad URL give errors that say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migrations_and_errors() {
    if !common::postgres_ready().await {
        return;
    }
    let schema = PgSchema::new();
    let url = schema.url();
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PgStore::open(&url).await })
        })
        .collect();
    for o in opens {
        within(o).await.unwrap().unwrap_or_else(|e| panic!("{e}"));
    }
    let store = PgStore::open(&url).await.unwrap();
    store.ping().await.unwrap();
    store.close().await.unwrap();
    assert!(matches!(store.ping().await, Err(SessionError::Closed)));
    // A newer build's schema is refused, not written to.
    common::pg_execute(
        &url,
        "INSERT INTO callboard_schema (version, applied_at) VALUES (999, 0)",
    )
    .await;
    match PgStore::open(&url).await {
        Err(e @ SessionError::Schema { found: 999, .. }) => {
            assert!(e.to_string().contains("upgrade callboard"), "{e}")
        }
        other => panic!("expected a schema error, got {other:?}"),
    }
    // Nothing listens on port 1.
    let err = PgStore::open("postgres://postgres@127.0.0.1:1/test")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot connect"), "{err}");
    let err = PgStore::open("postgres://h/db?schema=Robert'); DROP")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a plain schema name"), "{err}");
}
