//! The simulated device's WS-Man service (wsman-amt.md §3.1 item 4): parses a request
//! leniently, routes (ResourceURI, Action) through a table of classes, and renders the answer
//! or fault in AMT's wire format. Sans-IO: the caller passes the model, the time and the
//! channel's peer address, and gets back XML plus any effect on the connection.
//!
//! Class and property names, their order and sample values follow the AMT response fixtures
//! of open-amt-cloud-toolkit/go-wsman-messages (Apache-2.0, Copyright Intel Corporation; see
//! shared/amt-responses/NOTICE.md); the documents themselves are rendered here.

pub(crate) mod alarms;
pub(crate) mod consent;
pub(crate) mod features;
pub(crate) mod hardware;
pub(crate) mod logs;
pub(crate) mod maintenance;
pub(crate) mod model;
pub(crate) mod power;
pub(crate) mod provisioning;
pub(crate) mod render;
pub(crate) mod setup;
pub(crate) mod wifi;
pub(crate) mod xml;

use crate::identity::Identity;

use model::{context_wire, DeviceModel, Now, CONTEXT_TTL};
use render::{
    Answer, Item, Ns, Px, WsFault, AMT, CIM, ENUMERATION, GET_PX, IPS, PULL_PX, TRANSFER,
};
use xml::Request;

/// Something the connection must do after sending the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    None,
    /// Unprovision succeeded: drop CIRA shortly and stay away (§2.12).
    Unprovisioned,
}

/// A rendered reply: `ok` selects HTTP 200, otherwise 400 (a SOAP fault).
#[derive(Debug)]
pub(crate) struct Reply {
    pub ok: bool,
    pub xml: String,
    pub effect: Effect,
}

/// What a handler sees of the device and the request's circumstances.
pub(crate) struct Ctx<'a> {
    pub id: &'a Identity,
    pub model: &'a mut DeviceModel,
    pub now: Now,
    /// Originator address of the APF channel, recorded as the audit NetAddress.
    pub peer: &'a str,
    pub effect: Effect,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(
        id: &'a Identity,
        model: &'a mut DeviceModel,
        now: Now,
        peer: &'a str,
    ) -> Self {
        Ctx {
            id,
            model,
            now,
            peer,
            effect: Effect::None,
        }
    }
}

type Instances = fn(&Ctx<'_>, Px) -> Vec<Item>;
type Handler = fn(&mut Ctx<'_>, &Request) -> Result<Answer, WsFault>;

/// One resource class and what the device supports on it.
pub(crate) struct Class {
    pub name: &'static str,
    pub base: &'static str,
    /// Instances in AMT's order: Get answers the first, Enumerate/Pull walk them all.
    pub instances: Option<Instances>,
    pub get: bool,
    pub enumerate: bool,
    pub put: Option<Handler>,
    pub delete: Option<Handler>,
    pub methods: &'static [(&'static str, Handler)],
    /// Absent (DestinationUnreachable) on the no-KVM SKU.
    pub kvm: bool,
}

impl Class {
    pub(crate) const fn new(name: &'static str, base: &'static str) -> Class {
        Class {
            name,
            base,
            instances: None,
            get: false,
            enumerate: false,
            put: None,
            delete: None,
            methods: &[],
            kvm: false,
        }
    }
}

const TABLES: [&[Class]; 10] = [
    power::CLASSES,
    wifi::CLASSES,
    maintenance::CLASSES,
    provisioning::CLASSES,
    setup::CLASSES,
    hardware::CLASSES,
    features::CLASSES,
    consent::CLASSES,
    logs::CLASSES,
    alarms::CLASSES,
];

fn lookup(resource: &str) -> Option<&'static Class> {
    let (base, name) = [CIM, AMT, IPS]
        .into_iter()
        .find_map(|b| resource.strip_prefix(b).map(|n| (b, n)))?;
    TABLES
        .iter()
        .flat_map(|t| t.iter())
        .find(|c| c.base == base && c.name == name)
}

