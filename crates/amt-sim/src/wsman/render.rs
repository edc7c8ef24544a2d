//! AMT's response wire format (wsman-amt.md §1.5/§1.6): single-line XML, the fixed prefix map
//! `a`..`f` then `g`/`h`/`i` per operation, RelatesTo echoing the request's MessageID, SOAP
//! faults with their own prefix map; plus the small builders instances are rendered with.

use std::borrow::Cow;
use std::fmt::{Display, Write as _};

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Timelike, Utc};

pub(crate) const CIM: &str = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/";
pub(crate) const AMT: &str = "http://intel.com/wbem/wscim/1/amt-schema/1/";
pub(crate) const IPS: &str = "http://intel.com/wbem/wscim/1/ips-schema/1/";
pub(crate) const COMMON: &str = "http://schemas.dmtf.org/wbem/wscim/1/common";
pub(crate) const TRANSFER: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/";
pub(crate) const ENUMERATION: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration";
pub(crate) const ANONYMOUS: &str =
    "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous";

const XML_DECL: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;
const XSI: &str = r#"xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance""#;
/// `a`..`f` as every non-fault AMT response declares them.
const BASE_NS: &str = r#"xmlns:a="http://www.w3.org/2003/05/soap-envelope" xmlns:b="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:c="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" xmlns:d="http://schemas.xmlsoap.org/ws/2005/02/trust" xmlns:e="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd" xmlns:f="http://schemas.dmtf.org/wbem/wsman/1/cimbinding.xsd""#;
/// The fault prefix map, which differs from the normal one (§1.6).
const FAULT_NS: &str = r#"xmlns:g="http://schemas.dmtf.org/wbem/wsman/1/cimbinding.xsd" xmlns:f="http://schemas.xmlsoap.org/ws/2004/08/eventing" xmlns:e="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" xmlns:d="http://schemas.xmlsoap.org/ws/2004/09/transfer" xmlns:c="http://schemas.xmlsoap.org/ws/2004/09/enumeration" xmlns:b="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:a="http://www.w3.org/2003/05/soap-envelope" xmlns:h="http://schemas.xmlsoap.org/ws/2005/02/trust" xmlns:i="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd""#;

/// Which namespaces follow `a`..`f` in a response.
pub(crate) enum Ns {
    /// Get/Put/method responses: `g` = the class, optionally `h` = common datatypes.
    Class { uri: String, common: bool },
    /// Pull: `g` = enumeration, `h` = the concrete item class, `i` = common.
    Pull { item_uri: String },
    /// Enumerate/Release: `g` = enumeration only.
    Enumeration,
    /// Delete: nothing beyond the base map.
    Bare,
}

/// A rendered answer before it gets its envelope.
pub(crate) struct Answer {
    pub action: String,
    pub ns: Ns,
    pub body: String,
}

impl Answer {
    /// A method's `<METHOD>_OUTPUT` with `fields` already rendered with prefix `g`.
    pub(crate) fn output(class_uri: &str, method: &str, fields: &str) -> Answer {
        Answer {
            action: format!("{class_uri}/{method}Response"),
            ns: Ns::Class {
                uri: class_uri.to_string(),
                common: false,
            },
            body: format!("<g:{method}_OUTPUT>{fields}</g:{method}_OUTPUT>"),
        }
    }

    /// A Delete's answer: the action and an empty body.
    pub(crate) fn deleted() -> Answer {
        Answer {
            action: format!("{TRANSFER}DeleteResponse"),
            ns: Ns::Bare,
            body: String::new(),
        }
    }

    /// A method output holding only a ReturnValue.
    pub(crate) fn return_value(class_uri: &str, method: &str, rv: u32) -> Answer {
        Answer::output(
            class_uri,
            method,
            &format!("<g:ReturnValue>{rv}</g:ReturnValue>"),
        )
    }
}

