//! [`StoreSink`]: the sink writing a run's traces and spans to a [`TraceStore`], gathering
//! batches into larger transactions under load and committing at once when the pipeline is
//! drained.

use async_trait::async_trait;

use super::TraceStore;
use crate::trace::batch::ExportItem;
use crate::trace::sinks::{Sink, SinkError};

/// Items the store sink gathers before one transaction (fewer, larger commits write each
/// shared page once instead of once per batch).
pub const STORE_COMMIT_ITEMS: usize = 1024;

/// The sink writing to a [`TraceStore`]. It gathers full batches and commits when it holds
/// [`STORE_COMMIT_ITEMS`], when a batch is not full (the actor's queue is drained, so the
/// store is never more than one export behind), and on flush and shutdown.
pub struct StoreSink {
    store: TraceStore,
    full_batch: usize,
    pending: std::sync::Mutex<Vec<ExportItem>>,
}

impl std::fmt::Debug for StoreSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreSink")
    }
}

impl StoreSink {
    /// A sink writing to `store` (keep a clone of it for queries), for batches of the
    /// default size (128).
    pub fn new(store: TraceStore) -> Self {
        Self::with_batch_size(store, 128)
    }

    /// A sink for batches of at most `max_batch_size` items (the processor's setting).
    pub fn with_batch_size(store: TraceStore, max_batch_size: usize) -> Self {
        StoreSink {
            store,
            full_batch: max_batch_size.max(1),
            pending: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The store.
    pub fn store(&self) -> &TraceStore {
        &self.store
    }

    fn commit(&self) -> Result<(), SinkError> {
        let items = {
            let mut g = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *g)
        };
        if items.is_empty() {
            return Ok(());
        }
        self.store.insert(&items).map(|_| ())
    }
}

#[async_trait]
impl Sink for StoreSink {
    fn name(&self) -> &str {
        "store"
    }

    async fn export(&self, batch: &[ExportItem]) -> Result<(), SinkError> {
        // The sink has a thread of its own, so blocking on SQLite here stalls nobody else.
        let held = {
            let mut g = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            g.extend_from_slice(batch);
            g.len()
        };
        if held >= STORE_COMMIT_ITEMS || batch.len() < self.full_batch {
            return self.commit();
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), SinkError> {
        self.commit()
    }
}
