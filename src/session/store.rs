//! The [`Store`] trait: where conversations, session numbering and run records live. Every
//! store (in memory, SQLite, later PostgreSQL) answers the same calls, so the service layer's
//! rules (one run per session, tenant isolation, seq across restarts) hold on each.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use super::records::{
    RunDetail, RunEnd, RunQuery, RunRecord, RunStart, RunUpdate, SessionInfo, SessionMeta,
};
use super::{Session, SessionError};

/// A store of conversations and run records, scoped by tenant.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Where it is, for the start banner (`sqlite://callboard.db (SQLite, WAL)`, `memory`).
    fn describe(&self) -> String;
    /// Whether conversations and run records survive a restart.
    fn is_durable(&self) -> bool;
    /// The writer's counters (transactions, writes in them), for stores that batch writes
    /// through one writer (SQLite); `None` for the others.
    fn writer_stats(&self) -> Option<StoreStats> {
        None
    }
    /// A session's conversation (created with its first item).
    fn session(&self, tenant: &str, session_id: &str) -> Arc<dyn Session>;
    /// A session's numbering, if the session exists.
    async fn session_meta(
        &self,
        tenant: &str,
        session_id: &str,
    ) -> Result<Option<SessionMeta>, SessionError>;
    /// Sets a session's numbering (creating the session).
    async fn set_session_meta(
        &self,
        tenant: &str,
        session_id: &str,
        meta: SessionMeta,
    ) -> Result<(), SessionError>;
    /// Deletes a session: its items and numbering (run records stay). Answers whether it
    /// existed.
    async fn delete_session(&self, tenant: &str, session_id: &str) -> Result<bool, SessionError>;
    /// A tenant's sessions, most recently updated first.
    async fn list_sessions(
        &self,
        tenant: &str,
        limit: usize,
    ) -> Result<Vec<SessionInfo>, SessionError>;
    /// Records a run as started (and the session's new seq reservation, if any).
    async fn record_run_start(&self, start: RunStart) -> Result<(), SessionError>;
    /// Records how a run ended; answers `false` when no running record was there.
    async fn record_run_end(
        &self,
        tenant: &str,
        run_id: &str,
        end: RunEnd,
    ) -> Result<bool, SessionError>;
    /// A tenant's run record.
    async fn get_run(&self, tenant: &str, run_id: &str) -> Result<Option<RunRecord>, SessionError>;
    /// A tenant's runs, newest first.
    async fn list_runs(
        &self,
        tenant: &str,
        query: &RunQuery,
    ) -> Result<Vec<RunRecord>, SessionError>;
    /// A tenant's run with its state and (queued) request.
    async fn run_detail(
        &self,
        tenant: &str,
        run_id: &str,
    ) -> Result<Option<RunDetail>, SessionError>;
    /// Every tenant's runs in flight (running, queued, awaiting approval), oldest first.
    async fn runs_in_flight(&self) -> Result<Vec<RunDetail>, SessionError>;
    /// Runs awaiting approval whose deadline is at or before `now` (Unix ms).
    async fn due_approvals(&self, now: i64) -> Result<Vec<(String, String)>, SessionError>;
    /// Changes a run in flight; answers whether it was in flight.
    async fn update_run(
        &self,
        tenant: &str,
        run_id: &str,
        update: RunUpdate,
    ) -> Result<bool, SessionError>;
    /// Removes the items a run added to its session.
    async fn delete_run_items(
        &self,
        tenant: &str,
        session_id: &str,
        run_id: &str,
    ) -> Result<bool, SessionError>;
    /// Moves a running run from node `from` (`None`: no node recorded) to node `to`; answers
    /// whether this call moved it (with many nodes on one store, only one of them does).
    async fn take_over_run(
        &self,
        tenant: &str,
        run_id: &str,
        from: Option<&str>,
        to: &str,
    ) -> Result<bool, SessionError> {
        let Some(d) = self.run_detail(tenant, run_id).await? else {
            return Ok(false);
        };
        if d.record.status != super::RunStatus::Running || d.record.node_id.as_deref() != from {
            return Ok(false);
        }
        let update = super::RunUpdate {
            status: super::RunStatus::Running,
            state: None,
            node_id: Some(to.to_owned()),
        };
        self.update_run(tenant, run_id, update).await
    }
    /// Answers `Ok` when the store can serve calls now (a database server answers); the
    /// server's `/readyz` asks. Embedded stores are always ready.
    async fn ready(&self) -> Result<(), SessionError> {
        Ok(())
    }
    /// Finishes pending writes; later calls answer [`SessionError::Closed`].
    async fn close(&self) -> Result<(), SessionError>;
}

/// The writer's counters since the store was opened, for the server's metrics.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StoreStats {
    /// Transactions committed (or attempted).
    pub batches: u64,
    /// Writes (add, pop, clear, run records) in them.
    pub writes: u64,
    /// Session items committed.
    pub items_written: u64,
    /// Writes answered with an error (refused by the database, or in a transaction that
    /// could not commit).
    pub failed_writes: u64,
    /// The most writes in one transaction.
    pub largest_batch: u64,
    /// Time spent executing and committing transactions.
    pub commit_seconds: f64,
    /// Writes waiting for the writer right now.
    pub queued_writes: u64,
}
