//! The `jsonl` sink: one SDK export object (trace or span) per line, appended to a file.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{Sink, SinkError};
use crate::trace::batch::{ExportItem, ItemKind};

/// Appends `{"object":"trace",...}` and `{"object":"trace.span",...}` lines to a file.
pub struct JsonlSink {
    path: PathBuf,
    file: Mutex<BufWriter<File>>,
}

impl JsonlSink {
    /// Opens (creating, appending to) `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SinkError> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| SinkError::Io {
                path: path.display().to_string(),
                source,
            })?;
        Ok(JsonlSink {
            path,
            file: Mutex::new(BufWriter::new(file)),
        })
    }

    fn io(&self, source: std::io::Error) -> SinkError {
        SinkError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }
}

#[async_trait]
impl Sink for JsonlSink {
    fn name(&self) -> &str {
        "jsonl"
    }

    async fn export(&self, batch: &[ExportItem]) -> Result<(), SinkError> {
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        for item in batch.iter().filter(|i| i.kind != ItemKind::TraceEnd) {
            f.write_all(item.json.as_bytes()).map_err(|e| self.io(e))?;
            f.write_all(b"\n").map_err(|e| self.io(e))?;
        }
        f.flush().map_err(|e| self.io(e))
    }

    async fn flush(&self) -> Result<(), SinkError> {
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        f.flush().map_err(|e| self.io(e))?;
        f.get_ref().sync_data().map_err(|e| self.io(e))
    }
}
