//! The PostgreSQL store's schema and migrations: a `callboard_schema` table records each
//! version applied; [`migrate`] brings the schema up to [`CURRENT_VERSION`] in one
//! transaction, under an advisory lock so nodes starting together migrate once.

use tokio_postgres::Client;

/// The newest schema version this build writes.
pub const CURRENT_VERSION: i64 = 2;

/// Migration `n` (1-based) takes a schema from version `n - 1` to `n`. Append only.
const MIGRATIONS: &[&str] = &[
    // 1: sessions, items, run records with their states (the SQLite store's version 4).
    "CREATE TABLE sessions (
        tenant        TEXT NOT NULL,
        session_id    TEXT NOT NULL,
        created_at    BIGINT NOT NULL,
        updated_at    BIGINT NOT NULL,
        epoch         TEXT,
        seq_reserved  BIGINT NOT NULL DEFAULT 0,
        seq_safe      BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (tenant, session_id)
     );
     CREATE INDEX sessions_by_update ON sessions (tenant, updated_at DESC);
     CREATE TABLE items (
        id          BIGSERIAL PRIMARY KEY,
        tenant      TEXT NOT NULL,
        session_id  TEXT NOT NULL,
        item        TEXT NOT NULL,
        created_at  BIGINT NOT NULL,
        run_id      TEXT
     );
     CREATE INDEX items_by_session ON items (tenant, session_id, id);
     CREATE TABLE runs (
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
        created_at      BIGINT NOT NULL,
        updated_at      BIGINT NOT NULL,
        finished_at     BIGINT,
        turn            BIGINT NOT NULL DEFAULT 0,
        state           TEXT,
        request         TEXT,
        deadline        BIGINT,
        cancel_mode     TEXT,
        by_run_id       TEXT,
        node_id         TEXT,
        PRIMARY KEY (tenant, run_id)
     );
     CREATE INDEX runs_by_session ON runs (tenant, session_id, created_at);
     CREATE INDEX runs_by_tenant ON runs (tenant, created_at);
     CREATE INDEX runs_in_flight ON runs (status, created_at)
        WHERE status IN ('running', 'queued', 'awaiting_approval');",
    // 2: one running run per session over every node sharing the database (a second
    // start is refused by the database, whichever node asks).
    "CREATE UNIQUE INDEX runs_one_running_per_session ON runs (tenant, session_id)
        WHERE status = 'running' AND session_id IS NOT NULL;",
];

/// Applies the migrations after the schema's version, in one transaction. Returns the
/// version found before migrating; a schema newer than this build is left alone (the caller
/// refuses it).
pub(crate) async fn migrate(
    client: &mut Client,
    now_ms: i64,
) -> Result<i64, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    // One migrator at a time per database (nodes often start together).
    tx.execute("SELECT pg_advisory_xact_lock(4242424242)", &[])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS callboard_schema (
            version     BIGINT PRIMARY KEY,
            applied_at  BIGINT NOT NULL
         )",
    )
    .await?;
    let found: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM callboard_schema",
            &[],
        )
        .await?
        .get(0);
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let v = i as i64 + 1;
        if v <= found {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO callboard_schema (version, applied_at) VALUES ($1, $2)",
            &[&v, &now_ms],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(found)
}
