//! Trace and span ids as the SDK makes them (`trace_` + 32 lowercase hex digits, `span_` + 24),
//! and their validation wherever ids come from clients (`run.create`'s `trace.trace_id`, the
//! ingest endpoint): an id of any other form is refused with an [`IdError`] saying what an id
//! looks like.

/// Hex digits after `trace_`.
pub const TRACE_HEX: usize = 32;
/// Hex digits after `span_`.
pub const SPAN_HEX: usize = 24;

/// Why a client's id was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Not `trace_` + 32 lowercase hex digits.
    #[error("trace id {0} is not `trace_` followed by 32 lowercase hex digits (as the SDK's gen_trace_id() makes them); leave it out to get a new one")]
    Trace(String),
    /// Not `span_` + 24 lowercase hex digits.
    #[error("span id {0} is not `span_` followed by 24 lowercase hex digits (as the SDK's gen_span_id() makes them)")]
    Span(String),
}

fn is_id(s: &str, prefix: &str, hex: usize) -> bool {
    s.len() == prefix.len() + hex
        && s.starts_with(prefix)
        && s.as_bytes()[prefix.len()..]
            .iter()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `s` is `trace_` + 32 lowercase hex digits.
pub fn is_trace_id(s: &str) -> bool {
    is_id(s, "trace_", TRACE_HEX)
}

/// Whether `s` is `span_` + 24 lowercase hex digits.
pub fn is_span_id(s: &str) -> bool {
    is_id(s, "span_", SPAN_HEX)
}

/// A client's id as shown in an error: quoted, at most 64 characters.
fn shown(s: &str) -> String {
    let cut: String = s.chars().take(64).collect();
    if cut.len() < s.len() {
        format!("{cut:?}... ({} bytes)", s.len())
    } else {
        format!("{cut:?}")
    }
}

/// `Ok` for a well-formed trace id, else an error naming it.
pub fn check_trace_id(s: &str) -> Result<(), IdError> {
    if is_trace_id(s) {
        Ok(())
    } else {
        Err(IdError::Trace(shown(s)))
    }
}

/// `Ok` for a well-formed span id, else an error naming it.
pub fn check_span_id(s: &str) -> Result<(), IdError> {
    if is_span_id(s) {
        Ok(())
    } else {
        Err(IdError::Span(shown(s)))
    }
}

/// 64-bit FNV-1a, for ids that are not hex.
fn fnv(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The OpenTelemetry id of an SDK id: `n` bytes (16 for a trace, 8 for a span) from the
/// leading hex digits of `trace_<hex>` / `span_<hex>`, or a hash of the id when it is not
/// hex. The `otlp` sink and `traceparent` headers use it, so both name a span alike.
pub fn otel_id_bytes(id: &str, n: usize) -> Vec<u8> {
    let hex = id.split_once('_').map_or(id, |(_, h)| h).as_bytes();
    if hex.len() >= n * 2 && hex[..n * 2].iter().all(u8::is_ascii_hexdigit) {
        let val = |c: u8| match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => c - b'A' + 10,
        };
        return (0..n)
            .map(|i| val(hex[2 * i]) << 4 | val(hex[2 * i + 1]))
            .collect();
    }
    (0..n.div_ceil(8) as u64)
        .flat_map(|i| fnv(id.as_bytes(), i).to_be_bytes())
        .take(n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdk_ids_pass_and_everything_else_is_refused() {
        for _ in 0..100 {
            assert!(is_trace_id(&crate::trace::gen_trace_id()));
            assert!(is_span_id(&crate::trace::gen_span_id()));
        }
        assert!(is_trace_id("trace_0123456789abcdef0123456789abcdef"));
        assert!(is_span_id("span_0123456789abcdef01234567"));
        for bad in [
            "",
            "x",
            "trace_",
            "trace_0123456789ABCDEF0123456789abcdef",
            "trace_0123456789abcdef0123456789abcde",
            "trace_0123456789abcdef0123456789abcdef0",
            "trace_0123456789abcdef0123456789abcdeg",
            "span_0123456789abcdef0123456789abcdef",
            "Trace_0123456789abcdef0123456789abcdef",
            "trace-0123456789abcdef0123456789abcdef",
            "trace_0123456789abcdef012345678é9abcd",
        ] {
            assert!(!is_trace_id(bad), "{bad}");
        }
        assert!(!is_span_id("span_0123456789abcdef0123456"));
        assert!(!is_span_id("trace_0123456789abcdef01234567"));
        assert!(!is_span_id("span_0123456789abcdef0123456Z"));
    }

    #[test]
    fn errors_name_the_id_briefly() {
        let e = check_trace_id("x").unwrap_err().to_string();
        assert!(e.contains("\"x\"") && e.contains("32 lowercase hex"), "{e}");
        let long = "y".repeat(5000);
        let e = check_trace_id(&long).unwrap_err().to_string();
        assert!(e.len() < 300 && e.contains("5000 bytes"), "{e}");
        let e = check_span_id("span_1").unwrap_err().to_string();
        assert!(e.contains("24 lowercase hex"), "{e}");
        assert!(check_trace_id("trace_0123456789abcdef0123456789abcdef").is_ok());
        assert!(check_span_id("span_0123456789abcdef01234567").is_ok());
    }
}
