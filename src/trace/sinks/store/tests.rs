//! The store's unit tests: queries, ownership, ingest checks, summaries, migration.

use std::sync::Arc;

use serde_json::{json, Value};

use super::*;
use crate::trace::batch::ItemFacts;

const T1: &str = "trace_00000000000000000000000000000001";
const T2: &str = "trace_00000000000000000000000000000002";
const SA: &str = "span_0000000000000000000000aa";
const SB: &str = "span_0000000000000000000000bb";

fn span(
    id: &str,
    trace: &str,
    parent: Option<&str>,
    start: u32,
    data: Value,
    error: Value,
) -> Value {
    json!({"object":"trace.span","id":id,"trace_id":trace,"parent_id":parent,
        "started_at":format!("2026-01-01T00:00:{start:02}.000000+00:00"),
        "ended_at":format!("2026-01-01T00:00:{:02}.000000+00:00", start + 1),
        "span_data":data,"error":error})
}

fn agent(name: &str) -> Value {
    json!({"type":"agent","name":name,"handoffs":[],"tools":[],"output_type":null})
}

fn func(name: &str) -> Value {
    json!({"type":"function","name":name,"input":"{}","output":"ok","mcp_data":null})
}

#[test]
fn ingest_then_query_by_id_workflow_group_agent_errors_and_time() {
    let s = TraceStore::open_in_memory().unwrap();
    let sum = s
        .ingest_for(
            "acme",
            vec![
                json!({"object":"trace","id":T1,"workflow_name":"W","group_id":"g1","metadata":null}),
                span(SB, T1, Some(SA), 1, func("f"), json!({"message":"Error running tool (non-fatal)","data":null})),
                span(SA, T1, None, 0, agent("Triage"), Value::Null),
                json!({"object":"trace","id":T2,"workflow_name":"V","group_id":null,"metadata":null}),
                json!({"object":"nonsense"}),
            ],
        )
        .unwrap();
    assert_eq!(
        (sum.traces, sum.spans, sum.skipped, sum.refused),
        (2, 2, 1, 0)
    );
    let q = |f: fn(&mut TraceQuery)| {
        let mut q = TraceQuery::default();
        f(&mut q);
        s.list_traces(&q).unwrap()
    };
    let by_wf = q(|q| q.workflow_name = Some("W".into()));
    assert_eq!(by_wf.len(), 1);
    assert_eq!(by_wf[0].span_count, 2);
    assert_eq!(by_wf[0].error_count, 1);
    assert_eq!(by_wf[0].agents, vec!["Triage".to_owned()]);
    assert_eq!(by_wf[0].metadata["tenant"], "acme");
    assert_eq!(q(|q| q.group_id = Some("g1".into()))[0].id, T1);
    assert_eq!(q(|_| {}).len(), 2);
    assert_eq!(q(|q| q.agent = Some("Triage".into()))[0].id, T1);
    assert!(
        q(|q| q.agent = Some("Tri".into())).is_empty(),
        "whole names only"
    );
    let errs = q(|q| q.errors_only = true);
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].id, T1);
    assert!(q(|q| q.since = Some("2999-01-01T00:00:00+00:00".into())).is_empty());
    assert_eq!(q(|q| q.tenant = Some("acme".into())).len(), 2);
    assert!(q(|q| q.tenant = Some("other".into())).is_empty());
    let (t, spans) = s.get_trace(T1, None).unwrap().unwrap();
    assert_eq!(t["workflow_name"], "W");
    assert_eq!(spans[0]["id"], SA, "spans come in start order");
    assert!(s.get_trace(T1, Some("other")).unwrap().is_none());
    assert!(s.get_trace(T1, Some("acme")).unwrap().is_some());
    assert!(s
        .get_trace("trace_ffffffffffffffffffffffffffffffff", None)
        .unwrap()
        .is_none());
}

