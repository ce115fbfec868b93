//! What bounds a tool's calls: a timeout with the SDK's `timeout_behavior` (and its exact
//! timeout message), and a limit on calls running at once.

use std::sync::Arc;
use std::time::Duration;

/// Formats seconds as Python's `{:g}` does for the values tools use (`2`, `0.5`, `1.25`).
pub(crate) fn format_seconds(seconds: f64) -> String {
    if seconds.is_finite() && seconds.fract() == 0.0 && seconds.abs() < 1e15 {
        return format!("{}", seconds as i64);
    }
    // Six significant digits, trailing zeros dropped, as `{:g}` keeps them.
    let digits = if seconds == 0.0 {
        0
    } else {
        seconds.abs().log10().floor() as i32
    };
    let decimals = (5 - digits).clamp(0, 15) as usize;
    let s = format!("{seconds:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// The message the model reads when a tool times out with
/// [`ToolTimeoutBehavior::ErrorAsResult`], as the SDK words it.
pub fn timeout_message(tool: &str, seconds: f64) -> String {
    format!(
        "Tool '{tool}' timed out after {} seconds.",
        format_seconds(seconds)
    )
}

/// What happens when a tool call takes longer than its timeout (the SDK's
/// `timeout_behavior`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolTimeoutBehavior {
    /// The model reads [`timeout_message`] as the tool's output and the run goes on.
    #[default]
    ErrorAsResult,
    /// The run fails with `ToolTimeoutError`.
    RaiseException,
}

/// Whether a tool's calls need a person's approval before they run (the SDK's
/// `needs_approval`).
#[derive(Clone, Default)]
pub enum NeedsApproval {
    /// Never (the default).
    #[default]
    Never,
    /// Every call.
    Always,
    /// Calls whose parsed arguments the predicate says need it. Arguments that are not a
    /// JSON object fail closed: the call needs approval, as in the SDK.
    When(Arc<dyn Fn(&serde_json::Value) -> bool + Send + Sync>),
}

impl std::fmt::Debug for NeedsApproval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NeedsApproval::Never => "Never",
            NeedsApproval::Always => "Always",
            NeedsApproval::When(_) => "When(..)",
        })
    }
}

/// How a tool's calls are bounded: a timeout and a limit on calls running at once.
///
/// The timeout covers the whole call as the model sees it, waiting for a concurrency slot
/// included. Calls past the concurrency limit wait for a slot (in call order); the wait is
/// bounded by the timeout when there is one and by the calling run's cancellation.
#[derive(Clone, Debug, Default)]
pub struct ToolPolicy {
    /// Longest a call may take.
    pub timeout: Option<Duration>,
    /// What a timeout does.
    pub timeout_behavior: ToolTimeoutBehavior,
    /// Calls of this tool running at once, over all runs that use it.
    pub concurrency: Option<Arc<tokio::sync::Semaphore>>,
    /// Whether a call needs a person's approval first.
    pub needs_approval: NeedsApproval,
    /// How long a call may wait for a decision before it is rejected (none: for ever).
    pub approval_timeout: Option<Duration>,
    /// Whether running a call twice does no harm: a run whose process died while the tool
    /// ran re-runs it on restart; otherwise such a run ends `interrupted`.
    pub idempotent: bool,
}

impl ToolPolicy {
    /// A policy with this timeout (error-as-result) and no concurrency limit.
    pub fn with_timeout(timeout: Duration) -> Self {
        ToolPolicy {
            timeout: Some(timeout),
            ..Default::default()
        }
    }

    /// Sets what a timeout does.
    pub fn timeout_behavior(mut self, b: ToolTimeoutBehavior) -> Self {
        self.timeout_behavior = b;
        self
    }

    /// Limits the calls running at once to `n` (at least 1).
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.concurrency = Some(Arc::new(tokio::sync::Semaphore::new(n.max(1))));
        self
    }

    /// Every call needs approval (or none when `false`).
    pub fn needs_approval(mut self, yes: bool) -> Self {
        self.needs_approval = if yes {
            NeedsApproval::Always
        } else {
            NeedsApproval::Never
        };
        self
    }

    /// Calls need approval when `predicate` says so of their arguments.
    pub fn needs_approval_when(
        mut self,
        predicate: impl Fn(&serde_json::Value) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.needs_approval = NeedsApproval::When(Arc::new(predicate));
        self
    }

    /// Rejects a call no one decided on within `timeout`.
    pub fn approval_timeout(mut self, timeout: Duration) -> Self {
        self.approval_timeout = Some(timeout);
        self
    }

    /// Marks the tool safe to run again (see [`ToolPolicy::idempotent`]).
    pub fn idempotent(mut self, yes: bool) -> Self {
        self.idempotent = yes;
        self
    }

    /// Whether a call with these arguments needs approval.
    pub fn asks_approval(&self, arguments: &str) -> bool {
        match &self.needs_approval {
            NeedsApproval::Never => false,
            NeedsApproval::Always => true,
            NeedsApproval::When(f) => match serde_json::from_str::<serde_json::Value>(arguments) {
                Ok(v) if v.is_object() => f(&v),
                _ => true,
            },
        }
    }

    /// Whether the policy bounds anything.
    pub fn is_unbounded(&self) -> bool {
        self.timeout.is_none() && self.concurrency.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tool::ToolError;

    #[test]
    fn timeout_messages_use_the_sdk_wording() {
        assert_eq!(
            timeout_message("slow", 2.0),
            "Tool 'slow' timed out after 2 seconds."
        );
        assert_eq!(
            timeout_message("slow", 0.5),
            "Tool 'slow' timed out after 0.5 seconds."
        );
        assert_eq!(
            timeout_message("slow", 0.25),
            "Tool 'slow' timed out after 0.25 seconds."
        );
        assert_eq!(format_seconds(1.0 / 3.0), "0.333333");
        assert_eq!(
            ToolError::Timeout {
                tool: "t".into(),
                seconds: 30.0
            }
            .to_string(),
            "Tool 't' timed out after 30 seconds."
        );
    }
}
