//! Conversation items in the Responses API's shapes (what models read and write), and the
//! SDK's run items (`message_output_item`, `tool_call_item`, ...) that wrap them.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The end user.
    User,
    /// The model.
    Assistant,
    /// System instructions.
    System,
    /// Developer instructions.
    Developer,
}

/// One part of a message's content.
#[derive(Clone, Debug, PartialEq)]
pub enum ContentPart {
    /// Model text (`output_text`).
    OutputText {
        /// The text.
        text: String,
        /// Annotations as the provider sent them.
        annotations: Vec<Value>,
    },
    /// A refusal (`refusal`).
    Refusal {
        /// The refusal text.
        refusal: String,
    },
    /// User text (`input_text`).
    InputText {
        /// The text.
        text: String,
    },
    /// Any other part (images, files, audio), kept as sent.
    Other(Value),
}

impl ContentPart {
    /// An `output_text` part with no annotations.
    pub fn output_text(text: impl Into<String>) -> Self {
        ContentPart::OutputText {
            text: text.into(),
            annotations: Vec::new(),
        }
    }
}

impl Serialize for ContentPart {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            ContentPart::OutputText { text, annotations } => {
                let mut m = s.serialize_map(Some(4))?;
                m.serialize_entry("type", "output_text")?;
                m.serialize_entry("text", text)?;
                m.serialize_entry("annotations", annotations)?;
                m.serialize_entry("logprobs", &[] as &[Value])?;
                m.end()
            }
            ContentPart::Refusal { refusal } => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("type", "refusal")?;
                m.serialize_entry("refusal", refusal)?;
                m.end()
            }
            ContentPart::InputText { text } => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("type", "input_text")?;
                m.serialize_entry("text", text)?;
                m.end()
            }
            ContentPart::Other(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ContentPart {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        Ok(match v.get("type").and_then(Value::as_str) {
            Some("output_text") => ContentPart::OutputText {
                text: text(&v, "text").ok_or_else(|| D::Error::missing_field("text"))?,
                annotations: v
                    .get("annotations")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
            },
            Some("refusal") => ContentPart::Refusal {
                refusal: text(&v, "refusal").ok_or_else(|| D::Error::missing_field("refusal"))?,
            },
            Some("input_text") => ContentPart::InputText {
                text: text(&v, "text").ok_or_else(|| D::Error::missing_field("text"))?,
            },
            _ => ContentPart::Other(v),
        })
    }
}

/// A message's content: a plain string or a list of parts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text (the SDK's "easy input message").
    Text(String),
    /// A list of typed parts.
    Parts(Vec<ContentPart>),
}

/// A message item (`type: "message"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MessageItem {
    /// Provider id of the item (assistant output has one; user input usually not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The author.
    pub role: Role,
    /// The content.
    pub content: MessageContent,
    /// `completed`, `in_progress` or `incomplete` for model output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

impl MessageItem {
    /// A user message with plain text, as the SDK builds from a string input.
    pub fn user(text: impl Into<String>) -> Self {
        MessageItem {
            id: None,
            role: Role::User,
            content: MessageContent::Text(text.into()),
            status: None,
        }
    }

    /// A completed assistant message with one `output_text` part.
    pub fn assistant(id: impl Into<String>, text: impl Into<String>) -> Self {
        MessageItem {
            id: Some(id.into()),
            role: Role::Assistant,
            content: MessageContent::Parts(vec![ContentPart::output_text(text)]),
            status: Some("completed".into()),
        }
    }

    /// The concatenated `output_text` of the message (the SDK's `ItemHelpers.text_message_output`).
    pub fn text(&self) -> String {
        match &self.content {
            MessageContent::Text(t) => t.clone(),
            MessageContent::Parts(parts) => {
                let mut s = String::new();
                for p in parts {
                    if let ContentPart::OutputText { text, .. } = p {
                        s.push_str(text);
                    }
                }
                s
            }
        }
    }

    /// The refusal text, if the message is a refusal.
    pub fn refusal(&self) -> Option<&str> {
        match &self.content {
            MessageContent::Parts(parts) => parts.iter().find_map(|p| match p {
                ContentPart::Refusal { refusal } => Some(refusal.as_str()),
                _ => None,
            }),
            MessageContent::Text(_) => None,
        }
    }
}

/// A function call made by the model (`type: "function_call"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionCallItem {
    /// Provider id of the item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The id that ties the call to its output.
    pub call_id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments as a JSON string.
    pub arguments: String,
    /// Item status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// The output of a function call (`type: "function_call_output"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionCallOutputItem {
    /// The call this answers.
    pub call_id: String,
    /// The output text given to the model.
    pub output: String,
}

