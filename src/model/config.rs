//! Model provider configuration (`[models.NAME]` tables of the server config) and the
//! provider that serves OpenAI models from the environment (`OPENAI_API_KEY`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use serde::Deserialize;
use serde_json::Value;

use super::http::{Endpoint, EndpointError, HttpLimits, KeySource};
use super::openai_chat::OpenAiChatModel;
use super::openai_responses::OpenAiResponsesModel;
use super::scripted::{turns_from_json, ScriptedModel};
use super::{Model, ModelProvider, ModelSettings};

/// The OpenAI API's base URL, used when `base_url` is not given.
pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
/// The variable read for the key of the OpenAI API when no key is configured.
pub const OPENAI_API_KEY_ENV: &str = "OPENAI_API_KEY";
/// The model used when an agent names none and `OPENAI_DEFAULT_MODEL` is unset.
pub const DEFAULT_OPENAI_MODEL: &str = "gpt-4.1";

/// Which provider serves a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// The OpenAI Responses API (`POST /responses`).
    OpenaiResponses,
    /// The Chat Completions API (`POST /chat/completions`): any OpenAI-compatible server.
    OpenaiChatCompletions,
    /// The deterministic scripted model (the demo model when no script is given).
    Scripted,
}

impl ProviderKind {
    /// The name used in config and messages.
    pub fn as_str(&self) -> &'static str {
        match self {
            ProviderKind::OpenaiResponses => "openai_responses",
            ProviderKind::OpenaiChatCompletions => "openai_chat_completions",
            ProviderKind::Scripted => "scripted",
        }
    }
}

/// One model's configuration (a `[models.NAME]` table). Unknown keys are refused.
///
/// ```toml
/// [models.default]
/// provider = "openai_chat_completions"
/// base_url = "http://127.0.0.1:8080/v1"
/// model = "smollm2"
/// temperature = 0.2
/// max_retries = 3
/// idle_timeout_ms = 30000
/// ```
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// `openai_responses`, `openai_chat_completions` or `scripted`.
    pub provider: Option<ProviderKind>,
    /// The API's base URL (default `https://api.openai.com/v1`).
    #[serde(default)]
    pub base_url: Option<String>,
    /// The environment variable holding the API key (default `OPENAI_API_KEY` for the
    /// OpenAI API; none for other servers).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// The API key itself (prefer `api_key_env`).
    #[serde(default)]
    pub api_key: Option<String>,
    /// The model name the server serves (required for the OpenAI providers).
    #[serde(default)]
    pub model: Option<String>,
    /// Sampling temperature.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Maximum output tokens.
    #[serde(default, alias = "max_output_tokens")]
    pub max_tokens: Option<u64>,
    /// `auto`, `required`, `none` or a tool name.
    #[serde(default)]
    pub tool_choice: Option<String>,
    /// Whether the model may call several tools in one turn.
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// Reasoning effort (`minimal`, `low`, `medium`, `high`).
    #[serde(default)]
    pub reasoning_effort: Option<String>,
    /// Extra HTTP headers sent with each request.
    #[serde(default)]
    pub extra_headers: BTreeMap<String, String>,
    /// Extra top-level request fields.
    #[serde(default)]
    pub extra_body: Option<Value>,
    /// Retries after the first attempt (default 2).
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// Connect timeout in milliseconds (default 10000).
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
    /// Whole-request timeout in milliseconds, request to last event (default 600000).
    #[serde(default)]
    pub request_timeout_ms: Option<u64>,
    /// Longest silence before the headers or between chunks, in milliseconds (default 120000).
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
    /// First retry backoff in milliseconds, doubled each retry (default 500).
    #[serde(default)]
    pub retry_backoff_ms: Option<u64>,
    /// Longest retry backoff in milliseconds (default 8000).
    #[serde(default)]
    pub retry_backoff_max_ms: Option<u64>,
    /// For `scripted`: the turns to play (see `scripted::turns_from_json`); none plays the
    /// demo model.
    #[serde(default)]
    pub script: Option<Value>,
    /// For `scripted`: play the last turn again once the script runs out.
    #[serde(default)]
    pub repeat_last: bool,
    /// For `scripted`: a pause before each delta, in milliseconds (a slow model).
    #[serde(default)]
    pub delay_ms: u64,
}

