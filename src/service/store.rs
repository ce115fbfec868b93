//! The session store `[sessions] store` names: `memory`, or an SQLite URL or path (default
//! `sqlite://callboard.db`, in the working directory).

use std::sync::Arc;

use crate::config::Config;
use crate::session::{MemoryStore, SqliteStore, Store};

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
    match SqliteStore::open(&url) {
        Ok(store) => {
            let n = store.recovered_runs();
            if n > 0 {
                tracing::warn!(
                    runs = n,
                    "runs left running by a previous process are marked interrupted"
                );
            }
            Ok(Arc::new(store))
        }
        Err(e) => Err(format!(
            "{}: sessions.store: cannot open {url}: {e}",
            config.source
        )),
    }
}
