//! Lenient WS-Man request parsing (wsman-amt.md §1.3/§1.4): elements are matched by local
//! name only, so prefixes, default namespaces, whitespace, `mustUnderstand` and `wsman:Name`
//! spellings of real clients all parse alike. Every size is bounded and nothing indexes into
//! request bytes, so a hostile body becomes a fault, never a panic.

use quick_xml::events::Event;
use quick_xml::Reader;

/// Deepest element nesting accepted (real requests nest about 8 deep).
pub(crate) const MAX_DEPTH: usize = 32;
/// Most elements accepted in one request (a full AMT_BootSettingData Put has ~40).
pub(crate) const MAX_NODES: usize = 2_000;
/// Most attributes accepted on one element.
const MAX_ATTRS: usize = 16;

/// Why a request body was refused; all of these become `e:SchemaValidationError`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum XmlError {
    #[error("body is not UTF-8")]
    Encoding,
    #[error("XML syntax: {0}")]
    Syntax(String),
    #[error("document type declarations are not accepted")]
    Doctype,
    #[error("unknown entity &{0};")]
    Entity(String),
    #[error("nesting deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("more than {MAX_NODES} elements")]
    TooManyNodes,
    #[error("more than {MAX_ATTRS} attributes on one element")]
    TooManyAttributes,
    #[error("unclosed element")]
    Unclosed,
    #[error("no root element")]
    Empty,
}

/// One element: local name, attributes by local name, and its own text.
#[derive(Debug)]
struct Node {
    name: Box<str>,
    attrs: Vec<(Box<str>, Box<str>)>,
    text: String,
    children: Vec<usize>,
    /// Index one past the last node of this element's subtree (nodes are in document order).
    end: usize,
}

/// A parsed document: a flat arena in document order, so searching a subtree is a slice scan
/// and dropping a tree never recurses.
#[derive(Debug)]
pub(crate) struct Doc {
    nodes: Vec<Node>,
}

/// A borrowed element of a [`Doc`].
#[derive(Clone, Copy)]
pub(crate) struct El<'a> {
    doc: &'a Doc,
    idx: usize,
}

impl Doc {
    pub(crate) fn parse(xml: &str) -> Result<Doc, XmlError> {
        let mut reader = Reader::from_str(xml);
        let mut nodes: Vec<Node> = Vec::new();
        let mut stack: Vec<usize> = Vec::new();
        loop {
            let event = reader
                .read_event()
                .map_err(|e| XmlError::Syntax(e.to_string()))?;
            match event {
                Event::Start(start) => {
                    let idx = open(&mut nodes, &mut stack, &start)?;
                    stack.push(idx);
                }
                Event::Empty(start) => {
                    let idx = open(&mut nodes, &mut stack, &start)?;
                    close(&mut nodes, idx);
                }
                Event::End(_) => {
                    let idx = stack.pop().ok_or(XmlError::Unclosed)?;
                    close(&mut nodes, idx);
                }
                Event::Text(t) => {
                    let text = t.decode().map_err(|e| XmlError::Syntax(e.to_string()))?;
                    push_text(&mut nodes, &stack, &text);
                }
                Event::CData(t) => {
                    let text = t.decode().map_err(|e| XmlError::Syntax(e.to_string()))?;
                    push_text(&mut nodes, &stack, &text);
                }
                Event::GeneralRef(r) => {
                    let name = r.decode().map_err(|e| XmlError::Syntax(e.to_string()))?;
                    if let Some(c) = r
                        .resolve_char_ref()
                        .map_err(|e| XmlError::Syntax(e.to_string()))?
                    {
                        let mut buf = [0u8; 4];
                        push_text(&mut nodes, &stack, c.encode_utf8(&mut buf));
                    } else if let Some(s) = quick_xml::escape::resolve_predefined_entity(&name) {
                        push_text(&mut nodes, &stack, s);
                    } else {
                        // Only the five predefined entities exist without a DTD, and DTDs are
                        // refused, so entity expansion (and its bombs) cannot happen.
                        return Err(XmlError::Entity(name.chars().take(32).collect()));
                    }
                }
                Event::DocType(_) => return Err(XmlError::Doctype),
                Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
                Event::Eof => break,
            }
        }
        if !stack.is_empty() {
            return Err(XmlError::Unclosed);
        }
        if nodes.is_empty() {
            return Err(XmlError::Empty);
        }
        Ok(Doc { nodes })
    }

    pub(crate) fn root(&self) -> El<'_> {
        El { doc: self, idx: 0 }
    }
}