impl fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("provider", &self.provider)
            .field("base_url", &self.base_url)
            .field("api_key_env", &self.api_key_env)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("model", &self.model)
            .field("settings", &self.settings())
            .field("limits", &self.limits())
            .finish_non_exhaustive()
    }
}

/// Why a model's configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProviderConfigError {
    /// `provider` is missing.
    #[error("`provider` is missing: set it to \"openai_responses\", \"openai_chat_completions\" or \"scripted\"")]
    MissingProvider,
    /// `model` is missing for an OpenAI provider.
    #[error("`model` is missing: {0} needs the name of the model the server serves, e.g. model = \"gpt-4.1-mini\"")]
    MissingModel(&'static str),
    /// A key that only applies to another provider.
    #[error("`{key}` does not apply to provider {provider}: remove it")]
    NotApplicable {
        /// The key.
        key: &'static str,
        /// The provider.
        provider: &'static str,
    },
    /// A timeout of zero.
    #[error("`{0}` must be more than 0")]
    ZeroTimeout(&'static str),
    /// An `extra_headers` entry that cannot be sent.
    #[error("`extra_headers`: {0}")]
    BadHeader(String),
    /// The script does not parse.
    #[error("`script`: {0}")]
    Script(String),
    /// The endpoint could not be set up.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
}

impl ProviderConfig {
    /// The model settings this config gives as defaults (an agent's own settings win).
    pub fn settings(&self) -> ModelSettings {
        ModelSettings {
            temperature: self.temperature,
            top_p: self.top_p,
            max_tokens: self.max_tokens,
            tool_choice: self.tool_choice.clone(),
            parallel_tool_calls: self.parallel_tool_calls,
            reasoning_effort: self.reasoning_effort.clone(),
            extra_headers: self.extra_headers.clone(),
            extra_body: self.extra_body.clone(),
        }
    }

    /// The timeouts and retry policy this config gives.
    pub fn limits(&self) -> HttpLimits {
        let d = HttpLimits::default();
        let ms = Duration::from_millis;
        HttpLimits {
            connect_timeout: self.connect_timeout_ms.map_or(d.connect_timeout, ms),
            request_timeout: self.request_timeout_ms.map_or(d.request_timeout, ms),
            idle_timeout: self.idle_timeout_ms.map_or(d.idle_timeout, ms),
            max_retries: self.max_retries.unwrap_or(d.max_retries),
            backoff_initial: self.retry_backoff_ms.map_or(d.backoff_initial, ms),
            backoff_max: self.retry_backoff_max_ms.map_or(d.backoff_max, ms),
        }
    }

    /// Builds the model (one pooled HTTP client per built model).
    pub fn build(&self) -> Result<Arc<dyn Model>, ProviderConfigError> {
        let kind = self.provider.ok_or(ProviderConfigError::MissingProvider)?;
        if kind == ProviderKind::Scripted {
            return self.build_scripted();
        }
        for (key, set) in [
            ("script", self.script.is_some()),
            ("repeat_last", self.repeat_last),
            ("delay_ms", self.delay_ms > 0),
        ] {
            if set {
                return Err(ProviderConfigError::NotApplicable {
                    key,
                    provider: kind.as_str(),
                });
            }
        }
        for (key, v) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
        ] {
            if v == Some(0) {
                return Err(ProviderConfigError::ZeroTimeout(key));
            }
        }
        for (k, v) in &self.extra_headers {
            if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err() {
                return Err(ProviderConfigError::BadHeader(format!(
                    "{k:?} is not a valid HTTP header name"
                )));
            }
            if reqwest::header::HeaderValue::from_str(v).is_err() {
                return Err(ProviderConfigError::BadHeader(format!(
                    "the value of {k:?} holds characters that cannot be sent in a header"
                )));
            }
        }
        let model = self
            .model
            .clone()
            .filter(|m| !m.is_empty())
            .ok_or(ProviderConfigError::MissingModel(kind.as_str()))?;
        let endpoint = Arc::new(self.endpoint(kind)?);
        Ok(match kind {
            ProviderKind::OpenaiResponses => {
                Arc::new(OpenAiResponsesModel::new(endpoint, model, self.settings()))
            }
            _ => Arc::new(OpenAiChatModel::new(endpoint, model, self.settings())),
        })
    }

    fn endpoint(&self, kind: ProviderKind) -> Result<Endpoint, ProviderConfigError> {
        let base_url = self.base_url.as_deref().unwrap_or(OPENAI_BASE_URL);
        let (key, source) = match (&self.api_key, &self.api_key_env) {
            (Some(k), _) => (Some(k.clone()), KeySource::Literal),
            (None, Some(var)) => env_key(var),
            (None, None) if base_url.trim_end_matches('/') == OPENAI_BASE_URL => {
                env_key(OPENAI_API_KEY_ENV)
            }
            (None, None) => (None, KeySource::None),
        };
        if let KeySource::Env {
            var,
            present: false,
        } = &source
        {
            tracing::warn!(provider = kind.as_str(), %base_url, "the API key variable {var} is not set; requests will go without a key");
        }
        Ok(Endpoint::new(
            kind.as_str(),
            base_url,
            key.as_deref(),
            source,
            self.limits(),
        )?)
    }

    fn build_scripted(&self) -> Result<Arc<dyn Model>, ProviderConfigError> {
        for (key, set) in [
            ("base_url", self.base_url.is_some()),
            ("api_key_env", self.api_key_env.is_some()),
            ("api_key", self.api_key.is_some()),
        ] {
            if set {
                return Err(ProviderConfigError::NotApplicable {
                    key,
                    provider: "scripted",
                });
            }
        }
        let mut model = match &self.script {
            None => super::scripted::demo::demo_model(),
            Some(v) => ScriptedModel::new(turns_from_json(v).map_err(ProviderConfigError::Script)?),
        };
        if self.repeat_last {
            model = model.repeat_last();
        }
        if self.delay_ms > 0 {
            model = model.with_delay(std::time::Duration::from_millis(self.delay_ms));
        }
        Ok(Arc::new(match &self.model {
            Some(name) => model.with_name(name.clone()),
            None => model,
        }))
    }
}

