//! Responses: the header fields a client checks, the body, and SOAP faults as typed errors
//! (reference §1.5–§1.6).

use crate::xml::{self, Element, XmlError};

/// A WS-Man fault as the device sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// `Sender` or `Receiver`.
    pub code: String,
    /// Subcode local name: `DestinationUnreachable`, `ActionNotSupported`, `QuotaLimit`, …
    pub subcode: String,
    pub reason: String,
    pub detail: String,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} fault {}", self.code, self.subcode)?;
        if !self.reason.is_empty() {
            write!(f, ": {}", self.reason)?;
        }
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

impl Fault {
    /// The class does not exist on this device (e.g. KVM on a standard-manageability SKU).
    pub fn is_destination_unreachable(&self) -> bool {
        self.subcode == "DestinationUnreachable"
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResponseError {
    #[error("XML: {0}")]
    Xml(#[from] XmlError),
    #[error("not a SOAP envelope: {0}")]
    NotSoap(&'static str),
    #[error("WS-Man {0}")]
    Fault(Fault),
    #[error("reply is for message {got:?}, expected {expected:?}")]
    WrongRelatesTo { expected: String, got: String },
    #[error("missing {0} in the reply")]
    Missing(String),
    #[error("bad value {value:?} for {field}")]
    Invalid { field: String, value: String },
}

/// A parsed response envelope.
#[derive(Clone, Debug)]
pub struct Response {
    pub action: String,
    pub relates_to: String,
    pub resource_uri: String,
    pub body: Element,
}

impl Response {
    /// The single element inside `Body` named `name`.
    pub fn output(&self, name: &str) -> Result<&Element, ResponseError> {
        self.body
            .child(name)
            .ok_or_else(|| ResponseError::Missing(name.to_string()))
    }

    /// For custom methods: `<Method>_OUTPUT` and its ReturnValue.
    pub fn method_output(&self, method: &str) -> Result<(&Element, u32), ResponseError> {
        let out = self.output(&format!("{method}_OUTPUT"))?;
        let rv = number(out, "ReturnValue")?;
        Ok((out, rv))
    }
}

/// Parses a response document. Faults become [`ResponseError::Fault`].
pub fn parse(doc: &[u8]) -> Result<Response, ResponseError> {
    let root = xml::parse(doc)?;
    if root.name != "Envelope" {
        return Err(ResponseError::NotSoap("root is not Envelope"));
    }
    let mut root = root;
    let body_pos = root
        .children
        .iter()
        .position(|c| c.name == "Body")
        .ok_or(ResponseError::NotSoap("no Body"))?;
    let body = root.children.swap_remove(body_pos);
    let header = root
        .child("Header")
        .ok_or(ResponseError::NotSoap("no Header"))?;
    let text = |n: &str| header.text_of(n).unwrap_or_default().to_string();
    if let Some(f) = body.child("Fault") {
        let value = |path: &[&str]| {
            f.path(path)
                .map(|e| strip_prefix(e.text.trim()).to_string())
                .unwrap_or_default()
        };
        return Err(ResponseError::Fault(Fault {
            code: value(&["Code", "Value"]),
            subcode: value(&["Code", "Subcode", "Value"]),
            reason: f
                .path(&["Reason", "Text"])
                .map(|e| e.text.trim().to_string())
                .unwrap_or_default(),
            detail: f.child("Detail").map(flatten_text).unwrap_or_default(),
        }));
    }
    Ok(Response {
        action: text("Action"),
        relates_to: text("RelatesTo"),
        resource_uri: text("ResourceURI"),
        body,
    })
}

fn strip_prefix(s: &str) -> &str {
    s.rsplit(':').next().unwrap_or(s)
}

fn flatten_text(e: &Element) -> String {
    let mut s = e.text.trim().to_string();
    for c in &e.children {
        let t = flatten_text(c);
        if !t.is_empty() {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(&t);
        }
    }
    s
}

/// Text of a required child.
pub fn text<'a>(e: &'a Element, name: &str) -> Result<&'a str, ResponseError> {
    e.text_of(name)
        .ok_or_else(|| ResponseError::Missing(format!("{}.{name}", e.name)))
}

/// A required unsigned number.
pub fn number<T: std::str::FromStr>(e: &Element, name: &str) -> Result<T, ResponseError> {
    let t = text(e, name)?;
    t.parse().map_err(|_| ResponseError::Invalid {
        field: format!("{}.{name}", e.name),
        value: t.chars().take(64).collect(),
    })
}

/// An optional number: absent or empty is `None`, garbage is an error.
pub fn opt_number<T: std::str::FromStr>(
    e: &Element,
    name: &str,
) -> Result<Option<T>, ResponseError> {
    match e.text_of(name) {
        None | Some("") => Ok(None),
        Some(_) => number(e, name).map(Some),
    }
}

/// A boolean property (`true`/`false`, some firmware sends 1/0).
pub fn boolean(e: &Element, name: &str) -> bool {
    matches!(e.text_of(name), Some("true" | "1" | "True"))
}

/// Optional text, empty when absent.
pub fn string(e: &Element, name: &str) -> String {
    e.text_of(name).unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_is_typed() {
        let doc = br#"<a:Envelope xmlns:a="http://www.w3.org/2003/05/soap-envelope" xmlns:b="x"><a:Header><b:RelatesTo>3</b:RelatesTo></a:Header><a:Body><a:Fault><a:Code><a:Value>a:Sender</a:Value><a:Subcode><a:Value>b:DestinationUnreachable</a:Value></a:Subcode></a:Code><a:Reason><a:Text xml:lang="en-US">No route</a:Text></a:Reason><a:Detail><x>AMT-STATUS 1</x></a:Detail></a:Fault></a:Body></a:Envelope>"#;
        let ResponseError::Fault(f) = parse(doc).unwrap_err() else {
            panic!("not a fault")
        };
        assert!(f.is_destination_unreachable());
        assert_eq!(f.code, "Sender");
        assert_eq!(f.reason, "No route");
        assert_eq!(f.detail, "AMT-STATUS 1");
    }

    #[test]
    fn not_soap() {
        assert!(matches!(parse(b"<x/>"), Err(ResponseError::NotSoap(_))));
        assert!(matches!(
            parse(b"<Envelope><Header/></Envelope>"),
            Err(ResponseError::NotSoap(_))
        ));
    }
}
