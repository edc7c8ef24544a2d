//! A bounded XML tree for WS-Man documents: elements by local name (prefixes and namespaces
//! are ignored, as AMT clients must), text with entities resolved, and hard limits so a
//! hostile device cannot make the parser allocate or recurse without bound.

use quick_xml::events::Event;
use quick_xml::Reader;

/// Deepest nesting accepted (AMT documents nest about 10 deep).
pub const MAX_DEPTH: usize = 64;
/// Most elements accepted in one document (a full event-log page is ~400).
pub const MAX_ELEMENTS: usize = 50_000;
/// Largest document accepted.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Most attributes on one element (AMT's carry a handful).
pub const MAX_ATTRIBUTES: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XmlError {
    #[error("document larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge,
    #[error("nesting deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("more than {MAX_ELEMENTS} elements")]
    TooManyElements,
    #[error("an element with more than {MAX_ATTRIBUTES} attributes")]
    TooManyAttributes,
    #[error("DOCTYPE declarations are not accepted")]
    DocType,
    #[error("unknown entity &{0};")]
    UnknownEntity(String),
    #[error("no root element")]
    Empty,
    #[error("malformed XML: {0}")]
    Syntax(String),
}

/// One element: its local name, attributes (local names), text and children in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub attributes: Vec<(String, String)>,
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    /// First child with this local name.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every child with this local name (repeated elements are how WS-Man sends arrays).
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// Follows a path of local names from this element.
    pub fn path(&self, path: &[&str]) -> Option<&Element> {
        path.iter().try_fold(self, |e, name| e.child(name))
    }

    /// Trimmed text of the child `name`.
    pub fn text_of(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.trim())
    }

    /// Trimmed text of every child `name`.
    pub fn texts_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.children_named(name).map(|c| c.text.trim())
    }

    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Depth-first search for the first element with this local name (self included).
    pub fn find(&self, name: &str) -> Option<&Element> {
        if self.name == name {
            return Some(self);
        }
        self.children.iter().find_map(|c| c.find(name))
    }
}

fn local(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

fn syntax(e: impl std::fmt::Display) -> XmlError {
    XmlError::Syntax(e.to_string())
}

/// Parses a whole document into its root element.
pub fn parse(doc: &[u8]) -> Result<Element, XmlError> {
    if doc.len() > MAX_DOCUMENT_BYTES {
        return Err(XmlError::TooLarge);
    }
    let text = std::str::from_utf8(doc).map_err(syntax)?;
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    loop {
        let event = reader.read_event().map_err(syntax)?;
        match event {
            Event::Start(ref s) | Event::Empty(ref s) => {
                count += 1;
                if count > MAX_ELEMENTS {
                    return Err(XmlError::TooManyElements);
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlError::TooDeep);
                }
                if root.is_some() {
                    return Err(XmlError::Syntax("content after the root element".into()));
                }
                let mut el = Element {
                    name: local(s.local_name().as_ref()),
                    ..Element::default()
                };
                // quick-xml's duplicate check compares each attribute with all before it
                // (80,000 attributes in a sub-MiB reply took seconds); the count is bounded
                // here instead, and a duplicate is harmless to a reader of local names.
                for (i, a) in s.attributes().with_checks(false).enumerate() {
                    if i >= MAX_ATTRIBUTES {
                        return Err(XmlError::TooManyAttributes);
                    }
                    let a = a.map_err(syntax)?;
                    let key = a.key.local_name();
                    if a.key.as_ref().starts_with(b"xmlns") {
                        continue;
                    }
                    let value = a.unescape_value().map_err(syntax)?;
                    el.attributes
                        .push((local(key.as_ref()), value.into_owned()));
                }
                if matches!(event, Event::Empty(_)) {
                    close(&mut stack, &mut root, el);
                } else {
                    stack.push(el);
                }
            }
            Event::End(_) => {
                let el = stack.pop().ok_or_else(|| syntax("unbalanced end tag"))?;
                close(&mut stack, &mut root, el);
            }
            Event::Text(t) => {
                let s = t.xml_content().map_err(syntax)?;
                append_text(&mut stack, &s)?;
            }
            Event::CData(c) => {
                let s = c.decode().map_err(syntax)?;
                append_text(&mut stack, &s)?;
            }
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref().map_err(syntax)? {
                    Some(c) => c.to_string(),
                    None => {
                        let name = r.decode().map_err(syntax)?;
                        quick_xml::escape::resolve_predefined_entity(&name)
                            .ok_or_else(|| {
                                XmlError::UnknownEntity(name.chars().take(32).collect())
                            })?
                            .to_string()
                    }
                };
                append_text(&mut stack, &resolved)?;
            }
            Event::DocType(_) => return Err(XmlError::DocType),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(syntax("unclosed element at end of document"));
    }
    root.ok_or(XmlError::Empty)
}

fn close(stack: &mut [Element], root: &mut Option<Element>, el: Element) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(el),
        None => *root = Some(el),
    }
}

fn append_text(stack: &mut [Element], s: &str) -> Result<(), XmlError> {
    match stack.last_mut() {
        Some(el) => {
            el.text.push_str(s);
            Ok(())
        }
        // Whitespace around the root is fine; anything else is not XML.
        None if s.trim().is_empty() => Ok(()),
        None => Err(syntax("text outside the root element")),
    }
}

/// Escapes text for element content and attribute values.
pub fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    quick_xml::escape::escape(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_names_text_and_entities() {
        let doc = br#"<?xml version="1.0"?><a:E xmlns:a="urn:x" a:k="v"><a:X>1 &amp; 2&#33;</a:X><Y/><X>3</X></a:E>"#;
        let e = parse(doc).unwrap();
        assert_eq!(e.name, "E");
        assert_eq!(e.attribute("k"), Some("v"));
        // Many attributes on one element are refused (counted, not compared pairwise).
        let mut many = String::from("<a");
        for i in 0..80_000 {
            many.push_str(&format!(" a{i}=\"\""));
        }
        many.push_str("/>");
        assert!(many.len() < MAX_DOCUMENT_BYTES);
        assert_eq!(parse(many.as_bytes()), Err(XmlError::TooManyAttributes));
        assert_eq!(e.text_of("X"), Some("1 & 2!"));
        assert_eq!(e.texts_of("X").collect::<Vec<_>>(), ["1 & 2!", "3"]);
        assert_eq!(e.text_of("Y"), Some(""));
    }

    #[test]
    fn hostile_documents_are_refused() {
        let deep = "<a>".repeat(MAX_DEPTH + 1) + &"</a>".repeat(MAX_DEPTH + 1);
        assert_eq!(parse(deep.as_bytes()), Err(XmlError::TooDeep));
        let bomb = br#"<!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>"#;
        assert_eq!(parse(bomb), Err(XmlError::DocType));
        assert!(matches!(
            parse(b"<x>&a;</x>"),
            Err(XmlError::UnknownEntity(_))
        ));
        assert!(matches!(parse(b"<x><y></x>"), Err(XmlError::Syntax(_))));
        assert!(matches!(parse(b"<x>"), Err(XmlError::Syntax(_))));
        assert_eq!(parse(b"  "), Err(XmlError::Empty));
        assert!(matches!(parse(b"<x/><y/>"), Err(XmlError::Syntax(_))));
        let many = format!("<r>{}</r>", "<i/>".repeat(MAX_ELEMENTS));
        assert_eq!(parse(many.as_bytes()), Err(XmlError::TooManyElements));
        assert!(parse(&[0xff, 0xfe]).is_err());
    }
}
