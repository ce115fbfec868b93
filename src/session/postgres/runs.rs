//! Run records in PostgreSQL: start, end, updates, listings, runs in flight and due
//! approvals, with the same rules as the SQLite store (an end or update only touches a run
//! in flight; a start saves the session's seq reservation in the same transaction).

use tokio_postgres::Row;

use super::{db_err, session::set_meta, PgStore};
use crate::session::records::{
    now_ms, RunDetail, RunEnd, RunErrorInfo, RunQuery, RunRecord, RunStart, RunStatus, RunUpdate,
};
use crate::session::SessionError;

const RUN_COLUMNS: &str = "run_id, tenant, session_id, status, starting_agent, last_agent,
    final_output, usage, error_type, error_message, trace_id, created_at, updated_at, finished_at,
    turn, cancel_mode, by_run_id, node_id, state, request";

fn detail_from_row(r: &Row) -> RunDetail {
    let status: &str = r.get(3);
    let final_output: Option<&str> = r.get(6);
    let usage: Option<&str> = r.get(7);
    let error_type: Option<String> = r.get(8);
    let error_message: Option<String> = r.get(9);
    RunDetail {
        record: RunRecord {
            run_id: r.get(0),
            tenant: r.get(1),
            session_id: r.get(2),
            status: RunStatus::parse(status).unwrap_or(RunStatus::Interrupted),
            starting_agent: r.get(4),
            last_agent: r.get(5),
            final_output: final_output.and_then(|s| serde_json::from_str(s).ok()),
            usage: usage.and_then(|s| serde_json::from_str(s).ok()),
            error: match (error_type, error_message) {
                (None, None) => None,
                (t, m) => Some(RunErrorInfo {
                    error_type: t.unwrap_or_default(),
                    message: m.unwrap_or_default(),
                }),
            },
            trace_id: r.get(10),
            created_at: r.get(11),
            updated_at: r.get(12),
            finished_at: r.get(13),
            turn: r.get::<_, i64>(14).max(0) as u64,
            cancel_mode: r.get(15),
            by_run_id: r.get(16),
            node_id: r.get(17),
        },
        state: r.get(18),
        request: r.get(19),
    }
}

fn to_json<T: serde::Serialize>(v: Option<&T>) -> Result<Option<String>, SessionError> {
    v.map(serde_json::to_string)
        .transpose()
        .map_err(|e| SessionError::Store(format!("could not encode a run record: {e}")))
}

