//! The rpc client's WebSocket protocol, version 4.0.0 (openamt-rps.md §1): a JSON envelope
//! per text frame, base64 payloads, a command line in `method`, WS-Man carried as raw HTTP.
//! Pure functions: parsing and rendering only.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The protocol version this server speaks.
pub const PROTOCOL_VERSION: &str = "4.0.0";
/// The server version reported in `appVersion`.
pub const APP_VERSION: &str = env!("CARGO_PKG_VERSION");

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// One frame, either direction. Unknown fields are ignored; missing ones default.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Envelope {
    #[serde(default)]
    pub method: String,
    #[serde(rename = "apiKey", default)]
    pub api_key: String,
    #[serde(rename = "appVersion", default)]
    pub app_version: String,
    #[serde(rename = "protocolVersion", default)]
    pub protocol_version: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fqdn: Option<String>,
    /// Base64; `null` on success/error results.
    #[serde(default)]
    pub payload: Option<String>,
    #[serde(rename = "tenantId", default)]
    pub tenant_id: String,
}

impl Envelope {
    fn server(method: &str, status: &str, message: String, payload: Option<String>) -> Envelope {
        Envelope {
            method: method.into(),
            api_key: "xxxxx".into(),
            app_version: APP_VERSION.into(),
            protocol_version: PROTOCOL_VERSION.into(),
            status: status.into(),
            message,
            fqdn: None,
            payload,
            tenant_id: String::new(),
        }
    }

    /// A WS-Man request for the device: the raw HTTP bytes, base64.
    pub fn wsman(http: &[u8]) -> Envelope {
        Envelope::server("wsman", "ok", String::new(), Some(B64.encode(http)))
    }

    /// The final answer: `success`/`success` or `error`/`failed`, with the status object as
    /// a JSON string in `message` and a null payload, as rpc-go expects.
    pub fn result(ok: bool, status: &StatusMessage) -> Envelope {
        let message = serde_json::to_string(status).unwrap_or_else(|_| "{}".into());
        if ok {
            Envelope::server("success", "success", message, None)
        } else {
            Envelope::server("error", "failed", message, None)
        }
    }

    /// An error before any flow started (the reference sends the plain text).
    pub fn error_text(text: &str) -> Envelope {
        Envelope::server("error", "failed", text.to_string(), None)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }

    /// The decoded payload bytes (a client command's JSON, or a device's HTTP response).
    pub fn payload_bytes(&self) -> Result<Vec<u8>, ProtocolError> {
        let p = self.payload.as_deref().unwrap_or("");
        B64.decode(p.trim())
            .map_err(|_| ProtocolError::Invalid("payload is not base64".into()))
    }
}

/// The status object of a result, as the reference words it (only the keys that were set).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusMessage {
    #[serde(rename = "Status", skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(rename = "Network", skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(rename = "CIRAConnection", skip_serializing_if = "Option::is_none")]
    pub cira_connection: Option<String>,
    #[serde(rename = "TLSConfiguration", skip_serializing_if = "Option::is_none")]
    pub tls_configuration: Option<String>,
    #[serde(rename = "Features", skip_serializing_if = "Option::is_none")]
    pub features: Option<String>,
}

impl StatusMessage {
    pub fn status(text: impl Into<String>) -> StatusMessage {
        StatusMessage {
            status: Some(text.into()),
            ..StatusMessage::default()
        }
    }

    /// The set fields as (key, value) pairs, for events.
    pub fn pairs(&self) -> Vec<(String, String)> {
        [
            ("Status", &self.status),
            ("Network", &self.network),
            ("CIRAConnection", &self.cira_connection),
            ("TLSConfiguration", &self.tls_configuration),
            ("Features", &self.features),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), v.clone())))
        .collect()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("{0}")]
    Invalid(String),
    #[error("protocol version NOT supported: {0}")]
    Version(String),
}

/// What the client asked for, from the command line in `method`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Activate { profile: String },
    Deactivate { force: bool },
    Maintenance { task: Task, force: bool },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Task {
    /// With a static new password, or a random one.
    ChangePassword(Option<String>),
    SyncTime,
    SyncIp,
    SyncHostname,
    SyncDeviceInfo,
}

