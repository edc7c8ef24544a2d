//! What an unprovisioned device answers while rps activates and configures it
//! (openamt-rps.md §2.2, §2.4, §2.7): host-based setup (the admin password arrives as the
//! digest HA1 and replaces the local system account's credentials), the MPS server entry and
//! its remote-access policies, trusted root certificates, user-initiated connections and
//! environment detection. The applied CIRA configuration is what the device then dials.

use base64::Engine as _;

use super::model::{Credentials, MpServer, Policy, RemoteAccess};
use super::render::{Answer, Item, Px, WsFault, AMT, IPS, TRANSFER, W};
use super::xml::Request;
use super::{instance_answer, number, Class, Ctx};
use crate::wsman::render::epr_into;

const OK: u32 = 0;
/// PT_STATUS_INVALID_PARAMETER.
const INVALID_PARAMETER: u32 = 36;
/// PT_STATUS_NOT_PERMITTED: the device is not in a state that allows it.
const NOT_PERMITTED: u32 = 16;
/// PT_STATUS_DUPLICATE.
const DUPLICATE: u32 = 2058;
/// PT_STATUS_MAX_LIMIT_REACHED.
const LIMIT: u32 = 23;
/// Entries AMT keeps at most (servers, trusted roots, policies).
const MAX_ENTRIES: usize = 16;

const SAP: &str = "AMT_ManagementPresenceRemoteSAP";
const POLICY: &str = "AMT_RemoteAccessPolicyRule";
const CERT: &str = "AMT_PublicKeyCertificate";

pub(crate) const CLASSES: &[Class] = &[
    Class {
        instances: Some(host_based_setup),
        get: true,
        enumerate: true,
        methods: &[
            ("Setup", setup),
            ("AddNextCertInChain", add_next_cert),
            ("AdminSetup", admin_setup),
            ("UpgradeClientToAdmin", upgrade_client_to_admin),
        ],
        ..Class::new("IPS_HostBasedSetupService", IPS)
    },
    Class {
        instances: Some(remote_access_service),
        get: true,
        enumerate: true,
        methods: &[
            ("AddMpServer", add_mp_server),
            ("AddRemoteAccessPolicyRule", add_policy),
        ],
        ..Class::new("AMT_RemoteAccessService", AMT)
    },
    Class {
        instances: Some(mp_servers),
        get: true,
        enumerate: true,
        delete: Some(delete_mp_server),
        ..Class::new(SAP, AMT)
    },
    Class {
        instances: Some(policies),
        get: true,
        enumerate: true,
        delete: Some(delete_policy),
        ..Class::new(POLICY, AMT)
    },
    Class {
        instances: Some(public_key_management),
        get: true,
        enumerate: true,
        methods: &[("AddTrustedRootCertificate", add_trusted_root)],
        ..Class::new("AMT_PublicKeyManagementService", AMT)
    },
    Class {
        instances: Some(certificates),
        get: true,
        enumerate: true,
        delete: Some(delete_certificate),
        ..Class::new(CERT, AMT)
    },
    Class {
        instances: Some(user_initiated),
        get: true,
        enumerate: true,
        methods: &[("RequestStateChange", user_initiated_state_change)],
        ..Class::new("AMT_UserInitiatedConnectionService", AMT)
    },
    Class {
        instances: Some(environment_detection),
        get: true,
        enumerate: true,
        put: Some(put_environment_detection),
        ..Class::new("AMT_EnvironmentDetectionSettingData", AMT)
    },
];

fn uri(class: &str) -> String {
    format!("{AMT}{class}")
}

fn host_based_setup(ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    let name = "Intel(r) AMT Host Based Setup Service";
    let mut w = W::new(px, "IPS_HostBasedSetupService");
    w.v("AllowedControlModes", 2)
        .v("AllowedControlModes", 1)
        .v("CertChainStatus", 0)
        .s("ConfigurationNonce", &ctx.model.configuration_nonce())
        .s("CreationClassName", "IPS_HostBasedSetupService")
        .v("CurrentControlMode", ctx.model.control_mode)
        .s("ElementName", name)
        .v("EnabledState", 5)
        .s("Name", name)
        .s("SystemCreationClassName", "CIM_ComputerSystem")
        .s("SystemName", "Intel(r) AMT");
    vec![w.finish("IPS_HostBasedSetupService", IPS)]
}

