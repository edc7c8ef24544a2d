//! Who may do what on NATS: one user per service role with only the subjects it needs, and
//! the NATS server configuration that says so.
//!
//! Each role has its own reply-inbox prefix (`_INBOX_<role>`) and may subscribe only to its
//! own, so no service can read the replies another one asked for (WS-Man traffic above all).
//! Replies to requests a service received are allowed by `allow_responses` (one reply per
//! request), not by publish rights on other services' inboxes.

use std::fmt::Write as _;

use crate::Names;

/// A service that connects to NATS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// cira-ingress: holds device sessions, presence, heartbeats, device events.
    Ingress,
    /// mps-command: tunnel requests to devices, command and registry events.
    Command,
    /// The audit worker and AuditService: reads the events stream.
    Audit,
    /// The MQTT bridge: reads the events stream.
    Bridge,
    /// rps: provisioning events, reads presence.
    Rps,
}

impl Role {
    // The REST gateway has no role: it reaches events through the audit service's gRPC API
    // and never connects to NATS.
    pub const ALL: [Role; 5] = [
        Role::Ingress,
        Role::Command,
        Role::Audit,
        Role::Bridge,
        Role::Rps,
    ];

    /// The role's name: NATS user name, inbox suffix, and the stem of its variables.
    pub fn name(self) -> &'static str {
        match self {
            Role::Ingress => "ingress",
            Role::Command => "command",
            Role::Audit => "audit",
            Role::Bridge => "bridge",
            Role::Rps => "rps",
        }
    }

    /// The prefix of this role's reply inboxes.
    pub fn inbox_prefix(self) -> String {
        format!("_INBOX_{}", self.name())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| format!("unknown NATS role {s:?}"))
    }
}

/// Subjects a role may publish to and subscribe to, and whether it may answer requests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    pub allow_responses: bool,
}

/// JetStream API subjects to find, create and read a stream (its info, direct and stored
/// message reads, as KV gets use).
fn stream_read(stream: &str) -> Vec<String> {
    vec![
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.STREAM.CREATE.{stream}"),
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}.>"),
    ]
}

