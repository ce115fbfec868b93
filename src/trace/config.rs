//! The `[tracing]` section of the server config and how it becomes a running pipeline:
//! which sinks, their options, the batching knobs and the switches.
//!
//! ```toml
//! [tracing]
//! sinks = ["store", "jsonl"]          # console, jsonl, store, openai, otlp
//! include_sensitive_data = false
//! metadata_on_spans = true
//! [tracing.store]
//! path = "traces.db"
//! [tracing.jsonl]
//! path = "traces.jsonl"
//! [tracing.batch]
//! schedule_delay_ms = 1000
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use super::batch::{BatchConfig, BatchTraceProcessor};
use super::processor::Tracer;
#[cfg(feature = "openai")]
use super::sinks::OpenAiSink;
#[cfg(feature = "otlp")]
use super::sinks::OtlpSink;
use super::sinks::{ConsoleSink, JsonlSink, OpenAiSinkConfig, OtlpSinkConfig, Sink, SinkError};
#[cfg(feature = "sqlite")]
use super::sinks::{StoreSink, TraceStore};

/// A sink to enable.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// A readable tree per finished trace on standard output.
    Console,
    /// One SDK export object per line, appended to `[tracing.jsonl] path`.
    Jsonl,
    /// The embedded SQLite store at `[tracing.store] path`, read by `GET /v1/traces`.
    Store,
    /// OpenAI's trace ingest (or a compatible one) at `[tracing.openai] base_url`.
    Openai,
    /// OpenTelemetry OTLP/HTTP at `[tracing.otlp] endpoint`.
    Otlp,
}

impl SinkKind {
    /// The name a config gives it.
    pub fn name(self) -> &'static str {
        match self {
            SinkKind::Console => "console",
            SinkKind::Jsonl => "jsonl",
            SinkKind::Store => "store",
            SinkKind::Openai => "openai",
            SinkKind::Otlp => "otlp",
        }
    }

    /// The cargo feature this sink needs when this build lacks it (`None`: it is built in).
    pub fn missing_feature(self) -> Option<&'static str> {
        let (feature, on) = match self {
            SinkKind::Console | SinkKind::Jsonl => return None,
            SinkKind::Store => ("sqlite", cfg!(feature = "sqlite")),
            SinkKind::Openai => ("openai", cfg!(feature = "openai")),
            SinkKind::Otlp => ("otlp", cfg!(feature = "otlp")),
        };
        (!on).then_some(feature)
    }

    /// The problem of naming this sink in a build without its feature (`None`: built in).
    pub fn not_built(self) -> Option<TracingConfigError> {
        self.missing_feature().map(|_| self.not_built_error())
    }

    fn not_built_error(self) -> TracingConfigError {
        let feature = self.missing_feature().unwrap_or(self.name());
        TracingConfigError::Invalid {
            key: "sinks".into(),
            message: format!(
                "the {} sink is not in this build: it has no `{feature}` feature; rebuild with --features {feature}, or remove \"{}\" from sinks",
                self.name(),
                self.name()
            ),
        }
    }
}

/// `[tracing.jsonl]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JsonlConfig {
    /// The file appended to (`traces.jsonl`).
    pub path: PathBuf,
}

impl Default for JsonlConfig {
    fn default() -> Self {
        JsonlConfig {
            path: "traces.jsonl".into(),
        }
    }
}

/// `[tracing.store]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The SQLite file (`callboard-traces.db`); `":memory:"` keeps traces in memory only.
    pub path: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: "callboard-traces.db".into(),
        }
    }
}

/// Default of `[tracing] max_ingest_bytes`.
pub const DEFAULT_MAX_INGEST_BYTES: usize = 32 * 1024 * 1024;

/// `[tracing]`: whether and where runs are traced.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// No traces at all (as `OPENAI_AGENTS_DISABLE_TRACING=1`).
    pub disabled: bool,
    /// Where spans go, in order (`["store"]`; none in a build without the `sqlite` feature).
    pub sinks: Vec<SinkKind>,
    /// Keep model inputs and outputs and tool arguments and outputs in spans (default: the
    /// `OPENAI_AGENTS_TRACE_INCLUDE_SENSITIVE_DATA` variable, else true as in the SDK).
    pub include_sensitive_data: Option<bool>,
    /// Copy each trace's metadata onto every span's export.
    pub metadata_on_spans: bool,
    /// Batching knobs (the SDK's defaults).
    pub batch: BatchConfig,
    /// Options of the `jsonl` sink.
    pub jsonl: JsonlConfig,
    /// Options of the `store` sink.
    pub store: StoreConfig,
    /// Options of the `openai` sink.
    pub openai: OpenAiSinkConfig,
    /// Options of the `otlp` sink.
    pub otlp: OtlpSinkConfig,
    /// Largest body `POST /v1/traces/ingest` accepts (bytes; 32 MiB: the SDK's exporter
    /// sends 128 spans a batch with inputs and outputs of up to 100 KB each).
    pub max_ingest_bytes: usize,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            disabled: false,
            sinks: if cfg!(feature = "sqlite") {
                vec![SinkKind::Store]
            } else {
                Vec::new()
            },
            include_sensitive_data: None,
            metadata_on_spans: false,
            batch: BatchConfig::default(),
            jsonl: JsonlConfig::default(),
            store: StoreConfig::default(),
            openai: OpenAiSinkConfig::default(),
            otlp: OtlpSinkConfig::default(),
            max_ingest_bytes: DEFAULT_MAX_INGEST_BYTES,
        }
    }
}