/// Setup {NetAdminPassEncryptionType 2, NetworkAdminPassword = MD5("admin:realm:pw")}: the
/// device takes client control mode and from now on accepts only `admin` with that HA1.
fn setup(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let class = format!("{IPS}IPS_HostBasedSetupService");
    let rv = if ctx.model.control_mode != 0 {
        NOT_PERMITTED
    } else {
        match (
            number::<u32>(req, "NetAdminPassEncryptionType"),
            req.body_text("NetworkAdminPassword"),
        ) {
            (Some(2), Some(hash))
                if hash.len() == 32 && hash.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                ctx.model.credentials = Some(Box::new(Credentials {
                    user: "admin".into(),
                    ha1: hash.to_ascii_lowercase(),
                }));
                ctx.model.control_mode = 1;
                ctx.model.provisioned = true;
                ctx.audit_remote(1600, &[]);
                OK
            }
            _ => INVALID_PARAMETER,
        }
    };
    Ok(Answer::return_value(&class, "Setup", rv))
}

/// PT_STATUS_INVALID_CERT: a certificate that does not parse, or a root not trusted.
const INVALID_CERT: u32 = 2054;
/// PT_STATUS_AUTH_FAILED-like answer to a signature that does not verify.
const AUTH_FAILED: u32 = 2057;

fn bool_param(req: &Request, name: &str) -> bool {
    req.body_text(name)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// AddNextCertInChain {NextCertificate, IsLeafCertificate, IsRootCertificate}: the
/// provisioning certificate chain, leaf first; the root's SHA-256 must be one the firmware
/// trusts.
fn add_next_cert(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let class = format!("{IPS}IPS_HostBasedSetupService");
    let method = "AddNextCertInChain";
    let der = base64::engine::general_purpose::STANDARD
        .decode(req.body_text("NextCertificate").unwrap_or_default().trim())
        .ok()
        .filter(|d| openssl::x509::X509::from_der(d).is_ok());
    let Some(der) = der else {
        return Ok(Answer::return_value(&class, method, INVALID_CERT));
    };
    let (leaf, root) = (
        bool_param(req, "IsLeafCertificate"),
        bool_param(req, "IsRootCertificate"),
    );
    let r = remote(ctx);
    if leaf {
        r.chain.clear();
        r.chain_complete = false;
    } else if r.chain.is_empty() || r.chain.len() >= 4 {
        return Ok(Answer::return_value(&class, method, INVALID_PARAMETER));
    }
    if root {
        let hash = crate::provision::sha256_hex(&der);
        if !r.trusted_hashes.contains(&hash) {
            r.chain.clear();
            return Ok(Answer::return_value(&class, method, INVALID_CERT));
        }
        r.chain_complete = true;
    }
    r.chain.push(der);
    Ok(Answer::return_value(&class, method, OK))
}

/// Verifies DigitalSignature over ConfigurationNonce ‖ McNonce with the leaf's public key.
fn signature_ok(ctx: &Ctx<'_>, req: &Request) -> bool {
    use base64::Engine as _;
    let b64 = |k: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(req.body_text(k).unwrap_or_default().trim())
            .ok()
    };
    let (Some(mc), Some(sig)) = (b64("McNonce"), b64("DigitalSignature")) else {
        return false;
    };
    let Some(r) = ctx.model.remote.as_ref().filter(|r| r.chain_complete) else {
        return false;
    };
    let Some(key) = r
        .chain
        .first()
        .and_then(|d| openssl::x509::X509::from_der(d).ok())
        .and_then(|c| c.public_key().ok())
    else {
        return false;
    };
    let fw = ctx.model.nonce.as_deref().copied().unwrap_or([0x5a; 20]);
    let Ok(mut v) = openssl::sign::Verifier::new(openssl::hash::MessageDigest::sha256(), &key)
    else {
        return false;
    };
    v.update(&fw).is_ok() && v.update(&mc).is_ok() && v.verify(&sig).unwrap_or(false)
}

/// AdminSetup {…, McNonce, SigningAlgorithm, DigitalSignature}: admin control mode, if the
/// chain is complete and the signature verifies against its leaf.
fn admin_setup(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let class = format!("{IPS}IPS_HostBasedSetupService");
    let refuse = ctx
        .model
        .remote
        .as_ref()
        .is_some_and(|r| r.refuse_admin_setup);
    let hash = req
        .body_text("NetworkAdminPassword")
        .filter(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_ascii_lowercase);
    let rv = if ctx.model.control_mode != 0 {
        NOT_PERMITTED
    } else if refuse {
        1
    } else if !signature_ok(ctx, req) {
        AUTH_FAILED
    } else if let Some(ha1) = hash {
        ctx.model.credentials = Some(Box::new(Credentials {
            user: "admin".into(),
            ha1,
        }));
        ctx.model.control_mode = 2;
        ctx.model.provisioned = true;
        ctx.audit_remote(1600, &[]);
        OK
    } else {
        INVALID_PARAMETER
    };
    Ok(Answer::return_value(&class, "AdminSetup", rv))
}