impl Task {
    pub fn name(&self) -> &'static str {
        match self {
            Task::ChangePassword(_) => "changepassword",
            Task::SyncTime => "synctime",
            Task::SyncIp => "syncip",
            Task::SyncHostname => "synchostname",
            Task::SyncDeviceInfo => "syncdeviceinfo",
        }
    }
}

impl Command {
    pub fn flow(&self) -> &'static str {
        match self {
            Command::Activate { .. } => "activate",
            Command::Deactivate { .. } => "deactivate",
            Command::Maintenance { task, .. } => task.name(),
        }
    }
}

/// Parses rpc-go's command line the way the reference's minimist setup reads it: the first
/// bare word is the command; `--profile`/`--password`/`-p` take values; `-f`/`--force`,
/// `--synctime`, `--syncip`, `--changepassword`, `--synchostname`, `--syncdeviceinfo` are
/// switches (a bare word after `--changepassword` is its static password). The password
/// given on the line is ignored: the payload's is used, as in the reference.
pub fn parse_command(method: &str) -> Result<Command, ProtocolError> {
    let mut words = method.split_whitespace().peekable();
    let verb = words
        .next()
        .ok_or_else(|| ProtocolError::Invalid("empty command".into()))?;
    let mut profile = None;
    let mut force = false;
    let mut task = None;
    while let Some(w) = words.next() {
        let flag = w.trim_start_matches('-');
        if !w.starts_with('-') {
            continue;
        }
        match flag {
            "profile" => profile = words.next().map(str::to_string),
            "password" | "p" | "text" | "t" => {
                words.next();
            }
            "f" | "force" => force = true,
            "synctime" | "syncclock" => task = Some(Task::SyncTime),
            "syncip" => task = Some(Task::SyncIp),
            "synchostname" => task = Some(Task::SyncHostname),
            "syncdeviceinfo" => task = Some(Task::SyncDeviceInfo),
            "changepassword" => {
                let fixed = match words.peek() {
                    Some(next) if !next.starts_with('-') => words.next().map(str::to_string),
                    _ => None,
                };
                task = Some(Task::ChangePassword(fixed));
            }
            _ => {}
        }
    }
    match verb {
        "activate" => Ok(Command::Activate {
            profile: profile
                .filter(|p| !p.is_empty())
                .ok_or_else(|| ProtocolError::Invalid("Missing profile name".into()))?,
        }),
        "deactivate" => Ok(Command::Deactivate { force }),
        "maintenance" => Ok(Command::Maintenance {
            task: task.ok_or_else(|| ProtocolError::Invalid("Missing maintenance task".into()))?,
            force,
        }),
        other => Err(ProtocolError::Invalid(format!(
            "Device {other} is not a supported method"
        ))),
    }
}

/// The checks of a client's first message, in the reference's order: protocol version (when
/// given), command, payload; then the tenant it names must be a valid tenant id.
pub fn check_request(first: &Envelope) -> Result<(Command, DeviceFacts), ProtocolError> {
    if !first.protocol_version.is_empty() {
        version_compatible(&first.protocol_version)?;
    }
    let command = parse_command(&first.method)?;
    let facts = validate_payload(&first.payload_bytes()?)?;
    if !first.tenant_id.is_empty() && !homeport_auth::valid_tenant(&first.tenant_id) {
        return Err(ProtocolError::Invalid("invalid tenantId".into()));
    }
    Ok((command, facts))
}

