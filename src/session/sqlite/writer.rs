//! The store's one writer: a dedicated thread that owns the write connection, takes commands
//! from a bounded channel, and commits everything queued at that moment (from any number of
//! sessions) in one transaction, so one fsync covers the whole batch. Callers await a reply
//! that is sent only after `COMMIT` returned: an acknowledged write is durable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rusqlite::{params, Connection};
use tokio::sync::{mpsc, oneshot};

use crate::items::Item;
use crate::session::records::{now_ms, RunEnd, RunStart, RunUpdate};
use crate::session::SessionError;

/// A write, applied inside the batch's transaction.
pub(crate) enum WriteOp {
    AddItems {
        tenant: Arc<str>,
        session: Arc<str>,
        items: Vec<String>,
    },
    PopItem {
        tenant: Arc<str>,
        session: Arc<str>,
    },
    Clear {
        tenant: Arc<str>,
        session: Arc<str>,
    },
    /// A turn's items with the run's progress and state and, when due, the session's seq
    /// reservation; a pause (approval) sets the run's status.
    SaveTurn(Box<SaveTurn>),
    SetMeta {
        tenant: Arc<str>,
        session: Arc<str>,
        epoch: String,
        seq_reserved: u64,
        seq_safe: u64,
    },
    UpdateRun {
        tenant: String,
        run_id: String,
        update: Box<RunUpdate>,
    },
    DeleteRunItems {
        tenant: String,
        session: String,
        run_id: String,
    },
    RunStart(Box<RunStart>),
    RunEnd {
        tenant: String,
        run_id: String,
        end: Box<RunEnd>,
    },
}

/// What a turn end writes (see [`WriteOp::SaveTurn`]).
pub(crate) struct SaveTurn {
    pub tenant: Arc<str>,
    pub session: Arc<str>,
    pub items: Vec<String>,
    pub run_id: Arc<str>,
    pub turn: u64,
    pub agent: String,
    pub usage: String,
    pub seq_reserved: Option<(String, u64)>,
    pub state: Option<Arc<str>>,
    pub seq_safe: Option<u64>,
    pub pause: Option<Option<i64>>,
}

/// What a write answers.
pub(crate) enum WriteOut {
    Done,
    Popped(Option<Item>),
    Changed(bool),
}

pub(crate) type Reply = oneshot::Sender<Result<WriteOut, SessionError>>;
pub(crate) type ReadFn = Box<dyn FnOnce(&Connection) + Send>;

/// A command for the writer thread.
pub(crate) enum Cmd {
    Write(WriteOp, Reply),
    /// A read on the writer's connection (an in-memory database has no other).
    Read(ReadFn),
    /// Finish what is queued, checkpoint, and stop.
    Close(oneshot::Sender<()>),
}

fn store_err(what: &str, e: rusqlite::Error) -> SessionError {
    SessionError::Store(format!("{what}: {e}"))
}

/// The writer loop: runs until every sender is gone or a `Close` arrives.
/// Counters the writer keeps (read with [`super::SqliteStore::stats`]).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub batches: AtomicU64,
    pub writes: AtomicU64,
    pub items: AtomicU64,
    pub failed_writes: AtomicU64,
    pub largest_batch: AtomicU64,
    pub commit_micros: AtomicU64,
}

