//! The settings of the HTTP sinks (`[tracing.openai]`, `[tracing.otlp]`), parsed in every
//! build so a config names them the same way whether or not the sink is compiled in.

use std::collections::BTreeMap;

use serde::Deserialize;

pub(crate) const OPENAI_BASE: &str = "https://api.openai.com/v1";

/// Settings of the `openai` sink (`[tracing.openai]`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiSinkConfig {
    /// API base; traces go to `{base_url}/traces/ingest` (`https://api.openai.com/v1`).
    pub base_url: String,
    /// The environment variable holding the API key (`OPENAI_API_KEY`).
    pub api_key_env: String,
    /// Attempts per batch (3).
    pub max_attempts: u32,
    /// First retry delay in milliseconds, doubled each time (1000).
    pub base_delay_ms: u64,
    /// Longest retry delay in milliseconds (30000).
    pub max_delay_ms: u64,
    /// Timeout of one request in milliseconds (60000).
    pub request_timeout_ms: u64,
}

impl Default for OpenAiSinkConfig {
    fn default() -> Self {
        OpenAiSinkConfig {
            base_url: OPENAI_BASE.to_owned(),
            api_key_env: "OPENAI_API_KEY".to_owned(),
            max_attempts: 3,
            base_delay_ms: 1000,
            max_delay_ms: 30_000,
            request_timeout_ms: 60_000,
        }
    }
}

/// Settings of the `otlp` sink (`[tracing.otlp]`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpSinkConfig {
    /// The OTLP/HTTP traces URL (`http://127.0.0.1:4318/v1/traces`).
    pub endpoint: String,
    /// Extra request headers (e.g. an authorization header for a hosted backend).
    pub headers: BTreeMap<String, String>,
    /// The resource's `service.name` (`callboard`).
    pub service_name: String,
    /// Attempts per batch (3).
    pub max_attempts: u32,
    /// First retry delay in milliseconds, doubled each time (1000).
    pub base_delay_ms: u64,
    /// Longest retry delay in milliseconds (30000).
    pub max_delay_ms: u64,
    /// Timeout of one request in milliseconds (10000).
    pub request_timeout_ms: u64,
}

impl Default for OtlpSinkConfig {
    fn default() -> Self {
        OtlpSinkConfig {
            endpoint: "http://127.0.0.1:4318/v1/traces".to_owned(),
            headers: BTreeMap::new(),
            service_name: "callboard".to_owned(),
            max_attempts: 3,
            base_delay_ms: 1000,
            max_delay_ms: 30_000,
            request_timeout_ms: 10_000,
        }
    }
}
