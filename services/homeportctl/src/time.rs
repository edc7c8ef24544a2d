//! Unix seconds to and from RFC 3339 UTC text, with Howard Hinnant's civil-calendar algorithms.

const SECS_PER_DAY: i64 = 86_400;

/// `2024-03-01T12:00:00Z`.
pub fn rfc3339(unix: i64) -> String {
    let (y, m, d) = civil_from_days(unix.div_euclid(SECS_PER_DAY));
    let secs = unix.rem_euclid(SECS_PER_DAY);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Unix seconds from plain digits or from RFC 3339 (`2024-03-01T12:00:00Z`,
/// `2024-03-01T13:00:00.5+01:00`); fractions of a second are dropped.
pub fn parse_time(text: &str) -> Result<i64, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse()
            .map_err(|_| format!("{text:?} is out of range"));
    }
    parse_rfc3339(text.as_bytes()).ok_or_else(|| {
        format!("{text:?} is neither unix seconds nor RFC 3339 (2024-03-01T12:00:00Z)")
    })
}

fn parse_rfc3339(s: &[u8]) -> Option<i64> {
    let year = digits(s, 0, 4)?;
    let (month, day) = (digits(s, 5, 2)?, digits(s, 8, 2)?);
    let (hour, minute, second) = (digits(s, 11, 2)?, digits(s, 14, 2)?, digits(s, 17, 2)?);
    let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if separators.iter().any(|&(at, b)| s[at] != b) || !matches!(s[10], b'T' | b't' | b' ') {
        return None;
    }
    let year = i64::from(year);
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(fraction) = rest.strip_prefix(b".") {
        let n = fraction.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        rest = &fraction[n..];
    }
    let offset = match rest {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (digits(rest, 1, 2)?, digits(rest, 4, 2)?);
            if h > 23 || m > 59 {
                return None;
            }
            let offset = i64::from(h * 3600 + m * 60);
            if *sign == b'-' {
                -offset
            } else {
                offset
            }
        }
        _ => return None,
    };
    // A leap second counts as the last second of its minute.
    let secs = i64::from(hour * 3600 + minute * 60 + second.min(59));
    Some(days_from_civil(year, month, day) * SECS_PER_DAY + secs - offset)
}

/// The number written in `s[at..at + len]`, all ASCII digits.
fn digits(s: &[u8], at: usize, len: usize) -> Option<u32> {
    let part = s.get(at..at + len)?;
    part.iter().try_fold(0u32, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0'))
    })
}

fn days_in_month(year: i64, month: u32) -> u32 {
    let next = if month == 12 {
        days_from_civil(year + 1, 1, 1)
    } else {
        days_from_civil(year, month + 1, 1)
    };
    // At most 31, so the conversion cannot fail.
    u32::try_from(next - days_from_civil(year, month, 1)).unwrap_or(31)
}

/// (year, month 1-12, day 1-31) of the day `z` days after 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    // Both in range by construction (1..=31 and 1..=12).
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days from 1970-01-01 to the given date (negative before it).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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
    }

    #[test]
    fn parses_what_it_formats_every_day_for_centuries() {
        for day in (-200_000..200_000).step_by(7) {
            let t = day * SECS_PER_DAY + 45_296;
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
