//! The alarm clock (wsman-amt.md §2.10): IPS_AlarmClockOccurrence Enumerate/Pull/Delete and
//! AMT_AlarmClockService AddAlarm with the firmware's limits (five alarms, unique names of at
//! most 32 characters, a future start on a whole minute). Alarms that come due power the host
//! on, applied lazily when the device is next asked anything.

use super::model::DeviceModel;
use super::power::ON;
use super::render::{self, epr_into, parse_bool, Answer, Item, Px, WsFault, AMT, IPS, W};
use super::xml::Request;
use super::{Class, Ctx};

/// The firmware keeps at most five occurrences; a sixth AddAlarm is a QuotaLimit fault.
pub(crate) const MAX_ALARMS: usize = 5;
const MAX_NAME: usize = 32;
/// AddAlarm ReturnValue for a rejected template (PT_STATUS_INVALID_PARAMETER).
const INVALID_PARAMETER: u32 = 36;

#[derive(Debug, Clone)]
pub(crate) struct Alarm {
    pub instance_id: String,
    pub element_name: String,
    /// Next time the alarm goes off (unix seconds).
    pub start: i64,
    /// Repeat interval in minutes; 0 for a one-shot alarm.
    pub interval: u32,
    pub delete_on_completion: bool,
    /// A one-shot alarm that went off and was kept.
    pub fired: bool,
}

impl DeviceModel {
    /// Lets due alarms go off: the host powers on (at the earliest due time) if it was not
    /// running; repeating alarms move to their next time, finished ones are deleted or kept.
    pub(crate) fn fire_alarms(&mut self, unix: i64) {
        let mut wake_at: Option<i64> = None;
        self.alarms.retain_mut(|a| {
            if a.fired || a.start > unix {
                return true;
            }
            wake_at = Some(wake_at.map_or(a.start, |w| w.min(a.start)));
            if a.interval > 0 {
                let step = i64::from(a.interval) * 60;
                a.start += ((unix - a.start) / step + 1) * step;
                true
            } else if a.delete_on_completion {
                false
            } else {
                a.fired = true;
                true
            }
        });
        if let Some(at) = wake_at {
            if self.power != ON {
                self.request_power(2, at);
            }
        }
    }
}

pub(crate) const CLASSES: &[Class] = &[
    Class {
        instances: Some(occurrences),
        enumerate: true,
        delete: Some(delete_occurrence),
        ..Class::new("IPS_AlarmClockOccurrence", IPS)
    },
    Class {
        instances: Some(alarm_clock_service),
        get: true,
        enumerate: true,
        methods: &[("AddAlarm", add_alarm)],
        ..Class::new("AMT_AlarmClockService", AMT)
    },
];

fn occurrences(ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    ctx.model
        .alarms
        .iter()
        .map(|a| {
            let mut w = W::new(px, "IPS_AlarmClockOccurrence");
            w.v("DeleteOnCompletion", a.delete_on_completion)
                .s("ElementName", &a.element_name)
                .s("InstanceID", &a.instance_id);
            if a.interval > 0 {
                w.interval("Interval", &render::format_interval(a.interval));
            }
            w.datetime("StartTime", &render::format_datetime(a.start));
            w.finish("IPS_AlarmClockOccurrence", IPS)
        })
        .collect()
}

fn alarm_clock_service(_ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    let name = "Intel(r) AMT Alarm Clock Service";
    let mut w = W::new(px, "AMT_AlarmClockService");
    w.s("CreationClassName", "AMT_AlarmClockService")
        .s("ElementName", name)
        .s("Name", name)
        .s("SystemCreationClassName", "CIM_ComputerSystem")
        .s("SystemName", "ManagedSystem");
    vec![w.finish("AMT_AlarmClockService", AMT)]
}

/// Delete by the InstanceID selector; a missing or unknown one is InvalidSelectors.
fn delete_occurrence(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let id = req
        .selector("InstanceID")
        .ok_or(WsFault::InvalidSelectors)?;
    let idx = ctx
        .model
        .alarms
        .iter()
        .position(|a| a.instance_id == id)
        .ok_or(WsFault::InvalidSelectors)?;
    ctx.model.alarms.remove(idx);
    Ok(Answer::deleted())
}

/// A Datetime/Interval property: the wrapped value, or the bare text from lax clients.
fn wrapped<'a>(template: super::xml::El<'a>, name: &str, inner: &str) -> Option<&'a str> {
    let el = template.find(name)?;
    Some(el.find_text(inner).unwrap_or_else(|| el.text()))
}

