//! One conversation in a PostgreSQL store, scoped by tenant; a turn's items and the run's
//! progress and state are saved in one transaction.

use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Transaction};

use super::{db_err, PgStore};
use crate::items::Item;
use crate::session::records::{now_ms, TurnRecord};
use crate::session::{Session, SessionError};

/// One conversation in a [`PgStore`], scoped by tenant.
#[derive(Clone)]
pub struct PgSession {
    pub(super) store: PgStore,
    pub(super) tenant: Arc<str>,
    pub(super) id: Arc<str>,
}

impl std::fmt::Debug for PgSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSession")
            .field("tenant", &self.tenant)
            .field("session_id", &self.id)
            .finish()
    }
}

/// Creates the session's row or marks it updated; the row stays locked until the
/// transaction ends, so one session's writes never interleave.
async fn touch(
    tx: &Transaction<'_>,
    tenant: &str,
    session: &str,
    now: i64,
) -> Result<(), tokio_postgres::Error> {
    let q = tx
        .prepare_cached(
            "INSERT INTO sessions (tenant, session_id, created_at, updated_at)
             VALUES ($1, $2, $3, $3)
             ON CONFLICT (tenant, session_id) DO UPDATE SET updated_at = EXCLUDED.updated_at",
        )
        .await?;
    tx.execute(&q, &[&tenant, &session, &now]).await?;
    Ok(())
}

/// Sets a session's numbering (never lowering `seq_safe` when `None`), creating the session.
pub(super) async fn set_meta(
    c: &impl GenericClient,
    tenant: &str,
    session: &str,
    epoch: &str,
    seq_reserved: u64,
    seq_safe: Option<u64>,
    now: i64,
) -> Result<(), tokio_postgres::Error> {
    let q = c
        .prepare_cached(
            "INSERT INTO sessions (tenant, session_id, created_at, updated_at, epoch, seq_reserved, seq_safe)
             VALUES ($1, $2, $3, $3, $4, $5, COALESCE($6::bigint, 0))
             ON CONFLICT (tenant, session_id) DO UPDATE
                SET epoch = EXCLUDED.epoch, seq_reserved = EXCLUDED.seq_reserved,
                    seq_safe = COALESCE($6::bigint, sessions.seq_safe)",
        )
        .await?;
    let safe = seq_safe.map(|s| s as i64);
    c.execute(
        &q,
        &[
            &tenant,
            &session,
            &now,
            &epoch,
            &(seq_reserved as i64),
            &safe,
        ],
    )
    .await?;
    Ok(())
}

async fn insert_items(
    tx: &Transaction<'_>,
    tenant: &str,
    session: &str,
    items: &[String],
    run_id: Option<&str>,
    now: i64,
) -> Result<(), tokio_postgres::Error> {
    if items.is_empty() {
        return Ok(());
    }
    touch(tx, tenant, session, now).await?;
    let q = tx
        .prepare_cached(
            "INSERT INTO items (tenant, session_id, item, created_at, run_id)
             SELECT $1, $2, t.item, $4, $5 FROM unnest($3::text[]) WITH ORDINALITY AS t(item, n)
              ORDER BY t.n",
        )
        .await?;
    tx.execute(&q, &[&tenant, &session, &items, &now, &run_id])
        .await?;
    Ok(())
}

impl PgSession {
    /// The tenant it belongs to.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// Deletes the session's items and row; answers whether there was anything.
    pub(super) async fn clear(&self) -> Result<bool, SessionError> {
        let mut c = self.store.client().await?;
        let e = |e| db_err("could not clear a session", e);
        let tx = c.transaction().await.map_err(e)?;
        let items = tx
            .execute(
                "DELETE FROM items WHERE tenant = $1 AND session_id = $2",
                &[&&*self.tenant, &&*self.id],
            )
            .await
            .map_err(e)?;
        let rows = tx
            .execute(
                "DELETE FROM sessions WHERE tenant = $1 AND session_id = $2",
                &[&&*self.tenant, &&*self.id],
            )
            .await
            .map_err(e)?;
        tx.commit().await.map_err(e)?;
        Ok(items + rows > 0)
    }
}

#[async_trait]
impl Session for PgSession {
    fn session_id(&self) -> &str {
        &self.id
    }