/// A complete response envelope.
pub(crate) fn envelope(
    relates_to: &str,
    message_id: &str,
    resource: &str,
    answer: &Answer,
) -> String {
    let mut out = String::with_capacity(answer.body.len() + 1024);
    out.push_str(XML_DECL);
    out.push_str("<a:Envelope ");
    out.push_str(BASE_NS);
    match &answer.ns {
        Ns::Class { uri, common } => {
            let _ = write!(out, r#" xmlns:g="{}""#, escape(uri));
            if *common {
                let _ = write!(out, r#" xmlns:h="{COMMON}""#);
            }
        }
        Ns::Pull { item_uri } => {
            let _ = write!(
                out,
                r#" xmlns:g="{ENUMERATION}" xmlns:h="{}" xmlns:i="{COMMON}""#,
                escape(item_uri)
            );
        }
        Ns::Enumeration => {
            let _ = write!(out, r#" xmlns:g="{ENUMERATION}""#);
        }
        Ns::Bare => {}
    }
    out.push(' ');
    out.push_str(XSI);
    let _ = write!(
        out,
        r#"><a:Header><b:To>{ANONYMOUS}</b:To><b:RelatesTo>{}</b:RelatesTo><b:Action a:mustUnderstand="true">{}</b:Action><b:MessageID>{message_id}</b:MessageID><c:ResourceURI>{}</c:ResourceURI></a:Header><a:Body>"#,
        escape(relates_to),
        escape(&answer.action),
        escape(resource),
    );
    out.push_str(&answer.body);
    out.push_str("</a:Body></a:Envelope>");
    out
}

/// The SOAP faults the simulated device sends (§1.6, §3.5); all go out as HTTP 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WsFault {
    DestinationUnreachable,
    ActionNotSupported,
    InvalidEnumerationContext,
    SchemaValidationError,
    InvalidSelectors,
    InvalidRepresentation,
    QuotaLimit,
}

const ADDRESSING_FAULT: &str = "http://schemas.xmlsoap.org/ws/2004/08/addressing/fault";
const WSMAN_FAULT: &str = "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault";
const ENUMERATION_FAULT: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/fault";

impl WsFault {
    /// (qualified subcode, fault Action, reason text). Subcode prefixes follow the fault map.
    fn parts(self) -> (&'static str, &'static str, &'static str) {
        match self {
            WsFault::DestinationUnreachable => (
                "b:DestinationUnreachable",
                ADDRESSING_FAULT,
                "No route can be determined to reach the destination role defined by the WSAddressing To.",
            ),
            WsFault::ActionNotSupported => (
                "b:ActionNotSupported",
                ADDRESSING_FAULT,
                "The action is not supported by the service.",
            ),
            WsFault::InvalidEnumerationContext => (
                "c:InvalidEnumerationContext",
                ENUMERATION_FAULT,
                "The supplied enumeration context is invalid.",
            ),
            WsFault::SchemaValidationError => (
                "e:SchemaValidationError",
                WSMAN_FAULT,
                "The supplied SOAP violates the corresponding XML Schema definition.",
            ),
            WsFault::InvalidSelectors => (
                "e:InvalidSelectors",
                WSMAN_FAULT,
                "The Selectors for the resource were not valid.",
            ),
            WsFault::InvalidRepresentation => (
                "e:InvalidRepresentation",
                WSMAN_FAULT,
                "The XML content was invalid.",
            ),
            WsFault::QuotaLimit => (
                "e:QuotaLimit",
                WSMAN_FAULT,
                "The service is busy servicing other requests.",
            ),
        }
    }
}

/// A fault envelope: no ResourceURI in the header, empty Detail.
pub(crate) fn fault(relates_to: &str, message_id: &str, fault: WsFault) -> String {
    let (subcode, action, reason) = fault.parts();
    format!(
        r#"{XML_DECL}<a:Envelope {FAULT_NS} {XSI}><a:Header><b:To>{ANONYMOUS}</b:To><b:RelatesTo>{}</b:RelatesTo><b:Action a:mustUnderstand="true">{action}</b:Action><b:MessageID>{message_id}</b:MessageID></a:Header><a:Body><a:Fault><a:Code><a:Value>a:Sender</a:Value><a:Subcode><a:Value>{subcode}</a:Value></a:Subcode></a:Code><a:Reason><a:Text xml:lang="en-US">{reason}</a:Text></a:Reason><a:Detail></a:Detail></a:Fault></a:Body></a:Envelope>"#,
        escape(relates_to),
    )
}

pub(crate) fn escape(s: &str) -> Cow<'_, str> {
    quick_xml::escape::escape(s)
}

/// Prefixes an instance is rendered with: `g`/`h` in a Get, `h`/`i` inside Pull items.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Px {
    pub item: &'static str,
    pub common: &'static str,
}

pub(crate) const GET_PX: Px = Px {
    item: "g",
    common: "h",
};
pub(crate) const PULL_PX: Px = Px {
    item: "h",
    common: "i",
};