/// Validates an AlarmTemplate against the firmware's rules.
fn parse_template(ctx: &Ctx<'_>, req: &Request) -> Option<Alarm> {
    let t = req.body()?.find("AlarmTemplate")?;
    let element_name = t.find_text("ElementName").filter(|n| !n.is_empty())?;
    let instance_id = t
        .find_text("InstanceID")
        .filter(|n| !n.is_empty())
        .unwrap_or(element_name);
    if element_name.chars().count() > MAX_NAME || instance_id.chars().count() > MAX_NAME {
        return None;
    }
    let taken = ctx
        .model
        .alarms
        .iter()
        .any(|a| a.instance_id == instance_id || a.element_name == element_name);
    if taken {
        return None;
    }
    let (start, seconds) = render::parse_datetime(wrapped(t, "StartTime", "Datetime")?)?;
    if seconds != 0 || start <= ctx.now.unix {
        return None;
    }
    let interval = match wrapped(t, "Interval", "Interval") {
        None | Some("") => 0,
        Some(i) => render::parse_interval(i)?,
    };
    let delete_on_completion = match t.find_text("DeleteOnCompletion") {
        None => false,
        Some(v) => parse_bool(v)?,
    };
    Some(Alarm {
        instance_id: instance_id.to_string(),
        element_name: element_name.to_string(),
        start,
        interval,
        delete_on_completion,
        fired: false,
    })
}

