//! The session store `[sessions] store` names: `memory`, or an SQLite URL or path (default
//! `sqlite://callboard.db`, in the working directory).

use std::sync::Arc;

use crate::config::Config;
use crate::session::{MemoryStore, SqliteStore, Store, StoreOptions};

/// Opens the store of `config`; the error names the file, the key and what is wrong.
pub fn open_store(config: &Config) -> Result<Arc<dyn Store>, String> {
    let url = config
        .sessions
        .store
        .clone()
        .unwrap_or_else(|| "sqlite://callboard.db".to_owned());
    if url == "memory" || url == "memory://" {
        return Ok(Arc::new(MemoryStore::new(
            config.sessions.memory_max_sessions,
            config.sessions.memory_max_runs,
        )));
    }
    // Runs left in flight by a previous process are the service's to take up again
    // (`Core::recover`), not the store's to mark interrupted.
    let opts = StoreOptions {
        recover_interrupted_runs: false,
        ..StoreOptions::default()
    };
    match SqliteStore::open_with(&url, opts) {
        Ok(store) => Ok(Arc::new(store)),
        Err(e) => Err(format!(
            "{}: sessions.store: cannot open {url}: {e}",
            config.source
        )),
    }
}
