//! Where an SQLite store lives (`sqlite://callboard.db`, a path, `:memory:`), how its
//! connections are configured (WAL, fsync policy), and what an open error means.

use std::path::PathBuf;

use rusqlite::{Connection, ErrorCode};

use super::{Durability, StoreOptions};
use crate::session::SessionError;

/// Where the database lives.
#[derive(Clone, Debug)]
pub(super) enum Location {
    Memory,
    File(PathBuf),
}

pub(super) fn parse_location(url: &str) -> Result<Location, SessionError> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url)
        .trim();
    // Connection-string options (`?mode=rwc`, as other tools write them) are not used here:
    // the store always opens read-write and creates the file.
    let rest = rest.split_once('?').map_or(rest, |(p, _)| p);
    if rest.is_empty() {
        return Err(SessionError::Open {
            path: url.to_owned(),
            reason: "no file name given (use e.g. sqlite://callboard.db, a path, or :memory:)"
                .into(),
        });
    }
    if rest == ":memory:" {
        return Ok(Location::Memory);
    }
    Ok(Location::File(PathBuf::from(rest)))
}

pub(super) fn classify(path: &str, e: &rusqlite::Error) -> SessionError {
    let reason = e.to_string();
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => SessionError::Corrupt {
            path: path.to_owned(),
            reason,
        },
        _ => SessionError::Open {
            path: path.to_owned(),
            reason,
        },
    }
}

pub(super) fn configure(
    conn: &Connection,
    opts: &StoreOptions,
    writer: bool,
) -> rusqlite::Result<()> {
    conn.busy_timeout(opts.busy_timeout)?;
    if writer {
        // Reading the journal mode touches the file header: a file that is not a database
        // fails here, before anything is written.
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") && !mode.eq_ignore_ascii_case("memory") {
            tracing::warn!(
                journal_mode = %mode,
                "the session database could not switch to WAL (a network file system?); \
                 writes stay durable but readers wait for the writer"
            );
        }
        // Checkpoints run on the checkpoint thread; this is only a backstop (64 MiB of WAL
        // at 4 KiB pages) in case that thread cannot keep up.
        conn.execute_batch("PRAGMA wal_autocheckpoint = 16384;")?;
    }
    let sync = match opts.durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {sync}; PRAGMA foreign_keys = ON;"
    ))?;
    if !writer {
        conn.execute_batch("PRAGMA query_only = ON;")?;
    }
    Ok(())
}