impl PgStore {
    pub(super) async fn run_start(&self, s: RunStart) -> Result<(), SessionError> {
        let mut c = self.client().await?;
        let e = |e| db_err("could not record a run's start", e);
        let now = now_ms();
        let tx = c.transaction().await.map_err(e)?;
        if let (Some(session), Some((epoch, upto))) = (&s.session_id, &s.seq_reserved) {
            set_meta(&tx, &s.tenant, session, epoch, *upto, None, now)
                .await
                .map_err(e)?;
        }
        let q = tx
            .prepare_cached(
                "INSERT INTO runs (tenant, run_id, session_id, status, starting_agent,
                                   last_agent, trace_id, created_at, updated_at, request, node_id)
                 VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $7, $8, $9)",
            )
            .await
            .map_err(e)?;
        let inserted = tx
            .execute(
                &q,
                &[
                    &s.tenant,
                    &s.run_id,
                    &s.session_id,
                    &s.status.as_str(),
                    &s.starting_agent,
                    &s.trace_id,
                    &now,
                    &s.request,
                    &s.node_id,
                ],
            )
            .await;
        match inserted {
            Ok(_) => tx.commit().await.map_err(e),
            Err(err) if is_unique_violation(&err) => {
                Err(SessionError::Busy(s.session_id.clone().unwrap_or_default()))
            }
            Err(err) => Err(e(err)),
        }
    }

    pub(super) async fn run_end(
        &self,
        tenant: &str,
        run_id: &str,
        end: RunEnd,
    ) -> Result<bool, SessionError> {
        let final_output = to_json(end.final_output.as_ref())?;
        let usage = to_json(end.usage.as_ref())?;
        let (etype, emsg) = match &end.error {
            Some(e) => (Some(e.error_type.as_str()), Some(e.message.as_str())),
            None => (None, None),
        };
        let mut c = self.client().await?;
        let e = |e| db_err("could not record a run's end", e);
        let now = now_ms();
        let tx = c.transaction().await.map_err(e)?;
        let q = tx
            .prepare_cached(
                "UPDATE runs SET status = $3, last_agent = COALESCE($4, last_agent),
                    final_output = $5, usage = COALESCE($6, usage), error_type = $7,
                    error_message = $8, updated_at = $9, finished_at = $9,
                    cancel_mode = $10, by_run_id = $11, deadline = NULL
                 WHERE tenant = $1 AND run_id = $2
                   AND status IN ('running', 'queued', 'awaiting_approval')
                 RETURNING session_id",
            )
            .await
            .map_err(e)?;
        let row = tx
            .query_opt(
                &q,
                &[
                    &tenant,
                    &run_id,
                    &end.status.as_str(),
                    &end.last_agent,
                    &final_output,
                    &usage,
                    &etype,
                    &emsg,
                    &now,
                    &end.cancel_mode,
                    &end.by_run_id,
                ],
            )
            .await
            .map_err(e)?;
        let Some(row) = row else {
            tx.commit().await.map_err(e)?;
            return Ok(false);
        };
        let session: Option<String> = row.get(0);
        if let (Some(session), Some((epoch, safe))) = (session, &end.seq_safe) {
            tx.execute(
                "UPDATE sessions SET seq_safe = GREATEST(seq_safe, $3)
                  WHERE tenant = $1 AND session_id = $2 AND epoch = $4",
                &[&tenant, &session, &(*safe as i64), epoch],
            )
            .await
            .map_err(e)?;
        }
        tx.commit().await.map_err(e)?;
        Ok(true)
    }

    pub(super) async fn detail(
        &self,
        tenant: &str,
        run_id: &str,
    ) -> Result<Option<RunDetail>, SessionError> {
        let c = self.client().await?;
        let e = |e| db_err("could not read a run", e);
        let q = c
            .prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE tenant = $1 AND run_id = $2"
            ))
            .await
            .map_err(e)?;
        let row = c.query_opt(&q, &[&tenant, &run_id]).await.map_err(e)?;
        Ok(row.as_ref().map(detail_from_row))
    }

    pub(super) async fn runs(
        &self,
        tenant: &str,
        query: &RunQuery,
    ) -> Result<Vec<RunRecord>, SessionError> {
        let c = self.client().await?;
        let e = |e| db_err("could not list runs", e);
        let status = query.status.map(RunStatus::as_str);
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        let q = c
            .prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE tenant = $1
                    AND ($2::text IS NULL OR session_id = $2) AND ($3::text IS NULL OR status = $3)
                  ORDER BY created_at DESC, run_id DESC LIMIT $4"
            ))
            .await
            .map_err(e)?;
        let rows = c
            .query(&q, &[&tenant, &query.session_id, &status, &limit])
            .await
            .map_err(e)?;
        Ok(rows.iter().map(|r| detail_from_row(r).record).collect())
    }

    pub(super) async fn in_flight(&self) -> Result<Vec<RunDetail>, SessionError> {
        let c = self.client().await?;
        let e = |e| db_err("could not list the runs in flight", e);
        let q = c
            .prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs
                  WHERE status IN ('running', 'queued', 'awaiting_approval')
                  ORDER BY created_at, run_id"
            ))
            .await
            .map_err(e)?;
        let rows = c.query(&q, &[]).await.map_err(e)?;
        Ok(rows.iter().map(detail_from_row).collect())
    }

    pub(super) async fn due(&self, now: i64) -> Result<Vec<(String, String)>, SessionError> {
        let c = self.client().await?;
        let e = |e| db_err("could not list the approvals due", e);
        let rows = c
            .query(
                "SELECT tenant, run_id FROM runs
                  WHERE status = 'awaiting_approval' AND deadline IS NOT NULL AND deadline <= $1",
                &[&now],
            )
            .await
            .map_err(e)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    pub(super) async fn update(
        &self,
        tenant: &str,
        run_id: &str,
        update: RunUpdate,
    ) -> Result<bool, SessionError> {
        let c = self.client().await?;
        let e = |e| db_err("could not update a run", e);
        let q = c
            .prepare_cached(
                "UPDATE runs SET status = $3, state = COALESCE($4, state),
                    node_id = COALESCE($5, node_id), updated_at = $6,
                    deadline = CASE WHEN $3 = 'awaiting_approval' THEN deadline ELSE NULL END
                 WHERE tenant = $1 AND run_id = $2
                   AND status IN ('running', 'queued', 'awaiting_approval')",
            )
            .await
            .map_err(e)?;
        let n = c
            .execute(
                &q,
                &[
                    &tenant,
                    &run_id,
                    &update.status.as_str(),
                    &update.state,
                    &update.node_id,
                    &now_ms(),
                ],
            )
            .await;
        match n {
            Ok(n) => Ok(n > 0),
            Err(err) if is_unique_violation(&err) => Err(SessionError::Busy(run_id.to_owned())),
            Err(err) => Err(e(err)),
        }
    }

    /// Moves a running run from node `from` to `to` in one statement: of many nodes trying,
    /// one succeeds.
    pub(super) async fn take_over(
        &self,
        tenant: &str,
        run_id: &str,
        from: Option<&str>,
        to: &str,
    ) -> Result<bool, SessionError> {
        let c = self.client().await?;
        let n = c
            .execute(
                "UPDATE runs SET node_id = $4, updated_at = $5
                  WHERE tenant = $1 AND run_id = $2 AND status = 'running'
                    AND node_id IS NOT DISTINCT FROM $3",
                &[&tenant, &run_id, &from, &to, &now_ms()],
            )
            .await
            .map_err(|e| db_err("could not take over a run", e))?;
        Ok(n > 0)
    }

    pub(super) async fn delete_items_of(
        &self,
        tenant: &str,
        session_id: &str,
        run_id: &str,
    ) -> Result<bool, SessionError> {
        let c = self.client().await?;
        let n = c
            .execute(
                "DELETE FROM items WHERE tenant = $1 AND session_id = $2 AND run_id = $3",
                &[&tenant, &session_id, &run_id],
            )
            .await
            .map_err(|e| db_err("could not delete a run's items", e))?;
        Ok(n > 0)
    }
}

/// Whether `e` is a unique violation (another node's run holds the session).
fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
}
