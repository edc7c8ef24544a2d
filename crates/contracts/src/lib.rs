//! Names and wire formats shared over NATS: subjects, streams, KV buckets, tunnel headers, events.
//!
//! Every name takes the deployment's subject prefix (`hp` in production) so that tests, each on
//! its own prefix, can share one NATS server without seeing each other's traffic.

pub mod access;
pub mod events;
pub mod presence;
pub mod tunnel;

pub use homeport_proto::events::v1 as proto;

/// Default subject prefix of a production deployment.
pub const DEFAULT_PREFIX: &str = "hp";

/// Readiness as far as NATS goes: every service is ready only while its client is connected.
pub fn nats_ready(client: &async_nats::Client) -> Result<(), String> {
    match client.connection_state() {
        async_nats::connection::State::Connected => Ok(()),
        other => Err(format!("NATS {other:?}")),
    }
}

/// Subject token used for devices that have no tenant (subject tokens cannot be empty).
pub const NO_TENANT_TOKEN: &str = "_";

/// What a request on a node's subject asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeOp {
    Http,
    Supersede,
    Disconnect,
}

/// All NATS names of one deployment, derived from its prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Default for Names {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

impl Names {
    /// `prefix` must be a valid subject token: letters, digits, `_` and `-`.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: token(prefix),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The tenant token of an event subject (`<p>.evt.<tenant>.…`), if `subject` is one.
    pub fn event_subject_tenant<'a>(&self, subject: &'a str) -> Option<&'a str> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".evt.")?;
        rest.split('.').next().filter(|t| !t.is_empty())
    }

    /// Whether `subject` is an event subject of `tenant` (its tenant token is `tenant`'s), so a
    /// consumer never stores or forwards a message under a tenant its subject does not carry.
    pub fn event_subject_is_tenants(&self, subject: &str, tenant: &str) -> bool {
        self.event_subject_tenant(subject) == Some(tenant_token(tenant).as_str())
    }

    /// `<p>.evt.<tenant>.device.<guid>.<kind>`: device lifecycle events.
    pub fn device_event(&self, tenant: &str, guid: &str, kind: &str) -> String {
        format!(
            "{}.evt.{}.device.{}.{}",
            self.prefix,
            tenant_token(tenant),
            token(guid),
            token(kind)
        )
    }

    /// `<p>.evt.<tenant>.command.<guid>.<action>`: a device command and its result.
    pub fn command_event(&self, tenant: &str, guid: &str, action: &str) -> String {
        format!(
            "{}.evt.{}.command.{}.{}",
            self.prefix,
            tenant_token(tenant),
            token(guid),
            token(action)
        )
    }

    /// `<p>.evt.<tenant>.provisioning.<guid>.<outcome>`: an rps flow's outcome.
    pub fn provisioning_event(&self, tenant: &str, guid: &str, outcome: &str) -> String {
        format!(
            "{}.evt.{}.provisioning.{}.{}",
            self.prefix,
            tenant_token(tenant),
            token(guid),
            token(outcome)
        )
    }

    /// `<p>.evt.*.device.*.*`: every device lifecycle and registry event of every tenant.
    pub fn device_events_wildcard(&self) -> String {
        format!("{}.evt.*.device.*.*", self.prefix)
    }

    /// `<p>.evt.<tenant>.*.<guid|*>.<kind|*>`: one tenant's events, optionally of one device
    /// and one kind. The tenant token is always concrete, so the filter never crosses tenants.
    pub fn tenant_events_filter(
        &self,
        tenant: &str,
        guid: Option<&str>,
        kind: Option<&str>,
    ) -> String {
        format!(
            "{}.evt.{}.*.{}.{}",
            self.prefix,
            tenant_token(tenant),
            guid.map(token).unwrap_or_else(|| "*".into()),
            kind.map(token).unwrap_or_else(|| "*".into())
        )
    }

    /// Everything the events stream captures.
    pub fn events_subjects(&self) -> String {
        format!("{}.evt.>", self.prefix)
    }

    /// JetStream stream holding all events of this deployment.
    pub fn events_stream(&self) -> String {
        format!(
            "{}_EVENTS",
            self.prefix.to_ascii_uppercase().replace('-', "_")
        )
    }

    /// `<p>.cira.node.<node>.>`: the one subscription an ingress node holds for all of its
    /// devices (one per node, not one per device: see ARCHITECTURE.md, "Tunnel routing").
    pub fn cira_node_wildcard(&self, node: &str) -> String {
        format!("{}.cira.node.{}.>", self.prefix, token(node))
    }

    /// `<p>.cira.node.<node>.http.<guid>`: request/reply tunnel to a device's HTTP ports on the
    /// node that holds it (callers find the node in presence; see [`tunnel::TunnelClient`]).
    pub fn cira_node_http(&self, node: &str, guid: &str) -> String {
        format!(
            "{}.cira.node.{}.http.{}",
            self.prefix,
            token(node),
            token(guid)
        )
    }

    /// `<p>.cira.node.<node>.supersede.<guid>`: a new session of the device asks the old one,
    /// on whichever node, to close.
    pub fn cira_node_supersede(&self, node: &str, guid: &str) -> String {
        format!(
            "{}.cira.node.{}.supersede.{}",
            self.prefix,
            token(node),
            token(guid)
        )
    }

    /// `<p>.cira.node.<node>.disconnect.<guid>`: the device API asks the node to end the
    /// device's session (the body names the session; the device reconnects by itself).
    pub fn cira_node_disconnect(&self, node: &str, guid: &str) -> String {
        format!(
            "{}.cira.node.{}.disconnect.{}",
            self.prefix,
            token(node),
            token(guid)
        )
    }

    /// Splits a subject received on [`Names::cira_node_wildcard`] into operation and guid.
    pub fn parse_node_subject<'a>(
        &self,
        node: &str,
        subject: &'a str,
    ) -> Option<(NodeOp, &'a str)> {
        let rest = subject.strip_prefix(&format!("{}.cira.node.{}.", self.prefix, token(node)))?;
        let (op, guid) = rest.split_once('.')?;
        let op = match op {
            "http" => NodeOp::Http,
            "supersede" => NodeOp::Supersede,
            "disconnect" => NodeOp::Disconnect,
            _ => return None,
        };
        (!guid.is_empty() && !guid.contains('.')).then_some((op, guid))
    }

    /// KV bucket: guid → presence of the device's current session.
    pub fn presence_bucket(&self) -> String {
        format!("{}_presence", self.prefix.replace('-', "_"))
    }

    /// KV bucket: node id → node heartbeat (entries expire when the node dies).
    pub fn nodes_bucket(&self) -> String {
        format!("{}_nodes", self.prefix.replace('-', "_"))
    }
}