/// UpgradeClientToAdmin {McNonce, SigningAlgorithm, DigitalSignature}: client → admin control
/// mode; the admin password stays.
fn upgrade_client_to_admin(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let class = format!("{IPS}IPS_HostBasedSetupService");
    let rv = if ctx.model.control_mode != 1 {
        NOT_PERMITTED
    } else if !signature_ok(ctx, req) {
        AUTH_FAILED
    } else {
        ctx.model.control_mode = 2;
        OK
    };
    Ok(Answer::return_value(&class, "UpgradeClientToAdmin", rv))
}

fn remote_access_service(_ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    let name = "Intel(r) AMT Remote Access Service";
    let mut w = W::new(px, "AMT_RemoteAccessService");
    w.s("CreationClassName", "AMT_RemoteAccessService")
        .s("ElementName", name)
        .s("Name", name)
        .s("SystemCreationClassName", "CIM_ComputerSystem")
        .s("SystemName", "Intel(r) AMT");
    vec![w.finish("AMT_RemoteAccessService", AMT)]
}

fn sap_selectors(name: &str) -> [(&str, &str); 4] {
    [
        ("CreationClassName", SAP),
        ("Name", name),
        ("SystemCreationClassName", "CIM_ComputerSystem"),
        ("SystemName", "Intel(r) AMT"),
    ]
}

fn remote<'m>(ctx: &'m mut Ctx<'_>) -> &'m mut RemoteAccess {
    ctx.model.remote.get_or_insert_with(Box::default)
}

/// AddMpServer: the ingress the device will dial. Only user name and password
/// authentication (2), which is what Homeport's ingress speaks.
fn add_mp_server(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let class = uri("AMT_RemoteAccessService");
    let text = |k: &str| req.body_text(k).unwrap_or_default().to_string();
    let (address, username, password) = (text("AccessInfo"), text("Username"), text("Password"));
    let format = number::<u32>(req, "InfoFormat");
    let port = number::<u16>(req, "Port");
    let auth = number::<u32>(req, "AuthMethod");
    let valid = !address.is_empty()
        && matches!(format, Some(3 | 4 | 201))
        && port.is_some_and(|p| p >= 1024)
        && auth == Some(2)
        && !username.is_empty()
        && !password.is_empty();
    if ctx.model.control_mode == 0 {
        return Ok(Answer::return_value(&class, "AddMpServer", NOT_PERMITTED));
    }
    if !valid {
        return Ok(Answer::return_value(
            &class,
            "AddMpServer",
            INVALID_PARAMETER,
        ));
    }
    let r = remote(ctx);
    if r.servers
        .iter()
        .any(|s| s.address == address && s.port == port.unwrap_or(0))
    {
        return Ok(Answer::return_value(&class, "AddMpServer", DUPLICATE));
    }
    if r.servers.len() >= MAX_ENTRIES {
        return Ok(Answer::return_value(&class, "AddMpServer", LIMIT));
    }
    r.counter += 1;
    let name = format!("Intel(r) AMT:Management Presence Server {}", r.counter);
    r.servers.push(MpServer {
        name: name.clone(),
        address,
        port: port.unwrap_or(0),
        username,
        password,
    });
    let mut fields = String::from("<g:MpServer>");
    epr_into(&mut fields, &uri(SAP), &sap_selectors(&name));
    fields.push_str("</g:MpServer><g:ReturnValue>0</g:ReturnValue>");
    Ok(Answer::output(&class, "AddMpServer", &fields))
}

