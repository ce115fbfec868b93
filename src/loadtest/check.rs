//! Checking what load clients receive: seq per session (gapless, nothing duplicated), the
//! content of each run where it is known, errors by code, and the latency histograms.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;

/// Distinct error codes kept; further codes are counted under [`OTHER_CODE`].
pub const MAX_CODES: usize = 64;
/// Where errors with codes beyond [`MAX_CODES`] are counted.
pub const OTHER_CODE: &str = "other";
/// Longest message kept for the first error.
const MAX_MESSAGE: usize = 2000;

/// Why a client stopped or a run did not count: a code (the server's `error.code`,
/// `run_failed:<type>`, or the client's own: `connect`, `http_<status>`, `timeout`, `closed`,
/// `read`, `send`, `protocol`, `content`, `deadline`) and what happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub code: String,
    pub message: String,
}

impl Failure {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Failure {
        Failure {
            code: code.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

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
    /// Errors by code, at most [`MAX_CODES`] codes (the rest under [`OTHER_CODE`]).
    pub by_code: Mutex<BTreeMap<String, u64>>,
    /// The scenario's main latency: per delta where deltas carry their send time, else per run.
    pub latency: Mutex<Option<Histogram<u64>>>,
    /// From `run.create` sent to the run's end frame received.
    pub run_latency: Mutex<Option<Histogram<u64>>>,
}

fn merge(into: &Mutex<Option<Histogram<u64>>>, h: &Histogram<u64>) {
    let mut g = into.lock().unwrap_or_else(|e| e.into_inner());
    match g.as_mut() {
        Some(all) => {
            let _ = all.add(h);
        }
        None => *g = Some(h.clone()),
    }
}

impl Counters {
    /// Counts an error under `code`; keeps the first message.
    pub fn error(&self, code: &str, what: impl Into<String>) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        {
            let mut m = self.by_code.lock().unwrap_or_else(|e| e.into_inner());
            let key = if m.contains_key(code) || m.len() < MAX_CODES {
                code
            } else {
                OTHER_CODE
            };
            *m.entry(key.to_owned()).or_default() += 1;
        }
        let mut f = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            let mut s = format!("{code}: {}", what.into());
            if s.len() > MAX_MESSAGE {
                let mut cut = MAX_MESSAGE;
                while !s.is_char_boundary(cut) {
                    cut -= 1;
                }
                s.truncate(cut);
            }
            *f = Some(s);
        }
    }

    /// Counts a [`Failure`].
    pub fn fail(&self, f: Failure) {
        self.error(&f.code, f.message);
    }

    pub fn merge_latency(&self, h: &Histogram<u64>) {
        merge(&self.latency, h);
    }

    pub fn merge_run_latency(&self, h: &Histogram<u64>) {
        merge(&self.run_latency, h);
    }

