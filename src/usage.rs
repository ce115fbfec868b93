//! Token usage: the SDK's `Usage`, aggregated over every model request of a run.

use serde::{Deserialize, Serialize};

/// Cached-token detail of the input side, as the Responses API reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputTokensDetails {
    /// Input tokens served from the provider's prompt cache.
    #[serde(default)]
    pub cached_tokens: u64,
}

/// Reasoning-token detail of the output side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputTokensDetails {
    /// Output tokens spent on hidden reasoning.
    #[serde(default)]
    pub reasoning_tokens: u64,
}

/// The usage of one model request (the Responses API `usage` object).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestUsage {
    /// Input tokens of the request.
    #[serde(default)]
    pub input_tokens: u64,
    /// Output tokens of the request.
    #[serde(default)]
    pub output_tokens: u64,
    /// Input plus output tokens.
    #[serde(default)]
    pub total_tokens: u64,
    /// Cached input tokens.
    #[serde(default, deserialize_with = "crate::usage::null_default")]
    pub input_tokens_details: InputTokensDetails,
    /// Reasoning output tokens.
    #[serde(default, deserialize_with = "crate::usage::null_default")]
    pub output_tokens_details: OutputTokensDetails,
}

/// Deserialises `null` as the type's default (some providers send `null` details).
pub(crate) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Usage of a whole run: the SDK's `context_wrapper.usage`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Model requests made.
    pub requests: u64,
    /// Input tokens over all requests.
    pub input_tokens: u64,
    /// Cached input tokens over all requests.
    pub input_tokens_details: InputTokensDetails,
    /// Output tokens over all requests.
    pub output_tokens: u64,
    /// Reasoning tokens over all requests.
    pub output_tokens_details: OutputTokensDetails,
    /// Total tokens over all requests.
    pub total_tokens: u64,
    /// One entry per request that reported tokens, for per-request cost accounting.
    #[serde(default)]
    pub request_usage_entries: Vec<RequestUsage>,
}

impl Usage {
    /// Adds one completed request to the totals (the SDK's `Usage.add` of a single request).
    pub fn add_request(&mut self, r: &RequestUsage) {
        self.requests += 1;
        self.input_tokens += r.input_tokens;
        self.output_tokens += r.output_tokens;
        self.total_tokens += r.total_tokens;
        self.input_tokens_details.cached_tokens += r.input_tokens_details.cached_tokens;
        self.output_tokens_details.reasoning_tokens += r.output_tokens_details.reasoning_tokens;
        if r.total_tokens > 0 {
            self.request_usage_entries.push(*r);
        }
    }

    /// Adds a request that completed without reporting usage (counted, no tokens).
    pub fn add_request_without_usage(&mut self) {
        self.requests += 1;
    }

    /// Adds all of `other` into `self`.
    pub fn add(&mut self, other: &Usage) {
        self.requests += other.requests;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.total_tokens += other.total_tokens;
        self.input_tokens_details.cached_tokens += other.input_tokens_details.cached_tokens;
        self.output_tokens_details.reasoning_tokens += other.output_tokens_details.reasoning_tokens;
        self.request_usage_entries
            .extend_from_slice(&other.request_usage_entries);
    }

    /// The compact usage object of `run.completed` frames and span data.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_requests_and_details() {
        let mut u = Usage::default();
        let r = RequestUsage {
            input_tokens: 10,
            output_tokens: 5,
            total_tokens: 15,
            input_tokens_details: InputTokensDetails { cached_tokens: 3 },
            output_tokens_details: OutputTokensDetails {
                reasoning_tokens: 2,
            },
        };
        u.add_request(&r);
        u.add_request(&r);
        u.add_request_without_usage();
        assert_eq!(u.requests, 3);
        assert_eq!(u.input_tokens, 20);
        assert_eq!(u.output_tokens, 10);
        assert_eq!(u.total_tokens, 30);
        assert_eq!(u.input_tokens_details.cached_tokens, 6);
        assert_eq!(u.output_tokens_details.reasoning_tokens, 4);
        assert_eq!(u.request_usage_entries.len(), 2);
    }

    #[test]
    fn null_details_read_as_zero() {
        let r: RequestUsage = serde_json::from_str(
            r#"{"input_tokens":1,"output_tokens":2,"total_tokens":3,"input_tokens_details":null}"#,
        )
        .unwrap();
        assert_eq!(r.input_tokens_details.cached_tokens, 0);
    }
}