enum Op<'r> {
    Get,
    Put,
    Delete,
    Enumerate,
    Pull,
    Release,
    Method(&'r str),
    Other,
}

fn classify<'r>(action: &'r str, resource: &str) -> Op<'r> {
    if let Some(t) = action.strip_prefix(TRANSFER) {
        return match t {
            "Get" => Op::Get,
            "Put" => Op::Put,
            "Delete" => Op::Delete,
            _ => Op::Other,
        };
    }
    if let Some(e) = action
        .strip_prefix(ENUMERATION)
        .and_then(|r| r.strip_prefix('/'))
    {
        return match e {
            "Enumerate" => Op::Enumerate,
            "Pull" => Op::Pull,
            "Release" => Op::Release,
            _ => Op::Other,
        };
    }
    match action
        .strip_prefix(resource)
        .and_then(|r| r.strip_prefix('/'))
    {
        Some(m) if !m.is_empty() => Op::Method(m),
        _ => Op::Other,
    }
}

/// Answers one WS-Man request body.
pub(crate) fn handle(ctx: &mut Ctx<'_>, body: &[u8]) -> Reply {
    ctx.model.tick(ctx.now);
    let req = match Request::parse(body) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(device = %ctx.id.guid, error = %e, "unparsable WS-Man request");
            // Still relate the fault to the request when its MessageID can be found.
            let text = String::from_utf8_lossy(body);
            let relates = crate::amt::element_text(&text, "MessageID").unwrap_or_default();
            return fault_reply(ctx, relates, WsFault::SchemaValidationError);
        }
    };
    match route(ctx, &req) {
        Ok(answer) => {
            let message_id = ctx.model.next_message_id();
            Reply {
                ok: true,
                xml: render::envelope(&req.message_id, &message_id, &req.resource, &answer),
                effect: ctx.effect,
            }
        }
        Err(f) => fault_reply(ctx, &req.message_id, f),
    }
}

fn fault_reply(ctx: &mut Ctx<'_>, relates_to: &str, f: WsFault) -> Reply {
    let message_id = ctx.model.next_message_id();
    Reply {
        ok: false,
        xml: render::fault(relates_to, &message_id, f),
        effect: Effect::None,
    }
}

fn route(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let class = lookup(&req.resource).ok_or(WsFault::DestinationUnreachable)?;
    if class.kvm && ctx.model.no_kvm {
        return Err(WsFault::DestinationUnreachable);
    }
    match classify(&req.action, &req.resource) {
        Op::Get if class.get => get(ctx, class),
        Op::Put => class.put.ok_or(WsFault::ActionNotSupported)?(ctx, req),
        Op::Delete => class.delete.ok_or(WsFault::ActionNotSupported)?(ctx, req),
        Op::Enumerate if class.enumerate => Ok(enumerate(ctx, class)),
        Op::Pull if class.enumerate => pull(ctx, class, req),
        Op::Release if class.enumerate => release(ctx, class, req),
        Op::Method(m) => {
            let (_, handler) = class
                .methods
                .iter()
                .find(|(name, _)| *name == m)
                .ok_or(WsFault::ActionNotSupported)?;
            handler(ctx, req)
        }
        _ => Err(WsFault::ActionNotSupported),
    }
}

fn instances(ctx: &Ctx<'_>, class: &Class, px: Px) -> Vec<Item> {
    class.instances.map(|f| f(ctx, px)).unwrap_or_default()
}

/// Get answers the first instance, also for multi-instance classes without selectors (§1.4).
fn get(ctx: &mut Ctx<'_>, class: &Class) -> Result<Answer, WsFault> {
    let item = instances(ctx, class, GET_PX)
        .into_iter()
        .next()
        .ok_or(WsFault::InvalidSelectors)?;
    Ok(instance_answer(&format!("{TRANSFER}GetResponse"), item))
}