/// AddAlarm(AlarmTemplate) → AddAlarm_OUTPUT {AlarmClock EPR → IPS_AlarmClockOccurrence by
/// InstanceID, ReturnValue}; the sixth alarm is a QuotaLimit fault, bad templates return 36.
fn add_alarm(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let uri = format!("{AMT}AMT_AlarmClockService");
    if ctx.model.alarms.len() >= MAX_ALARMS {
        return Err(WsFault::QuotaLimit);
    }
    let Some(alarm) = parse_template(ctx, req) else {
        return Ok(Answer::return_value(&uri, "AddAlarm", INVALID_PARAMETER));
    };
    let mut fields = String::from("<g:AlarmClock>");
    epr_into(
        &mut fields,
        &format!("{IPS}IPS_AlarmClockOccurrence"),
        &[("InstanceID", &alarm.instance_id)],
    );
    fields.push_str("</g:AlarmClock><g:ReturnValue>0</g:ReturnValue>");
    ctx.model.alarms.push(alarm);
    Ok(Answer::output(&uri, "AddAlarm", &fields))
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    fn template(name: &str, start: &str, interval: Option<&str>) -> String {
        let s = "http://intel.com/wbem/wscim/1/ips-schema/1/IPS_AlarmClockOccurrence";
        let p = "http://schemas.dmtf.org/wbem/wscim/1/common";
        let interval = interval.map_or(String::new(), |i| {
            format!(r#"<s:Interval xmlns:s="{s}"><p:Interval xmlns:p="{p}">{i}</p:Interval></s:Interval>"#)
        });
        format!(
            r#"<h:AlarmTemplate><s:InstanceID xmlns:s="{s}">{name}</s:InstanceID><s:ElementName xmlns:s="{s}">{name}</s:ElementName><s:StartTime xmlns:s="{s}"><p:Datetime xmlns:p="{p}">{start}</p:Datetime></s:StartTime>{interval}<s:DeleteOnCompletion xmlns:s="{s}">true</s:DeleteOnCompletion></h:AlarmTemplate>"#
        )
    }

    fn add(sim: &mut Sim, name: &str, start: &str, interval: Option<&str>) -> Resp {
        let uri = format!("{AMT}AMT_AlarmClockService");
        sim.invoke(&uri, "AddAlarm", &template(name, start, interval))
    }

    fn future(sim: &Sim, minutes: i64) -> String {
        let t = sim.now.unix + minutes * 60;
        render::format_datetime(t - t.rem_euclid(60))
    }

    #[test]
    fn add_list_delete() {
        let mut sim = Sim::new();
        let start = future(&sim, 60);
        let r = add(&mut sim, "nightly", &start, Some("P1DT0H0M"));
        assert!(r.ok, "{}", r.xml);
        assert_eq!(
            r.text("Action"),
            Some(
                "http://intel.com/wbem/wscim/1/amt-schema/1/AMT_AlarmClockService/AddAlarmResponse"
            )
        );
        assert_eq!(r.return_value(), Some(0));
        let epr = r.doc.root().find("AlarmClock").unwrap();
        assert_eq!(
            epr.find_text("ResourceURI"),
            Some("http://intel.com/wbem/wscim/1/ips-schema/1/IPS_AlarmClockOccurrence")
        );
        assert_eq!(epr.selectors(), [("InstanceID", "nightly")]);
        let list = sim.enumerate_pull(&format!("{IPS}IPS_AlarmClockOccurrence"), Some(999));
        assert_eq!(list.item_names(), ["IPS_AlarmClockOccurrence"]);
        let item = list.doc.root().find("IPS_AlarmClockOccurrence").unwrap();
        assert_eq!(
            item.find("StartTime").and_then(|s| s.find_text("Datetime")),
            Some(start.as_str())
        );
        assert_eq!(
            item.find("Interval").and_then(|s| s.find_text("Interval")),
            Some("P1DT0H0M")
        );
        assert_eq!(item.find_text("DeleteOnCompletion"), Some("true"));

        let uri = format!("{IPS}IPS_AlarmClockOccurrence");
        let del = |sim: &mut Sim, id: &str| {
            let req = sim.request(
                &uri,
                DELETE,
                &format!(r#"<w:Selector Name="InstanceID">{id}</w:Selector>"#),
                "",
            );
            sim.raw(req.as_bytes())
        };
        let missing = del(&mut sim, "other");
        assert!(!missing.ok);
        assert_eq!(missing.subcode(), Some("e:InvalidSelectors"));
        let no_selector = sim.call(&uri, DELETE, "");
        assert_eq!(no_selector.subcode(), Some("e:InvalidSelectors"));
        let ok = del(&mut sim, "nightly");
        assert!(ok.ok);
        assert_eq!(
            ok.text("Action"),
            Some("http://schemas.xmlsoap.org/ws/2004/09/transfer/DeleteResponse")
        );
        let empty = sim.enumerate_pull(&uri, Some(999));
        assert!(empty.item_names().is_empty());
        assert!(empty.doc.root().find("EndOfSequence").is_some());
    }

    #[test]
    fn validation_and_quota() {
        let mut sim = Sim::new();
        let past = render::format_datetime(sim.now.unix - 3600 - sim.now.unix.rem_euclid(60));
        let start = future(&sim, 30);
        let odd_seconds =
            render::format_datetime(sim.now.unix - sim.now.unix.rem_euclid(60) + 3607);
        assert_eq!(
            add(&mut sim, "a", &past, None).return_value(),
            Some(36),
            "past"
        );
        assert_eq!(
            add(&mut sim, "a", &odd_seconds, None).return_value(),
            Some(36),
            "seconds"
        );
        assert_eq!(
            add(&mut sim, "a", "tomorrow", None).return_value(),
            Some(36)
        );
        assert_eq!(
            add(&mut sim, &"x".repeat(33), &start, None).return_value(),
            Some(36)
        );
        assert_eq!(add(&mut sim, "", &start, None).return_value(), Some(36));
        assert_eq!(
            add(&mut sim, "a", &start, Some("PT25H")).return_value(),
            Some(36)
        );
        assert_eq!(
            add(&mut sim, "a", &start, Some("PT12M")).return_value(),
            Some(0)
        );
        assert_eq!(
            add(&mut sim, "a", &start, None).return_value(),
            Some(36),
            "duplicate"
        );
        for name in ["b", "c", "d", "e"] {
            assert_eq!(add(&mut sim, name, &start, None).return_value(), Some(0));
        }
        let sixth = add(&mut sim, "f", &start, None);
        assert!(!sixth.ok);
        assert_eq!(sixth.subcode(), Some("e:QuotaLimit"));
        assert_eq!(sim.model.alarms.len(), MAX_ALARMS);
    }

    #[test]
    fn due_alarms_power_the_host_on() {
        let mut sim = Sim::new();
        let start = future(&sim, 10);
        assert_eq!(add(&mut sim, "once", &start, None).return_value(), Some(0));
        assert_eq!(
            add(&mut sim, "daily", &start, Some("P1D")).return_value(),
            Some(0)
        );
        sim.model.power = super::super::power::OFF;
        sim.now.unix += 3600;
        let state = sim.enumerate_pull(&format!("{CIM}CIM_ServiceAvailableToElement"), Some(1));
        assert_eq!(state.text("PowerState"), Some("2"));
        // The one-shot alarm deleted itself; the daily one moved on by a day.
        assert_eq!(sim.model.alarms.len(), 1);
        let expected = render::parse_datetime(&start).unwrap().0 + 86_400;
        assert_eq!(sim.model.alarms.first().map(|a| a.start), Some(expected));
    }

    use super::super::render::CIM;
}
