//! Unix seconds to and from RFC 3339 UTC text, with chrono doing the calendar arithmetic.

use chrono::{DateTime, SecondsFormat, Utc};

/// `2024-03-01T12:00:00Z`.
pub fn rfc3339(unix: i64) -> String {
    // chrono stops at about ±262,000 years; clamp rather than fail on a nonsense timestamp.
    DateTime::from_timestamp(unix, 0)
        .unwrap_or(if unix < 0 {
            DateTime::<Utc>::MIN_UTC
        } else {
            DateTime::<Utc>::MAX_UTC
        })
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Unix seconds from plain digits or from RFC 3339 (`2024-03-01T12:00:00Z`,
/// `2024-03-01T13:00:00.5+01:00`); fractions of a second are dropped and a leap second
/// counts as the last second of its minute.
pub fn parse_time(text: &str) -> Result<i64, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse()
            .map_err(|_| format!("{text:?} is out of range"));
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp())
        .map_err(|_| {
            format!("{text:?} is neither unix seconds nor RFC 3339 (2024-03-01T12:00:00Z)")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_709_294_400), "2024-03-01T12:00:00Z");
        assert_eq!(rfc3339(1_735_689_599), "2024-12-31T23:59:59Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339(4_102_444_800), "2100-01-01T00:00:00Z");
        // Beyond chrono's range the text clamps to its last instant instead of failing.
        let last = DateTime::<Utc>::MAX_UTC.timestamp();
        assert_eq!(rfc3339(i64::MAX), rfc3339(last));
    }

    #[test]
    fn parses_what_it_formats_every_day_for_centuries() {
        for day in (-200_000..200_000).step_by(7) {
            let t = day * 86_400 + 45_296;
            assert_eq!(parse_time(&rfc3339(t)), Ok(t), "{}", rfc3339(t));
        }
    }

    #[test]
    fn parses_offsets_fractions_and_unix_seconds() {
        assert_eq!(parse_time("1709294400"), Ok(1_709_294_400));
        assert_eq!(parse_time("2024-03-01T13:30:00+01:30"), Ok(1_709_294_400));
        assert_eq!(
            parse_time("2024-03-01T07:00:00.999-05:00"),
            Ok(1_709_294_400)
        );
        assert_eq!(parse_time("2024-03-01t12:00:00z"), Ok(1_709_294_400));
        assert_eq!(
            parse_time("2016-12-31T23:59:60Z"),
            parse_time("2016-12-31T23:59:59Z")
        );
    }

    #[test]
    fn rejects_malformed_dates() {
        for bad in [
            "",
            "-5",
            "2024-02-30T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-03-01T24:00:00Z",
            "2024-03-01T12:00:00",
            "2024-03-01T12:00:00.Z",
            "2024-03-01T12:00:00+0100",
            "2024-03-01 12:00Z",
            "2024/03/01T12:00:00Z",
            "tomorrow",
        ] {
            assert!(parse_time(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_time("2024-02-29T00:00:00Z"), Ok(1_709_164_800));
    }
}