pub(crate) fn run(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Cmd>,
    max_batch: usize,
    counters: Arc<Counters>,
) {
    let mut writes: Vec<(WriteOp, Reply)> = Vec::with_capacity(max_batch);
    let mut reads: Vec<ReadFn> = Vec::new();
    let mut close: Option<oneshot::Sender<()>> = None;
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                Cmd::Write(op, reply) => writes.push((op, reply)),
                Cmd::Read(f) => reads.push(f),
                Cmd::Close(done) => {
                    close = Some(done);
                    break;
                }
            }
            if writes.len() + reads.len() < max_batch {
                next = rx.try_recv().ok();
            }
        }
        if !writes.is_empty() {
            let n = writes.len() as u64;
            let t = std::time::Instant::now();
            let (items, failed) = commit_batch(&mut conn, &mut writes);
            let c = &counters;
            c.commit_micros
                .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
            c.batches.fetch_add(1, Ordering::Relaxed);
            c.writes.fetch_add(n, Ordering::Relaxed);
            c.largest_batch.fetch_max(n, Ordering::Relaxed);
            c.items.fetch_add(items, Ordering::Relaxed);
            c.failed_writes.fetch_add(failed, Ordering::Relaxed);
        }
        for f in reads.drain(..) {
            f(&conn);
        }
        if let Some(done) = close.take() {
            let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
            rx.close();
            // Answer what was queued behind the close: the store is closed.
            while let Ok(cmd) = rx.try_recv() {
                if let Cmd::Write(_, reply) = cmd {
                    let _ = reply.send(Err(SessionError::Closed));
                }
            }
            drop(conn);
            let _ = done.send(());
            return;
        }
    }
}

fn item_count(op: &WriteOp) -> u64 {
    match op {
        WriteOp::AddItems { items, .. } => items.len() as u64,
        WriteOp::SaveTurn(t) => t.items.len() as u64,
        _ => 0,
    }
}

/// Commits the batch and answers every write. Returns the items committed and the number of
/// writes answered with an error.
fn commit_batch(conn: &mut Connection, writes: &mut Vec<(WriteOp, Reply)>) -> (u64, u64) {
    let now = now_ms();
    if let Err(e) = begin(conn) {
        return fail_all(writes, format!("could not start a write transaction: {e}"));
    }
    let single = writes.len() == 1;
    if !single {
        // Most batches have no failing write: apply them all straight, and commit.
        match apply_all(conn, writes, now) {
            Ok(outs) => match commit(conn) {
                Ok(()) => {
                    let mut items = 0;
                    for ((op, reply), out) in writes.drain(..).zip(outs) {
                        items += item_count(&op);
                        let _ = reply.send(Ok(out));
                    }
                    return (items, 0);
                }
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK");
                    return fail_all(writes, commit_failed(e));
                }
            },
            Err(_) => {
                // One write failed: start again with each write in its own savepoint, so the
                // failing one is answered with its error and the others are still saved.
                let _ = conn.execute_batch("ROLLBACK");
                if let Err(e) = begin(conn) {
                    return fail_all(writes, format!("could not start a write transaction: {e}"));
                }
            }
        }
    }
    let mut results: Vec<(Reply, u64, Result<WriteOut, rusqlite::Error>)> =
        Vec::with_capacity(writes.len());
    let mut pending = writes.drain(..);
    for (op, reply) in pending.by_ref() {
        let items = item_count(&op);
        let r = if single {
            apply(conn, &op, now)
        } else {
            // Each write in its own savepoint: one failing write does not undo the others.
            in_savepoint(conn, |c| apply(c, &op, now))
        };
        let failed = r.is_err();
        results.push((reply, items, r));
        if failed && conn.is_autocommit() {
            // SQLite rolled the whole transaction back (a full disk, an I/O error): the
            // writes before are undone, and the ones after must not run outside it.
            let msg = "the write transaction was rolled back by SQLite (is the disk full?); nothing of it was saved";
            let mut failed = 0;
            for (reply, _, r) in results
                .drain(..)
                .chain(pending.map(|(_, reply)| (reply, 0, Ok(WriteOut::Done))))
            {
                let detail = r.err().map(|e| format!(": {e}")).unwrap_or_default();
                let _ = reply.send(Err(SessionError::Store(format!("{msg}{detail}"))));
                failed += 1;
            }
            return (0, failed);
        }
    }
    drop(pending);
    if single && results.iter().any(|(_, _, r)| r.is_err()) {
        let _ = conn.execute_batch("ROLLBACK");
        for (reply, _, r) in results {
            let _ = reply.send(r.map_err(|e| store_err("the write failed", e)));
        }
        return (0, 1);
    }
    match commit(conn) {
        Ok(()) => {
            let (mut items, mut failed) = (0, 0);
            for (reply, n, r) in results {
                match &r {
                    Ok(_) => items += n,
                    Err(_) => failed += 1,
                }
                let _ = reply.send(r.map_err(|e| store_err("the write failed", e)));
            }
            (items, failed)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            let msg = commit_failed(e);
            let failed = results.len() as u64;
            for (reply, _, _) in results {
                let _ = reply.send(Err(SessionError::Store(msg.clone())));
            }
            (0, failed)
        }
    }
}