fn open(
    nodes: &mut Vec<Node>,
    stack: &mut [usize],
    start: &quick_xml::events::BytesStart<'_>,
) -> Result<usize, XmlError> {
    if nodes.len() >= MAX_NODES {
        return Err(XmlError::TooManyNodes);
    }
    if stack.len() >= MAX_DEPTH {
        return Err(XmlError::TooDeep);
    }
    if stack.is_empty() && !nodes.is_empty() {
        return Err(XmlError::Syntax("more than one root element".into()));
    }
    let name = std::str::from_utf8(start.local_name().into_inner())
        .map_err(|_| XmlError::Encoding)?
        .into();
    let mut attrs = Vec::new();
    for attr in start.attributes() {
        let attr = attr.map_err(|e| XmlError::Syntax(e.to_string()))?;
        if attrs.len() >= MAX_ATTRS {
            return Err(XmlError::TooManyAttributes);
        }
        let key = std::str::from_utf8(attr.key.local_name().into_inner())
            .map_err(|_| XmlError::Encoding)?;
        let value = attr
            .unescape_value()
            .map_err(|e| XmlError::Syntax(e.to_string()))?;
        attrs.push((key.into(), value.as_ref().into()));
    }
    let idx = nodes.len();
    nodes.push(Node {
        name,
        attrs,
        text: String::new(),
        children: Vec::new(),
        end: idx + 1,
    });
    if let Some(&parent) = stack.last() {
        if let Some(p) = nodes.get_mut(parent) {
            p.children.push(idx);
        }
    }
    Ok(idx)
}

fn close(nodes: &mut [Node], idx: usize) {
    let end = nodes.len();
    if let Some(n) = nodes.get_mut(idx) {
        n.end = end;
    }
}

fn push_text(nodes: &mut [Node], stack: &[usize], text: &str) {
    // Text outside the root (whitespace after the prolog) is ignored.
    if let Some(n) = stack.last().and_then(|&i| nodes.get_mut(i)) {
        n.text.push_str(text);
    }
}