/// A reasoning item (`type: "reasoning"`), kept as the provider sent it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReasoningItem {
    /// Provider id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The reasoning summary parts.
    #[serde(default)]
    pub summary: Vec<Value>,
    /// Every other field as sent (content, encrypted_content, ...).
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// One conversation item: model input and output alike.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// A message.
    Message(MessageItem),
    /// A function call.
    FunctionCall(FunctionCallItem),
    /// A function call's output.
    FunctionCallOutput(FunctionCallOutputItem),
    /// Reasoning.
    Reasoning(ReasoningItem),
    /// Any other item type, kept as sent.
    Other(Value),
}

impl Item {
    /// The Responses API `type` of the item.
    pub fn type_name(&self) -> &str {
        match self {
            Item::Message(_) => "message",
            Item::FunctionCall(_) => "function_call",
            Item::FunctionCallOutput(_) => "function_call_output",
            Item::Reasoning(_) => "reasoning",
            Item::Other(v) => v.get("type").and_then(Value::as_str).unwrap_or("unknown"),
        }
    }
}

/// A borrowed item, serialised exactly as [`Item`] is (run items serialise their raw items
/// through it without cloning them).
enum ItemRef<'a> {
    Message(&'a MessageItem),
    FunctionCall(&'a FunctionCallItem),
    FunctionCallOutput(&'a FunctionCallOutputItem),
    Reasoning(&'a ReasoningItem),
    Other(&'a Value),
}

impl Serialize for Item {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Item::Message(m) => ItemRef::Message(m),
            Item::FunctionCall(f) => ItemRef::FunctionCall(f),
            Item::FunctionCallOutput(f) => ItemRef::FunctionCallOutput(f),
            Item::Reasoning(r) => ItemRef::Reasoning(r),
            Item::Other(v) => ItemRef::Other(v),
        }
        .serialize(s)
    }
}

impl Serialize for ItemRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Tagged<'a, T> {
            #[serde(flatten)]
            item: &'a T,
            #[serde(rename = "type")]
            ty: &'static str,
        }
        match self {
            // The SDK writes a string input as `{"content": ..., "role": "user"}`: no type.
            ItemRef::Message(m)
                if m.id.is_none() && matches!(m.content, MessageContent::Text(_)) =>
            {
                m.serialize(s)
            }
            ItemRef::Message(m) => Tagged {
                item: m,
                ty: "message",
            }
            .serialize(s),
            ItemRef::FunctionCall(f) => Tagged {
                item: f,
                ty: "function_call",
            }
            .serialize(s),
            ItemRef::FunctionCallOutput(f) => Tagged {
                item: f,
                ty: "function_call_output",
            }
            .serialize(s),
            ItemRef::Reasoning(r) => Tagged {
                item: r,
                ty: "reasoning",
            }
            .serialize(s),
            ItemRef::Other(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        if !v.is_object() {
            return Err(D::Error::custom("an input item must be a JSON object"));
        }
        let ty = v.get("type").and_then(Value::as_str);
        let ty = match ty {
            Some(t) => t,
            None if v.get("role").is_some() => "message",
            None => {
                return Err(D::Error::custom(
                    "an input item needs a \"type\" or a \"role\"",
                ))
            }
        };
        fn typed<T: serde::de::DeserializeOwned, E: serde::de::Error>(v: Value) -> Result<T, E> {
            serde_json::from_value(v).map_err(E::custom)
        }
        Ok(match ty {
            "message" => Item::Message(typed(v)?),
            "function_call" => Item::FunctionCall(typed(v)?),
            "function_call_output" => {
                // The output may be a string or a list of content parts; keep strings typed.
                if v.get("output").is_some_and(Value::is_string) {
                    Item::FunctionCallOutput(typed(v)?)
                } else {
                    Item::Other(v)
                }
            }
            "reasoning" => {
                let mut v = v;
                if let Some(o) = v.as_object_mut() {
                    o.remove("type");
                }
                Item::Reasoning(typed(v)?)
            }
            _ => Item::Other(v),
        })
    }
}

/// Input to a run: a string (one user message) or a list of items.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RunInput {
    /// One user message.
    Text(String),
    /// A list of input items.
    Items(Vec<Item>),
}

impl RunInput {
    /// The input as a list of items (the SDK's `ItemHelpers.input_to_new_input_list`).
    pub fn to_items(&self) -> Vec<Item> {
        match self {
            RunInput::Text(t) => vec![Item::Message(MessageItem::user(t.clone()))],
            RunInput::Items(items) => items.clone(),
        }
    }

