//! The [`Store`] interface over the SQLite store's own methods.

use std::sync::Arc;

use async_trait::async_trait;

use super::SqliteStore;
use crate::session::records::{
    RunDetail, RunEnd, RunQuery, RunRecord, RunStart, RunUpdate, SessionInfo, SessionMeta,
};
use crate::session::store::Store;
use crate::session::{Session, SessionError};

#[async_trait]
impl Store for SqliteStore {
    fn describe(&self) -> String {
        format!("sqlite://{} (SQLite, WAL)", self.inner.display)
    }
    fn writer_stats(&self) -> Option<crate::session::StoreStats> {
        Some(self.stats())
    }
    fn is_durable(&self) -> bool {
        true
    }
    fn session(&self, tenant: &str, session_id: &str) -> Arc<dyn Session> {
        SqliteStore::session(self, tenant, session_id)
    }
    async fn session_meta(
        &self,
        tenant: &str,
        session_id: &str,
    ) -> Result<Option<SessionMeta>, SessionError> {
        SqliteStore::session_meta(self, tenant, session_id).await
    }
    async fn set_session_meta(
        &self,
        tenant: &str,
        session_id: &str,
        meta: SessionMeta,
    ) -> Result<(), SessionError> {
        SqliteStore::set_session_meta(self, tenant, session_id, meta).await
    }
    async fn delete_session(&self, tenant: &str, session_id: &str) -> Result<bool, SessionError> {
        SqliteStore::delete_session(self, tenant, session_id).await
    }
    async fn list_sessions(
        &self,
        tenant: &str,
        limit: usize,
    ) -> Result<Vec<SessionInfo>, SessionError> {
        SqliteStore::list_sessions(self, tenant, Some(limit)).await
    }
    async fn record_run_start(&self, start: RunStart) -> Result<(), SessionError> {
        SqliteStore::record_run_start(self, start).await
    }
    async fn record_run_end(
        &self,
        tenant: &str,
        run_id: &str,
        end: RunEnd,
    ) -> Result<bool, SessionError> {
        SqliteStore::record_run_end(self, tenant, run_id, end).await
    }
    async fn get_run(&self, tenant: &str, run_id: &str) -> Result<Option<RunRecord>, SessionError> {
        SqliteStore::get_run(self, tenant, run_id).await
    }
    async fn list_runs(
        &self,
        tenant: &str,
        query: &RunQuery,
    ) -> Result<Vec<RunRecord>, SessionError> {
        SqliteStore::list_runs(self, tenant, query).await
    }
    async fn run_detail(
        &self,
        tenant: &str,
        run_id: &str,
    ) -> Result<Option<RunDetail>, SessionError> {
        SqliteStore::run_detail(self, tenant, run_id).await
    }
    async fn runs_in_flight(&self) -> Result<Vec<RunDetail>, SessionError> {
        SqliteStore::runs_in_flight(self).await
    }
    async fn due_approvals(&self, now: i64) -> Result<Vec<(String, String)>, SessionError> {
        SqliteStore::due_approvals(self, now).await
    }
    async fn update_run(
        &self,
        tenant: &str,
        run_id: &str,
        update: RunUpdate,
    ) -> Result<bool, SessionError> {
        SqliteStore::update_run(self, tenant, run_id, update).await
    }
    async fn delete_run_items(
        &self,
        tenant: &str,
        session_id: &str,
        run_id: &str,
    ) -> Result<bool, SessionError> {
        SqliteStore::delete_run_items(self, tenant, session_id, run_id).await
    }
    async fn close(&self) -> Result<(), SessionError> {
        SqliteStore::close(self).await
    }
}
