//! Settled before announced: when a run ends, whoever started it (the server's service
//! layer) records the outcome and releases what the run held *before* the end frame goes
//! out, so a client that waits for the end frame and sends the next message never finds the
//! session still busy or the run record still `running`.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::bus::{Frame, FrameBody, Topic};
use crate::run::baton::RunOutcome;
use crate::usage::Usage;

/// Settles a run's end before its end frame is published.
#[async_trait]
pub trait RunSettle: Send + Sync + 'static {
    /// Called once when the run has ended. Record the outcome, release what the run held,
    /// then publish the end frame with [`RunEnded::publish`] (in whatever order the settler
    /// keeps among its own frames). An `ended` dropped unpublished publishes itself.
    async fn settle(&self, ended: RunEnded);
}

/// A run that has ended, with its end frame still to publish.
pub struct RunEnded {
    /// The run's id.
    pub run_id: Arc<str>,
    /// How it ended.
    pub outcome: RunOutcome,
    /// The agent it ended on.
    pub last_agent: String,
    /// Usage over the run.
    pub usage: Usage,
    /// The last turn it started.
    pub turn: u64,
    frame: Option<FrameBody>,
    topic: Arc<Topic>,
    listener: Option<mpsc::Sender<Arc<Frame>>>,
}

impl RunEnded {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        run_id: Arc<str>,
        outcome: RunOutcome,
        last_agent: String,
        usage: Usage,
        turn: u64,
        frame: FrameBody,
        topic: Arc<Topic>,
        listener: Option<mpsc::Sender<Arc<Frame>>>,
    ) -> RunEnded {
        RunEnded {
            run_id,
            outcome,
            last_agent,
            usage,
            turn,
            frame: Some(frame),
            topic,
            listener,
        }
    }

    /// The end frame's body (`run.completed`, `run.failed` or `run.cancelled`).
    pub fn frame(&self) -> Option<&FrameBody> {
        self.frame.as_ref()
    }

    /// The topic the run published on.
    pub fn topic(&self) -> &Arc<Topic> {
        &self.topic
    }

    /// Publishes the end frame on the run's topic (and to the run's own event stream).
    pub fn publish(mut self) -> Option<Arc<Frame>> {
        self.publish_now()
    }

    fn publish_now(&mut self) -> Option<Arc<Frame>> {
        let body = self.frame.take()?;
        let frame = self.topic.publish(&self.run_id, body);
        if let Some(tx) = self.listener.take() {
            if let Err(mpsc::error::TrySendError::Full(f)) = tx.try_send(frame.clone()) {
                // The consumer is behind: deliver the end when it catches up.
                if let Ok(h) = tokio::runtime::Handle::try_current() {
                    h.spawn(async move {
                        let _ = tx.send(f).await;
                    });
                }
            }
        }
        Some(frame)
    }
}

impl Drop for RunEnded {
    fn drop(&mut self) {
        self.publish_now();
    }
}