/// Why the tracing pipeline could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TracingConfigError {
    /// A value is out of range or malformed.
    #[error("[tracing] {key}: {message}")]
    Invalid {
        /// The key, e.g. `batch.max_batch_size`.
        key: String,
        /// What is wrong and what to write instead.
        message: String,
    },
    /// A sink could not start.
    #[error("[tracing] the {sink} sink could not start: {source}")]
    Sink {
        /// The sink.
        sink: &'static str,
        /// The cause.
        #[source]
        source: SinkError,
    },
}

/// A running pipeline: the processor to register, and the store for the HTTP API when the
/// `store` sink is on.
#[derive(Clone, Debug, Default)]
pub struct TracingSetup {
    /// The batch processor feeding the sinks (none when disabled or without sinks).
    pub processor: Option<BatchTraceProcessor>,
    /// The trace store, when the `store` sink is on.
    #[cfg(feature = "sqlite")]
    pub store: Option<TraceStore>,
}

impl TracingSetup {
    /// Flushes and stops the pipeline (graceful shutdown): every queued span is delivered
    /// unless a sink hangs past `batch.shutdown_timeout_ms`.
    pub async fn shutdown(&self) -> bool {
        match &self.processor {
            Some(p) => p.shutdown_async().await,
            None => true,
        }
    }
}