/// AddRemoteAccessPolicyRule {Trigger 0 user-initiated | 1 alert | 2 periodic,
/// TunnelLifeTime, ExtendedData, MpServer EPR}.
fn add_policy(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let class = uri("AMT_RemoteAccessService");
    let method = "AddRemoteAccessPolicyRule";
    let trigger = number::<u8>(req, "Trigger");
    let lifetime = number::<u32>(req, "TunnelLifeTime").unwrap_or(0);
    let server = req
        .body()
        .and_then(|b| b.find("MpServer"))
        .and_then(|m| {
            m.selectors()
                .into_iter()
                .find(|(n, _)| *n == "Name")
                .map(|(_, v)| v.to_string())
        })
        .unwrap_or_default();
    let name = match trigger {
        Some(0) => "User Initiated",
        Some(1) => "Alert",
        Some(2) => "Periodic",
        _ => return Ok(Answer::return_value(&class, method, INVALID_PARAMETER)),
    };
    let r = remote(ctx);
    if !r.servers.iter().any(|s| s.name == server) {
        return Ok(Answer::return_value(&class, method, INVALID_PARAMETER));
    }
    if r.policies.iter().any(|p| p.name == name) {
        return Ok(Answer::return_value(&class, method, DUPLICATE));
    }
    r.policies.push(Policy {
        name: name.into(),
        trigger: trigger.unwrap_or(0),
        tunnel_lifetime: lifetime,
        server,
    });
    let mut fields = String::from("<g:PolicyRule>");
    epr_into(
        &mut fields,
        &uri(POLICY),
        &[
            ("CreationClassName", POLICY),
            ("PolicyRuleName", name),
            ("SystemCreationClassName", "CIM_ComputerSystem"),
            ("SystemName", "Intel(r) AMT"),
        ],
    );
    fields.push_str("</g:PolicyRule><g:ReturnValue>0</g:ReturnValue>");
    Ok(Answer::output(&class, method, &fields))
}

fn mp_servers(ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    let Some(r) = &ctx.model.remote else {
        return Vec::new();
    };
    r.servers
        .iter()
        .map(|s| {
            let mut w = W::new(px, SAP);
            w.s("AccessInfo", &s.address)
                .v("CN", "")
                .s("CreationClassName", SAP)
                .s("ElementName", "Intel(r) AMT:Management Presence Server")
                .v("InfoFormat", 201)
                .s("Name", &s.name)
                .v("Port", s.port)
                .s("SystemCreationClassName", "CIM_ComputerSystem")
                .s("SystemName", "Intel(r) AMT");
            w.finish(SAP, AMT)
        })
        .collect()
}

/// Deleting a server also deletes the policies bound to it, as AMT does.
fn delete_mp_server(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let name = req
        .selector("Name")
        .ok_or(WsFault::InvalidSelectors)?
        .to_string();
    let r = remote(ctx);
    let before = r.servers.len();
    r.servers.retain(|s| s.name != name);
    if r.servers.len() == before {
        return Err(WsFault::InvalidSelectors);
    }
    r.policies.retain(|p| p.server != name);
    Ok(Answer::deleted())
}

fn policies(ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    let Some(r) = &ctx.model.remote else {
        return Vec::new();
    };
    r.policies
        .iter()
        .map(|p| {
            let mut w = W::new(px, POLICY);
            w.s("CreationClassName", POLICY)
                .s("ElementName", &p.name)
                .s("PolicyRuleName", &p.name)
                .s("SystemCreationClassName", "CIM_ComputerSystem")
                .s("SystemName", "Intel(r) AMT")
                .v("Trigger", p.trigger)
                .v("TunnelLifeTime", p.tunnel_lifetime);
            w.finish(POLICY, AMT)
        })
        .collect()
}

fn delete_policy(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let name = req
        .selector("PolicyRuleName")
        .ok_or(WsFault::InvalidSelectors)?
        .to_string();
    let r = remote(ctx);
    let before = r.policies.len();
    r.policies.retain(|p| p.name != name);
    if r.policies.len() == before {
        // AMT answers a missing rule with a fault (HTTP 400); rps tolerates it.
        return Err(WsFault::InvalidSelectors);
    }
    Ok(Answer::deleted())
}

fn public_key_management(_ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    let name = "Intel(r) AMT Public Key Management Service";
    let mut w = W::new(px, "AMT_PublicKeyManagementService");
    w.s("CreationClassName", "AMT_PublicKeyManagementService")
        .s("ElementName", name)
        .s("Name", name)
        .s("SystemCreationClassName", "CIM_ComputerSystem")
        .s("SystemName", "Intel(r) AMT");
    vec![w.finish("AMT_PublicKeyManagementService", AMT)]
}

