//! Input and output guardrails: checks that run beside the first turn (input) or on the final
//! output, and stop the run when their tripwire fires.

use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;

use crate::context::RunContext;
use crate::items::Item;

/// What a guardrail function reports.
#[derive(Clone, Debug, PartialEq)]
pub struct GuardrailFunctionOutput {
    /// Anything the guardrail wants to report.
    pub output_info: Value,
    /// Whether the run must stop.
    pub tripwire_triggered: bool,
}

impl GuardrailFunctionOutput {
    /// A passing result.
    pub fn pass(output_info: Value) -> Self {
        GuardrailFunctionOutput {
            output_info,
            tripwire_triggered: false,
        }
    }

    /// A tripping result.
    pub fn trip(output_info: Value) -> Self {
        GuardrailFunctionOutput {
            output_info,
            tripwire_triggered: true,
        }
    }
}

/// The result of one guardrail, kept on the run result.
#[derive(Clone, Debug, PartialEq)]
pub struct GuardrailResult {
    /// The guardrail's name.
    pub guardrail: String,
    /// The agent it ran for.
    pub agent: String,
    /// What it reported.
    pub output: GuardrailFunctionOutput,
}

type InputFn<C> = dyn Fn(RunContext<C>, String, Vec<Item>) -> BoxFuture<'static, GuardrailFunctionOutput>
    + Send
    + Sync;
type OutputFn<C> = dyn Fn(RunContext<C>, String, Value) -> BoxFuture<'static, GuardrailFunctionOutput>
    + Send
    + Sync;

/// A check on the run's input; runs on the first turn only.
pub struct InputGuardrail<C> {
    pub(crate) name: String,
    pub(crate) func: Arc<InputFn<C>>,
    pub(crate) run_in_parallel: bool,
}

impl<C> Clone for InputGuardrail<C> {
    fn clone(&self) -> Self {
        InputGuardrail {
            name: self.name.clone(),
            func: self.func.clone(),
            run_in_parallel: self.run_in_parallel,
        }
    }
}

impl<C> InputGuardrail<C> {
    /// A guardrail `f(ctx, agent_name, input)` that runs alongside the first model call.
    pub fn new<F, Fut>(name: impl Into<String>, f: F) -> Self
    where
        F: Fn(RunContext<C>, String, Vec<Item>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = GuardrailFunctionOutput> + Send + 'static,
    {
        InputGuardrail {
            name: name.into(),
            func: Arc::new(move |c, a, i| Box::pin(f(c, a, i))),
            run_in_parallel: true,
        }
    }

    /// Runs the guardrail to completion before the model is called, not alongside it.
    pub fn blocking(mut self) -> Self {
        self.run_in_parallel = false;
        self
    }

    /// The guardrail's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A check on the final output.
pub struct OutputGuardrail<C> {
    pub(crate) name: String,
    pub(crate) func: Arc<OutputFn<C>>,
}

impl<C> Clone for OutputGuardrail<C> {
    fn clone(&self) -> Self {
        OutputGuardrail {
            name: self.name.clone(),
            func: self.func.clone(),
        }
    }
}

impl<C> OutputGuardrail<C> {
    /// A guardrail `f(ctx, agent_name, final_output)`.
    pub fn new<F, Fut>(name: impl Into<String>, f: F) -> Self
    where
        F: Fn(RunContext<C>, String, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = GuardrailFunctionOutput> + Send + 'static,
    {
        OutputGuardrail {
            name: name.into(),
            func: Arc::new(move |c, a, o| Box::pin(f(c, a, o))),
        }
    }

    /// The guardrail's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}
