//! The SDK's exceptions as one error enum, with the SDK's names and messages.

use serde_json::Value;

use crate::model::ModelError;

/// Why a run failed. [`sdk_name`](AgentsError::sdk_name) gives the Python SDK's exception
/// name, which is also the `error.type` of `run.failed` frames.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum AgentsError {
    /// The run used up its turns.
    #[error("Max turns ({max_turns}) exceeded")]
    MaxTurnsExceeded {
        /// The limit that was hit.
        max_turns: u64,
    },
    /// The model did something the run cannot use (unknown tool, bad JSON, no final response).
    #[error("{0}")]
    ModelBehaviorError(String),
    /// The program using the library made a mistake (no model, bad agent graph).
    #[error("{0}")]
    UserError(String),
    /// An input guardrail fired.
    #[error("Guardrail InputGuardrail triggered tripwire")]
    InputGuardrailTripwireTriggered {
        /// The guardrail's name.
        guardrail: String,
        /// What the guardrail reported.
        output_info: Value,
    },
    /// An output guardrail fired.
    #[error("Guardrail OutputGuardrail triggered tripwire")]
    OutputGuardrailTripwireTriggered {
        /// The guardrail's name.
        guardrail: String,
        /// What the guardrail reported.
        output_info: Value,
    },
    /// The model provider failed (HTTP status, connection, timeout) after its retries.
    #[error("{0}")]
    Model(ModelError),
    /// A limit on concurrent runs was reached; try again later.
    #[error("{0}")]
    Overloaded(String),
    /// A tool with `timeout_behavior = "raise_exception"` took longer than its timeout.
    #[error("{}", crate::tool::timeout_message(tool_name, *timeout_seconds))]
    ToolTimeoutError {
        /// The tool.
        tool_name: String,
        /// Its timeout.
        timeout_seconds: f64,
    },
}

impl AgentsError {
    /// The Python SDK's exception name for this error.
    pub fn sdk_name(&self) -> &'static str {
        match self {
            AgentsError::MaxTurnsExceeded { .. } => "MaxTurnsExceeded",
            AgentsError::ModelBehaviorError(_) => "ModelBehaviorError",
            AgentsError::UserError(_) => "UserError",
            AgentsError::InputGuardrailTripwireTriggered { .. } => {
                "InputGuardrailTripwireTriggered"
            }
            AgentsError::OutputGuardrailTripwireTriggered { .. } => {
                "OutputGuardrailTripwireTriggered"
            }
            AgentsError::Model(e) => e.sdk_name(),
            AgentsError::Overloaded(_) => "Overloaded",
            AgentsError::ToolTimeoutError { .. } => "ToolTimeoutError",
        }
    }
}

impl From<ModelError> for AgentsError {
    fn from(e: ModelError) -> Self {
        if e.kind == crate::model::ModelErrorKind::Behavior {
            AgentsError::ModelBehaviorError(e.message)
        } else {
            AgentsError::Model(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_match_the_sdk() {
        assert_eq!(
            AgentsError::MaxTurnsExceeded { max_turns: 3 }.to_string(),
            "Max turns (3) exceeded"
        );
        let e = AgentsError::InputGuardrailTripwireTriggered {
            guardrail: "g".into(),
            output_info: Value::Null,
        };
        assert_eq!(e.to_string(), "Guardrail InputGuardrail triggered tripwire");
        assert_eq!(e.sdk_name(), "InputGuardrailTripwireTriggered");
        let e = AgentsError::ToolTimeoutError {
            tool_name: "slow".into(),
            timeout_seconds: 0.5,
        };
        assert_eq!(e.to_string(), "Tool 'slow' timed out after 0.5 seconds.");
        assert_eq!(e.sdk_name(), "ToolTimeoutError");
    }
}