    pub fn get(&self, c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    pub fn errors_by_code(&self) -> BTreeMap<String, u64> {
        self.by_code
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A latency histogram in microseconds, 1 µs to 100 s (longer values are recorded as 100 s).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

/// Records `us` into `h`, clamped to its range.
pub fn record(h: &mut Histogram<u64>, us: u64) {
    let _ = h.record(us.clamp(1, h.high()));
}

/// Nanoseconds since the Unix epoch (the fake model server stamps deltas with it).
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
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

/// How one session's frames are taken by a client following it.
#[derive(Default)]
pub struct Follower {
    pub seq: SeqState,
    /// After `lagged`: frames are ignored until the resubscription's next seq.
    pub resync: bool,
}

impl Follower {
    pub fn new() -> Self {
        Follower::default()
    }

    /// Returns whether the frame is new (to be looked at).
    pub fn take(&mut self, seq: u64, c: &Counters) -> bool {
        if self.resync {
            if seq == self.seq.last + 1 {
                self.resync = false;
                self.seq.last = seq;
                return true;
            }
            return false;
        }
        self.seq.check(seq, c) != SeqCheck::Duplicate
    }
}

/// What each run's content must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Any agent and input: only the frame checks (seq gapless, nothing duplicated, the run
    /// completes); the latency is per run.
    Any,
    /// The load harness's fake model server: a tool output, a handoff, then `tokens` deltas
    /// `w<i>@<ns> ` in order whose text is the final output, by `Writer`; the latency is per
    /// delta, from the model server sending it to the client receiving it.
    FakeModel { tokens: usize },
    /// The same script played by the server's scripted provider: deltas are counted, not
    /// timed (they carry no send time).
    Scripted { tokens: usize },
}

/// The content of one run, as far as [`Expect`] knows it.
#[derive(Default)]
pub struct RunCheck {
    pub next_delta: usize,
    pub text: String,
    pub tool_output: bool,
    pub handoff: bool,
}

impl RunCheck {
    /// Takes a delta; records its latency where it carries its send time.
    pub fn delta(
        &mut self,
        expect: Expect,
        d: &str,
        lat: &mut Histogram<u64>,
    ) -> Result<(), Failure> {
        match expect {
            Expect::Any => Ok(()),
            Expect::Scripted { .. } => {
                self.next_delta += 1;
                self.text.push_str(d);
                Ok(())
            }
            Expect::FakeModel { .. } => {
                let (i, us) = parse_delta(d)
                    .ok_or_else(|| Failure::new("content", format!("unscripted delta {d:?}")))?;
                if i != self.next_delta {
                    return Err(Failure::new(
                        "content",
                        format!("delta w{i} where w{} was due", self.next_delta),
                    ));
                }
                self.next_delta += 1;
                self.text.push_str(d);
                record(lat, us);
                Ok(())
            }
        }
    }

    /// Checks the end of a run.
    pub fn finish(
        &self,
        expect: Expect,
        final_output: &str,
        last_agent: &str,
    ) -> Result<(), Failure> {
        let tokens = match expect {
            Expect::Any => return Ok(()),
            Expect::FakeModel { tokens } | Expect::Scripted { tokens } => tokens,
        };
        let bad = |m: String| Err(Failure::new("content", m));
        if self.next_delta != tokens {
            return bad(format!("{} deltas, {tokens} scripted", self.next_delta));
        }
        if final_output != self.text {
            return bad("final output differs from the deltas".into());
        }
        if last_agent != "Writer" {
            return bad(format!("last agent {last_agent}, expected Writer"));
        }
        if !self.tool_output || !self.handoff {
            return bad("no tool output or no handoff seen".into());
        }
        Ok(())
    }
}

/// Fast field access on frames as the server serialises them, without a JSON tree.
pub mod scan {
    /// The frame's `type`. Bus frames start with it; the server's own frames (`lagged`,
    /// `error`) may have their keys in any order, and have no nested `type`.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_gaps_and_duplicates_are_counted() {
        let c = Counters::default();
        let mut s = SeqState::default();
        assert_eq!(s.check(1, &c), SeqCheck::Next);
        assert_eq!(s.check(2, &c), SeqCheck::Next);
        assert_eq!(s.check(2, &c), SeqCheck::Duplicate);
        assert_eq!(s.check(5, &c), SeqCheck::Gap(2));
        assert_eq!(c.get(&c.duplicated), 1);
        assert_eq!(c.get(&c.lost), 2);
        assert_eq!(c.get(&c.reordered), 1);
    }

    #[test]
    fn error_codes_are_bounded() {
        let c = Counters::default();
        for i in 0..(MAX_CODES + 10) {
            c.error(&format!("code{i}"), "x");
        }
        c.error("code0", "again");
        let m = c.errors_by_code();
        assert_eq!(m.len(), MAX_CODES + 1);
        assert_eq!(m.get(OTHER_CODE), Some(&10));
        assert_eq!(m.get("code0"), Some(&2));
        assert_eq!(c.get(&c.errors), MAX_CODES as u64 + 11);
        assert_eq!(c.first_error.lock().unwrap().as_deref(), Some("code0: x"));
    }

    #[test]
    fn fake_model_deltas_are_checked_in_order() {
        let mut h = histogram();
        let mut r = RunCheck::default();
        let e = Expect::FakeModel { tokens: 2 };
        let now = now_ns();
        r.delta(e, &format!("w0@{now} "), &mut h).unwrap();
        let err = r.delta(e, &format!("w2@{now} "), &mut h).unwrap_err();
        assert_eq!(err.code, "content");
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn scan_reads_frames_without_a_tree() {
        let f = r#"{"type":"event","session_id":"s","seq":17,"event":{"delta":"w1@5 "}}"#;
        assert_eq!(scan::frame_type(f), Some("event"));
        assert_eq!(scan::u64_field(f, "seq"), Some(17));
        assert_eq!(scan::str_field(f, "delta"), Some("w1@5 "));
        assert_eq!(
            scan::frame_type(r#"{"id":"x","type":"error"}"#),
            Some("error")
        );
    }
}