/// JetStream API subjects to create, use and remove consumers of a stream (durable and
/// ordered pull consumers, KV watches).
fn stream_consume(stream: &str) -> Vec<String> {
    vec![
        format!("$JS.API.CONSUMER.CREATE.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.*"),
        format!("$JS.API.CONSUMER.INFO.{stream}.*"),
        format!("$JS.API.CONSUMER.DELETE.{stream}.*"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.*"),
        format!("$JS.ACK.{stream}.>"),
        // Flow control of ordered push consumers (KV watches).
        format!("$JS.FC.{stream}.>"),
    ]
}

/// The durable consumer the MQTT bridge replicas share (`--consumer`), the only one its user
/// may read and acknowledge: a bridge may not take events from the audit worker's consumer.
pub const BRIDGE_CONSUMER: &str = "mqtt-bridge";

/// JetStream API subjects to create, read and acknowledge the one durable consumer `name`.
fn consumer_use(stream: &str, name: &str) -> Vec<String> {
    vec![
        format!("$JS.API.CONSUMER.CREATE.{stream}.{name}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.{name}.>"),
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{name}"),
        format!("$JS.API.CONSUMER.INFO.{stream}.{name}"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}"),
        format!("$JS.ACK.{stream}.{name}.>"),
    ]
}

/// What `role` may do in the deployment named by `names`.
pub fn permissions(role: Role, names: &Names) -> Permissions {
    let p = names.prefix();
    let events = names.events_stream();
    let presence = format!("KV_{}", names.presence_bucket());
    let nodes = format!("KV_{}", names.nodes_bucket());
    let inbox = format!("{}.>", role.inbox_prefix());
    let mut publish = Vec::new();
    let mut subscribe = vec![inbox];
    let mut allow_responses = false;
    match role {
        Role::Ingress => {
            publish.push(format!("{p}.evt.*.device.*.connected"));
            publish.push(format!("{p}.evt.*.device.*.disconnected"));
            publish.push(format!("{p}.evt.*.device.*.auth_failed"));
            // Asking a device's older session on another node to close.
            publish.push(format!("{p}.cira.node.*.supersede.*"));
            publish.push(format!("$KV.{}.>", names.presence_bucket()));
            publish.push(format!("$KV.{}.>", names.nodes_bucket()));
            publish.extend(stream_read(&events));
            publish.extend(stream_read(&presence));
            publish.extend(stream_read(&nodes));
            // The reaper reads presence and the node list with KV watches.
            publish.extend(stream_consume(&presence));
            publish.extend(stream_consume(&nodes));
            subscribe.push(format!("{p}.cira.node.>"));
            // Tunnel replies and supersede confirmations.
            allow_responses = true;
        }
        Role::Command => {
            publish.push(format!("{p}.cira.node.*.http.*"));
            // Ending a device's session on request (the REST API's disconnect).
            publish.push(format!("{p}.cira.node.*.disconnect.*"));
            publish.push(format!("{p}.evt.*.command.>"));
            publish.push(format!("{p}.evt.*.device.*.created"));
            publish.push(format!("{p}.evt.*.device.*.updated"));
            publish.push(format!("{p}.evt.*.device.*.deleted"));
            publish.extend(stream_read(&events));
            publish.extend(stream_read(&presence));
            // Listing presence (a KV watch).
            publish.extend(stream_consume(&presence));
            // Registry events drop its caches (core NATS, not a consumer).
            subscribe.push(format!("{p}.evt.*.device.*.*"));
        }
        Role::Audit => {
            // Its durable consumer, and ordered consumers for the live Subscribe feeds.
            publish.extend(stream_read(&events));
            publish.extend(stream_consume(&events));
        }
        Role::Bridge => {
            publish.extend(stream_read(&events));
            publish.extend(consumer_use(&events, BRIDGE_CONSUMER));
        }
        Role::Rps => {
            publish.push(format!("{p}.evt.*.provisioning.>"));
            // It writes activated devices into the registry and removes deactivated ones,
            // so it announces those changes like the registry API does.
            for change in ["created", "updated", "deleted"] {
                publish.push(format!("{p}.evt.*.device.*.{change}"));
            }
            publish.extend(stream_read(&events));
            publish.extend(stream_read(&presence));
        }
    }
    Permissions {
        publish,
        subscribe,
        allow_responses,
    }
}

/// How a role's user proves who it is, as written in the server configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// An NKey user: the public key (`U…`); the client holds the seed.
    NKey(String),
    /// A user name (the role's) and password. The text is written as it is, so it may be a
    /// `$VARIABLE` reference the server resolves from its environment.
    Password(String),
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("[{}]", quoted.join(", "))
}

/// The `authorization` block of a NATS server configuration for `users`: each role only its
/// permissions; anyone else is refused. `extra_users` are entries written as they are (for
/// example an observer that may only read events).
pub fn authorization_block(
    names: &Names,
    users: &[(Role, Credential)],
    extra_users: &[String],
) -> String {
    let mut out = String::from("authorization {\n  users = [\n");
    for extra in extra_users {
        let _ = writeln!(out, "    {extra}");
    }
    for (role, credential) in users {
        let perms = permissions(*role, names);
        let who = match credential {
            Credential::NKey(public) if public.starts_with('$') => format!("nkey: {public}"),
            Credential::NKey(public) => format!("nkey: {}", quote(public)),
            Credential::Password(pw) if pw.starts_with('$') => {
                format!("user: {}, password: {pw}", quote(role.name()))
            }
            Credential::Password(pw) => {
                format!("user: {}, password: {}", quote(role.name()), quote(pw))
            }
        };
        let _ = writeln!(out, "    # {}", role.name());
        let _ = writeln!(out, "    {{");
        let _ = writeln!(out, "      {who}");
        let _ = writeln!(out, "      permissions: {{");
        let _ = writeln!(
            out,
            "        publish: {{ allow: {} }}",
            list(&perms.publish)
        );
        let _ = writeln!(
            out,
            "        subscribe: {{ allow: {} }}",
            list(&perms.subscribe)
        );
        if perms.allow_responses {
            let _ = writeln!(out, "        allow_responses: true");
        }
        let _ = writeln!(out, "      }}");
        let _ = writeln!(out, "    }}");
    }
    out.push_str("  ]\n}\n");
    out
}