fn env_key(var: &str) -> (Option<String>, KeySource) {
    let key = std::env::var(var).ok().filter(|k| !k.is_empty());
    let present = key.is_some();
    (
        key,
        KeySource::Env {
            var: var.to_owned(),
            present,
        },
    )
}

/// Serves any OpenAI model by name over the Responses API, sharing one connection pool;
/// `None` (an agent without a model) gets `default_model`.
pub struct OpenAiProvider {
    endpoint: Arc<Endpoint>,
    default_model: String,
    models: DashMap<String, Arc<dyn Model>>,
}

impl OpenAiProvider {
    /// A provider on `endpoint` whose default model is `default_model`.
    pub fn new(endpoint: Arc<Endpoint>, default_model: impl Into<String>) -> Self {
        OpenAiProvider {
            endpoint,
            default_model: default_model.into(),
            models: DashMap::new(),
        }
    }
}

impl ModelProvider for OpenAiProvider {
    fn get_model(&self, name: Option<&str>) -> Option<Arc<dyn Model>> {
        let name = name.unwrap_or(&self.default_model);
        if let Some(m) = self.models.get(name) {
            return Some(m.clone());
        }
        let m: Arc<dyn Model> = Arc::new(OpenAiResponsesModel::new(
            self.endpoint.clone(),
            name,
            ModelSettings::default(),
        ));
        self.models.insert(name.to_owned(), m.clone());
        Some(m)
    }
}