/// One rendered instance and its concrete class (Pull items are named after it).
pub(crate) struct Item {
    pub class: &'static str,
    pub base: &'static str,
    pub xml: String,
}

impl Item {
    pub(crate) fn uri(&self) -> String {
        format!("{}{}", self.base, self.class)
    }
}

/// Builds one instance element property by property.
pub(crate) struct W {
    out: String,
    px: Px,
}

impl W {
    pub(crate) fn new(px: Px, class: &str) -> W {
        let mut out = String::with_capacity(512);
        let _ = write!(out, "<{}:{class}>", px.item);
        W { out, px }
    }

    /// A string property, escaped.
    pub(crate) fn s(&mut self, name: &str, value: &str) -> &mut W {
        let p = self.px.item;
        let _ = write!(self.out, "<{p}:{name}>{}</{p}:{name}>", escape(value));
        self
    }

    /// A property whose value needs no escaping (numbers, booleans).
    pub(crate) fn v(&mut self, name: &str, value: impl Display) -> &mut W {
        let p = self.px.item;
        let _ = write!(self.out, "<{p}:{name}>{value}</{p}:{name}>");
        self
    }

    /// A `Datetime`-wrapped property in the common namespace.
    pub(crate) fn datetime(&mut self, name: &str, value: &str) -> &mut W {
        let (p, c) = (self.px.item, self.px.common);
        let _ = write!(
            self.out,
            "<{p}:{name}><{c}:Datetime>{}</{c}:Datetime></{p}:{name}>",
            escape(value)
        );
        self
    }

    /// An `Interval`-wrapped property in the common namespace.
    pub(crate) fn interval(&mut self, name: &str, value: &str) -> &mut W {
        let (p, c) = (self.px.item, self.px.common);
        let _ = write!(
            self.out,
            "<{p}:{name}><{c}:Interval>{}</{c}:Interval></{p}:{name}>",
            escape(value)
        );
        self
    }

    /// An endpoint reference property (§1.4): anonymous Address, ResourceURI, SelectorSet.
    pub(crate) fn epr(&mut self, name: &str, resource: &str, selectors: &[(&str, &str)]) -> &mut W {
        let p = self.px.item;
        let _ = write!(self.out, "<{p}:{name}>");
        epr_into(&mut self.out, resource, selectors);
        let _ = write!(self.out, "</{p}:{name}>");
        self
    }

    pub(crate) fn finish(mut self, class: &'static str, base: &'static str) -> Item {
        let _ = write!(self.out, "</{}:{class}>", self.px.item);
        Item {
            class,
            base,
            xml: self.out,
        }
    }
}

/// The inside of an EPR element, with the response prefixes `b` (addressing) and `c` (wsman).
pub(crate) fn epr_into(out: &mut String, resource: &str, selectors: &[(&str, &str)]) {
    let _ = write!(
        out,
        "<b:Address>{ANONYMOUS}</b:Address><b:ReferenceParameters><c:ResourceURI>{}</c:ResourceURI><c:SelectorSet>",
        escape(resource)
    );
    for (name, value) in selectors {
        let _ = write!(
            out,
            r#"<c:Selector Name="{}">{}</c:Selector>"#,
            escape(name),
            escape(value)
        );
    }
    out.push_str("</c:SelectorSet></b:ReferenceParameters>");
}

/// Parses `true`/`false` (and `1`/`0`) as CIM booleans arrive.
pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    match s.trim() {
        t if t.eq_ignore_ascii_case("true") || t == "1" => Some(true),
        t if t.eq_ignore_ascii_case("false") || t == "0" => Some(false),
        _ => None,
    }
}