/// The variable the shipped server configuration reads `role`'s NKey public key from.
pub fn nkey_variable(role: Role) -> String {
    format!("HP_{}_NKEY", role.name().to_ascii_uppercase())
}

/// The NATS server configuration Homeport ships (`deploy/nats/nats-server.conf`): JetStream
/// and one NKey user per service role, its public key from `$HP_<ROLE>_NKEY` (the server
/// refuses to start when one is missing). `homeportctl nats-keys` makes the keys.
pub fn deployment_config(names: &Names) -> String {
    format!(
        "# NATS server configuration for Homeport (subject prefix \"{p}\"), generated from\n\
         # crates/contracts/src/access.rs: each service signs in with its own NKey and may only\n\
         # publish and subscribe where it needs to. Set HP_<ROLE>_NKEY to each service's public\n\
         # key (homeportctl nats-keys), give each service its seed (HOMEPORT_NATS_NKEY_FILE),\n\
         # and add a tls {{ }} block wherever NATS is reached over a network.\n\
         listen: \"0.0.0.0:4222\"\n\
         http: \"0.0.0.0:8222\"\n\
         jetstream {{ store_dir: \"/data/jetstream\" }}\n\
         {}",
        deployment_authorization(names),
        p = names.prefix()
    )
}

/// The `authorization` block of [`deployment_config`] alone, for servers whose configuration
/// is assembled elsewhere (the Kubernetes NATS cluster includes it as `auth.conf`).
pub fn deployment_authorization(names: &Names) -> String {
    let users: Vec<(Role, Credential)> = Role::ALL
        .into_iter()
        .map(|r| (r, Credential::NKey(format!("${}", nkey_variable(r)))))
        .collect();
    authorization_block(names, &users, &[])
}

/// A user that may only read `names`' events over core NATS (`nats sub '<p>.evt.>'`), for
/// people looking at an embedded deployment.
pub fn observer_user(names: &Names, user: &str, password: &str) -> String {
    format!(
        "{{ user: {}, password: {}, permissions: {{ publish: {{ deny: [\">\"] }}, subscribe: {{ allow: [{}, \"_INBOX.>\"] }} }} }}",
        quote(user),
        quote(password),
        quote(&format!("{}.evt.>", names.prefix()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_role_reads_another_roles_replies_or_the_tunnel_unless_it_serves_it() {
        let names = Names::new("hp");
        for role in Role::ALL {
            let p = permissions(role, &names);
            assert!(p.subscribe.contains(&format!("_INBOX_{}.>", role.name())));
            assert!(
                !p.subscribe.iter().any(|s| s == "_INBOX.>" || s == ">"),
                "{role:?}"
            );
            let tunnel_reader = p.subscribe.iter().any(|s| s.starts_with("hp.cira"));
            assert_eq!(tunnel_reader, role == Role::Ingress, "{role:?}");
            let tunnel_caller = p.publish.iter().any(|s| s.contains(".http."));
            assert_eq!(tunnel_caller, role == Role::Command, "{role:?}");
            let superseder = p.publish.iter().any(|s| s.contains(".supersede."));
            assert_eq!(superseder, role == Role::Ingress, "{role:?}");
        }
        // Readers of the stream publish no events.
        for role in [Role::Audit, Role::Bridge] {
            let p = permissions(role, &names);
            assert!(
                !p.publish.iter().any(|s| s.starts_with("hp.evt")),
                "{role:?}"
            );
        }
    }

    #[test]
    fn the_authorization_block_names_every_user() {
        let names = Names::new("hp");
        let block = authorization_block(
            &names,
            &[
                (Role::Ingress, Credential::NKey("UABC".into())),
                (
                    Role::Audit,
                    Credential::Password("$HP_AUDIT_PASSWORD".into()),
                ),
            ],
            &[],
        );
        assert!(block.contains(r#"nkey: "UABC""#));
        assert!(block.contains(r#"user: "audit", password: $HP_AUDIT_PASSWORD"#));
        assert!(block.contains("allow_responses: true"));
        assert!(block.contains(r#""hp.cira.node.>""#));
    }
}
