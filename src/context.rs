//! The run context (the SDK's `RunContextWrapper`): the caller's own value plus the usage so
//! far, handed to tools, guardrails, dynamic instructions and hooks.

use std::sync::{Arc, Mutex};

use crate::usage::Usage;

/// The caller's context value and the run's live usage. Cheap to clone.
///
/// The value is shared (`Arc`) because a turn's tools run concurrently; put interior
/// mutability (a `Mutex`, atomics) inside it if tools must change it.
pub struct RunContext<C> {
    context: Arc<C>,
    usage: Arc<Mutex<Usage>>,
    run_id: Arc<str>,
}

impl<C> Clone for RunContext<C> {
    fn clone(&self) -> Self {
        RunContext {
            context: self.context.clone(),
            usage: self.usage.clone(),
            run_id: self.run_id.clone(),
        }
    }
}

impl<C> RunContext<C> {
    /// A context around `value` for run `run_id`.
    pub fn new(value: Arc<C>, run_id: Arc<str>) -> Self {
        RunContext {
            context: value,
            usage: Arc::new(Mutex::new(Usage::default())),
            run_id,
        }
    }

    /// The caller's value.
    pub fn context(&self) -> &C {
        &self.context
    }

    /// The caller's value, shared.
    pub fn context_arc(&self) -> &Arc<C> {
        &self.context
    }

    /// A snapshot of the usage so far.
    pub fn usage(&self) -> Usage {
        self.usage.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The run's id.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    pub(crate) fn with_usage<R>(&self, f: impl FnOnce(&mut Usage) -> R) -> R {
        f(&mut self.usage.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl<C> std::ops::Deref for RunContext<C> {
    type Target = C;
    fn deref(&self) -> &C {
        &self.context
    }
}