#[test]
fn pages_go_back_in_time_with_until() {
    let s = TraceStore::open_in_memory().unwrap();
    for i in 0..5u32 {
        let id = format!("trace_{i:032x}");
        s.ingest_for(
            "acme",
            vec![json!({"object":"trace","id":id,"workflow_name":"W"})],
        )
        .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let page1 = s
        .list_traces(&TraceQuery {
            limit: Some(2),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page1.len(), 2);
    assert_eq!(page1[0].id, format!("trace_{:032x}", 4), "newest first");
    let page2 = s
        .list_traces(&TraceQuery {
            limit: Some(2),
            until: Some(page1[1].created_at.clone()),
            ..Default::default()
        })
        .unwrap();
    let ids: Vec<&str> = page2.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(
        ids,
        [format!("trace_{:032x}", 2), format!("trace_{:032x}", 1)]
    );
}

#[test]
fn another_tenant_can_neither_take_over_a_trace_nor_add_to_it() {
    let s = TraceStore::open_in_memory().unwrap();
    s.ingest_for(
        "acme",
        vec![
            json!({"object":"trace","id":T1,"workflow_name":"mine","group_id":"g"}),
            span(SA, T1, None, 0, agent("Triage"), Value::Null),
        ],
    )
    .unwrap();
    // Takeover by a trace object, injection of a new span and overwrite of A's span id.
    let hostile = s
        .ingest_for(
            "globex",
            vec![
                json!({"object":"trace","id":T1,"workflow_name":"stolen","group_id":"g"}),
                span(SB, T1, Some(SA), 1, func("evil"), Value::Null),
                span(SA, T1, None, 0, agent("Evil"), Value::Null),
                json!({"object":"trace","id":T2,"workflow_name":"its own"}),
            ],
        )
        .unwrap();
    assert_eq!(hostile.refused, 3, "{hostile:?}");
    assert_eq!(hostile.refused_by_code.get("trace_not_yours"), Some(&3));
    assert_eq!(hostile.traces, 1, "its own trace is kept");
    let idx: Vec<usize> = hostile.errors.iter().map(|e| e.index).collect();
    assert_eq!(idx, [0, 1, 2]);
    assert!(hostile.errors[0].message.contains("another tenant"));
    let (t, spans) = s.get_trace(T1, Some("acme")).unwrap().unwrap();
    assert_eq!(t["workflow_name"], "mine");
    assert_eq!(t["metadata"]["tenant"], "acme");
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0]["span_data"]["name"], "Triage");
    assert!(s.get_trace(T1, Some("globex")).unwrap().is_none());
    assert_eq!(s.owner(T1).unwrap(), Some(Some("acme".to_owned())));
    let listed = s
        .list_traces(&TraceQuery {
            tenant: Some("acme".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].span_count, listed[0].agents.len()), (1, 1));
    // Spans alone (no trace object) for a trace A holds are refused too.
    let r = s
        .ingest_for(
            "globex",
            vec![span(SB, T1, None, 1, func("x"), Value::Null)],
        )
        .unwrap();
    assert_eq!((r.refused, r.spans), (1, 0));
    // The sink path obeys the same rule: a run item naming another tenant is refused.
    let item = ExportItem {
        kind: ItemKind::Span,
        trace_id: T1.into(),
        json: span(SB, T1, None, 1, func("x"), Value::Null).to_string(),
        tenant: Some(Arc::from("globex")),
        facts: ItemFacts::default(),
    };
    let sum = s.insert(&[item]).unwrap();
    assert_eq!(sum.foreign, vec![T1.to_owned()]);
    assert_eq!(s.get_trace(T1, None).unwrap().unwrap().1.len(), 1);
}

