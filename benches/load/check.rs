//! Checking what clients receive: seq per session, the scripted content of each run, and
//! the counters and latency histograms every scenario reports.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;

use crate::model::now_ns;

/// Set when the server plays a scripted model instead of the fake model server: deltas are
/// then counted, not parsed (they carry no index or send time).
pub static SCRIPTED_DELTAS: AtomicBool = AtomicBool::new(false);

/// Counters shared by all clients of a scenario.
#[derive(Default)]
pub struct Counters {
    pub runs: AtomicU64,
    pub errors: AtomicU64,
    pub frames: AtomicU64,
    pub lost: AtomicU64,
    pub duplicated: AtomicU64,
    pub reordered: AtomicU64,
    pub lagged: AtomicU64,
    pub first_error: Mutex<Option<String>>,
    pub latency: Mutex<Option<Histogram<u64>>>,
}

impl Counters {
    pub fn error(&self, what: impl Into<String>) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut f = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(what.into());
        }
    }

    pub fn merge_latency(&self, h: &Histogram<u64>) {
        let mut g = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        match g.as_mut() {
            Some(all) => {
                let _ = all.add(h);
            }
            None => *g = Some(h.clone()),
        }
    }

    pub fn get(&self, c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// A latency histogram in microseconds, 1 µs to 100 s.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

/// Parses a delta `w<i>@<ns> `: its index and the latency since it was sent, in µs.
pub fn parse_delta(d: &str) -> Option<(usize, u64)> {
    let rest = d.strip_prefix('w')?;
    let (i, rest) = rest.split_once('@')?;
    let ns: u64 = rest.trim_end().parse().ok()?;
    Some((i.parse().ok()?, now_ns().saturating_sub(ns) / 1000))
}

/// What a seq says about a session's stream.
#[derive(Debug, PartialEq, Eq)]
pub enum SeqCheck {
    Next,
    /// Already seen: a duplicate.
    Duplicate,
    /// Frames were skipped.
    Gap(u64),
}

/// The seq state of one session seen by one client.
#[derive(Default, Clone, Copy)]
pub struct SeqState {
    pub last: u64,
}

impl SeqState {
    pub fn check(&mut self, seq: u64, c: &Counters) -> SeqCheck {
        if seq == self.last + 1 {
            self.last = seq;
            SeqCheck::Next
        } else if seq <= self.last {
            c.duplicated.fetch_add(1, Ordering::Relaxed);
            SeqCheck::Duplicate
        } else {
            let gap = seq - self.last - 1;
            c.lost.fetch_add(gap, Ordering::Relaxed);
            c.reordered.fetch_add(1, Ordering::Relaxed);
            self.last = seq;
            SeqCheck::Gap(gap)
        }
    }
}

/// The scripted content of one run: deltas `w0..w{K-1}` in order, then a final output equal
/// to their text, by `Writer`, after a tool output and a handoff.
#[derive(Default)]
pub struct RunCheck {
    pub next_delta: usize,
    pub text: String,
    pub tool_output: bool,
    pub handoff: bool,
}

impl RunCheck {
    /// Takes a delta; records its latency.
    pub fn delta(&mut self, d: &str, lat: &mut Histogram<u64>) -> Result<(), String> {
        if SCRIPTED_DELTAS.load(Ordering::Relaxed) {
            self.next_delta += 1;
            self.text.push_str(d);
            return Ok(());
        }
        let (i, us) = parse_delta(d).ok_or_else(|| format!("unscripted delta {d:?}"))?;
        if i != self.next_delta {
            return Err(format!("delta w{i} where w{} was due", self.next_delta));
        }
        self.next_delta += 1;
        self.text.push_str(d);
        let _ = lat.record(us.max(1));
        Ok(())
    }

    /// Checks the end of a run.
    pub fn finish(
        &self,
        tokens: usize,
        final_output: &str,
        last_agent: &str,
    ) -> Result<(), String> {
        if self.next_delta != tokens {
            return Err(format!("{} deltas, {tokens} scripted", self.next_delta));
        }
        if final_output != self.text {
            return Err("final output differs from the deltas".into());
        }
        if last_agent != "Writer" {
            return Err(format!("last agent {last_agent}, expected Writer"));
        }
        if !self.tool_output || !self.handoff {
            return Err("no tool output or no handoff seen".into());
        }
        Ok(())
    }
}

/// Fast field access on frames as the server serialises them, without a JSON tree.
pub mod scan {
    /// The frame's `type` (frames start with it).
    /// Bus frames start with it; the server's own frames (`lagged`, `error`) may have their
    /// keys in any order, and have no nested `type`.
    pub fn frame_type(s: &str) -> Option<&str> {
        match s.strip_prefix("{\"type\":\"") {
            Some(rest) => rest.split_once('"').map(|(t, _)| t),
            None => str_field(s, "type"),
        }
    }

    /// A top-level-looking unsigned field (`"seq":12`).
    pub fn u64_field(s: &str, key: &str) -> Option<u64> {
        let pat = format!("\"{key}\":");
        let at = s.find(&pat)? + pat.len();
        let digits: &str = &s[at..];
        let end = digits
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(digits.len());
        digits[..end].parse().ok()
    }

    /// A string field without escapes (`"delta":"w1@5 "`).
    pub fn str_field<'a>(s: &'a str, key: &str) -> Option<&'a str> {
        let pat = format!("\"{key}\":\"");
        let at = s.find(&pat)? + pat.len();
        s[at..].split_once('"').map(|(v, _)| v)
    }
}
