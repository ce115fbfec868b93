//! `Agent`: a name, instructions, a model, tools, handoffs, guardrails and an optional
//! structured output type, as in the SDK. Cheap to clone (shared inside).

use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::context::RunContext;
use crate::guardrail::{InputGuardrail, OutputGuardrail};
use crate::handoff::Handoff;
use crate::hooks::AgentHooks;
use crate::model::{Model, ModelSettings, OutputSchema};
use crate::tool::{ensure_strict, Tool, ToolSource};

type InstructionsFn<C> = dyn Fn(RunContext<C>, String) -> BoxFuture<'static, String> + Send + Sync;

/// An agent's system prompt: fixed text or computed from the run context.
pub enum Instructions<C> {
    /// Fixed text.
    Text(String),
    /// `f(ctx, agent_name)`, computed at each turn.
    Dynamic(Arc<InstructionsFn<C>>),
}

impl<C> Clone for Instructions<C> {
    fn clone(&self) -> Self {
        match self {
            Instructions::Text(t) => Instructions::Text(t.clone()),
            Instructions::Dynamic(f) => Instructions::Dynamic(f.clone()),
        }
    }
}

/// Which model an agent uses.
#[derive(Clone)]
pub enum ModelRef {
    /// The provider's default model.
    Default,
    /// A model by name, resolved by the runner's model provider.
    Named(String),
    /// A model instance.
    Instance(Arc<dyn Model>),
}

/// What happens after tools run (the SDK's `tool_use_behavior`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ToolUseBehavior {
    /// Give the tool outputs to the model and run it again (the default).
    #[default]
    RunLlmAgain,
    /// The first tool's output is the final output.
    StopOnFirstTool,
    /// If any of these tools is called, its output is the final output.
    StopAtTools(Vec<String>),
}

type ValidateFn = dyn Fn(&str) -> Result<Value, String> + Send + Sync;

/// A structured output type: its schema and a validator that parses the model's text into it.
#[derive(Clone)]
pub struct OutputType {
    pub(crate) type_name: String,
    pub(crate) schema: OutputSchema,
    pub(crate) validate: Arc<ValidateFn>,
}

impl OutputType {
    /// The output type of Rust type `T` (schema derived with schemars, made strict).
    pub fn of<T: JsonSchema + DeserializeOwned + 'static>() -> Self {
        let type_name = T::schema_name().to_string();
        let mut schema = crate::tool::strict_schema_for::<T>();
        let wrapped = schema.get("type").and_then(Value::as_str) != Some("object");
        if wrapped {
            let defs = schema.as_object_mut().and_then(|o| o.remove("$defs"));
            let mut w = json!({"type": "object", "properties": {"response": schema}, "required": ["response"], "additionalProperties": false});
            if let Some(d) = defs {
                w["$defs"] = d;
            }
            schema = ensure_strict(w);
        }
        let tn = type_name.clone();
        let validate = move |s: &str| -> Result<Value, String> {
            let v: Value = serde_json::from_str(s)
                .map_err(|e| format!("Invalid JSON when parsing {s} for {tn}; {e}"))?;
            let inner = if wrapped {
                v.get("response").cloned().ok_or_else(|| {
                    format!("Invalid JSON when parsing {s} for {tn}; missing field `response`")
                })?
            } else {
                v
            };
            serde_json::from_value::<T>(inner.clone())
                .map_err(|e| format!("Invalid JSON when parsing {s} for {tn}; {e}"))?;
            Ok(inner)
        };
        OutputType {
            type_name,
            schema: OutputSchema {
                name: "final_output".into(),
                schema,
                strict: true,
            },
            validate: Arc::new(validate),
        }
    }

    /// The type's name.
    pub fn name(&self) -> &str {
        &self.type_name
    }
}

