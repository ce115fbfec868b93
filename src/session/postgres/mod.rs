//! The PostgreSQL store (`[sessions] store = "postgres://..."`, cargo feature `postgres`):
//! conversations, session numbering, run records and run states in PostgreSQL, shared by
//! every node of a cluster: [`PgStore`].
//!
//! - **Durability**: a write is acknowledged after its transaction committed; a turn's items
//!   and the run's progress and state are saved in one transaction, as on SQLite.
//! - **Pool**: a bounded connection pool ([`PgOptions::max_connections`]); a call waits for a
//!   free connection at most [`PgOptions::wait_timeout`], then fails with a message saying so.
//! - **Migrations**: a `callboard_schema` version table, applied under an advisory lock so
//!   nodes starting together migrate once; a newer schema is refused.
//! - **Schemas**: `?schema=NAME` in the URL keeps every table in that schema (created if
//!   missing), so one database holds independent stores.
//! - **Concurrency**: a session's writes lock its `sessions` row, so the items of one write
//!   stay together whatever else commits meanwhile.
//!
//! Files: `location` (URLs), `schema` (migrations), `session` (one conversation),
//! `runs` (run records).

mod location;
mod runs;
mod schema;
mod session;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use super::claim::{SessionClaim, SessionLocks};
use super::records::{
    now_ms, RunDetail, RunEnd, RunQuery, RunRecord, RunStart, RunUpdate, SessionInfo, SessionMeta,
};
use super::store::Store;
use super::{Session, SessionError};
pub use location::{hide_password, is_postgres_url};
pub use schema::CURRENT_VERSION as SCHEMA_VERSION;
pub use session::PgSession;

/// Tuning for [`PgStore::open_with`].
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// The most connections open at once; more calls wait for one.
    pub max_connections: usize,
    /// How long a call waits for a connection (from the pool, or a new one) before failing.
    pub wait_timeout: Duration,
    /// Whether opening marks runs left `running` `interrupted` (off by default: with many
    /// nodes on one database, another node may be running them; the server's restart policy
    /// decides).
    pub recover_interrupted_runs: bool,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            max_connections: 16,
            wait_timeout: Duration::from_secs(10),
            recover_interrupted_runs: false,
        }
    }
}

struct Inner {
    pool: Pool,
    shown: String,
    locks: SessionLocks,
    closed: AtomicBool,
    recovered: u64,
}

/// Conversations and run records in PostgreSQL. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("location", &self.inner.shown)
            .finish()
    }
}

/// What PostgreSQL said, with its SQLSTATE when it is a database error.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(src) => format!("{e}: {src}"),
            None => e.to_string(),
        },
    }
}

pub(crate) fn db_err(what: &str, e: tokio_postgres::Error) -> SessionError {
    SessionError::Store(format!("{what}: {}", describe(&e)))
}

impl PgStore {
    /// Opens the store at `url` (`postgres://USER@HOST:PORT/DB`, optionally `?schema=NAME`):
    /// connects, creates the schema if named, and migrates it.
    pub async fn open(url: &str) -> Result<Self, SessionError> {
        Self::open_with(url, PgOptions::default()).await
    }

    /// [`open`](Self::open) with tuning options.
    pub async fn open_with(url: &str, opts: PgOptions) -> Result<Self, SessionError> {
        let loc = location::parse(url)?;
        let shown = loc.shown.clone();
        let manager = Manager::from_config(
            loc.config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(opts.max_connections.max(1))
            .wait_timeout(Some(opts.wait_timeout))
            .create_timeout(Some(opts.wait_timeout))
            .recycle_timeout(Some(opts.wait_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| SessionError::Open {
                path: shown.clone(),
                reason: format!("could not set up the connection pool: {e}"),
            })?;
        let mut client = pool.get().await.map_err(|e| SessionError::Open {
            path: shown.clone(),
            reason: format!("cannot connect ({e}); check that PostgreSQL is running there and the URL's user and database exist"),
        })?;
        let open_err = |e: tokio_postgres::Error| SessionError::Open {
            path: shown.clone(),
            reason: describe(&e),
        };
        if let Some(s) = &loc.schema {
            let tx = client.transaction().await.map_err(open_err)?;
            tx.execute("SELECT pg_advisory_xact_lock(4242424241)", &[])
                .await
                .map_err(open_err)?;
            // The name was checked to be a plain identifier (location::valid_schema).
            tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {s}"))
                .await
                .map_err(open_err)?;
            tx.commit().await.map_err(open_err)?;
        }
        let now = now_ms();
        let found = schema::migrate(&mut client, now).await.map_err(open_err)?;
        if found > schema::CURRENT_VERSION {
            return Err(SessionError::Schema {
                path: shown,
                found,
                supported: schema::CURRENT_VERSION,
            });
        }
        let recovered = if opts.recover_interrupted_runs {
            client
                .execute(
                    "UPDATE runs SET status = 'interrupted', error_type = $1,
                        error_message = 'the server stopped while this run was in progress (its last completed turn: ' || turn || ')',
                        updated_at = $2, finished_at = $2
                     WHERE status = 'running'",
                    &[&super::records::INTERRUPTED_ERROR_TYPE, &now],
                )
                .await
                .map_err(open_err)?
        } else {
            0
        };
        drop(client);
        Ok(PgStore {
            inner: Arc::new(Inner {
                pool,
                shown,
                locks: SessionLocks::new(),
                closed: AtomicBool::new(false),
                recovered,
            }),
        })
    }

    /// Where it is (the URL without its password).
    pub fn location(&self) -> &str {
        &self.inner.shown
    }

    /// How many runs were found `running` at open and marked `interrupted`.
    pub fn recovered_runs(&self) -> u64 {
        self.inner.recovered
    }

    /// A connection from the pool; the error says PostgreSQL could not be reached.
    pub(crate) async fn client(&self) -> Result<Object, SessionError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(SessionError::Closed);
        }
        self.inner.pool.get().await.map_err(|e| {
            SessionError::Store(format!(
                "cannot reach PostgreSQL at {} ({e}); check that it is running",
                self.inner.shown
            ))
        })
    }

