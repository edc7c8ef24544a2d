//! Request envelopes, byte-compatible with what the Open AMT libraries send (reference §1.3):
//! one line, SOAP 1.2 default namespace, `a` = WS-Addressing 2004/08, `w` = WS-Man, header
//! children in the order AMT has always been sent.

use crate::xml::escape;

pub const CIM: &str = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/";
pub const AMT: &str = "http://intel.com/wbem/wscim/1/amt-schema/1/";
pub const IPS: &str = "http://intel.com/wbem/wscim/1/ips-schema/1/";
pub const COMMON: &str = "http://schemas.dmtf.org/wbem/wscim/1/common";
pub const ADDRESSING: &str = "http://schemas.xmlsoap.org/ws/2004/08/addressing";
pub const ANONYMOUS: &str = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous";
pub const WSMAN: &str = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd";
pub const ENUMERATION: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration";

const TRANSFER: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/";

/// A CIM/AMT/IPS class: its schema base and name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Class {
    pub schema: &'static str,
    pub name: &'static str,
}

impl Class {
    pub const fn cim(name: &'static str) -> Class {
        Class { schema: CIM, name }
    }
    pub const fn amt(name: &'static str) -> Class {
        Class { schema: AMT, name }
    }
    pub const fn ips(name: &'static str) -> Class {
        Class { schema: IPS, name }
    }
    pub fn uri(&self) -> String {
        format!("{}{}", self.schema, self.name)
    }
    /// Action URI of the custom method `method`.
    pub fn method(&self, method: &str) -> String {
        format!("{}{}/{method}", self.schema, self.name)
    }
}

/// One WS-Man request.
#[derive(Clone, Debug)]
pub struct Request {
    pub action: String,
    pub resource_uri: String,
    pub selectors: Vec<(String, String)>,
    /// Body content (already XML); empty for Get/Delete.
    pub body: String,
}

impl Request {
    pub fn get(class: Class) -> Request {
        Request::new(format!("{TRANSFER}Get"), class.uri(), String::new())
    }

    pub fn delete(class: Class) -> Request {
        Request::new(format!("{TRANSFER}Delete"), class.uri(), String::new())
    }

    /// Put of a whole instance; `instance` is the rendered `<h:CLASS …>` element.
    pub fn put(class: Class, instance: String) -> Request {
        Request::new(format!("{TRANSFER}Put"), class.uri(), instance)
    }

