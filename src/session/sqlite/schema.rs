//! The store's schema and its migrations: a `callboard_schema` table records each version
//! applied; [`migrate`] brings any older file up to [`CURRENT_VERSION`] in one transaction.

use rusqlite::{params, Connection, OptionalExtension};

/// The newest schema version this build writes.
pub const CURRENT_VERSION: i64 = 4;

/// Migration `n` (1-based) takes a file from version `n - 1` to `n`. Append only: a released
/// migration is never edited, so every older file follows the same path.
const MIGRATIONS: &[&str] = &[
    // 1: sessions and their items.
    "CREATE TABLE sessions (
        tenant      TEXT NOT NULL,
        session_id  TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL,
        PRIMARY KEY (tenant, session_id)
     ) WITHOUT ROWID;
     CREATE TABLE items (
        id          INTEGER PRIMARY KEY,
        tenant      TEXT NOT NULL,
        session_id  TEXT NOT NULL,
        item        TEXT NOT NULL,
        created_at  INTEGER NOT NULL
     );
     CREATE INDEX items_by_session ON items (tenant, session_id, id);",
    // 2: run records.
    "CREATE TABLE runs (
        tenant          TEXT NOT NULL,
        run_id          TEXT NOT NULL,
        session_id      TEXT,
        status          TEXT NOT NULL,
        starting_agent  TEXT NOT NULL,
        last_agent      TEXT,
        final_output    TEXT,
        usage           TEXT,
        error_type      TEXT,
        error_message   TEXT,
        trace_id        TEXT,
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL,
        finished_at     INTEGER,
        PRIMARY KEY (tenant, run_id)
     ) WITHOUT ROWID;
     CREATE INDEX runs_by_status ON runs (status);
     CREATE INDEX runs_by_session ON runs (tenant, session_id, created_at);",
    // 3: session numbering (epoch, reserved seq) and each run's last completed turn.
    "ALTER TABLE sessions ADD COLUMN epoch TEXT;
     ALTER TABLE sessions ADD COLUMN seq_reserved INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE runs ADD COLUMN turn INTEGER NOT NULL DEFAULT 0;",
    // 4: run states (approvals, restart resume, double-texting): a run's state and queued
    // request, how it was cancelled, its node; which run added each item (rollback); the
    // seq below which a session's frames are all accounted for.
    "ALTER TABLE runs ADD COLUMN state TEXT;
     ALTER TABLE runs ADD COLUMN request TEXT;
     ALTER TABLE runs ADD COLUMN deadline INTEGER;
     ALTER TABLE runs ADD COLUMN cancel_mode TEXT;
     ALTER TABLE runs ADD COLUMN by_run_id TEXT;
     ALTER TABLE runs ADD COLUMN node_id TEXT;
     ALTER TABLE items ADD COLUMN run_id TEXT;
     ALTER TABLE sessions ADD COLUMN seq_safe INTEGER NOT NULL DEFAULT 0;
     CREATE INDEX runs_in_flight ON runs (status, created_at)
        WHERE status IN ('running', 'queued', 'awaiting_approval');",
];

/// The file's schema version (0 for a new, empty file).
pub(crate) fn version(conn: &Connection) -> rusqlite::Result<i64> {
    let has_table: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'callboard_schema'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if has_table.is_none() {
        return Ok(0);
    }
    conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM callboard_schema",
        [],
        |r| r.get(0),
    )
}

/// Applies the migrations after the file's version, up to `target`, in one transaction.
/// Returns the version found before migrating. A file newer than `target` is left alone;
/// the caller decides what to say.
pub(crate) fn migrate_to(conn: &mut Connection, target: i64, now_ms: i64) -> rusqlite::Result<i64> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS callboard_schema (
            version     INTEGER PRIMARY KEY,
            applied_at  INTEGER NOT NULL
         );",
    )?;
    let found = version(&tx)?;
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let v = i as i64 + 1;
        if v <= found || v > target {
            continue;
        }
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO callboard_schema (version, applied_at) VALUES (?1, ?2)",
            params![v, now_ms],
        )?;
    }
    tx.commit()?;
    Ok(found)
}
