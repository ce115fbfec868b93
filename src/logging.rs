//! The service's own logs: `[logging]` (`format = "text" | "json"`, `level`), the subscriber
//! that writes them to standard error, and the `run` span that every run's work happens in,
//! so each line logged inside a run carries its `tenant`, `session_id`, `run_id`,
//! `trace_id` and `agent` (the agent running now).
//!
//! ```toml
//! [logging]
//! format = "json"                      # one JSON object per line; "text" (default) for people
//! level = "info,callboard=debug"       # a tracing-subscriber filter; CALLBOARD_LOG overrides it
//! ```

use serde::Deserialize;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (the run's ids as `run{tenant=.. run_id=..}:` before the message).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields.message`, `target`, and
    /// inside a run `span: {name: "run", tenant, session_id, run_id, trace_id, agent}`.
    Json,
}

/// `[logging]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// `text` (default) or `json`.
    pub format: LogFormat,
    /// A filter such as `info` or `info,callboard=debug` (default `info`); the
    /// `CALLBOARD_LOG` variable overrides it.
    pub level: Option<String>,
}

impl LoggingConfig {
    /// What is wrong with the values, one message each (empty when fine).
    pub fn problems(&self) -> Vec<String> {
        match &self.level {
            Some(l) => match tracing_subscriber::EnvFilter::try_new(l) {
                Ok(_) => vec![],
                Err(e) => vec![format!(
                    "level {l:?} is not a filter ({e}); write e.g. \"info\" or \"info,callboard=debug\""
                )],
            },
            None => vec![],
        }
    }

    /// Installs the process's log subscriber (once; later calls do nothing).
    pub fn init(&self) {
        let filter = tracing_subscriber::EnvFilter::try_from_env("CALLBOARD_LOG")
            .ok()
            .or_else(|| {
                self.level
                    .as_deref()
                    .and_then(|l| tracing_subscriber::EnvFilter::try_new(l).ok())
            })
            .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        let _ = match self.format {
            LogFormat::Text => builder
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .try_init(),
            LogFormat::Json => builder
                .json()
                .with_current_span(true)
                .with_span_list(false)
                .try_init(),
        };
    }
}

/// The span a run's work happens in: its ids as fields (`agent` is recorded again at each
/// handoff). Costs next to nothing when no subscriber listens at `info`.
pub fn run_span(
    run_id: &str,
    trace_id: Option<&str>,
    agent: &str,
    tenant: Option<&str>,
    session_id: Option<&str>,
) -> tracing::Span {
    tracing::info_span!(
        parent: None,
        "run",
        tenant = tenant.unwrap_or(""),
        session_id = session_id.unwrap_or(""),
        run_id,
        trace_id = trace_id.unwrap_or(""),
        agent,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks_the_section() {
        let c: LoggingConfig = toml::from_str("format = \"json\"\nlevel = \"debug\"").unwrap();
        assert_eq!(c.format, LogFormat::Json);
        assert!(c.problems().is_empty());
        assert!(toml::from_str::<LoggingConfig>("format = \"xml\"").is_err());
        assert!(toml::from_str::<LoggingConfig>("colour = true").is_err());
        let bad = LoggingConfig {
            level: Some("info,=[".into()),
            ..Default::default()
        };
        assert_eq!(bad.problems().len(), 1, "{:?}", bad.problems());
    }
}