/// A Get/Put response body: the instance with `g` = its class namespace.
pub(crate) fn instance_answer(action: &str, item: Item) -> Answer {
    let common = item.xml.contains("<h:");
    Answer {
        action: action.to_string(),
        ns: Ns::Class {
            uri: item.uri(),
            common,
        },
        body: item.xml,
    }
}

fn enumerate(ctx: &mut Ctx<'_>, class: &'static Class) -> Answer {
    let id = ctx.model.open_context(class.name, ctx.now.mono);
    Answer {
        action: format!("{ENUMERATION}/EnumerateResponse"),
        ns: Ns::Enumeration,
        body: format!(
            "<g:EnumerateResponse><g:EnumerationContext>{}</g:EnumerationContext></g:EnumerateResponse>",
            context_wire(id)
        ),
    }
}

/// One page: up to MaxElements items (WS-Enumeration default 1), never crossing from one
/// concrete class to the next, like AMT's polymorphic pulls (§1.5).
fn pull(ctx: &mut Ctx<'_>, class: &Class, req: &Request) -> Result<Answer, WsFault> {
    let wire = req.body_text("EnumerationContext").unwrap_or_default();
    let idx = ctx
        .model
        .find_context(wire, ctx.now.mono)
        .ok_or(WsFault::InvalidEnumerationContext)?;
    let (id, pos) = match ctx.model.contexts.get(idx) {
        Some(c) if c.class == class.name => (c.id, c.pos),
        _ => return Err(WsFault::InvalidEnumerationContext),
    };
    let max = req
        .body_text("MaxElements")
        .and_then(|m| m.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let items = instances(ctx, class, PULL_PX);
    let first_class = items.get(pos).map(|i| (i.class, i.base));
    let page: Vec<&Item> = items
        .iter()
        .skip(pos)
        .take_while(|i| Some((i.class, i.base)) == first_class)
        .take(max)
        .collect();
    let next = pos + page.len();
    let done = next >= items.len();
    let item_uri = page
        .first()
        .map_or_else(|| req.resource.clone(), |i| i.uri());
    let mut body = String::from("<g:PullResponse>");
    if done {
        ctx.model.contexts.remove(idx);
    } else {
        if let Some(c) = ctx.model.contexts.get_mut(idx) {
            c.pos = next;
            c.expires = ctx.now.mono + CONTEXT_TTL;
        }
        body.push_str(&format!(
            "<g:EnumerationContext>{}</g:EnumerationContext>",
            context_wire(id)
        ));
    }
    body.push_str("<g:Items>");
    for item in &page {
        body.push_str(&item.xml);
    }
    body.push_str("</g:Items>");
    if done {
        body.push_str("<g:EndOfSequence></g:EndOfSequence>");
    }
    body.push_str("</g:PullResponse>");
    Ok(Answer {
        action: format!("{ENUMERATION}/PullResponse"),
        ns: Ns::Pull { item_uri },
        body,
    })
}

fn release(ctx: &mut Ctx<'_>, class: &Class, req: &Request) -> Result<Answer, WsFault> {
    let wire = req.body_text("EnumerationContext").unwrap_or_default();
    match ctx.model.find_context(wire, ctx.now.mono) {
        Some(idx) if ctx.model.contexts.get(idx).map(|c| c.class) == Some(class.name) => {
            ctx.model.contexts.remove(idx);
            Ok(Answer {
                action: format!("{ENUMERATION}/ReleaseResponse"),
                ns: Ns::Enumeration,
                body: String::new(),
            })
        }
        _ => Err(WsFault::InvalidEnumerationContext),
    }
}

/// Parses a required numeric method parameter; absent or malformed is the method's business
/// error (ReturnValue), not a fault, so callers map `None` themselves.
pub(crate) fn number<T: std::str::FromStr>(req: &Request, local: &str) -> Option<T> {
    req.body_text(local)?.parse().ok()
}

#[cfg(test)]
pub(crate) mod testkit {
    //! Builds requests as MPS sends them and runs them against a fresh model.

    use super::*;
    use xml::Doc;

    pub(crate) const GET: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Get";
    pub(crate) const PUT: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Put";
    pub(crate) const DELETE: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete";
    pub(crate) const ENUMERATE: &str =
        "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Enumerate";
    pub(crate) const PULL: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/Pull";

    pub(crate) struct Sim {
        pub id: Identity,
        pub model: DeviceModel,
        pub now: Now,
        counter: u32,
    }

    pub(crate) struct Resp {
        pub ok: bool,
        pub doc: Doc,
        pub xml: String,
        pub effect: Effect,
    }

    impl Resp {
        pub(crate) fn text(&self, local: &str) -> Option<&str> {
            self.doc.root().find_text(local)
        }
        pub(crate) fn return_value(&self) -> Option<u32> {
            self.text("ReturnValue")?.parse().ok()
        }
        pub(crate) fn subcode(&self) -> Option<&str> {
            self.doc.root().find("Subcode")?.find_text("Value")
        }
        pub(crate) fn all(&self, local: &'static str) -> Vec<&str> {
            self.doc.root().find_all(local).map(|e| e.text()).collect()
        }
        /// Local names of the Pull items, in order.
        pub(crate) fn item_names(&self) -> Vec<&str> {
            self.doc
                .root()
                .find("Items")
                .map(|i| i.children().map(|c| c.name()).collect())
                .unwrap_or_default()
        }
    }

    impl Sim {
        pub(crate) fn new() -> Sim {
            Sim::with(false)
        }

        pub(crate) fn with(no_kvm: bool) -> Sim {
            let now = Now::current();
            Sim {
                id: Identity::derive(1, 3),
                model: DeviceModel::new(no_kvm, now.unix),
                now,
                counter: 0,
            }
        }

        pub(crate) fn raw(&mut self, body: &[u8]) -> Resp {
            let mut ctx = Ctx::new(&self.id, &mut self.model, self.now, "1.2.3.4");
            let reply = handle(&mut ctx, body);
            assert!(!reply.xml.contains('\n'), "single-line XML");
            let doc = Doc::parse(&reply.xml).expect("the device's own XML parses");
            Resp {
                ok: reply.ok,
                doc,
                xml: reply.xml,
                effect: reply.effect,
            }
        }

        /// A request the way the TypeScript/Go libraries build it (§1.3).
        pub(crate) fn request(
            &mut self,
            resource: &str,
            action: &str,
            selectors: &str,
            body: &str,
        ) -> String {
            self.counter += 1;
            let set = if selectors.is_empty() {
                String::new()
            } else {
                format!("<w:SelectorSet>{selectors}</w:SelectorSet>")
            };
            format!(
                r#"<?xml version="1.0" encoding="utf-8"?><Envelope xmlns="http://www.w3.org/2003/05/soap-envelope" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"><Header><a:Action>{action}</a:Action><a:To>/wsman</a:To><w:ResourceURI>{resource}</w:ResourceURI><a:MessageID>{}</a:MessageID><a:ReplyTo><a:Address>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:Address></a:ReplyTo><w:OperationTimeout>PT60S</w:OperationTimeout>{set}</Header><Body>{body}</Body></Envelope>"#,
                self.counter
            )
        }

        pub(crate) fn call(&mut self, resource: &str, action: &str, body: &str) -> Resp {
            let req = self.request(resource, action, "", body);
            let resp = self.raw(req.as_bytes());
            assert_eq!(
                resp.text("RelatesTo"),
                Some(self.counter.to_string().as_str()),
                "RelatesTo echoes MessageID"
            );
            resp
        }

        pub(crate) fn get(&mut self, resource: &str) -> Resp {
            self.call(resource, GET, "")
        }

        /// Invokes `method` with `fields` (already prefixed `h:`) as the MPS libraries do.
        pub(crate) fn invoke(&mut self, resource: &str, method: &str, fields: &str) -> Resp {
            let body =
                format!(r#"<h:{method}_INPUT xmlns:h="{resource}">{fields}</h:{method}_INPUT>"#);
            self.call(resource, &format!("{resource}/{method}"), &body)
        }

        /// Enumerate then Pull once with `max` (None: no MaxElements element).
        pub(crate) fn enumerate_pull(&mut self, resource: &str, max: Option<u32>) -> Resp {
            let e = self.call(
                resource,
                ENUMERATE,
                r#"<Enumerate xmlns="http://schemas.xmlsoap.org/ws/2004/09/enumeration" />"#,
            );
            assert!(e.ok, "enumerate {resource}: {}", e.xml);
            let ctx = e.text("EnumerationContext").unwrap_or_default().to_string();
            self.pull(resource, &ctx, max)
        }

        pub(crate) fn pull(&mut self, resource: &str, ctx: &str, max: Option<u32>) -> Resp {
            let max = max.map_or(String::new(), |m| format!("<MaxElements>{m}</MaxElements>"));
            let body = format!(
                r#"<Pull xmlns="http://schemas.xmlsoap.org/ws/2004/09/enumeration"><EnumerationContext>{ctx}</EnumerationContext>{max}<MaxCharacters>99999</MaxCharacters></Pull>"#
            );
            self.call(resource, PULL, &body)
        }

        /// Audit event keys (app·100 + event) of the whole audit log, oldest first.
        pub(crate) fn audit_events(&self) -> Vec<u32> {
            self.model
                .audit
                .iter()
                .map(|r| {
                    let b = |i: usize| u32::from(r.get(i).copied().unwrap_or(0));
                    ((b(0) << 8) | b(1)) * 100 + ((b(2) << 8) | b(3))
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::*;
    use super::*;

    #[test]
    fn unknown_resource_and_unsupported_action() {
        let mut sim = Sim::new();
        let r = sim.get(&format!("{CIM}CIM_NoSuchThing"));
        assert!(!r.ok);
        assert_eq!(r.subcode(), Some("b:DestinationUnreachable"));
        assert_eq!(
            r.text("Action"),
            Some("http://schemas.xmlsoap.org/ws/2004/08/addressing/fault")
        );
        let r = sim.call(&format!("{AMT}AMT_GeneralSettings"), DELETE, "");
        assert!(!r.ok);
        assert_eq!(r.subcode(), Some("b:ActionNotSupported"));
        let r = sim.invoke(&format!("{AMT}AMT_GeneralSettings"), "Frobnicate", "");
        assert_eq!(r.subcode(), Some("b:ActionNotSupported"));
        let r = sim.call(&format!("{AMT}AMT_GeneralSettings"), "urn:nonsense", "");
        assert_eq!(r.subcode(), Some("b:ActionNotSupported"));
    }

    #[test]
    fn unknown_enumeration_context() {
        let mut sim = Sim::new();
        let uri = format!("{CIM}CIM_SoftwareIdentity");
        let r = sim.pull(&uri, "01000000-0000-0000-0000-000000000000", Some(10));
        assert!(!r.ok);
        assert_eq!(r.subcode(), Some("c:InvalidEnumerationContext"));
        // A context of another class is not valid here either.
        let e = sim.call(&format!("{CIM}CIM_Chip"), ENUMERATE, "<Enumerate/>");
        let ctx = e.text("EnumerationContext").unwrap().to_string();
        let r = sim.pull(&uri, &ctx, Some(10));
        assert_eq!(r.subcode(), Some("c:InvalidEnumerationContext"));
    }

    #[test]
    fn pull_honours_max_elements_and_finishes() {
        let mut sim = Sim::new();
        let uri = format!("{CIM}CIM_SoftwareIdentity");
        // No MaxElements: one item per pull.
        let first = sim.enumerate_pull(&uri, None);
        assert_eq!(first.item_names(), ["CIM_SoftwareIdentity"]);
        assert!(first.doc.root().find("EndOfSequence").is_none());
        let ctx = first.text("EnumerationContext").unwrap().to_string();
        let rest = sim.pull(&uri, &ctx, Some(999));
        assert_eq!(rest.item_names().len(), 10);
        assert!(rest.doc.root().find("EndOfSequence").is_some());
        assert!(rest.doc.root().find("EnumerationContext").is_none());
        // The finished context is gone.
        assert_eq!(
            sim.pull(&uri, &ctx, Some(1)).subcode(),
            Some("c:InvalidEnumerationContext")
        );
        assert!(first
            .xml
            .contains(r#"xmlns:g="http://schemas.xmlsoap.org/ws/2004/09/enumeration""#));
        assert!(first.xml.contains("<h:CIM_SoftwareIdentity>"));
    }

    #[test]
    fn hostile_bodies_are_faults_not_panics() {
        let mut sim = Sim::new();
        let deep = format!(
            "<Envelope><Header><MessageID>5</MessageID></Header><Body>{}</Body></Envelope>",
            "<x>".repeat(10_000)
        );
        let bomb = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]><Envelope><Body>&lol2;</Body></Envelope>"#;
        let cases: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"not xml at all".to_vec(),
            b"<Envelope><Header>".to_vec(),
            deep.into_bytes(),
            bomb.as_bytes().to_vec(),
            vec![0xff, 0xfe, 0x00, 0x3c],
            b"<a:Envelope xmlns:a='x'><a:Body></a:Envelope>".to_vec(),
            b"<Envelope>&#xFFFFFFFF;</Envelope>".to_vec(),
            b"<Envelope><Header><Action>\xc3\x28</Action></Header></Envelope>".to_vec(),
        ];
        for body in cases {
            let r = sim.raw(&body);
            assert!(!r.ok);
            assert_eq!(
                r.subcode(),
                Some("e:SchemaValidationError"),
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
        // Well-formed but meaningless envelopes are routed, not parsed further.
        let r = sim.raw(b"<Envelope/>");
        assert_eq!(r.subcode(), Some("b:DestinationUnreachable"));
        // The MessageID of a broken request is still echoed when it can be found.
        let r = sim.raw(b"<Envelope><Header><MessageID>42</MessageID></Header><Body><x></Body>");
        assert_eq!(r.text("RelatesTo"), Some("42"));
        // Methods on valid envelopes with garbage inputs answer with business errors.
        for (class, method) in [
            ("CIM_PowerManagementService", "RequestPowerStateChange"),
            ("CIM_BootConfigSetting", "ChangeBootOrder"),
            ("CIM_KVMRedirectionSAP", "RequestStateChange"),
        ] {
            let r = sim.invoke(&format!("{CIM}{class}"), method, "<h:PowerState>ab</h:PowerState><h:Source>x</h:Source><h:RequestedState>-1</h:RequestedState>");
            assert!(r.ok);
            assert_ne!(r.return_value(), Some(0), "{class}");
        }
    }

    #[test]
    fn lenient_request_shapes() {
        // Pretty-printed, prefixed SOAP with mustUnderstand and a full To URL (python amt).
        let mut sim = Sim::new();
        let body = r#"<?xml version="1.0" encoding="UTF-8"?>
<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:wsa="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:wsman="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd">
  <s:Header>
    <wsa:Action s:mustUnderstand="true">http://schemas.xmlsoap.org/ws/2004/09/transfer/Get</wsa:Action>
    <wsa:To s:mustUnderstand="true">http://10.0.0.1:16992/wsman</wsa:To>
    <wsman:ResourceURI s:mustUnderstand="true">http://intel.com/wbem/wscim/1/amt-schema/1/AMT_GeneralSettings</wsman:ResourceURI>
    <wsa:MessageID s:mustUnderstand="true">uuid:abc</wsa:MessageID>
  </s:Header>
  <s:Body/>
</s:Envelope>"#;
        let r = sim.raw(body.as_bytes());
        assert!(r.ok, "{}", r.xml);
        assert_eq!(r.text("RelatesTo"), Some("uuid:abc"));
        assert_eq!(r.text("DigestRealm"), Some(sim.id.realm.as_str()));
    }
}
