//! Alarm clock occurrences (reference §2.10): list, add, delete; Datetime and Interval values.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};

use super::*;
use crate::envelope::COMMON;
use crate::response::{boolean, string};
use crate::xml::escape;
use crate::Request;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alarm {
    pub instance_id: String,
    pub element_name: String,
    /// Unix seconds.
    pub start_time: i64,
    pub interval_minutes: u32,
    pub delete_on_completion: bool,
}

pub fn alarms(items: &[&Element]) -> Result<Vec<Alarm>, ResponseError> {
    items
        .iter()
        .filter(|i| i.name == "IPS_AlarmClockOccurrence")
        .map(|e| {
            let start = e
                .path(&["StartTime", "Datetime"])
                .map(|d| d.text.trim())
                .unwrap_or_default();
            let interval = e
                .path(&["Interval", "Interval"])
                .map(|d| d.text.trim())
                .unwrap_or_default();
            Ok(Alarm {
                instance_id: string(e, "InstanceID"),
                element_name: string(e, "ElementName"),
                start_time: parse_datetime(start).ok_or_else(|| ResponseError::Invalid {
                    field: "StartTime".into(),
                    value: start.chars().take(32).collect(),
                })?,
                interval_minutes: if interval.is_empty() {
                    0
                } else {
                    parse_interval(interval).ok_or_else(|| ResponseError::Invalid {
                        field: "Interval".into(),
                        value: interval.chars().take(32).collect(),
                    })?
                },
                delete_on_completion: boolean(e, "DeleteOnCompletion"),
            })
        })
        .collect()
}

/// AddAlarm with an embedded IPS_AlarmClockOccurrence template.
pub fn add_alarm(
    name: &str,
    start_time: i64,
    interval_minutes: u32,
    delete_on_completion: bool,
) -> Request {
    let ns = ALARM_CLOCK_OCCURRENCE.uri();
    let name = escape(name);
    let mut t = format!(
        r#"<r:InstanceID xmlns:r="{ns}">{name}</r:InstanceID><r:ElementName xmlns:r="{ns}">{name}</r:ElementName><r:StartTime xmlns:r="{ns}"><p:Datetime xmlns:p="{COMMON}">{}</p:Datetime></r:StartTime>"#,
        format_datetime(start_time)
    );
    if interval_minutes > 0 {
        t.push_str(&format!(
            r#"<r:Interval xmlns:r="{ns}"><p:Interval xmlns:p="{COMMON}">{}</p:Interval></r:Interval>"#,
            format_interval(interval_minutes)
        ));
    }
    t.push_str(&format!(
        r#"<r:DeleteOnCompletion xmlns:r="{ns}">{delete_on_completion}</r:DeleteOnCompletion>"#
    ));
    Request::invoke(ALARM_CLOCK_SERVICE, "AddAlarm", &[("AlarmTemplate", t)])
}

/// InstanceID of the alarm AddAlarm created (from the AlarmClock EPR).
pub fn added_alarm_id(out: &Element) -> Option<String> {
    let set = out.find("SelectorSet")?;
    set.children_named("Selector")
        .find(|s| s.attribute("Name") == Some("InstanceID"))
        .map(|s| s.text.trim().to_string())
}

pub fn delete_alarm(instance_id: &str) -> Request {
    Request::delete(ALARM_CLOCK_OCCURRENCE).with_selector("InstanceID", instance_id)
}

/// `P<d>DT<h>H<m>M` (and the general xs:duration forms AMT might send) → minutes.
pub fn parse_interval(s: &str) -> Option<u32> {
    let rest = s.strip_prefix('P')?;
    let (date, time) = rest.split_once('T').unwrap_or((rest, ""));
    let mut minutes: u64 = 0;
    let mut take = |part: &str, units: &[(char, u64)]| -> Option<()> {
        let mut num = String::new();
        for c in part.chars() {
            if c.is_ascii_digit() {
                num.push(c);
            } else {
                let mult = units.iter().find(|(u, _)| *u == c)?.1;
                minutes = minutes.checked_add(num.parse::<u64>().ok()?.checked_mul(mult)?)?;
                num.clear();
            }
        }
        num.is_empty().then_some(())
    };
    take(date, &[('D', 1440)])?;
    take(time, &[('H', 60), ('M', 1), ('S', 0)])?;
    u32::try_from(minutes).ok()
}

pub fn format_interval(minutes: u32) -> String {
    format!(
        "P{}DT{}H{}M",
        minutes / 1440,
        minutes % 1440 / 60,
        minutes % 60
    )
}

/// `YYYY-MM-DDThh:mm:ssZ` (UTC) → Unix seconds. The `Z` and the seconds may be left off and
/// a fraction of a second is dropped; impossible dates such as 02-30 are rejected.
pub fn parse_datetime(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z').unwrap_or(s);
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"]
        .into_iter()
        .find_map(|format| NaiveDateTime::parse_from_str(s, format).ok())
        .map(|t| t.and_utc().timestamp())
}

/// Unix seconds → `YYYY-MM-DDThh:mm:ssZ`.
pub fn format_datetime(unix: i64) -> String {
    // chrono stops at about ±262,000 years; clamp rather than fail, since the caller's
    // number may come straight from a request and AMT rejects such dates anyway.
    DateTime::from_timestamp(unix, 0)
        .unwrap_or(if unix < 0 {
            DateTime::<Utc>::MIN_UTC
        } else {
            DateTime::<Utc>::MAX_UTC
        })
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_and_intervals() {
        assert_eq!(parse_datetime("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_datetime("2021-07-23T00:00:00Z"), Some(1_626_998_400));
        assert_eq!(format_datetime(1_626_998_400), "2021-07-23T00:00:00Z");
        for t in [0, 951_782_400, 4_102_444_800] {
            assert_eq!(parse_datetime(&format_datetime(t)), Some(t));
        }
        assert_eq!(parse_datetime("2021-07-23T00:00"), Some(1_626_998_400));
        assert_eq!(
            parse_datetime("2021-07-23T00:00:59.9Z"),
            Some(1_626_998_459)
        );
        assert_eq!(parse_datetime("2021-13-01T00:00:00Z"), None);
        assert_eq!(parse_datetime("2021-02-29T00:00:00Z"), None);
        for (t, edge) in [
            (i64::MAX, DateTime::<Utc>::MAX_UTC),
            (i64::MIN, DateTime::<Utc>::MIN_UTC),
        ] {
            assert_eq!(parse_datetime(&format_datetime(t)), Some(edge.timestamp()));
        }
        assert_eq!(parse_datetime("garbage"), None);
        assert_eq!(parse_interval("P1DT2H3M"), Some(1440 + 123));
        assert_eq!(parse_interval("P0DT0H0M"), Some(0));
        assert_eq!(parse_interval("PT90M"), Some(90));
        assert_eq!(parse_interval("P1X"), None);
        assert_eq!(parse_interval(&format_interval(1503)), Some(1503));
    }
}