/// An agent's definition.
pub struct AgentDef<C> {
    pub(crate) name: String,
    pub(crate) instructions: Option<Instructions<C>>,
    pub(crate) handoff_description: Option<String>,
    pub(crate) model: ModelRef,
    pub(crate) model_settings: ModelSettings,
    pub(crate) tools: Vec<Arc<dyn Tool<C>>>,
    pub(crate) tool_sources: Vec<Arc<dyn ToolSource<C>>>,
    pub(crate) handoffs: Vec<Handoff<C>>,
    pub(crate) input_guardrails: Vec<InputGuardrail<C>>,
    pub(crate) output_guardrails: Vec<OutputGuardrail<C>>,
    pub(crate) output_type: Option<OutputType>,
    pub(crate) tool_use_behavior: ToolUseBehavior,
    pub(crate) reset_tool_choice: bool,
    pub(crate) hooks: Option<Arc<dyn AgentHooks<C>>>,
}

impl<C> Clone for AgentDef<C> {
    fn clone(&self) -> Self {
        AgentDef {
            name: self.name.clone(),
            instructions: self.instructions.clone(),
            handoff_description: self.handoff_description.clone(),
            model: self.model.clone(),
            model_settings: self.model_settings.clone(),
            tools: self.tools.clone(),
            tool_sources: self.tool_sources.clone(),
            handoffs: self.handoffs.clone(),
            input_guardrails: self.input_guardrails.clone(),
            output_guardrails: self.output_guardrails.clone(),
            output_type: self.output_type.clone(),
            tool_use_behavior: self.tool_use_behavior.clone(),
            reset_tool_choice: self.reset_tool_choice,
            hooks: self.hooks.clone(),
        }
    }
}

/// An agent. Build it with the chained methods; clones share one definition.
///
/// ```
/// use callboard::Agent;
/// let billing: Agent = Agent::new("Billing").instructions("Answer billing questions.");
/// let triage: Agent = Agent::new("Triage")
///     .instructions("Route the user.")
///     .handoff(&billing);
/// assert_eq!(triage.handoff_names(), vec!["Billing"]);
/// ```
pub struct Agent<C = ()>(pub(crate) Arc<AgentDef<C>>);

impl<C> Clone for Agent<C> {
    fn clone(&self) -> Self {
        Agent(self.0.clone())
    }
}

