//! Run records in the SQLite store: started, ended, updated, read, listed, with their saved
//! state and queued requests; the runs in flight and the approvals due.

use rusqlite::params;

use super::writer::{WriteOp, WriteOut};
use super::SqliteStore;
use crate::session::records::{
    RunDetail, RunEnd, RunErrorInfo, RunQuery, RunRecord, RunStart, RunStatus, RunUpdate,
};
use crate::session::SessionError;

impl SqliteStore {
    /// Records a run as `running`. Call it before the run starts.
    pub async fn record_run_start(&self, start: RunStart) -> Result<(), SessionError> {
        self.write(WriteOp::RunStart(Box::new(start)))
            .await
            .map(|_| ())
    }

    /// Records how a run ended; answers `false` if there was no running record for it (never
    /// started, or already ended or marked interrupted).
    pub async fn record_run_end(
        &self,
        tenant: &str,
        run_id: &str,
        end: RunEnd,
    ) -> Result<bool, SessionError> {
        match self
            .write(WriteOp::RunEnd {
                tenant: tenant.to_owned(),
                run_id: run_id.to_owned(),
                end: Box::new(end),
            })
            .await?
        {
            WriteOut::Changed(b) => Ok(b),
            _ => Ok(false),
        }
    }

    /// A tenant's run record.
    pub async fn get_run(
        &self,
        tenant: &str,
        run_id: &str,
    ) -> Result<Option<RunRecord>, SessionError> {
        let tenant = tenant.to_owned();
        let run_id = run_id.to_owned();
        self.read(move |c| {
            let mut q = c.prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE tenant = ?1 AND run_id = ?2"
            ))?;
            let mut rows = q.query(params![tenant, run_id])?;
            match rows.next()? {
                Some(r) => run_from_row(r).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    /// A tenant's runs, newest first, filtered by session and status.
    pub async fn list_runs(
        &self,
        tenant: &str,
        query: &RunQuery,
    ) -> Result<Vec<RunRecord>, SessionError> {
        let tenant = tenant.to_owned();
        let session_id = query.session_id.clone();
        let status = query.status.map(RunStatus::as_str);
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        self.read(move |c| {
            let mut q = c.prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE tenant = ?1
                    AND (?2 IS NULL OR session_id = ?2) AND (?3 IS NULL OR status = ?3)
                  ORDER BY created_at DESC, run_id DESC LIMIT ?4"
            ))?;
            let rows = q.query_map(params![tenant, session_id, status, limit], run_from_row)?;
            rows.collect()
        })
        .await
    }

    /// A tenant's run with its state and (queued) request.
    pub async fn run_detail(
        &self,
        tenant: &str,
        run_id: &str,
    ) -> Result<Option<RunDetail>, SessionError> {
        let tenant = tenant.to_owned();
        let run_id = run_id.to_owned();
        self.read(move |c| {
            let mut q = c.prepare_cached(&format!(
                "SELECT {RUN_COLUMNS}, state, request FROM runs WHERE tenant = ?1 AND run_id = ?2"
            ))?;
            let mut rows = q.query(params![tenant, run_id])?;
            match rows.next()? {
                Some(r) => Ok(Some(RunDetail {
                    record: run_from_row(r)?,
                    state: r.get(18)?,
                    request: r.get(19)?,
                })),
                None => Ok(None),
            }
        })
        .await
    }

    /// Every tenant's runs still in flight (running, queued, awaiting approval), oldest
    /// first, with their states: what a restarted server takes up again.
    pub async fn runs_in_flight(&self) -> Result<Vec<RunDetail>, SessionError> {
        self.read(move |c| {
            let mut q = c.prepare_cached(&format!(
                "SELECT {RUN_COLUMNS}, state, request FROM runs
                  WHERE status IN ('running', 'queued', 'awaiting_approval')
                  ORDER BY created_at, run_id"
            ))?;
            let rows = q.query_map([], |r| {
                Ok(RunDetail {
                    record: run_from_row(r)?,
                    state: r.get(18)?,
                    request: r.get(19)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Runs awaiting approval whose decision deadline has passed: `(tenant, run_id)`.
    pub async fn due_approvals(&self, now: i64) -> Result<Vec<(String, String)>, SessionError> {
        self.read(move |c| {
            let mut q = c.prepare_cached(
                "SELECT tenant, run_id FROM runs
                  WHERE status = 'awaiting_approval' AND deadline IS NOT NULL AND deadline <= ?1",
            )?;
            let rows = q.query_map(params![now], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
        .await
    }

    /// Changes a run in flight (status, state, node); answers whether it was in flight.
    pub async fn update_run(
        &self,
        tenant: &str,
        run_id: &str,
        update: RunUpdate,
    ) -> Result<bool, SessionError> {
        match self
            .write(WriteOp::UpdateRun {
                tenant: tenant.to_owned(),
                run_id: run_id.to_owned(),
                update: Box::new(update),
            })
            .await?
        {
            WriteOut::Changed(b) => Ok(b),
            _ => Ok(false),
        }
    }

    /// Removes the items a run added to its session (double-texting `rollback`).
    pub async fn delete_run_items(
        &self,
        tenant: &str,
        session_id: &str,
        run_id: &str,
    ) -> Result<bool, SessionError> {
        match self
            .write(WriteOp::DeleteRunItems {
                tenant: tenant.to_owned(),
                session: session_id.to_owned(),
                run_id: run_id.to_owned(),
            })
            .await?
        {
            WriteOut::Changed(b) => Ok(b),
            _ => Ok(false),
        }
    }
}

const RUN_COLUMNS: &str = "run_id, tenant, session_id, status, starting_agent, last_agent,
    final_output, usage, error_type, error_message, trace_id, created_at, updated_at, finished_at,
    turn, cancel_mode, by_run_id, node_id";

fn run_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRecord> {
    let status: String = r.get(3)?;
    let final_output: Option<String> = r.get(6)?;
    let usage: Option<String> = r.get(7)?;
    let error_type: Option<String> = r.get(8)?;
    let error_message: Option<String> = r.get(9)?;
    Ok(RunRecord {
        run_id: r.get(0)?,
        tenant: r.get(1)?,
        session_id: r.get(2)?,
        status: RunStatus::parse(&status).unwrap_or(RunStatus::Interrupted),
        starting_agent: r.get(4)?,
        last_agent: r.get(5)?,
        final_output: final_output.and_then(|s| serde_json::from_str(&s).ok()),
        usage: usage.and_then(|s| serde_json::from_str(&s).ok()),
        error: match (error_type, error_message) {
            (None, None) => None,
            (t, m) => Some(RunErrorInfo {
                error_type: t.unwrap_or_default(),
                message: m.unwrap_or_default(),
            }),
        },
        trace_id: r.get(10)?,
        created_at: r.get(11)?,
        updated_at: r.get(12)?,
        finished_at: r.get(13)?,
        turn: r.get::<_, i64>(14)?.max(0) as u64,
        cancel_mode: r.get(15)?,
        by_run_id: r.get(16)?,
        node_id: r.get(17)?,
    })
}