    /// Answers `Ok` when PostgreSQL answers a query (for readiness checks).
    pub async fn ping(&self) -> Result<(), SessionError> {
        let c = self.client().await?;
        c.simple_query("SELECT 1")
            .await
            .map_err(|e| db_err("PostgreSQL did not answer", e))?;
        Ok(())
    }

    /// A session of `tenant`, with its concrete type.
    pub fn pg_session(&self, tenant: &str, session_id: &str) -> PgSession {
        PgSession {
            store: self.clone(),
            tenant: tenant.into(),
            id: session_id.into(),
        }
    }

    /// Claims `session_id` for one run in this process, or answers [`SessionError::Busy`].
    pub fn try_claim(&self, tenant: &str, session_id: &str) -> Result<SessionClaim, SessionError> {
        self.inner.locks.try_claim(tenant, session_id)
    }

    async fn session_meta(
        &self,
        tenant: &str,
        session_id: &str,
    ) -> Result<Option<SessionMeta>, SessionError> {
        let c = self.client().await?;
        let q = c
            .prepare_cached(
                "SELECT epoch, seq_reserved, seq_safe FROM sessions
                  WHERE tenant = $1 AND session_id = $2",
            )
            .await
            .map_err(|e| db_err("could not read a session", e))?;
        let row = c
            .query_opt(&q, &[&tenant, &session_id])
            .await
            .map_err(|e| db_err("could not read a session", e))?;
        Ok(row.map(|r| SessionMeta {
            epoch: r.get::<_, Option<String>>(0).unwrap_or_default(),
            seq_reserved: r.get::<_, i64>(1).max(0) as u64,
            seq_safe: r.get::<_, i64>(2).max(0) as u64,
        }))
    }

    async fn set_session_meta(
        &self,
        tenant: &str,
        session_id: &str,
        meta: SessionMeta,
    ) -> Result<(), SessionError> {
        let c = self.client().await?;
        session::set_meta(
            &c,
            tenant,
            session_id,
            &meta.epoch,
            meta.seq_reserved,
            Some(meta.seq_safe),
            now_ms(),
        )
        .await
        .map_err(|e| db_err("could not save a session's numbering", e))
    }

    async fn delete_session(&self, tenant: &str, session_id: &str) -> Result<bool, SessionError> {
        self.pg_session(tenant, session_id).clear().await
    }

    async fn list_sessions(
        &self,
        tenant: &str,
        limit: usize,
    ) -> Result<Vec<SessionInfo>, SessionError> {
        let c = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let q = c
            .prepare_cached(
                "SELECT s.session_id, s.created_at, s.updated_at,
                        (SELECT COUNT(*) FROM items i
                          WHERE i.tenant = s.tenant AND i.session_id = s.session_id)
                   FROM sessions s WHERE s.tenant = $1
                  ORDER BY s.updated_at DESC, s.session_id LIMIT $2",
            )
            .await
            .map_err(|e| db_err("could not list sessions", e))?;
        let rows = c
            .query(&q, &[&tenant, &limit])
            .await
            .map_err(|e| db_err("could not list sessions", e))?;
        Ok(rows
            .iter()
            .map(|r| SessionInfo {
                session_id: r.get(0),
                created_at: r.get(1),
                updated_at: r.get(2),
                item_count: r.get::<_, i64>(3).max(0) as u64,
            })
            .collect())
    }