impl<'a> El<'a> {
    fn node(&self) -> Option<&'a Node> {
        self.doc.nodes.get(self.idx)
    }

    /// Local name (prefix removed).
    pub(crate) fn name(&self) -> &'a str {
        self.node().map_or("", |n| &n.name)
    }

    /// The element's own text, trimmed.
    pub(crate) fn text(&self) -> &'a str {
        self.node().map_or("", |n| n.text.trim())
    }

    /// Attribute by local name (`Name` matches `Name` and `wsman:Name`).
    pub(crate) fn attr(&self, local: &str) -> Option<&'a str> {
        self.node()?
            .attrs
            .iter()
            .find(|(k, _)| k.as_ref() == local)
            .map(|(_, v)| v.as_ref())
    }

    pub(crate) fn children(&self) -> impl Iterator<Item = El<'a>> + 'a {
        let doc = self.doc;
        self.node()
            .map(|n| n.children.as_slice())
            .unwrap_or_default()
            .iter()
            .map(move |&idx| El { doc, idx })
    }

    /// First direct child with this local name.
    pub(crate) fn child(&self, local: &str) -> Option<El<'a>> {
        self.children().find(|c| c.name() == local)
    }

    /// First descendant (document order) with this local name.
    pub(crate) fn find(&self, local: &str) -> Option<El<'a>> {
        self.descendants().find(|c| c.name() == local)
    }

    /// All descendants with this local name, in document order.
    #[cfg(test)]
    pub(crate) fn find_all(&self, local: &'a str) -> impl Iterator<Item = El<'a>> + 'a {
        self.descendants().filter(move |c| c.name() == local)
    }

    /// Text of the first descendant with this local name.
    pub(crate) fn find_text(&self, local: &str) -> Option<&'a str> {
        self.find(local).map(|e| e.text())
    }

    fn descendants(&self) -> impl Iterator<Item = El<'a>> + 'a {
        let doc = self.doc;
        let end = self.node().map_or(self.idx, |n| n.end);
        (self.idx + 1..end.min(doc.nodes.len())).map(move |idx| El { doc, idx })
    }

    /// `Selector` children of the first `SelectorSet` below this element, as (Name, value).
    pub(crate) fn selectors(&self) -> Vec<(&'a str, &'a str)> {
        self.find("SelectorSet")
            .map(|set| {
                set.children()
                    .filter(|c| c.name() == "Selector")
                    .map(|c| (c.attr("Name").unwrap_or_default(), c.text()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The parts of a WS-Man request the dispatcher needs.
pub(crate) struct Request {
    doc: Doc,
    pub action: String,
    pub resource: String,
    pub message_id: String,
    header: Option<usize>,
    body: Option<usize>,
}

impl Request {
    pub(crate) fn parse(bytes: &[u8]) -> Result<Request, XmlError> {
        let xml = std::str::from_utf8(bytes).map_err(|_| XmlError::Encoding)?;
        let doc = Doc::parse(xml)?;
        let root = doc.root();
        let header = root.child("Header").map(|h| h.idx);
        let body = root.child("Body").map(|b| b.idx);
        let in_header = |local: &str| {
            header
                .and_then(|idx| El { doc: &doc, idx }.find_text(local))
                .unwrap_or_default()
                .to_string()
        };
        Ok(Request {
            action: in_header("Action"),
            resource: in_header("ResourceURI"),
            message_id: in_header("MessageID"),
            header,
            body,
            doc,
        })
    }

    /// Selectors of the header's SelectorSet (Delete, keyed Get/Put).
    pub(crate) fn selector(&self, name: &str) -> Option<&str> {
        let header = El {
            doc: &self.doc,
            idx: self.header?,
        };
        let set = header.child("SelectorSet")?;
        set.children()
            .find(|c| c.name() == "Selector" && c.attr("Name") == Some(name))
            .map(|c| c.text())
    }

    /// The SOAP Body, if the envelope has one.
    pub(crate) fn body(&self) -> Option<El<'_>> {
        self.body.map(|idx| El {
            doc: &self.doc,
            idx,
        })
    }

    /// The first element inside the Body (the method input or the Put instance).
    pub(crate) fn input(&self) -> Option<El<'_>> {
        self.body()?.children().next()
    }

    /// Text of the first element with this local name anywhere in the Body.
    pub(crate) fn body_text(&self, local: &str) -> Option<&str> {
        self.body()?.find_text(local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_by_local_name_with_any_prefixes() {
        let xml = r#"<?xml version="1.0"?>
            <s:Envelope xmlns:s="x" xmlns:wsa="y" xmlns:wsman="z">
              <s:Header>
                <wsa:Action s:mustUnderstand="true"> http://a/Get </wsa:Action>
                <wsman:ResourceURI>http://r/CIM_Foo</wsman:ResourceURI>
                <wsa:MessageID>uuid:1 &amp; 2</wsa:MessageID>
                <wsman:SelectorSet><wsman:Selector wsman:Name="InstanceID">a&lt;b</wsman:Selector></wsman:SelectorSet>
              </s:Header>
              <s:Body><h:X_INPUT xmlns:h="q"><h:V><![CDATA[c]]>&#65;</h:V></h:X_INPUT></s:Body>
            </s:Envelope>"#;
        let r = Request::parse(xml.as_bytes()).unwrap();
        assert_eq!(r.action, "http://a/Get");
        assert_eq!(r.resource, "http://r/CIM_Foo");
        assert_eq!(r.message_id, "uuid:1 & 2");
        assert_eq!(r.selector("InstanceID"), Some("a<b"));
        assert_eq!(r.input().map(|i| i.name()), Some("X_INPUT"));
        assert_eq!(r.body_text("V"), Some("cA"));
    }

    #[test]
    fn hostile_documents_are_errors() {
        let deep = format!("{}{}", "<a>".repeat(10_000), "</a>".repeat(10_000));
        assert_eq!(Doc::parse(&deep).err(), Some(XmlError::TooDeep));
        let wide = format!("<r>{}</r>", "<a/>".repeat(MAX_NODES + 1));
        assert_eq!(Doc::parse(&wide).err(), Some(XmlError::TooManyNodes));
        let bomb = r#"<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><r>&b;</r>"#;
        assert_eq!(Doc::parse(bomb).err(), Some(XmlError::Doctype));
        assert!(matches!(
            Doc::parse("<r>&nope;</r>"),
            Err(XmlError::Entity(_))
        ));
        assert_eq!(Doc::parse("<r><a>").err(), Some(XmlError::Unclosed));
        assert!(Doc::parse("<r></q>").is_err());
        assert!(Doc::parse("<r/><r/>").is_err());
        assert_eq!(Doc::parse("").err(), Some(XmlError::Empty));
        assert_eq!(
            Request::parse(&[0x3c, 0xff, 0xfe]).err(),
            Some(XmlError::Encoding)
        );
        let attrs: String = (0..20).map(|i| format!(" a{i}=\"1\"")).collect();
        assert_eq!(
            Doc::parse(&format!("<r{attrs}/>")).err(),
            Some(XmlError::TooManyAttributes)
        );
    }
}
