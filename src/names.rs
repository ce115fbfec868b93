//! Names the SDK derives rather than takes: a handoff's tool name. Both the handoffs and the
//! scripted model (which plays handoff calls) need it, so it depends on neither.

/// The SDK's tool name for a handoff to `agent_name`: `transfer_to_` + the name, lowercased,
/// with every character other than letters, digits and `_` replaced by `_`.
pub fn default_tool_name(agent_name: &str) -> String {
    let mut s = String::with_capacity(12 + agent_name.len());
    s.push_str("transfer_to_");
    for c in agent_name.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            s.push(c.to_ascii_lowercase());
        } else {
            s.push('_');
        }
    }
    s
}
