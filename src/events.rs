//! The SDK's three stream events, serialising to the JSON of PROTOCOL.md section 1.

use std::sync::Arc;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::items::RunItem;
use crate::model::RawEvent;

/// One event of a streamed run.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEvent {
    /// `raw_response_event`: a Responses-API event from the model, as it arrived.
    RawResponse(Arc<RawEvent>),
    /// `run_item_stream_event`: an item the run produced (`tool_called`, `handoff_occured`, ...).
    RunItem(Arc<RunItem>),
    /// `agent_updated_stream_event`: a new agent took over.
    AgentUpdated {
        /// The agent's name.
        new_agent: Arc<str>,
    },
}

impl StreamEvent {
    /// The event's `type` string.
    pub fn type_name(&self) -> &'static str {
        match self {
            StreamEvent::RawResponse(_) => "raw_response_event",
            StreamEvent::RunItem(_) => "run_item_stream_event",
            StreamEvent::AgentUpdated { .. } => "agent_updated_stream_event",
        }
    }

    /// The run item event's name, or the raw event's type, or the new agent's name.
    pub fn detail(&self) -> &str {
        match self {
            StreamEvent::RawResponse(r) => r.type_name(),
            StreamEvent::RunItem(i) => i.event_name(),
            StreamEvent::AgentUpdated { new_agent } => new_agent,
        }
    }
}

impl Serialize for StreamEvent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("type", self.type_name())?;
        match self {
            StreamEvent::RawResponse(r) => m.serialize_entry("data", r.as_ref())?,
            StreamEvent::RunItem(i) => {
                m.serialize_entry("name", i.event_name())?;
                m.serialize_entry("item", i.as_ref())?;
            }
            StreamEvent::AgentUpdated { new_agent } => {
                #[derive(Serialize)]
                struct AgentRef<'a> {
                    name: &'a str,
                }
                m.serialize_entry("new_agent", &AgentRef { name: new_agent })?;
            }
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_updated_json() {
        let e = StreamEvent::AgentUpdated {
            new_agent: "Triage".into(),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"type":"agent_updated_stream_event","new_agent":{"name":"Triage"}}"#
        );
    }
}
