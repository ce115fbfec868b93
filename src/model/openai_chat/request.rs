//! Chat Completions requests: a `ModelRequest` (items, tools, settings) as the JSON body of
//! `POST /chat/completions`.

use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::items::{ContentPart, Item, MessageContent, Role};
use crate::model::openai_responses::finish_body;
use crate::model::{ModelError, ModelErrorKind, ModelRequest, ModelSettings};

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    messages: Vec<Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_effort: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<Value>,
    stream: bool,
    stream_options: Value,
}

/// The JSON body of a Chat Completions request for `request` (exposed for tests and tools).
pub fn request_body(
    model: &str,
    request: &ModelRequest,
    settings: &ModelSettings,
) -> Result<Bytes, ModelError> {
    let tools: Vec<Value> = request
        .tools
        .iter()
        .map(|t| {
            json!({
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                    "strict": t.strict,
                }
            })
        })
        .collect();
    let tool_choice = settings.tool_choice.as_deref().map(|c| match c {
        "auto" | "required" | "none" => Value::String(c.to_owned()),
        name => json!({"type": "function", "function": {"name": name}}),
    });
    let response_format = request.output_schema.as_ref().map(|o| {
        json!({
            "type": "json_schema",
            "json_schema": {"name": o.name, "strict": o.strict, "schema": o.schema},
        })
    });
    let body = Body {
        model,
        messages: messages(request)?,
        // Chat Completions refuses parallel_tool_calls without tools.
        parallel_tool_calls: settings.parallel_tool_calls.filter(|_| !tools.is_empty()),
        tools,
        tool_choice,
        temperature: settings.temperature,
        top_p: settings.top_p,
        max_tokens: settings.max_tokens,
        reasoning_effort: settings.reasoning_effort.as_deref(),
        response_format,
        stream: true,
        stream_options: json!({"include_usage": true}),
    };
    finish_body(&body, settings.extra_body.as_ref())
}

fn unsupported(what: String) -> ModelError {
    ModelError::new(
        ModelErrorKind::BadRequest,
        format!("{what} cannot be sent to a Chat Completions model; use the openai_responses provider for it"),
    )
}

/// A content part as Chat Completions takes it.
fn chat_part(p: &ContentPart) -> Result<Value, ModelError> {
    Ok(match p {
        ContentPart::InputText { text } | ContentPart::OutputText { text, .. } => {
            json!({"type": "text", "text": text})
        }
        ContentPart::Refusal { refusal } => json!({"type": "text", "text": refusal}),
        ContentPart::Other(v) => {
            let ty = v.get("type").and_then(Value::as_str).unwrap_or("");
            match ty {
                "input_image" => {
                    let mut image = Map::new();
                    if let Some(url) = v.get("image_url") {
                        image.insert("url".into(), url.clone());
                    }
                    if let Some(d) = v.get("detail") {
                        image.insert("detail".into(), d.clone());
                    }
                    json!({"type": "image_url", "image_url": image})
                }
                "input_file" => {
                    let mut file = Map::new();
                    for k in ["file_data", "file_id", "filename"] {
                        if let Some(x) = v.get(k) {
                            file.insert(k.into(), x.clone());
                        }
                    }
                    json!({"type": "file", "file": file})
                }
                _ => return Err(unsupported(format!("a content part of type {ty:?}"))),
            }
        }
    })
}

fn text_of(content: &MessageContent) -> Result<Value, ModelError> {
    Ok(match content {
        MessageContent::Text(t) => Value::String(t.clone()),
        MessageContent::Parts(parts) => {
            Value::Array(parts.iter().map(chat_part).collect::<Result<_, _>>()?)
        }
    })
}

/// Conversation items as Chat Completions messages: function calls join the assistant
/// message before them, function outputs become `tool` messages.
fn messages(request: &ModelRequest) -> Result<Vec<Value>, ModelError> {
    let mut out = Vec::with_capacity(request.input.len() + 1);
    if let Some(s) = &request.system_instructions {
        out.push(json!({"role": "system", "content": s}));
    }
    let mut assistant: Option<Map<String, Value>> = None;
    fn flush(out: &mut Vec<Value>, assistant: &mut Option<Map<String, Value>>) {
        if let Some(mut a) = assistant.take() {
            if a.get("tool_calls")
                .and_then(Value::as_array)
                .is_some_and(Vec::is_empty)
            {
                a.remove("tool_calls");
            }
            out.push(Value::Object(a));
        }
    }
    for item in &request.input {
        match item {
            Item::Message(m) => match m.role {
                Role::User | Role::System | Role::Developer => {
                    flush(&mut out, &mut assistant);
                    let role = match m.role {
                        Role::User => "user",
                        Role::System => "system",
                        _ => "developer",
                    };
                    out.push(json!({"role": role, "content": text_of(&m.content)?}));
                }
                Role::Assistant => {
                    flush(&mut out, &mut assistant);
                    let mut a = Map::new();
                    a.insert("role".into(), "assistant".into());
                    match &m.content {
                        MessageContent::Text(t) => {
                            a.insert("content".into(), Value::String(t.clone()));
                        }
                        MessageContent::Parts(parts) => {
                            let texts: Vec<&str> = parts
                                .iter()
                                .filter_map(|p| match p {
                                    ContentPart::OutputText { text, .. }
                                    | ContentPart::InputText { text } => Some(text.as_str()),
                                    _ => None,
                                })
                                .collect();
                            a.insert(
                                "content".into(),
                                if texts.is_empty() {
                                    Value::Null
                                } else {
                                    Value::String(texts.join("\n"))
                                },
                            );
                            if let Some(r) = m.refusal() {
                                a.insert("refusal".into(), r.into());
                            }
                        }
                    }
                    a.insert("tool_calls".into(), Value::Array(Vec::new()));
                    assistant = Some(a);
                }
            },
            Item::FunctionCall(f) => {
                let a = assistant.get_or_insert_with(|| {
                    let mut a = Map::new();
                    a.insert("role".into(), "assistant".into());
                    a.insert("content".into(), Value::Null);
                    a.insert("tool_calls".into(), Value::Array(Vec::new()));
                    a
                });
                let args = if f.arguments.is_empty() {
                    "{}"
                } else {
                    f.arguments.as_str()
                };
                let call = json!({
                    "id": f.call_id,
                    "type": "function",
                    "function": {"name": f.name, "arguments": args},
                });
                match a.get_mut("tool_calls") {
                    Some(Value::Array(calls)) => calls.push(call),
                    _ => {
                        a.insert("tool_calls".into(), Value::Array(vec![call]));
                    }
                }
            }
            Item::FunctionCallOutput(o) => {
                flush(&mut out, &mut assistant);
                out.push(json!({"role": "tool", "tool_call_id": o.call_id, "content": o.output}));
            }
            Item::Reasoning(_) => {}
            Item::Other(v) => {
                let ty = v.get("type").and_then(Value::as_str).unwrap_or("");
                if ty != "function_call_output" {
                    return Err(unsupported(format!("an item of type {ty:?}")));
                }
                flush(&mut out, &mut assistant);
                let parts: Vec<Value> = v
                    .get("output")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter(|p| p.get("type").and_then(Value::as_str) == Some("input_text"))
                            .map(|p| json!({"type": "text", "text": p.get("text").cloned().unwrap_or_default()}))
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(json!({
                    "role": "tool",
                    "tool_call_id": v.get("call_id").cloned().unwrap_or_default(),
                    "content": parts,
                }));
            }
        }
    }
    flush(&mut out, &mut assistant);
    Ok(out)
}