/// The reference's rule: same major, and either a newer server minor or the same minor
/// with a server revision at least the client's.
pub fn version_compatible(client: &str) -> Result<(), ProtocolError> {
    let parse = |v: &str| -> Option<(u32, u32, u32)> {
        let mut it = v.trim().split('.').map(|p| p.parse::<u32>().ok());
        Some((it.next()??, it.next()??, it.next()??))
    };
    let bad = || ProtocolError::Version(client.to_string());
    let (cmaj, cmin, crev) = parse(client).ok_or_else(bad)?;
    let (smaj, smin, srev) = parse(PROTOCOL_VERSION).ok_or_else(bad)?;
    let ok = cmaj == smaj && ((smin == cmin && srev >= crev) || smin > cmin);
    if ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// The device facts rpc-go sends with a command (§1.4). Secrets inside are zeroized when
/// dropped and never printed.
#[derive(Clone, Default, Deserialize)]
pub struct ClientPayload {
    #[serde(default)]
    pub ver: String,
    #[serde(default)]
    pub build: String,
    #[serde(default)]
    pub sku: String,
    #[serde(default)]
    pub features: String,
    #[serde(default)]
    pub uuid: serde_json::Value,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: String,
    #[serde(rename = "currentMode", default)]
    pub current_mode: u8,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub fqdn: String,
    #[serde(default)]
    pub client: String,
    /// Go sends `null` for an empty list.
    #[serde(rename = "certHashes", default, deserialize_with = "null_as_empty")]
    pub cert_hashes: Vec<String>,
    #[serde(rename = "friendlyName", default)]
    pub friendly_name: Option<String>,
    #[serde(rename = "ipConfiguration", default)]
    pub ip_configuration: Option<serde_json::Value>,
    #[serde(rename = "hostnameInfo", default)]
    pub hostname_info: Option<serde_json::Value>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

impl std::fmt::Debug for ClientPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientPayload")
            .field("ver", &self.ver)
            .field("build", &self.build)
            .field("uuid", &self.uuid)
            .field("current_mode", &self.current_mode)
            .field("hostname", &self.hostname)
            .field("fqdn", &self.fqdn)
            .finish_non_exhaustive()
    }
}

impl Drop for ClientPayload {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.password);
    }
}

/// A validated payload: canonical GUID and parsed firmware version.
#[derive(Debug)]
pub struct DeviceFacts {
    pub guid: String,
    pub version: (u32, u32, u32),
    pub payload: ClientPayload,
}