/// Answers every write of the batch with `msg`: none of them was saved.
fn fail_all(writes: &mut Vec<(WriteOp, Reply)>, msg: String) -> (u64, u64) {
    let failed = writes.len() as u64;
    for (_, reply) in writes.drain(..) {
        let _ = reply.send(Err(SessionError::Store(msg.clone())));
    }
    (0, failed)
}

fn commit_failed(e: rusqlite::Error) -> String {
    format!("could not commit the write (is the disk full or the file read-only?): {e}")
}

fn commit(conn: &Connection) -> rusqlite::Result<()> {
    conn.prepare_cached("COMMIT")?.execute([])?;
    Ok(())
}

fn begin(conn: &Connection) -> rusqlite::Result<()> {
    conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
    Ok(())
}

/// Applies every write of the batch in order, stopping at the first that fails.
fn apply_all(
    conn: &Connection,
    writes: &[(WriteOp, Reply)],
    now: i64,
) -> rusqlite::Result<Vec<WriteOut>> {
    writes.iter().map(|(op, _)| apply(conn, op, now)).collect()
}

fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.prepare_cached("SAVEPOINT w")?.execute([])?;
    match f(conn) {
        Ok(v) => {
            conn.prepare_cached("RELEASE w")?.execute([])?;
            Ok(v)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK TO w; RELEASE w");
            Err(e)
        }
    }
}

fn touch_session(conn: &Connection, tenant: &str, session: &str, now: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO sessions (tenant, session_id, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?3)
         ON CONFLICT (tenant, session_id) DO UPDATE SET updated_at = excluded.updated_at",
    )?
    .execute(params![tenant, session, now])?;
    Ok(())
}

/// Sets a session's reservation (never lowering `seq_safe` when `None`).
fn set_meta(
    conn: &Connection,
    tenant: &str,
    session: &str,
    epoch: &str,
    seq_reserved: u64,
    seq_safe: Option<u64>,
    now: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO sessions (tenant, session_id, created_at, updated_at, epoch, seq_reserved, seq_safe)
         VALUES (?1, ?2, ?3, ?3, ?4, ?5, COALESCE(?6, 0))
         ON CONFLICT (tenant, session_id) DO UPDATE
            SET epoch = excluded.epoch, seq_reserved = excluded.seq_reserved,
                seq_safe = COALESCE(?6, seq_safe)",
    )?
    .execute(params![
        tenant,
        session,
        now,
        epoch,
        seq_reserved as i64,
        seq_safe.map(|s| s as i64)
    ])?;
    Ok(())
}

fn set_seq_safe(
    conn: &Connection,
    tenant: &str,
    session: &str,
    seq_safe: u64,
) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE sessions SET seq_safe = ?3 WHERE tenant = ?1 AND session_id = ?2")?
        .execute(params![tenant, session, seq_safe as i64])?;
    Ok(())
}

fn insert_items(
    conn: &Connection,
    tenant: &str,
    session: &str,
    items: &[String],
    run_id: Option<&str>,
    now: i64,
) -> rusqlite::Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    touch_session(conn, tenant, session, now)?;
    let mut ins = conn.prepare_cached(
        "INSERT INTO items (tenant, session_id, item, created_at, run_id) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for item in items {
        ins.execute(params![tenant, session, item, now, run_id])?;
    }
    Ok(())
}

