//! Server-sent events framing, as the model APIs send them (the WHATWG rules): `event:` and
//! `data:` fields (several `data:` lines joined by `\n`), comments and other fields ignored,
//! lines ended by `\n`, `\r\n` or `\r`, an event dispatched by a blank line. Events are handed
//! to a callback as `&str`s borrowed from reused buffers: no allocation per event.

/// The framer's state between body chunks.
#[derive(Debug, Default)]
pub struct SseFramer {
    /// Bytes of an incomplete line carried to the next chunk.
    line: Vec<u8>,
    /// The event's `event:` field.
    event: String,
    /// The event's `data:` lines, joined by `\n`.
    data: String,
    /// Whether the event has a `data:` line (an event without one is not dispatched).
    has_data: bool,
    /// The last chunk ended with `\r`: a `\n` starting the next one belongs to it.
    after_cr: bool,
    /// Whether the stream's first line was seen (it may open with a byte order mark).
    started: bool,
}

/// A framing error: the stream is not UTF-8.
#[derive(Debug, thiserror::Error)]
#[error("the event stream is not valid UTF-8 ({0})")]
pub struct NotUtf8(#[from] std::str::Utf8Error);

/// What a callback failed with, or the framing's own error.
#[derive(Debug)]
pub enum FeedError<E> {
    /// The stream is not UTF-8.
    Utf8(NotUtf8),
    /// The callback's error.
    Event(E),
}

impl SseFramer {
    /// A framer at the start of a stream.
    pub fn new() -> SseFramer {
        SseFramer::default()
    }

    /// Frames one body chunk: calls `on_event(event, data)` for every event it completes, in
    /// order, until one answers `true` (the stream is finished; the rest is not read). Returns
    /// whether one did.
    pub fn feed<E>(
        &mut self,
        mut chunk: &[u8],
        mut on_event: impl FnMut(&str, &str) -> Result<bool, E>,
    ) -> Result<bool, FeedError<E>> {
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
        }
        while let Some(end) = chunk.iter().position(|b| *b == b'\n' || *b == b'\r') {
            let finished = if self.line.is_empty() {
                self.line_done(&chunk[..end], &mut on_event)?
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&chunk[..end]);
                let r = self.line_done(&line, &mut on_event);
                line.clear();
                self.line = line;
                r?
            };
            if finished {
                return Ok(true);
            }
            if chunk[end] == b'\r' {
                match chunk.get(end + 1) {
                    Some(b'\n') => chunk = &chunk[end + 2..],
                    Some(_) => chunk = &chunk[end + 1..],
                    None => {
                        self.after_cr = true;
                        chunk = &[];
                    }
                }
            } else {
                chunk = &chunk[end + 1..];
            }
        }
        self.line.extend_from_slice(chunk);
        Ok(false)
    }

    /// Handles one complete line (without its end).
    fn line_done<E>(
        &mut self,
        line: &[u8],
        on_event: &mut impl FnMut(&str, &str) -> Result<bool, E>,
    ) -> Result<bool, FeedError<E>> {
        let mut line = line;
        if !self.started {
            self.started = true;
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        if line.is_empty() {
            if !self.has_data {
                self.event.clear();
                return Ok(false);
            }
            let r = on_event(&self.event, &self.data).map_err(FeedError::Event);
            self.event.clear();
            self.data.clear();
            self.has_data = false;
            return r;
        }
        if line[0] == b':' {
            return Ok(false);
        }
        let line = std::str::from_utf8(line).map_err(|e| FeedError::Utf8(NotUtf8(e)))?;
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => {
                self.event.clear();
                self.event.push_str(value);
            }
            _ => {}
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every event of `body` fed in chunks of `n` bytes.
    fn events(body: &[u8], n: usize) -> Vec<(String, String)> {
        let mut f = SseFramer::new();
        let mut out = Vec::new();
        for c in body.chunks(n) {
            f.feed::<()>(c, |e, d| {
                out.push((e.to_owned(), d.to_owned()));
                Ok(false)
            })
            .unwrap();
        }
        out
    }

    #[test]
    fn events_are_framed_whatever_the_chunking_and_line_ends() {
        let body = "\u{feff}event: response.created\n: comment\ndata: {\"a\":1}\n\ndata:x\r\ndata: y\r\n\r\nid: 7\nretry: 10\n\ndata\n\ndata: last\rdata: more\r\r";
        let want = vec![
            ("response.created".to_owned(), "{\"a\":1}".to_owned()),
            (String::new(), "x\ny".to_owned()),
            (String::new(), String::new()),
            (String::new(), "last\nmore".to_owned()),
        ];
        for n in 1..body.len() {
            assert_eq!(events(body.as_bytes(), n), want, "chunks of {n}");
        }
    }

    #[test]
    fn a_finished_stream_stops_and_bad_utf8_fails() {
        let mut f = SseFramer::new();
        let mut seen = 0;
        let done = f
            .feed::<()>(b"data: 1\n\ndata: [DONE]\n\ndata: 3\n\n", |_, d| {
                seen += 1;
                Ok(d == "[DONE]")
            })
            .unwrap();
        assert!(done);
        assert_eq!(seen, 2);
        let mut f = SseFramer::new();
        let r = f.feed::<()>(b"data: \xff\xfe\n\n", |_, _| Ok(false));
        assert!(matches!(r, Err(FeedError::Utf8(_))));
        // An event cut off by the end of the body is not dispatched.
        assert!(events(b"data: 1\n\ndata: 2\n", 4).len() == 1);
    }
}