#[test]
fn malformed_ids_are_refused_and_the_rest_kept() {
    let s = TraceStore::open_in_memory().unwrap();
    let long = "x".repeat(5000);
    let r = s
        .ingest_for(
            "acme",
            vec![
                json!({"object":"trace","id":"x"}),
                json!({"object":"trace","id":long}),
                span("span_1", T1, None, 0, agent("A"), Value::Null),
                span(SA, "trace_1", None, 0, agent("A"), Value::Null),
                span(SA, T1, Some("nope"), 0, agent("A"), Value::Null),
                span(SA, T1, None, 0, agent("A"), Value::Null),
            ],
        )
        .unwrap();
    assert_eq!((r.refused, r.spans, r.traces), (5, 1, 0), "{r:?}");
    assert_eq!(r.refused_by_code.get("invalid_id"), Some(&5));
    assert!(r.errors.iter().all(|e| e.message.len() < 300), "{r:?}");
    assert_eq!(r.errors[0].index, 0);
    assert_eq!(r.errors[4].index, 4);
}

#[test]
fn claims_reserve_an_id_for_one_tenant() {
    let s = TraceStore::open_in_memory().unwrap();
    s.claim(T1, "acme").unwrap();
    s.claim(T1, "acme").unwrap();
    assert!(matches!(s.claim(T1, "globex"), Err(ClaimError::Taken(_))));
    assert!(matches!(
        s.claim("x", "acme"),
        Err(ClaimError::InvalidId(_))
    ));
    let msg = s.claim(T1, "globex").unwrap_err().to_string();
    assert!(msg.contains("another tenant"), "{msg}");
    // The owner's run then fills the claimed trace in.
    let trace = ExportItem {
        kind: ItemKind::Trace,
        trace_id: T1.into(),
        json: json!({"object":"trace","id":T1,"workflow_name":"run","group_id":"s1","metadata":{"tenant":"acme"}}).to_string(),
        tenant: Some(Arc::from("acme")),
        facts: ItemFacts {
            workflow_name: Some("run".into()),
            group_id: Some("s1".into()),
            ..Default::default()
        },
    };
    let sum = s.insert(&[trace]).unwrap();
    assert_eq!((sum.traces, sum.foreign.len()), (1, 0));
    let l = s
        .list_traces(&TraceQuery {
            group_id: Some("s1".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(l[0].workflow_name.as_deref(), Some("run"));
    assert!(l[0].ended_at.is_none(), "a started run's trace is running");
    // A claim by another tenant's ingest is refused as well.
    let r = s
        .ingest_for("globex", vec![json!({"object":"trace","id":T1})])
        .unwrap();
    assert_eq!(r.refused, 1);
}

#[test]
fn agent_sets_merge() {
    assert_eq!(merge_agents("", "|A|"), "|A|");
    assert_eq!(merge_agents("|A|B|", "|B|C|"), "|A|B|C|");
    assert_eq!(merge_agents("|AB|", "|A|B|"), "|AB|A|B|");
    assert_eq!(merge_agents("|A|", ""), "|A|");
    assert_eq!(merge_agents("", ""), "");
}

#[test]
fn files_of_the_first_schema_are_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch(SCHEMA).unwrap();
        c.execute(
            "INSERT INTO traces (trace_id, tenant, created_at, export) VALUES (?1, 'acme', '2026-01-01T00:00:00+00:00', '{}')",
            params![T1],
        )
        .unwrap();
        let spans = json!([
            span(SA, T1, None, 0, agent("Triage"), Value::Null),
            span(
                SB,
                T1,
                Some(SA),
                1,
                func("f"),
                json!({"message":"boom","data":null})
            ),
        ]);
        c.execute(
            "INSERT INTO span_chunks (trace_id, n, spans) VALUES (?1, 2, ?2)",
            params![T1, spans.to_string()],
        )
        .unwrap();
    }
    let s = TraceStore::open(&path).unwrap();
    let l = s.list_traces(&TraceQuery::default()).unwrap();
    assert_eq!(l[0].span_count, 2);
    assert_eq!(l[0].error_count, 1);
    assert_eq!(l[0].agents, vec!["Triage".to_owned()]);
    drop(s);
    TraceStore::open(&path).unwrap();
}
