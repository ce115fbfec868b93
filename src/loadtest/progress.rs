//! The live progress bar and the timeline: the counters sampled every 250 ms on a thread of
//! their own until stopped (the bar draws only on a terminal).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::check::Counters;
use super::report::Sample;

/// Samples kept at most (a sample every 250 ms: about 7 hours); sampling stops beyond.
const MAX_SAMPLES: usize = 100_000;

/// A sampler running until [`Sampler::finish`].
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    /// Starts sampling `c`; the bar counts frames when `frames_mode`, else runs, up to
    /// `total` (a spinner-like bar when `total` is 0).
    pub fn start(name: &str, total: u64, frames_mode: bool, c: Arc<Counters>) -> Sampler {
        let pb = ProgressBar::new(total);
        pb.set_style(
            ProgressStyle::with_template(if total > 0 {
                "{prefix:>12} [{bar:30}] {pos}/{len} {msg}"
            } else {
                "{prefix:>12} {elapsed} {pos} {msg}"
            })
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        pb.set_prefix(name.to_owned());
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut tl = vec![Sample::default()];
            while !st.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                let t = t0.elapsed().as_secs_f64();
                let runs = c.get(&c.runs);
                let frames = c.get(&c.frames);
                pb.set_position(if frames_mode { frames } else { runs });
                pb.set_message(format!(
                    "{:.0} runs/s, {:.0} frames/s, {} errors",
                    runs as f64 / t,
                    frames as f64 / t,
                    c.get(&c.errors)
                ));
                tl.push(Sample {
                    t_s: t,
                    runs,
                    frames,
                    rss_kib: None,
                });
                if tl.len() >= MAX_SAMPLES {
                    break;
                }
            }
            pb.finish_and_clear();
            tl
        });
        Sampler { stop, thread }
    }

    /// Stops it; returns the timeline.
    pub fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}