/// Checks the payload as the reference does (§1.5): `client`, `ver`, `build`, `uuid`
/// present, a 36-character UUID (or the legacy 16-byte array), firmware new enough.
pub fn validate_payload(bytes: &[u8]) -> Result<DeviceFacts, ProtocolError> {
    let payload: ClientPayload = serde_json::from_slice(bytes)
        .map_err(|_| ProtocolError::Invalid("Invalid payload from client".into()))?;
    if payload.client.is_empty() || payload.ver.is_empty() || payload.build.is_empty() {
        return Err(ProtocolError::Invalid("Invalid payload from client".into()));
    }
    let guid = match &payload.uuid {
        serde_json::Value::String(s) if s.len() == 36 => homeport_store::canonical_guid(s),
        serde_json::Value::Array(bytes) if bytes.len() == 16 => {
            let mut wire = [0u8; 16];
            for (i, b) in bytes.iter().enumerate() {
                wire[i] = b.as_u64().and_then(|v| u8::try_from(v).ok()).unwrap_or(0);
            }
            Some(homeport_apf::guid_from_wire(&wire))
        }
        _ => None,
    }
    .ok_or_else(|| ProtocolError::Invalid("Invalid payload from client: uuid".into()))?;
    let mut parts = payload.ver.split('.').map(|p| p.trim().parse::<u32>().ok());
    let version = match (parts.next(), parts.next(), parts.next()) {
        (Some(Some(a)), Some(Some(b)), c) => (a, b, c.flatten().unwrap_or(0)),
        _ => {
            return Err(ProtocolError::Invalid(format!(
                "Invalid AMT version {}",
                payload.ver
            )))
        }
    };
    let build: u32 = payload.build.trim().parse().unwrap_or(0);
    // Firmware before 7 has no remote configuration; the listed 7-11.6 versions need a
    // build with the fixes for host-based setup (§1.5).
    let old_listed = matches!(
        (version.0, version.1),
        (7, 0)
            | (7, 1)
            | (8, 0)
            | (8, 1)
            | (9, 0)
            | (9, 1)
            | (9, 5)
            | (10, 0)
            | (11, 0)
            | (11, 5)
            | (11, 6)
    );
    if version.0 < 7 || (old_listed && build < 3000) {
        return Err(ProtocolError::Invalid(format!(
            "Device {guid} activation failed. AMT version {} build {} is not supported",
            payload.ver, payload.build
        )));
    }
    if payload.current_mode > 2 {
        return Err(ProtocolError::Invalid(format!(
            "Device {guid} reports an unknown control mode {}",
            payload.current_mode
        )));
    }
    Ok(DeviceFacts {
        guid,
        version,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_like_the_reference() {
        assert_eq!(
            parse_command("activate --profile p1").unwrap(),
            Command::Activate {
                profile: "p1".into()
            }
        );
        assert!(matches!(
            parse_command("activate"),
            Err(ProtocolError::Invalid(m)) if m == "Missing profile name"
        ));
        assert_eq!(
            parse_command("deactivate --password secret -f").unwrap(),
            Command::Deactivate { force: true }
        );
        assert_eq!(
            parse_command("maintenance -password x --changepassword Static1!").unwrap(),
            Command::Maintenance {
                task: Task::ChangePassword(Some("Static1!".into())),
                force: false
            }
        );
        assert_eq!(
            parse_command("maintenance -password x --synctime").unwrap(),
            Command::Maintenance {
                task: Task::SyncTime,
                force: false
            }
        );
        assert!(parse_command("heartbeat_response").is_err());
        assert!(parse_command("").is_err());
    }

    #[test]
    fn versions_follow_the_compatibility_rule() {
        assert!(version_compatible("4.0.0").is_ok());
        assert_eq!(
            version_compatible("5.0.0").unwrap_err().to_string(),
            "protocol version NOT supported: 5.0.0"
        );
        assert!(version_compatible("4.0.1").is_err());
        assert!(version_compatible("3.9.0").is_err());
        assert!(version_compatible("4.x").is_err());
    }

    #[test]
    fn payloads_are_checked_and_secrets_not_printed() {
        let ok = br#"{"ver":"16.1.25","build":"2053","sku":"16392","uuid":"4c4c4544-0035-5910-804e-b4c04f564433","username":"$$OsAdmin","password":"lsa-secret","currentMode":0,"hostname":"h","fqdn":"vprodemo.com","client":"RPC","certHashes":["aa"]}"#;
        let facts = validate_payload(ok).unwrap();
        assert_eq!(facts.guid, "4c4c4544-0035-5910-804e-b4c04f564433");
        assert_eq!(facts.version, (16, 1, 25));
        assert!(!format!("{facts:?}").contains("lsa-secret"));
        let old = br#"{"ver":"11.0.0","build":"2000","uuid":"4c4c4544-0035-5910-804e-b4c04f564433","client":"RPC"}"#;
        assert!(validate_payload(old)
            .unwrap_err()
            .to_string()
            .contains("not supported"));
        let go_nil = br#"{"ver":"16.1.25","build":"2053","uuid":"4c4c4544-0035-5910-804e-b4c04f564433","client":"RPC","certHashes":null}"#;
        assert!(validate_payload(go_nil)
            .unwrap()
            .payload
            .cert_hashes
            .is_empty());
        let short = br#"{"ver":"16.1.25","build":"1","uuid":"4c4c","client":"RPC"}"#;
        assert!(validate_payload(short).is_err());
        assert!(validate_payload(b"not json").is_err());
        let env = Envelope::result(
            true,
            &StatusMessage {
                status: Some("Client control mode.".into()),
                cira_connection: Some("Configured".into()),
                ..StatusMessage::default()
            },
        );
        let json: serde_json::Value = serde_json::from_str(&env.to_json()).unwrap();
        assert_eq!(json["method"], "success");
        assert_eq!(json["status"], "success");
        assert_eq!(json["payload"], serde_json::Value::Null);
        assert_eq!(
            json["message"],
            r#"{"Status":"Client control mode.","CIRAConnection":"Configured"}"#
        );
    }
}