/// The provider the SDK would use by default: OpenAI Responses with the key in
/// `OPENAI_API_KEY` (and `OPENAI_BASE_URL`, `OPENAI_DEFAULT_MODEL` when set). `None` when
/// `OPENAI_API_KEY` is not set.
pub fn default_provider_from_env() -> Option<Arc<dyn ModelProvider>> {
    let (key, source) = env_key(OPENAI_API_KEY_ENV);
    let key = key?;
    let base_url = std::env::var("OPENAI_BASE_URL")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| OPENAI_BASE_URL.to_owned());
    let model = std::env::var("OPENAI_DEFAULT_MODEL")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_OPENAI_MODEL.to_owned());
    let endpoint = match Endpoint::new(
        ProviderKind::OpenaiResponses.as_str(),
        &base_url,
        Some(&key),
        source,
        HttpLimits::default(),
    ) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!("OPENAI_API_KEY is set but the OpenAI provider cannot be built: {e}");
            return None;
        }
    };
    Some(Arc::new(OpenAiProvider::new(Arc::new(endpoint), model)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ProviderConfig, toml::de::Error> {
        toml::from_str(s)
    }

    #[test]
    fn configs_parse_and_build() {
        let c = parse(
            r#"
            provider = "openai_chat_completions"
            base_url = "http://127.0.0.1:9/v1"
            model = "smollm2"
            temperature = 0.2
            max_output_tokens = 64
            extra_headers = { "x-team" = "a" }
            max_retries = 5
            idle_timeout_ms = 1500
            "#,
        )
        .unwrap();
        assert_eq!(c.settings().max_tokens, Some(64));
        assert_eq!(c.limits().max_retries, 5);
        assert_eq!(c.limits().idle_timeout, Duration::from_millis(1500));
        let m = c.build().unwrap();
        assert_eq!(m.name(), "smollm2");
        assert_eq!(m.api(), super::super::ModelApi::ChatCompletions);

        let demo = parse(r#"provider = "scripted""#).unwrap().build().unwrap();
        assert_eq!(demo.name(), "scripted-demo");
        let scripted = parse(
            r#"
            provider = "scripted"
            model = "s"
            [[script]]
            outputs = [{ kind = "message", text = "hi" }]
            "#,
        )
        .unwrap()
        .build()
        .unwrap();
        assert_eq!(scripted.name(), "s");
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let e = parse(
            r#"provider = "openai_responses"
            modle = "x""#,
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("modle"), "{e}");
        assert!(parse(r#"provider = "anthropic""#).is_err());
        let e = parse(r#"provider = "openai_responses""#)
            .unwrap()
            .build()
            .err()
            .unwrap();
        assert!(e.to_string().contains("`model` is missing"), "{e}");
        let e = parse(
            r#"provider = "openai_responses"
            model = "m"
            base_url = "ftp://x""#,
        )
        .unwrap()
        .build()
        .err()
        .unwrap();
        assert!(e.to_string().contains("base_url"), "{e}");
        let e = parse(
            r#"provider = "scripted"
            base_url = "http://x""#,
        )
        .unwrap()
        .build()
        .err()
        .unwrap();
        assert!(e.to_string().contains("does not apply"), "{e}");
        let e = parse(
            r#"provider = "scripted"
            script = [{ outputs = [{ kind = "nope" }] }]"#,
        )
        .unwrap()
        .build()
        .err()
        .unwrap();
        assert!(e.to_string().contains("script"), "{e}");
        let e = parse(
            r#"provider = "openai_responses"
            model = "m"
            extra_headers = { "bad header" = "x" }"#,
        )
        .unwrap()
        .build()
        .err()
        .unwrap();
        assert!(e.to_string().contains("extra_headers"), "{e}");
        let c = parse(
            r#"provider = "openai_responses"
            model = "m"
            api_key = "sk-secret""#,
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("sk-secret"));
    }

    #[test]
    fn openai_provider_serves_any_name_from_one_pool() {
        let ep = Endpoint::new(
            "openai_responses",
            "http://127.0.0.1:9/v1/",
            Some("sk-x"),
            KeySource::Literal,
            HttpLimits::default(),
        )
        .unwrap();
        assert_eq!(ep.base_url(), "http://127.0.0.1:9/v1");
        let p = OpenAiProvider::new(Arc::new(ep), "gpt-4.1");
        assert_eq!(p.get_model(None).unwrap().name(), "gpt-4.1");
        let a = p.get_model(Some("gpt-4.1-mini")).unwrap();
        let b = p.get_model(Some("gpt-4.1-mini")).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.api(), super::super::ModelApi::Responses);
    }

    #[test]
    fn huge_timeouts_do_not_overflow() {
        let c = parse(
            r#"provider = "openai_responses"
            model = "m"
            base_url = "http://127.0.0.1:9/v1"
            request_timeout_ms = 18446744073709551615
            idle_timeout_ms = 18446744073709551615"#,
        )
        .unwrap();
        let m = c.build().unwrap();
        let req = super::super::ModelRequest {
            system_instructions: None,
            input: vec![],
            tools: vec![],
            output_schema: None,
            settings: ModelSettings::default(),
        };
        // Building the stream computes the deadlines.
        drop(m.stream(req, tokio_util::sync::CancellationToken::new()));
    }
}