impl TracingConfig {
    /// Every problem found, one message each, naming the key (empty when valid).
    pub fn problems(&self) -> Vec<TracingConfigError> {
        let mut out: Vec<TracingConfigError> = self
            .batch
            .problems()
            .into_iter()
            .map(|m| TracingConfigError::Invalid {
                key: format!("batch.{}", m.split_whitespace().next().unwrap_or("")),
                message: m,
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        for s in &self.sinks {
            if !seen.insert(*s) {
                out.push(TracingConfigError::Invalid {
                    key: "sinks".into(),
                    message: format!("{s:?} is listed twice; list each sink once"),
                });
            }
        }
        for s in &self.sinks {
            if let Some(e) = s.not_built() {
                out.push(e);
            }
        }
        if self.sinks.contains(&SinkKind::Openai) && self.openai.api_key_env.is_empty() {
            out.push(TracingConfigError::Invalid {
                key: "openai.api_key_env".into(),
                message: "empty; name the environment variable holding the API key".into(),
            });
        }
        for (key, url) in [
            ("openai.base_url", &self.openai.base_url),
            ("otlp.endpoint", &self.otlp.endpoint),
        ] {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                out.push(TracingConfigError::Invalid {
                    key: key.into(),
                    message: format!("{url:?} is not an http:// or https:// URL"),
                });
            }
        }
        out
    }

    /// Builds the sinks and the processor (nothing when disabled or without sinks).
    pub fn build(&self) -> Result<TracingSetup, TracingConfigError> {
        if let Some(first) = self.problems().into_iter().next() {
            return Err(first);
        }
        if self.disabled || self.sinks.is_empty() {
            return Ok(TracingSetup::default());
        }
        let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
        #[cfg(feature = "sqlite")]
        let mut store = None;
        for kind in &self.sinks {
            let sink: Arc<dyn Sink> = match kind {
                SinkKind::Console => Arc::new(ConsoleSink::stdout()),
                SinkKind::Jsonl => {
                    Arc::new(JsonlSink::open(&self.jsonl.path).map_err(|source| {
                        TracingConfigError::Sink {
                            sink: "jsonl",
                            source,
                        }
                    })?)
                }
                #[cfg(feature = "sqlite")]
                SinkKind::Store => {
                    let s = if self.store.path.as_os_str() == ":memory:" {
                        TraceStore::open_in_memory()
                    } else {
                        TraceStore::open(&self.store.path)
                    }
                    .map_err(|source| TracingConfigError::Sink {
                        sink: "store",
                        source,
                    })?;
                    store = Some(s.clone());
                    Arc::new(StoreSink::with_batch_size(s, self.batch.max_batch_size))
                }
                #[cfg(feature = "openai")]
                SinkKind::Openai => {
                    let s = OpenAiSink::new(&self.openai).map_err(|source| {
                        TracingConfigError::Sink {
                            sink: "openai",
                            source,
                        }
                    })?;
                    if std::env::var(&self.openai.api_key_env).is_err() {
                        tracing::warn!(env = %self.openai.api_key_env, "the openai trace sink has no API key; set the variable or its batches fail");
                    }
                    Arc::new(s)
                }
                #[cfg(feature = "otlp")]
                SinkKind::Otlp => Arc::new(OtlpSink::new(&self.otlp).map_err(|source| {
                    TracingConfigError::Sink {
                        sink: "otlp",
                        source,
                    }
                })?),
                // A sink this build lacks (`problems()` above has refused it already).
                #[allow(unreachable_patterns)]
                other => return Err(other.not_built_error()),
            };
            sinks.push(sink);
        }
        Ok(TracingSetup {
            processor: Some(BatchTraceProcessor::new(sinks, self.batch.clone())),
            #[cfg(feature = "sqlite")]
            store,
        })
    }

    /// Applies the switches to `tracer`, builds the pipeline and registers its processor
    /// there (e.g. on [`global_tracer`](super::global_tracer)).
    pub fn install(&self, tracer: &Tracer) -> Result<TracingSetup, TracingConfigError> {
        let setup = self.build()?;
        if self.disabled {
            tracer.set_disabled(true);
        }
        if let Some(on) = self.include_sensitive_data {
            tracer.set_include_sensitive_data(on);
        }
        tracer.set_metadata_on_spans(self.metadata_on_spans);
        if let Some(p) = &setup.processor {
            tracer.add_processor(Arc::new(p.clone()));
        }
        Ok(setup)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sink_this_build_lacks_is_refused_by_name_with_its_feature() {
        let cfg: TracingConfig =
            toml::from_str(r#"sinks = ["console", "jsonl", "store", "openai", "otlp"]"#).unwrap();
        let problems: Vec<String> = cfg.problems().iter().map(|p| p.to_string()).collect();
        for (kind, feature, on) in [
            (SinkKind::Store, "sqlite", cfg!(feature = "sqlite")),
            (SinkKind::Openai, "openai", cfg!(feature = "openai")),
            (SinkKind::Otlp, "otlp", cfg!(feature = "otlp")),
        ] {
            let said = problems
                .iter()
                .any(|p| p.contains(&format!("rebuild with --features {feature}")));
            assert_eq!(said, !on, "{kind:?}: {problems:?}");
            assert_eq!(kind.missing_feature().is_some(), !on);
        }
        assert_eq!(SinkKind::Console.missing_feature(), None);
        assert_eq!(SinkKind::Jsonl.missing_feature(), None);
        let built = cfg!(all(
            feature = "sqlite",
            feature = "openai",
            feature = "otlp"
        ));
        assert_eq!(problems.is_empty(), built, "{problems:?}");
    }

    #[test]
    fn parses_the_documented_shape_and_refuses_unknown_keys() {
        let c: TracingConfig = toml::from_str(
            r#"
            sinks = ["console", "jsonl", "store", "openai", "otlp"]
            include_sensitive_data = false
            metadata_on_spans = true
            [batch]
            max_queue_size = 100
            schedule_delay_ms = 50
            [jsonl]
            path = "/tmp/x.jsonl"
            [store]
            path = ":memory:"
            [openai]
            base_url = "http://127.0.0.1:1/v1"
            [otlp]
            endpoint = "http://127.0.0.1:4318/v1/traces"
            headers = { authorization = "Basic abc" }
            "#,
        )
        .unwrap();
        assert_eq!(c.sinks.len(), 5);
        assert_eq!(c.batch.max_queue_size, 100);
        assert_eq!(c.batch.max_batch_size, 128);
        // Only a sink this build lacks is a problem (none in the default build).
        let p = c.problems();
        assert!(
            p.iter()
                .all(|p| p.to_string().contains("not in this build")),
            "{p:?}"
        );
        let bad = toml::from_str::<TracingConfig>("sinks = [\"store\"]\nbogus = 1");
        assert!(bad.unwrap_err().to_string().contains("bogus"));
        let bad = toml::from_str::<TracingConfig>("sinks = [\"kafka\"]");
        assert!(bad.is_err());
        let c: TracingConfig = toml::from_str("[batch]\nmax_batch_size = 0").unwrap();
        let p = c.problems();
        assert_eq!(p.len(), 1);
        assert!(p[0].to_string().contains("max_batch_size"), "{}", p[0]);
    }
}