fn apply(conn: &Connection, op: &WriteOp, now: i64) -> rusqlite::Result<WriteOut> {
    match op {
        WriteOp::AddItems {
            tenant,
            session,
            items,
        } => {
            insert_items(conn, tenant, session, items, None, now)?;
            Ok(WriteOut::Done)
        }
        WriteOp::SaveTurn(t) => {
            insert_items(conn, &t.tenant, &t.session, &t.items, Some(&t.run_id), now)?;
            // A plain turn leaves the status (and so the status indexes) as they are.
            let (turn, state, deadline) = (t.turn as i64, t.state.as_deref(), t.pause.flatten());
            let values: [&dyn rusqlite::ToSql; 8] = [
                &t.tenant, &t.run_id, &turn, &t.agent, &t.usage, &now, &state, &deadline,
            ];
            let (sql, n) = match t.pause {
                None => (
                    "UPDATE runs SET turn = ?3, last_agent = ?4, usage = ?5, updated_at = ?6,
                        state = COALESCE(?7, state)
                     WHERE tenant = ?1 AND run_id = ?2 AND status = 'running'",
                    7,
                ),
                Some(_) => (
                    "UPDATE runs SET turn = ?3, last_agent = ?4, usage = ?5, updated_at = ?6,
                        state = COALESCE(?7, state), status = 'awaiting_approval', deadline = ?8
                     WHERE tenant = ?1 AND run_id = ?2 AND status = 'running'",
                    8,
                ),
            };
            conn.prepare_cached(sql)?.execute(&values[..n])?;
            match (&t.seq_reserved, t.seq_safe) {
                (Some((epoch, upto)), safe) => {
                    set_meta(conn, &t.tenant, &t.session, epoch, *upto, safe, now)?
                }
                (None, Some(safe)) => set_seq_safe(conn, &t.tenant, &t.session, safe)?,
                (None, None) => {}
            }
            Ok(WriteOut::Done)
        }
        WriteOp::SetMeta {
            tenant,
            session,
            epoch,
            seq_reserved,
            seq_safe,
        } => {
            set_meta(
                conn,
                tenant,
                session,
                epoch,
                *seq_reserved,
                Some(*seq_safe),
                now,
            )?;
            Ok(WriteOut::Done)
        }
        WriteOp::UpdateRun {
            tenant,
            run_id,
            update,
        } => {
            let n = conn
                .prepare_cached(
                    "UPDATE runs SET status = ?3, state = COALESCE(?4, state),
                        node_id = COALESCE(?5, node_id), updated_at = ?6,
                        deadline = CASE WHEN ?3 = 'awaiting_approval' THEN deadline ELSE NULL END
                     WHERE tenant = ?1 AND run_id = ?2
                       AND status IN ('running', 'queued', 'awaiting_approval')",
                )?
                .execute(params![
                    tenant,
                    run_id,
                    update.status.as_str(),
                    update.state,
                    update.node_id,
                    now
                ])?;
            Ok(WriteOut::Changed(n > 0))
        }
        WriteOp::DeleteRunItems {
            tenant,
            session,
            run_id,
        } => {
            let n = conn
                .prepare_cached(
                    "DELETE FROM items WHERE tenant = ?1 AND session_id = ?2 AND run_id = ?3",
                )?
                .execute(params![tenant, session, run_id])?;
            Ok(WriteOut::Changed(n > 0))
        }
        WriteOp::PopItem { tenant, session } => {
            // The newest row that parses; rows that do not (written by hand, damaged) are
            // dropped on the way, as the SDK's SQLiteSession does.
            loop {
                let row: Option<(i64, String)> = {
                    let mut q = conn.prepare_cached(
                        "SELECT id, item FROM items WHERE tenant = ?1 AND session_id = ?2
                         ORDER BY id DESC LIMIT 1",
                    )?;
                    let mut rows = q.query(params![tenant, session])?;
                    match rows.next()? {
                        Some(r) => Some((r.get(0)?, r.get(1)?)),
                        None => None,
                    }
                };
                let Some((id, text)) = row else {
                    return Ok(WriteOut::Popped(None));
                };
                conn.prepare_cached("DELETE FROM items WHERE id = ?1")?
                    .execute(params![id])?;
                conn.prepare_cached(
                    "UPDATE sessions SET updated_at = ?3 WHERE tenant = ?1 AND session_id = ?2",
                )?
                .execute(params![tenant, session, now])?;
                match serde_json::from_str::<Item>(&text) {
                    Ok(item) => return Ok(WriteOut::Popped(Some(item))),
                    Err(e) => {
                        tracing::warn!(tenant = %tenant, session = %session, row = id,
                            "dropping a session item that does not parse: {e}");
                    }
                }
            }
        }
        WriteOp::Clear { tenant, session } => {
            let items = conn
                .prepare_cached("DELETE FROM items WHERE tenant = ?1 AND session_id = ?2")?
                .execute(params![tenant, session])?;
            let rows = conn
                .prepare_cached("DELETE FROM sessions WHERE tenant = ?1 AND session_id = ?2")?
                .execute(params![tenant, session])?;
            Ok(WriteOut::Changed(items + rows > 0))
        }
        WriteOp::RunStart(s) => {
            if let (Some(session), Some((epoch, upto))) = (&s.session_id, &s.seq_reserved) {
                set_meta(conn, &s.tenant, session, epoch, *upto, None, now)?;
            }
            conn.prepare_cached(
                "INSERT INTO runs (tenant, run_id, session_id, status, starting_agent,
                                   last_agent, trace_id, created_at, updated_at, request, node_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7, ?7, ?8, ?9)",
            )?
            .execute(params![
                s.tenant,
                s.run_id,
                s.session_id,
                s.status.as_str(),
                s.starting_agent,
                s.trace_id,
                now,
                s.request,
                s.node_id
            ])?;
            Ok(WriteOut::Done)
        }
        WriteOp::RunEnd {
            tenant,
            run_id,
            end,
        } => {
            let final_output = end
                .final_output
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            let usage = end
                .usage
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            let (etype, emsg) = match &end.error {
                Some(e) => (Some(e.error_type.as_str()), Some(e.message.as_str())),
                None => (None, None),
            };
            let n = conn
                .prepare_cached(
                    "UPDATE runs SET status = ?3, last_agent = COALESCE(?4, last_agent),
                        final_output = ?5, usage = COALESCE(?6, usage), error_type = ?7,
                        error_message = ?8, updated_at = ?9, finished_at = ?9,
                        cancel_mode = ?10, by_run_id = ?11, deadline = NULL
                     WHERE tenant = ?1 AND run_id = ?2
                       AND status IN ('running', 'queued', 'awaiting_approval')",
                )?
                .execute(params![
                    tenant,
                    run_id,
                    end.status.as_str(),
                    end.last_agent,
                    final_output,
                    usage,
                    etype,
                    emsg,
                    now,
                    end.cancel_mode,
                    end.by_run_id
                ])?;
            if n > 0 {
                if let Some((epoch, safe)) = &end.seq_safe {
                    conn.prepare_cached(
                        "UPDATE sessions SET seq_safe = MAX(seq_safe, ?3)
                         WHERE tenant = ?1 AND session_id = (SELECT session_id FROM runs
                            WHERE tenant = ?1 AND run_id = ?2) AND epoch = ?4",
                    )?
                    .execute(params![tenant, run_id, *safe as i64, epoch])?;
                }
            }
            Ok(WriteOut::Changed(n > 0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(
        session: &str,
        text: String,
    ) -> (
        WriteOp,
        Reply,
        oneshot::Receiver<Result<WriteOut, SessionError>>,
    ) {
        let (tx, rx) = oneshot::channel();
        let op = WriteOp::AddItems {
            tenant: "t".into(),
            session: session.into(),
            items: vec![serde_json::json!({"role": "user", "content": text}).to_string()],
        };
        (op, tx, rx)
    }

    fn saved(conn: &Connection, session: &str) -> i64 {
        conn.query_row(
            "SELECT COUNT(*) FROM items WHERE tenant = 't' AND session_id = ?1",
            [session],
            |r| r.get(0),
        )
        .unwrap_or(0)
    }

    /// A batch with one failing write (a run recorded twice): that write alone is answered
    /// with its error, the writes before and after it are saved.
    #[test]
    fn a_failing_write_in_a_batch_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("batch.db")).unwrap();
        super::super::schema::migrate_to(&mut conn, i64::MAX, 0).unwrap();
        let start = || {
            WriteOp::RunStart(Box::new(RunStart {
                run_id: "run_1".into(),
                tenant: "t".into(),
                session_id: None,
                starting_agent: "A".into(),
                trace_id: None,
                seq_reserved: None,
                status: crate::session::RunStatus::Running,
                request: None,
                node_id: None,
            }))
        };
        let (tx0, mut rx0) = oneshot::channel();
        let mut writes = vec![(start(), tx0)];
        assert_eq!(commit_batch(&mut conn, &mut writes), (0, 0));
        assert!(matches!(rx0.try_recv(), Ok(Ok(_))));
        let (a, ta, mut ra) = add("before", "x".into());
        let (tr, mut rr) = oneshot::channel();
        let (b, tb, mut rb) = add("after", "y".into());
        let mut writes = vec![(a, ta), (start(), tr), (b, tb)];
        assert_eq!(commit_batch(&mut conn, &mut writes), (2, 1));
        assert!(matches!(ra.try_recv(), Ok(Ok(_))));
        assert!(
            matches!(rr.try_recv(), Ok(Err(_))),
            "the second start is refused"
        );
        assert!(matches!(rb.try_recv(), Ok(Ok(_))));
        assert_eq!((saved(&conn, "before"), saved(&conn, "after")), (1, 1));
    }

    /// A full database (here `max_page_count`) fails writes of a batch: every write answered
    /// OK is saved and every write answered with an error is not, whatever SQLite rolled back.
    #[test]
    fn answers_match_what_was_saved_when_the_database_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("full.db")).unwrap();
        super::super::schema::migrate_to(&mut conn, i64::MAX, 0).unwrap();
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        conn.pragma_update(None, "max_page_count", pages + 3)
            .unwrap();
        let big = "x".repeat(64 * 1024);
        let mut writes = Vec::new();
        let mut answers = Vec::new();
        for (i, text) in [
            "small".to_owned(),
            big.clone(),
            "small".to_owned(),
            big,
            "small".to_owned(),
        ]
        .into_iter()
        .enumerate()
        {
            let (op, tx, rx) = add(&format!("s{i}"), text);
            writes.push((op, tx));
            answers.push(rx);
        }
        let (_, failed) = commit_batch(&mut conn, &mut writes);
        assert!(failed >= 2, "the big writes cannot fit");
        for (i, mut rx) in answers.into_iter().enumerate() {
            let ok = matches!(rx.try_recv(), Ok(Ok(_)));
            assert_eq!(
                saved(&conn, &format!("s{i}")),
                i64::from(ok),
                "write {i} (answered ok: {ok})"
            );
        }
        // The writer goes on once there is room.
        conn.pragma_update(None, "max_page_count", 1_000_000)
            .unwrap();
        let (op, tx, mut rx) = add("after", "fits".into());
        let mut writes = vec![(op, tx)];
        commit_batch(&mut conn, &mut writes);
        assert!(matches!(rx.try_recv(), Ok(Ok(_))));
        assert_eq!(saved(&conn, "after"), 1);
    }
}