    /// A rough size in bytes, for input limits.
    pub fn approx_len(&self) -> usize {
        match self {
            RunInput::Text(t) => t.len(),
            RunInput::Items(items) => items
                .iter()
                .map(|i| serde_json::to_string(i).map(|s| s.len()).unwrap_or(0))
                .sum(),
        }
    }
}

impl From<&str> for RunInput {
    fn from(s: &str) -> Self {
        RunInput::Text(s.to_owned())
    }
}

impl From<String> for RunInput {
    fn from(s: String) -> Self {
        RunInput::Text(s)
    }
}

impl From<Vec<Item>> for RunInput {
    fn from(v: Vec<Item>) -> Self {
        RunInput::Items(v)
    }
}

/// The SDK's run items: what a run adds to the conversation, each tagged with its agent.
#[derive(Clone, Debug, PartialEq)]
pub enum RunItem {
    /// `message_output_item`: a message from the model.
    MessageOutput {
        /// The agent that produced it.
        agent: String,
        /// The message.
        raw_item: MessageItem,
    },
    /// `tool_call_item`: a call to a function tool.
    ToolCall {
        /// The calling agent.
        agent: String,
        /// The call.
        raw_item: FunctionCallItem,
    },
    /// `tool_call_output_item`: a function tool's output.
    ToolCallOutput {
        /// The agent whose tool ran.
        agent: String,
        /// The output as given to the model.
        output: String,
        /// The `function_call_output` item.
        raw_item: FunctionCallOutputItem,
    },
    /// `handoff_call_item`: the model called a `transfer_to_*` tool.
    HandoffCall {
        /// The agent handing off.
        agent: String,
        /// The call.
        raw_item: FunctionCallItem,
    },
    /// `handoff_output_item`: the handoff took place.
    HandoffOutput {
        /// The agent that handed off.
        agent: String,
        /// The agent handing off.
        source_agent: String,
        /// The agent taking over.
        target_agent: String,
        /// The `function_call_output` item answering the transfer call.
        raw_item: FunctionCallOutputItem,
    },
    /// `reasoning_item`.
    Reasoning {
        /// The agent.
        agent: String,
        /// The reasoning item.
        raw_item: ReasoningItem,
    },
    /// `mcp_list_tools_item`: the tools an MCP server offers the agent (`raw_item` is an
    /// `mcp_list_tools` object: `id`, `server_label`, `tools`, `error`). Published when an
    /// agent starts; not model input and not kept in the session.
    McpListTools {
        /// The agent.
        agent: String,
        /// The `mcp_list_tools` object.
        raw_item: Value,
    },
}

impl RunItem {
    /// The SDK's item type string.
    pub fn type_name(&self) -> &'static str {
        match self {
            RunItem::MessageOutput { .. } => "message_output_item",
            RunItem::ToolCall { .. } => "tool_call_item",
            RunItem::ToolCallOutput { .. } => "tool_call_output_item",
            RunItem::HandoffCall { .. } => "handoff_call_item",
            RunItem::HandoffOutput { .. } => "handoff_output_item",
            RunItem::Reasoning { .. } => "reasoning_item",
            RunItem::McpListTools { .. } => "mcp_list_tools_item",
        }
    }

    /// The stream event name the SDK gives this item (`tool_called`, `handoff_occured`, ...).
    pub fn event_name(&self) -> &'static str {
        match self {
            RunItem::MessageOutput { .. } => "message_output_created",
            RunItem::ToolCall { .. } => "tool_called",
            RunItem::ToolCallOutput { .. } => "tool_output",
            RunItem::HandoffCall { .. } => "handoff_requested",
            RunItem::HandoffOutput { .. } => "handoff_occured",
            RunItem::Reasoning { .. } => "reasoning_item_created",
            RunItem::McpListTools { .. } => "mcp_list_tools",
        }
    }

    /// The agent the item belongs to.
    pub fn agent(&self) -> &str {
        match self {
            RunItem::MessageOutput { agent, .. }
            | RunItem::ToolCall { agent, .. }
            | RunItem::ToolCallOutput { agent, .. }
            | RunItem::HandoffCall { agent, .. }
            | RunItem::HandoffOutput { agent, .. }
            | RunItem::Reasoning { agent, .. }
            | RunItem::McpListTools { agent, .. } => agent,
        }
    }

    /// The item as model input (the SDK's `to_input_item`).
    pub fn to_input_item(&self) -> Item {
        match self {
            RunItem::MessageOutput { raw_item, .. } => Item::Message(raw_item.clone()),
            RunItem::ToolCall { raw_item, .. } | RunItem::HandoffCall { raw_item, .. } => {
                Item::FunctionCall(raw_item.clone())
            }
            RunItem::ToolCallOutput { raw_item, .. } | RunItem::HandoffOutput { raw_item, .. } => {
                Item::FunctionCallOutput(raw_item.clone())
            }
            RunItem::Reasoning { raw_item, .. } => Item::Reasoning(raw_item.clone()),
            RunItem::McpListTools { raw_item, .. } => Item::Other(raw_item.clone()),
        }
    }
}