impl<C: Send + Sync + 'static> Agent<C> {
    /// An agent named `name` with no instructions, tools or handoffs, on the default model.
    pub fn new(name: impl Into<String>) -> Self {
        Agent(Arc::new(AgentDef {
            name: name.into(),
            instructions: None,
            handoff_description: None,
            model: ModelRef::Default,
            model_settings: ModelSettings::default(),
            tools: Vec::new(),
            tool_sources: Vec::new(),
            handoffs: Vec::new(),
            input_guardrails: Vec::new(),
            output_guardrails: Vec::new(),
            output_type: None,
            tool_use_behavior: ToolUseBehavior::RunLlmAgain,
            reset_tool_choice: true,
            hooks: None,
        }))
    }

    fn edit(mut self, f: impl FnOnce(&mut AgentDef<C>)) -> Self {
        f(Arc::make_mut(&mut self.0));
        self
    }

    /// Fixed instructions.
    pub fn instructions(self, text: impl Into<String>) -> Self {
        let t = text.into();
        self.edit(|d| d.instructions = Some(Instructions::Text(t)))
    }

    /// Instructions computed at each turn from the run context and the agent's name.
    pub fn dynamic_instructions<F, Fut>(self, f: F) -> Self
    where
        F: Fn(RunContext<C>, String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = String> + Send + 'static,
    {
        let f: Arc<InstructionsFn<C>> = Arc::new(move |c, n| Box::pin(f(c, n)));
        self.edit(|d| d.instructions = Some(Instructions::Dynamic(f)))
    }

    /// What other agents' handoff tools say about this agent.
    pub fn handoff_description(self, text: impl Into<String>) -> Self {
        let t = text.into();
        self.edit(|d| d.handoff_description = Some(t))
    }

    /// A model by name (resolved by the model provider).
    pub fn model(self, name: impl Into<String>) -> Self {
        let n = name.into();
        self.edit(|d| d.model = ModelRef::Named(n))
    }

    /// A model instance.
    pub fn model_instance(self, model: Arc<dyn Model>) -> Self {
        self.edit(|d| d.model = ModelRef::Instance(model))
    }

    /// Model settings.
    pub fn model_settings(self, s: ModelSettings) -> Self {
        self.edit(|d| d.model_settings = s)
    }

    /// Adds a tool.
    pub fn tool(self, tool: impl Tool<C>) -> Self {
        let t: Arc<dyn Tool<C>> = Arc::new(tool);
        self.edit(|d| d.tools.push(t))
    }

    /// Adds a shared tool.
    pub fn tool_arc(self, tool: Arc<dyn Tool<C>>) -> Self {
        self.edit(|d| d.tools.push(tool))
    }

    /// Adds a source of tools listed at run time (an MCP server: see `Agent::mcp_server`).
    pub fn tool_source(self, source: Arc<dyn ToolSource<C>>) -> Self {
        self.edit(|d| d.tool_sources.push(source))
    }

    /// The agent's tool sources (MCP servers).
    pub fn tool_sources(&self) -> &[Arc<dyn ToolSource<C>>] {
        &self.0.tool_sources
    }

    /// Adds a handoff (to an agent, or a configured [`Handoff`]).
    pub fn handoff(self, h: impl Into<Handoff<C>>) -> Self {
        let h = h.into();
        self.edit(|d| d.handoffs.push(h))
    }

    /// Adds an input guardrail.
    pub fn input_guardrail(self, g: InputGuardrail<C>) -> Self {
        self.edit(|d| d.input_guardrails.push(g))
    }

    /// Adds an output guardrail.
    pub fn output_guardrail(self, g: OutputGuardrail<C>) -> Self {
        self.edit(|d| d.output_guardrails.push(g))
    }

    /// Structured output: the final output must parse as `T`.
    pub fn output_type<T: JsonSchema + DeserializeOwned + 'static>(self) -> Self {
        let o = OutputType::of::<T>();
        self.edit(|d| d.output_type = Some(o))
    }

    /// What happens after tools run.
    pub fn tool_use_behavior(self, b: ToolUseBehavior) -> Self {
        self.edit(|d| d.tool_use_behavior = b)
    }

    /// Whether a forced `tool_choice` is reset after the agent used a tool (default true,
    /// which prevents loops).
    pub fn reset_tool_choice(self, on: bool) -> Self {
        self.edit(|d| d.reset_tool_choice = on)
    }

    /// Hooks for this agent.
    pub fn hooks(self, h: Arc<dyn AgentHooks<C>>) -> Self {
        self.edit(|d| d.hooks = Some(h))
    }

    /// The agent's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The handoff description.
    pub fn get_handoff_description(&self) -> Option<&str> {
        self.0.handoff_description.as_deref()
    }

    /// Tool names.
    pub fn tool_names(&self) -> Vec<&str> {
        self.0.tools.iter().map(|t| t.name()).collect()
    }

    /// Handoff target names.
    pub fn handoff_names(&self) -> Vec<&str> {
        self.0.handoffs.iter().map(|h| h.agent_name()).collect()
    }

    /// The handoffs.
    pub fn handoffs(&self) -> &[Handoff<C>] {
        &self.0.handoffs
    }

    /// The tools.
    pub fn tools(&self) -> &[Arc<dyn Tool<C>>] {
        &self.0.tools
    }

    /// The structured output type's name, if any.
    pub fn output_type_name(&self) -> Option<&str> {
        self.0.output_type.as_ref().map(|o| o.type_name.as_str())
    }

    /// Whether two handles share one definition.
    pub fn same_as(&self, other: &Agent<C>) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The instructions for this turn.
    pub(crate) async fn system_prompt(&self, ctx: &RunContext<C>) -> Option<String> {
        match &self.0.instructions {
            None => None,
            Some(Instructions::Text(t)) => Some(t.clone()),
            Some(Instructions::Dynamic(f)) => Some(f(ctx.clone(), self.0.name.clone()).await),
        }
    }
}

impl<C> std::fmt::Debug for Agent<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("name", &self.0.name).finish()
    }
}