/// AddTrustedRootCertificate {CertificateBlob base64 DER}: must be a certificate.
fn add_trusted_root(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let class = uri("AMT_PublicKeyManagementService");
    let method = "AddTrustedRootCertificate";
    let blob = req
        .body_text("CertificateBlob")
        .unwrap_or_default()
        .trim()
        .to_string();
    let der = base64::engine::general_purpose::STANDARD.decode(&blob).ok();
    let Some(cert) = der.and_then(|d| openssl::x509::X509::from_der(&d).ok()) else {
        return Ok(Answer::return_value(&class, method, INVALID_PARAMETER));
    };
    let subject = cert
        .subject_name()
        .entries()
        .filter_map(|e| e.data().to_string().ok())
        .collect::<Vec<_>>()
        .join(",");
    let r = remote(ctx);
    if r.roots.iter().any(|(_, b, _)| *b == blob) {
        return Ok(Answer::return_value(&class, method, DUPLICATE));
    }
    if r.roots.len() >= MAX_ENTRIES {
        return Ok(Answer::return_value(&class, method, LIMIT));
    }
    r.counter += 1;
    let id = format!("Intel(r) AMT Certificate: Handle: {}", r.counter);
    r.roots.push((id.clone(), blob, subject));
    let mut fields = String::from("<g:CreatedCertificate>");
    epr_into(&mut fields, &uri(CERT), &[("InstanceID", &id)]);
    fields.push_str("</g:CreatedCertificate><g:ReturnValue>0</g:ReturnValue>");
    Ok(Answer::output(&class, method, &fields))
}

fn certificates(ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    let Some(r) = &ctx.model.remote else {
        return Vec::new();
    };
    r.roots
        .iter()
        .map(|(id, blob, subject)| {
            let mut w = W::new(px, CERT);
            w.s("ElementName", "Intel(r) AMT Certificate")
                .s("InstanceID", id)
                .s("Issuer", subject)
                .v("ReadOnlyCertificate", false)
                .s("Subject", subject)
                .v("TrustedRootCertificate", true)
                .s("X509Certificate", blob);
            w.finish(CERT, AMT)
        })
        .collect()
}

fn delete_certificate(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let id = req
        .selector("InstanceID")
        .ok_or(WsFault::InvalidSelectors)?
        .to_string();
    let r = remote(ctx);
    let before = r.roots.len();
    r.roots.retain(|(i, _, _)| *i != id);
    if r.roots.len() == before {
        return Err(WsFault::InvalidSelectors);
    }
    Ok(Answer::deleted())
}

fn user_initiated(ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    let name = "Intel(r) AMT User Initiated Connection Service";
    let state = ctx
        .model
        .remote
        .as_ref()
        .map_or(32768, |r| r.user_initiated);
    let mut w = W::new(px, "AMT_UserInitiatedConnectionService");
    w.s("CreationClassName", "AMT_UserInitiatedConnectionService")
        .s("ElementName", name)
        .v("EnabledState", state)
        .s("Name", name)
        .s("SystemCreationClassName", "CIM_ComputerSystem")
        .s("SystemName", "Intel(r) AMT");
    vec![w.finish("AMT_UserInitiatedConnectionService", AMT)]
}

/// RequestStateChange 32768 (none) … 32771 (BIOS and OS may start a tunnel).
fn user_initiated_state_change(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let class = uri("AMT_UserInitiatedConnectionService");
    let rv = match number::<u32>(req, "RequestedState") {
        Some(s) if (32768..=32771).contains(&s) => {
            remote(ctx).user_initiated = s;
            OK
        }
        _ => INVALID_PARAMETER,
    };
    Ok(Answer::return_value(&class, "RequestStateChange", rv))
}

fn environment_detection(ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    let name = "Intel(r) AMT Environment Detection Settings";
    let mut w = W::new(px, "AMT_EnvironmentDetectionSettingData");
    w.v("DetectionAlgorithm", 0);
    if let Some(r) = &ctx.model.remote {
        for d in &r.detection {
            w.s("DetectionStrings", d);
        }
    }
    w.s("ElementName", name).s("InstanceID", name);
    vec![w.finish("AMT_EnvironmentDetectionSettingData", AMT)]
}

/// Put: DetectionStrings (repeated) are the domains in which the device is "inside" and
/// does not open CIRA.
fn put_environment_detection(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let instance = req
        .input()
        .filter(|i| i.name() == "AMT_EnvironmentDetectionSettingData")
        .ok_or(WsFault::InvalidRepresentation)?;
    let strings: Vec<String> = instance
        .children()
        .filter(|c| c.name() == "DetectionStrings")
        .map(|c| c.text().trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if strings.len() > 5 || strings.iter().any(|s| s.len() > 192) {
        return Err(WsFault::InvalidRepresentation);
    }
    if let Some(v) = instance.child("DetectionAlgorithm") {
        if v.text().trim() != "0" {
            return Err(WsFault::InvalidRepresentation);
        }
    }
    remote(ctx).detection = strings;
    let item = environment_detection(ctx, super::render::GET_PX)
        .into_iter()
        .next()
        .ok_or(WsFault::InvalidRepresentation)?;
    Ok(instance_answer(&format!("{TRANSFER}PutResponse"), item))
}