    pub fn enumerate(class: Class) -> Request {
        Request::new(
            format!("{ENUMERATION}/Enumerate"),
            class.uri(),
            format!(r#"<Enumerate xmlns="{ENUMERATION}" />"#),
        )
    }

    pub fn pull(class: Class, context: &str) -> Request {
        Request::new(
            format!("{ENUMERATION}/Pull"),
            class.uri(),
            format!(
                r#"<Pull xmlns="{ENUMERATION}"><EnumerationContext>{}</EnumerationContext><MaxElements>999</MaxElements><MaxCharacters>99999</MaxCharacters></Pull>"#,
                escape(context)
            ),
        )
    }

    /// Custom method: `params` are `(name, already-rendered content)` pairs in order.
    pub fn invoke(class: Class, method: &str, params: &[(&str, String)]) -> Request {
        let uri = class.uri();
        let mut body = format!(r#"<h:{method}_INPUT xmlns:h="{uri}">"#);
        for (name, value) in params {
            body.push_str(&format!("<h:{name}>{value}</h:{name}>"));
        }
        body.push_str(&format!("</h:{method}_INPUT>"));
        Request::new(class.method(method), uri, body)
    }

    pub fn with_selector(mut self, name: &str, value: &str) -> Request {
        self.selectors.push((name.to_string(), value.to_string()));
        self
    }

    fn new(action: String, resource_uri: String, body: String) -> Request {
        Request {
            action,
            resource_uri,
            selectors: Vec::new(),
            body,
        }
    }

    /// The envelope, with this `message_id` (echoed by the device as RelatesTo).
    pub fn to_xml(&self, message_id: u64) -> String {
        let mut selectors = String::new();
        if !self.selectors.is_empty() {
            selectors.push_str("<w:SelectorSet>");
            for (n, v) in &self.selectors {
                selectors.push_str(&format!(
                    r#"<w:Selector Name="{}">{}</w:Selector>"#,
                    escape(n),
                    escape(v)
                ));
            }
            selectors.push_str("</w:SelectorSet>");
        }
        let body = if self.body.is_empty() {
            "<Body></Body>".to_string()
        } else {
            format!("<Body>{}</Body>", self.body)
        };
        format!(
            r#"<?xml version="1.0" encoding="utf-8"?><Envelope xmlns="http://www.w3.org/2003/05/soap-envelope" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:a="{ADDRESSING}" xmlns:w="{WSMAN}"><Header><a:Action>{}</a:Action><a:To>/wsman</a:To><w:ResourceURI>{}</w:ResourceURI><a:MessageID>{message_id}</a:MessageID><a:ReplyTo><a:Address>{ANONYMOUS}</a:Address></a:ReplyTo><w:OperationTimeout>PT60S</w:OperationTimeout>{selectors}</Header>{body}</Envelope>"#,
            escape(&self.action),
            escape(&self.resource_uri),
        )
    }
}

/// An endpoint reference parameter (reference §1.4): the addressing namespace in `Address`,
/// as both Open AMT libraries send it, and a selector set.
pub fn epr(class: Class, selectors: &[(&str, &str)]) -> String {
    let mut s = format!(
        r#"<Address xmlns="{ADDRESSING}">{ADDRESSING}</Address><ReferenceParameters xmlns="{ADDRESSING}"><ResourceURI xmlns="{WSMAN}">{}</ResourceURI><SelectorSet xmlns="{WSMAN}">"#,
        class.uri()
    );
    for (n, v) in selectors {
        s.push_str(&format!(
            r#"<Selector Name="{}">{}</Selector>"#,
            escape(n),
            escape(v)
        ));
    }
    s.push_str("</SelectorSet></ReferenceParameters>");
    s
}

/// Renders a flat instance for Put: `<h:CLASS xmlns:h="URI"><h:Prop>v</h:Prop>…</h:CLASS>`.
pub fn instance(class: Class, properties: &[(String, String)]) -> String {
    let uri = class.uri();
    let name = class.name;
    let mut s = format!(r#"<h:{name} xmlns:h="{uri}">"#);
    for (k, v) in properties {
        s.push_str(&format!("<h:{k}>{}</h:{k}>", escape(v)));
    }
    s.push_str(&format!("</h:{name}>"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_envelope_matches_the_open_amt_libraries() {
        let xml = Request::get(Class::amt("AMT_GeneralSettings")).to_xml(0);
        assert_eq!(
            xml,
            r#"<?xml version="1.0" encoding="utf-8"?><Envelope xmlns="http://www.w3.org/2003/05/soap-envelope" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"><Header><a:Action>http://schemas.xmlsoap.org/ws/2004/09/transfer/Get</a:Action><a:To>/wsman</a:To><w:ResourceURI>http://intel.com/wbem/wscim/1/amt-schema/1/AMT_GeneralSettings</w:ResourceURI><a:MessageID>0</a:MessageID><a:ReplyTo><a:Address>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:Address></a:ReplyTo><w:OperationTimeout>PT60S</w:OperationTimeout></Header><Body></Body></Envelope>"#
        );
    }

    #[test]
    fn selectors_and_methods_parse_back() {
        let r = Request::invoke(
            Class::cim("CIM_PowerManagementService"),
            "RequestPowerStateChange",
            &[("PowerState", "8".into())],
        )
        .with_selector("Name", "a<b");
        let doc = crate::xml::parse(r.to_xml(42).as_bytes()).unwrap();
        let header = doc.child("Header").unwrap();
        assert_eq!(
            header.text_of("Action"),
            Some("http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_PowerManagementService/RequestPowerStateChange")
        );
        assert_eq!(header.text_of("MessageID"), Some("42"));
        let sel = header.path(&["SelectorSet", "Selector"]).unwrap();
        assert_eq!(
            (sel.attribute("Name"), sel.text.as_str()),
            (Some("Name"), "a<b")
        );
        let input = doc
            .path(&["Body", "RequestPowerStateChange_INPUT"])
            .unwrap();
        assert_eq!(input.text_of("PowerState"), Some("8"));
    }
}