    /// Refuses further calls and closes the pool's connections.
    pub async fn close(&self) -> Result<(), SessionError> {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.pool.close();
        Ok(())
    }
}

/// Runs `sql` on the database at `url` (in its `schema=`, if named) on a connection of its
/// own: for tests (dropping a test's schema, writing what a newer build would); not part of
/// the stable API.
#[doc(hidden)]
pub async fn __execute(url: &str, sql: &str) -> Result<(), SessionError> {
    let loc = location::parse(url)?;
    let (client, conn) = loc
        .config
        .connect(NoTls)
        .await
        .map_err(|e| db_err("cannot connect", e))?;
    let task = tokio::spawn(conn);
    let r = client
        .batch_execute(sql)
        .await
        .map_err(|e| db_err("the statement failed", e));
    drop(client);
    let _ = task.await;
    r
}

/// Drops the schema `name` of the database at `url` with everything in it (for tests that
/// give each test a schema of its own); not part of the stable API.
#[doc(hidden)]
pub async fn __drop_schema(url: &str, name: &str) -> Result<(), SessionError> {
    if !location::valid_schema(name) {
        return Err(SessionError::Store(format!("{name} is not a schema name")));
    }
    __execute(
        url,
        &format!("SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {name} CASCADE"),
    )
    .await
}

#[async_trait]
impl Store for PgStore {
    fn describe(&self) -> String {
        format!("{} (PostgreSQL)", self.inner.shown)
    }
    fn is_durable(&self) -> bool {
        true
    }
    fn session(&self, tenant: &str, session_id: &str) -> Arc<dyn Session> {
        Arc::new(self.pg_session(tenant, session_id))
    }
    async fn session_meta(
        &self,
        tenant: &str,
        session_id: &str,
    ) -> Result<Option<SessionMeta>, SessionError> {
        PgStore::session_meta(self, tenant, session_id).await
    }
    async fn set_session_meta(
        &self,
        tenant: &str,
        session_id: &str,
        meta: SessionMeta,
    ) -> Result<(), SessionError> {
        PgStore::set_session_meta(self, tenant, session_id, meta).await
    }
    async fn delete_session(&self, tenant: &str, session_id: &str) -> Result<bool, SessionError> {
        PgStore::delete_session(self, tenant, session_id).await
    }
    async fn list_sessions(
        &self,
        tenant: &str,
        limit: usize,
    ) -> Result<Vec<SessionInfo>, SessionError> {
        PgStore::list_sessions(self, tenant, limit).await
    }
    async fn record_run_start(&self, start: RunStart) -> Result<(), SessionError> {
        self.run_start(start).await
    }
    async fn record_run_end(
        &self,
        tenant: &str,
        run_id: &str,
        end: RunEnd,
    ) -> Result<bool, SessionError> {
        self.run_end(tenant, run_id, end).await
    }
    async fn get_run(&self, tenant: &str, run_id: &str) -> Result<Option<RunRecord>, SessionError> {
        Ok(self.detail(tenant, run_id).await?.map(|d| d.record))
    }
    async fn list_runs(
        &self,
        tenant: &str,
        query: &RunQuery,
    ) -> Result<Vec<RunRecord>, SessionError> {
        self.runs(tenant, query).await
    }
    async fn run_detail(
        &self,
        tenant: &str,
        run_id: &str,
    ) -> Result<Option<RunDetail>, SessionError> {
        self.detail(tenant, run_id).await
    }
    async fn runs_in_flight(&self) -> Result<Vec<RunDetail>, SessionError> {
        self.in_flight().await
    }
    async fn due_approvals(&self, now: i64) -> Result<Vec<(String, String)>, SessionError> {
        self.due(now).await
    }
    async fn update_run(
        &self,
        tenant: &str,
        run_id: &str,
        update: RunUpdate,
    ) -> Result<bool, SessionError> {
        self.update(tenant, run_id, update).await
    }
    async fn delete_run_items(
        &self,
        tenant: &str,
        session_id: &str,
        run_id: &str,
    ) -> Result<bool, SessionError> {
        self.delete_items_of(tenant, session_id, run_id).await
    }
    async fn ready(&self) -> Result<(), SessionError> {
        self.ping().await
    }
    async fn take_over_run(
        &self,
        tenant: &str,
        run_id: &str,
        from: Option<&str>,
        to: &str,
    ) -> Result<bool, SessionError> {
        self.take_over(tenant, run_id, from, to).await
    }
    async fn close(&self) -> Result<(), SessionError> {
        PgStore::close(self).await
    }
}