    async fn get_items(&self, limit: Option<usize>) -> Result<Vec<Item>, SessionError> {
        let c = self.store.client().await?;
        let e = |e| db_err("could not read a session's items", e);
        let limit = limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX));
        let q = c
            .prepare_cached(
                "SELECT id, item FROM (
                    SELECT id, item FROM items WHERE tenant = $1 AND session_id = $2
                     ORDER BY id DESC LIMIT $3
                 ) newest ORDER BY id ASC",
            )
            .await
            .map_err(e)?;
        let rows = c
            .query(&q, &[&&*self.tenant, &&*self.id, &limit])
            .await
            .map_err(e)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let text: &str = r.get(1);
            match serde_json::from_str::<Item>(text) {
                Ok(item) => out.push(item),
                Err(err) => {
                    let row: i64 = r.get(0);
                    tracing::warn!(tenant = %self.tenant, session = %self.id, row,
                        "skipping a session item that does not parse: {err}");
                }
            }
        }
        Ok(out)
    }

    async fn add_items(&self, items: Vec<Item>) -> Result<(), SessionError> {
        let items = encode(&items)?;
        if items.is_empty() {
            return Ok(());
        }
        let mut c = self.store.client().await?;
        let e = |e| db_err("could not save a session's items", e);
        let tx = c.transaction().await.map_err(e)?;
        insert_items(&tx, &self.tenant, &self.id, &items, None, now_ms())
            .await
            .map_err(e)?;
        tx.commit().await.map_err(e)
    }

    async fn save_turn(&self, items: Vec<Item>, turn: &TurnRecord) -> Result<(), SessionError> {
        let items = encode(&items)?;
        let usage = serde_json::to_string(&turn.usage)
            .map_err(|e| SessionError::Store(format!("could not encode the usage: {e}")))?;
        let now = now_ms();
        let mut c = self.store.client().await?;
        let e = |e| db_err("could not save a turn", e);
        let tx = c.transaction().await.map_err(e)?;
        insert_items(&tx, &self.tenant, &self.id, &items, Some(&turn.run_id), now)
            .await
            .map_err(e)?;
        let status = if turn.pause.is_some() {
            "awaiting_approval"
        } else {
            "running"
        };
        let q = tx
            .prepare_cached(
                "UPDATE runs SET turn = $3, last_agent = $4, usage = $5, updated_at = $6,
                    state = COALESCE($7, state), status = $8, deadline = $9
                 WHERE tenant = $1 AND run_id = $2 AND status = 'running'",
            )
            .await
            .map_err(e)?;
        tx.execute(
            &q,
            &[
                &&*self.tenant,
                &&*turn.run_id,
                &(turn.turn as i64),
                &turn.agent,
                &usage,
                &now,
                &turn.state.as_deref(),
                &status,
                &turn.pause.flatten(),
            ],
        )
        .await
        .map_err(e)?;
        match (&turn.seq_reserved, turn.seq_safe) {
            (Some((epoch, upto)), safe) => {
                set_meta(&tx, &self.tenant, &self.id, epoch, *upto, safe, now)
                    .await
                    .map_err(e)?
            }
            (None, Some(safe)) => {
                tx.execute(
                    "UPDATE sessions SET seq_safe = $3 WHERE tenant = $1 AND session_id = $2",
                    &[&&*self.tenant, &&*self.id, &(safe as i64)],
                )
                .await
                .map_err(e)?;
            }
            (None, None) => {}
        }
        tx.commit().await.map_err(e)
    }

    async fn pop_item(&self) -> Result<Option<Item>, SessionError> {
        let mut c = self.store.client().await?;
        let e = |e| db_err("could not pop a session's item", e);
        let tx = c.transaction().await.map_err(e)?;
        // The newest row that parses; rows that do not are dropped on the way.
        let popped = loop {
            let row = tx
                .query_opt(
                    "DELETE FROM items WHERE id = (
                        SELECT id FROM items WHERE tenant = $1 AND session_id = $2
                         ORDER BY id DESC LIMIT 1 FOR UPDATE
                     ) RETURNING id, item",
                    &[&&*self.tenant, &&*self.id],
                )
                .await
                .map_err(e)?;
            let Some(row) = row else { break None };
            let text: &str = row.get(1);
            match serde_json::from_str::<Item>(text) {
                Ok(item) => break Some(item),
                Err(err) => {
                    let id: i64 = row.get(0);
                    tracing::warn!(tenant = %self.tenant, session = %self.id, row = id,
                        "dropping a session item that does not parse: {err}");
                }
            }
        };
        if popped.is_some() {
            tx.execute(
                "UPDATE sessions SET updated_at = $3 WHERE tenant = $1 AND session_id = $2",
                &[&&*self.tenant, &&*self.id, &now_ms()],
            )
            .await
            .map_err(e)?;
        }
        tx.commit().await.map_err(e)?;
        Ok(popped)
    }

    async fn clear_session(&self) -> Result<(), SessionError> {
        self.clear().await.map(|_| ())
    }
}

fn encode(items: &[Item]) -> Result<Vec<String>, SessionError> {
    items
        .iter()
        .map(serde_json::to_string)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SessionError::Store(format!("could not encode an item: {e}")))
}