fn tenant_token(tenant: &str) -> String {
    if tenant.is_empty() {
        NO_TENANT_TOKEN.to_string()
    } else {
        token(tenant)
    }
}

/// Subject tokens must not contain separators or wildcards; anything else is replaced by `_`.
fn token(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_subject_names_its_tenant() {
        let n = Names::new("hp");
        let s = n.device_event("acme", "g", "connected");
        assert!(n.event_subject_is_tenants(&s, "acme"));
        assert!(!n.event_subject_is_tenants(&s, "other"));
        assert!(!n.event_subject_is_tenants(&s, ""));
        let none = n.device_event("", "g", "auth_failed");
        assert!(n.event_subject_is_tenants(&none, ""));
        assert!(!n.event_subject_is_tenants("hpx.evt.acme.device.g.k", "acme"));
        assert!(!n.event_subject_is_tenants("hp.cira.acme", "acme"));
    }

    #[test]
    fn names_follow_the_taxonomy() {
        let n = Names::new("t1");
        let g = "4c4c4544-004b-4210-8033-b6c04f504633";
        assert_eq!(
            n.device_event("acme", g, "connected"),
            format!("t1.evt.acme.device.{g}.connected")
        );
        assert_eq!(
            n.device_event("", g, "disconnected"),
            format!("t1.evt._.device.{g}.disconnected")
        );
        assert_eq!(
            n.cira_node_http("n-1", g),
            format!("t1.cira.node.n-1.http.{g}")
        );
        assert_eq!(
            n.cira_node_supersede("n-1", g),
            format!("t1.cira.node.n-1.supersede.{g}")
        );
        assert_eq!(n.cira_node_wildcard("n-1"), "t1.cira.node.n-1.>");
        assert_eq!(n.events_stream(), "T1_EVENTS");
        assert_eq!(n.presence_bucket(), "t1_presence");
    }

    #[test]
    fn node_subjects_parse_back() {
        let n = Names::new("t1");
        let g = "4c4c4544-004b-4210-8033-b6c04f504633";
        assert_eq!(
            n.parse_node_subject("n-1", &n.cira_node_http("n-1", g)),
            Some((NodeOp::Http, g))
        );
        assert_eq!(
            n.parse_node_subject("n-1", &n.cira_node_supersede("n-1", g)),
            Some((NodeOp::Supersede, g))
        );
        assert_eq!(
            n.parse_node_subject("n-2", &n.cira_node_http("n-1", g)),
            None
        );
        assert_eq!(
            n.parse_node_subject("n-1", "t1.cira.node.n-1.other.x"),
            None
        );
        assert_eq!(
            n.parse_node_subject("n-1", "t1.cira.node.n-1.http.a.b"),
            None
        );
    }

    #[test]
    fn hostile_tokens_cannot_widen_a_subject() {
        let n = Names::default();
        assert_eq!(n.cira_node_http("x", "a.>*"), "hp.cira.node.x.http.a___");
        assert_eq!(n.device_event("x.y", "g", "k"), "hp.evt.x_y.device.g.k");
    }
}