impl Serialize for RunItem {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("type", self.type_name())?;
        m.serialize_entry("agent", self.agent())?;
        match self {
            RunItem::MessageOutput { raw_item, .. } => {
                m.serialize_entry("raw_item", &ItemRef::Message(raw_item))?
            }
            RunItem::ToolCall { raw_item, .. } | RunItem::HandoffCall { raw_item, .. } => {
                m.serialize_entry("raw_item", &ItemRef::FunctionCall(raw_item))?
            }
            RunItem::ToolCallOutput {
                output, raw_item, ..
            } => {
                m.serialize_entry("output", output)?;
                m.serialize_entry("raw_item", &ItemRef::FunctionCallOutput(raw_item))?
            }
            RunItem::HandoffOutput {
                source_agent,
                target_agent,
                raw_item,
                ..
            } => {
                m.serialize_entry("source_agent", source_agent)?;
                m.serialize_entry("target_agent", target_agent)?;
                m.serialize_entry("output", &serde_json::json!({ "assistant": target_agent }))?;
                m.serialize_entry("raw_item", &ItemRef::FunctionCallOutput(raw_item))?
            }
            RunItem::Reasoning { raw_item, .. } => {
                m.serialize_entry("raw_item", &ItemRef::Reasoning(raw_item))?
            }
            RunItem::McpListTools { raw_item, .. } => m.serialize_entry("raw_item", raw_item)?,
        }
        m.end()
    }
}

/// A tool call waiting for a person's decision (the SDK's `ToolApprovalItem`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolApproval {
    /// `tool_approval_item`.
    #[serde(rename = "type", default = "approval_type")]
    pub item_type: String,
    /// The agent whose tool it is.
    pub agent: String,
    /// The tool's name.
    pub tool: String,
    /// The call's id.
    pub call_id: String,
    /// The call's arguments (JSON text).
    pub arguments: String,
    /// When it is rejected without a decision (Unix ms), if the tool has an approval timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<i64>,
}

fn approval_type() -> String {
    "tool_approval_item".into()
}

impl ToolApproval {
    /// The approval item of `call` at `agent`.
    pub fn new(agent: &str, call: &FunctionCallItem) -> ToolApproval {
        ToolApproval {
            item_type: approval_type(),
            agent: agent.to_owned(),
            tool: call.name.clone(),
            call_id: call.call_id.clone(),
            arguments: call.arguments.clone(),
            deadline_ms: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn easy_message_round_trips_without_type() {
        let i = Item::Message(MessageItem::user("hi"));
        assert_eq!(
            serde_json::to_string(&i).unwrap(),
            r#"{"role":"user","content":"hi"}"#
        );
        let back: Item = serde_json::from_str(r#"{"content":"hi","role":"user"}"#).unwrap();
        assert_eq!(back, i);
    }

    #[test]
    fn assistant_message_has_type_and_parts() {
        let i = Item::Message(MessageItem::assistant("msg_1", "yo"));
        let v = serde_json::to_value(&i).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["content"][0]["type"], "output_text");
        assert_eq!(v["content"][0]["text"], "yo");
        let back: Item = serde_json::from_value(v).unwrap();
        assert_eq!(back, i);
    }

    #[test]
    fn unknown_items_are_kept() {
        let v = serde_json::json!({"type":"web_search_call","id":"ws_1","status":"completed"});
        let i: Item = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(i.type_name(), "web_search_call");
        assert_eq!(serde_json::to_value(&i).unwrap(), v);
    }

    #[test]
    fn bad_items_are_refused() {
        assert!(serde_json::from_str::<Item>("3").is_err());
        assert!(serde_json::from_str::<Item>(r#"{"x":1}"#).is_err());
        assert!(serde_json::from_str::<Item>(r#"{"type":"function_call","name":"x"}"#).is_err());
    }

    #[test]
    fn run_item_json_matches_protocol() {
        let it = RunItem::ToolCallOutput {
            agent: "Triage".into(),
            output: "Sunny".into(),
            raw_item: FunctionCallOutputItem {
                call_id: "call_1".into(),
                output: "Sunny".into(),
            },
        };
        assert_eq!(
            serde_json::to_string(&it).unwrap(),
            r#"{"type":"tool_call_output_item","agent":"Triage","output":"Sunny","raw_item":{"call_id":"call_1","output":"Sunny","type":"function_call_output"}}"#
        );
    }
}