/// Unix seconds → `YYYY-MM-DDThh:mm:ssZ`, the CIM Datetime form AMT uses.
pub(crate) fn format_datetime(unix: i64) -> String {
    // chrono stops at about ±262,000 years; clamp rather than fail on a nonsense timestamp.
    DateTime::from_timestamp(unix, 0)
        .unwrap_or(if unix < 0 {
            DateTime::<Utc>::MIN_UTC
        } else {
            DateTime::<Utc>::MAX_UTC
        })
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `YYYY-MM-DDThh:mm:ssZ` → (unix seconds, the seconds field). Only this form is accepted,
/// like AMT's alarm clock ("requires a T … and must end with Z").
pub(crate) fn parse_datetime(s: &str) -> Option<(i64, u32)> {
    let s = s.trim();
    let t = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%SZ")
        .ok()?
        .and_utc();
    // chrono also takes unpadded fields, signed years and leap seconds, which AMT refuses:
    // only the canonical spelling, the one format_datetime writes back, gets through.
    (format_datetime(t.timestamp()) == s).then(|| (t.timestamp(), t.second()))
}

/// AMT's alarm interval `P<d>DT<h>H<m>M` (parts optional, e.g. `P1D`, `PT12M`, `P0DT0H0M`)
/// → minutes. Hours 0-23 and minutes 0-59 like the firmware; a bare `0` means one-shot.
pub(crate) fn parse_interval(s: &str) -> Option<u32> {
    let s = s.trim();
    if s == "0" {
        return Some(0);
    }
    let rest = s.strip_prefix('P')?;
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (rest, None),
    };
    let mut days = 0u32;
    if !date.is_empty() {
        days = date.strip_suffix('D')?.parse().ok()?;
    }
    let (mut hours, mut minutes) = (0u32, 0u32);
    if let Some(mut t) = time {
        if t.is_empty() {
            return None;
        }
        if let Some((h, r)) = t.split_once('H') {
            hours = h.parse().ok()?;
            t = r;
        }
        if let Some((m, r)) = t.split_once('M') {
            minutes = m.parse().ok()?;
            t = r;
        }
        if !t.is_empty() {
            return None;
        }
    }
    if hours > 23 || minutes > 59 || days > 3650 {
        return None;
    }
    Some(days * 1440 + hours * 60 + minutes)
}

/// Minutes → `P<d>DT<h>H<m>M` as AMT renders intervals.
pub(crate) fn format_interval(minutes: u32) -> String {
    format!(
        "P{}DT{}H{}M",
        minutes / 1440,
        minutes / 60 % 24,
        minutes % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_round_trip() {
        assert_eq!(format_datetime(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_datetime(1_627_000_000), "2021-07-23T00:26:40Z");
        for t in [0i64, 951_782_400, 1_627_000_000, 4_102_444_800] {
            assert_eq!(
                parse_datetime(&format_datetime(t)),
                Some((t, (t % 60) as u32))
            );
        }
        assert_eq!(parse_datetime("2025-02-30T10:00:00Z"), None);
        assert_eq!(parse_datetime("2024-02-29T10:00:00Z").map(|p| p.1), Some(0));
        assert_eq!(parse_datetime("2016-12-31T23:59:60Z"), None);
        assert_eq!(parse_datetime("2025-1-01T10:00:00Z"), None);
        assert_eq!(parse_datetime("+2025-01-01T10:00:00Z"), None);
        assert_eq!(parse_datetime("2025-01-01 10:00:00Z"), None);
        assert_eq!(parse_datetime("2025-01-01T10:00:00"), None);
        assert_eq!(parse_datetime("2025-01-01T10:00:0Z"), None);
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("P1DT0H0M"), Some(1440));
        assert_eq!(parse_interval("PT12M"), Some(12));
        assert_eq!(parse_interval("P395DT3H"), Some(395 * 1440 + 180));
        assert_eq!(parse_interval("P0DT0H0M"), Some(0));
        assert_eq!(parse_interval("0"), Some(0));
        assert_eq!(parse_interval("PT24H"), None);
        assert_eq!(parse_interval("PT"), None);
        assert_eq!(parse_interval("1D"), None);
        assert_eq!(format_interval(1440 + 61), "P1DT1H1M");
    }

    #[test]
    fn envelopes_are_one_line_with_amt_prefixes() {
        let a = Answer::return_value(&format!("{CIM}CIM_Foo"), "Bar", 2);
        let xml = envelope("7<", "uuid:x", &format!("{CIM}CIM_Foo"), &a);
        assert!(!xml.contains('\n'));
        let doc = super::super::xml::Doc::parse(&xml).unwrap();
        let root = doc.root();
        assert_eq!(root.find_text("RelatesTo"), Some("7<"));
        assert_eq!(
            root.find_text("Action"),
            Some("http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_Foo/BarResponse")
        );
        assert_eq!(root.find_text("ReturnValue"), Some("2"));
        assert!(xml.contains("<g:Bar_OUTPUT>"));
        let f = fault("9", "uuid:y", WsFault::QuotaLimit);
        let doc = super::super::xml::Doc::parse(&f).unwrap();
        assert!(doc.root().find("ResourceURI").is_none());
        assert_eq!(
            doc.root()
                .find("Subcode")
                .and_then(|s| s.find_text("Value")),
            Some("e:QuotaLimit")
        );
    }
}
