//! Times as the SDK writes them: ISO-8601 in UTC with microseconds and `+00:00`
//! (`2026-11-30T02:44:35.086133+00:00`). Every span takes two, so they are written digit by
//! digit rather than through `format!` (measured: about a tenth of the instructions).

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, as the SDK writes times.
pub fn time_iso() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    iso_micros(d.as_secs() as i64, d.subsec_micros())
}

/// The time `secs` seconds and `micros` microseconds after the Unix epoch (UTC).
pub fn iso_micros(secs: i64, micros: u32) -> String {
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    let mut b = *b"0000-00-00T00:00:00.000000+00:00";
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year.clamp(0, 9999) as u64);
    put(5, 2, month as u64);
    put(8, 2, day as u64);
    put(11, 2, (sod / 3600) as u64);
    put(14, 2, (sod / 60 % 60) as u64);
    put(17, 2, (sod % 60) as u64);
    put(20, 6, u64::from(micros.min(999_999)));
    // Only ASCII digits and separators were written.
    String::from_utf8_lossy(&b).into_owned()
}

/// Year, month (1-12) and day (1-31) of a day count from 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_chrono_over_four_centuries() {
        use chrono::{TimeZone, Utc};
        // Every 7919th minute plus some seconds, from 1970 to 2370, and the edges.
        let mut secs: Vec<i64> = (0..26_600i64).map(|i| i * 7919 * 60 + i % 61).collect();
        secs.extend([
            0,
            951_782_400,
            4_107_542_399,
            4_107_542_400,
            253_402_300_799,
        ]);
        for s in secs {
            let micros = (s % 1_000_000) as u32;
            let want = Utc
                .timestamp_opt(s, micros * 1000)
                .unwrap()
                .format("%Y-%m-%dT%H:%M:%S%.6f+00:00")
                .to_string();
            assert_eq!(iso_micros(s, micros), want, "{s}");
        }
        let now = time_iso();
        assert_eq!(now.len(), 32);
        assert!(chrono::DateTime::parse_from_rfc3339(&now).is_ok(), "{now}");
    }
}
