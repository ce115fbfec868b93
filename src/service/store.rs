//! The session store `[sessions] store` names: `memory`, a PostgreSQL URL
//! (`postgres://...`, with the `postgres` feature), or an SQLite URL or path (default
//! `sqlite://callboard.db`, in the working directory).

use std::sync::Arc;

use crate::config::Config;
use crate::session::{MemoryStore, SqliteStore, Store, StoreOptions};

/// Opens the store of `config`; the error names the file, the key and what is wrong.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, String> {
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
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return open_postgres(config, &url).await;
    }
    // Runs left in flight by a previous process are the service's to take up again
    // (`Core::recover`), not the store's to mark interrupted.
    let opts = StoreOptions {
        recover_interrupted_runs: false,
        ..StoreOptions::default()
    };
    match SqliteStore::open_async(&url, opts).await {
        Ok(store) => Ok(Arc::new(store)),
        Err(e) => Err(format!(
            "{}: sessions.store: cannot open {url}: {e}",
            config.source
        )),
    }
}

#[cfg(feature = "postgres")]
async fn open_postgres(config: &Config, url: &str) -> Result<Arc<dyn Store>, String> {
    use crate::session::{PgOptions, PgStore};
    let opts = PgOptions {
        max_connections: config.sessions.max_connections,
        ..PgOptions::default()
    };
    match PgStore::open_with(url, opts).await {
        Ok(store) => Ok(Arc::new(store)),
        Err(e) => Err(format!(
            "{}: sessions.store: cannot open {}: {e}",
            config.source,
            crate::session::postgres::hide_password(url)
        )),
    }
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(config: &Config, _url: &str) -> Result<Arc<dyn Store>, String> {
    Err(format!(
        "{}: sessions.store: this callboard was built without PostgreSQL support; build it with the cargo feature `postgres` (on by default)",
        config.source
    ))
}
