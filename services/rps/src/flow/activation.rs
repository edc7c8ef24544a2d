//! Activation in client control mode, then what a profile asks for (openamt-rps.md §2.2,
//! §2.4, §2.6, §2.7): read the realm, store the new credentials, Setup, register the device,
//! clear earlier remote-access configuration, set redirection and user consent, and
//! configure CIRA so the device dials the ingress by itself.
//!
//! A device already in client control mode whose stored password the client sent is taken
//! through every step after Setup again: each step reads the device's state and sets it, so
//! running the client again completes a flow that a crash or a dropped socket cut off.

use homeport_secrets::SecretString;
use homeport_wsman::amt::features::{self as feat, CONSENT_ALL, CONSENT_KVM, CONSENT_NONE};
use homeport_wsman::amt::{self, pull_page, Properties};
use homeport_wsman::envelope::{epr, Class};
use homeport_wsman::response::number;
use homeport_wsman::xml::Element;
use homeport_wsman::{Request, Response};

use super::{
    admin_password_hash, realm_is_valid, Effect, Finish, Flow, Link, LinkError, Output, Reply,
};
use crate::protocol::StatusMessage;

pub const HOST_BASED_SETUP: Class = Class::ips("IPS_HostBasedSetupService");
pub const REMOTE_ACCESS_SERVICE: Class = Class::amt("AMT_RemoteAccessService");
pub const REMOTE_ACCESS_POLICY_RULE: Class = Class::amt("AMT_RemoteAccessPolicyRule");
pub const MANAGEMENT_PRESENCE_SAP: Class = Class::amt("AMT_ManagementPresenceRemoteSAP");
pub const PUBLIC_KEY_MANAGEMENT: Class = Class::amt("AMT_PublicKeyManagementService");
pub const PUBLIC_KEY_CERTIFICATE: Class = Class::amt("AMT_PublicKeyCertificate");
pub const USER_INITIATED_CONNECTION: Class = Class::amt("AMT_UserInitiatedConnectionService");
pub const ENVIRONMENT_DETECTION: Class = Class::amt("AMT_EnvironmentDetectionSettingData");
pub const ETHERNET_PORT: Class = Class::amt("AMT_EthernetPortSettings");
pub const WIFI_PORT_SERVICE: Class = Class::amt("AMT_WiFiPortConfigurationService");
pub const WIFI_PORT: Class = Class::cim("CIM_WiFiPort");
pub const WIFI_ENDPOINT_SETTINGS: Class = Class::cim("CIM_WiFiEndpointSettings");
/// The wireless interface's settings instance.
const WIRELESS: &str = "Intel(r) AMT Ethernet Port Settings 1";
/// The wired interface's settings instance.
const WIRED: &str = "Intel(r) AMT Ethernet Port Settings 0";

/// Policy rules the unconfiguration removes, in the reference's order.
const POLICY_RULES: [&str; 3] = ["User Initiated", "Alert", "Periodic"];
/// Periodic policy ExtendedData: 8 bytes big-endian 25 (a 25 s interval).
const PERIODIC_EXTENDED_DATA: &str = "AAAAAAAAABk=";
/// An enumeration read at most this many pages and items: AMT keeps a handful of MPS entries
/// and certificates, and a client playing the device must not grow memory without bound.
const MAX_PAGES: u32 = 16;
const MAX_ITEMS: usize = 64;
/// WS-Man exchanges a flow may take (an ACM activation with CIRA needs about 30).
pub const MAX_EXCHANGES: u32 = 200;
/// A user-initiated tunnel stays up this many seconds.
const USER_INITIATED_LIFETIME: u32 = 300;

/// Redirection and consent a profile asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    pub kvm: bool,
    pub sol: bool,
    pub ider: bool,
    /// 0 none, 1 KVM, 4294967295 all.
    pub consent: u32,
}

/// Where the device opens its tunnel.
#[derive(Clone, Debug)]
pub struct CiraPlan {
    pub address: String,
    pub format: u32,
    pub port: u32,
    pub username: String,
    pub password: SecretString,
    pub common_name: String,
    /// The ingress root certificate, base64 DER.
    pub root_certificate: String,
    /// A domain the device will never be in, so it always considers itself outside and
    /// keeps the tunnel up.
    pub environment_domain: String,
}

/// Everything decided before the first exchange.
#[derive(Clone, Debug)]
pub struct Plan {
    pub guid: String,
    /// 0 unprovisioned; 1 already in client control mode (completing an earlier run).
    pub current_mode: u8,
    /// The digest user and password the device accepts now (LSA or admin).
    pub user: String,
    pub password: SecretString,
    /// The admin password the device ends up with.
    pub amt_password: SecretString,
    pub features: Features,
    pub cira: Option<CiraPlan>,
    /// Admin control mode: the provisioning certificate and what AdminSetup needs.
    pub acm: Option<AcmPlan>,
    /// Wired network settings (openamt-rps.md §2.5); `None` leaves the network as it is.
    pub network: Option<NetworkPlan>,
    pub wifi: WifiPlan,
}

/// Wi-Fi as the profile wants it: profiles added in priority order, local profile sync.
#[derive(Clone, Debug, Default)]
pub struct WifiPlan {
    pub local_sync: bool,
    pub profiles: Vec<WifiProfile>,
}

/// One Wi-Fi profile with its passphrase (from the secret store).
#[derive(Clone, Debug)]
pub struct WifiProfile {
    pub name: String,
    pub ssid: String,
    pub authentication_method: u32,
    pub encryption_method: u32,
    pub priority: u32,
    pub passphrase: SecretString,
}

/// The wired interface as the profile wants it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetworkPlan {
    pub dhcp: bool,
    /// AMT follows the OS's address (static profiles; DHCP ones always sync).
    pub ip_sync: bool,
}

/// What admin control mode needs (openamt-rps.md §2.2 crypto details).
pub struct AcmPlan {
    /// Base64 DER, leaf first, root last.
    pub chain: Vec<String>,
    /// The provisioning certificate's private key: it signs the firmware's nonce and ours
    /// (none when the device is in admin control mode already).
    pub key: Option<openssl::pkey::PKey<openssl::pkey::Private>>,
    /// Our 20-byte nonce (McNonce), drawn by the caller.
    pub mc_nonce: [u8; 20],
    /// Set after AdminSetup or the upgrade; `None` for a device in admin control mode whose
    /// MEBx password Homeport does not hold.
    pub mebx_password: Option<SecretString>,
}

impl Clone for AcmPlan {
    fn clone(&self) -> Self {
        AcmPlan {
            chain: self.chain.clone(),
            key: self.key.clone(),
            mc_nonce: self.mc_nonce,
            mebx_password: self.mebx_password.clone(),
        }
    }
}

impl std::fmt::Debug for AcmPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmPlan")
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum St {
    GeneralSettings,
    SaveSecrets,
    Setup,
    CheckSetup,
    /// IPS_HostBasedSetupService Get: the firmware nonce and the allowed modes.
    SetupService,
    AddCert(usize),
    AdminSetup,
    Upgrade,
    SetMebx,
    Register,
    DeletePolicy(usize),
    EnumerateSap,
    PullSap,
    DeleteSap,
    EnumerateCerts,
    PullCerts,
    DeleteCert,
    EnumerateWifi,
    PullWifi,
    DeleteWifi,
    GetWifiService,
    PutWifiService,
    EnableWifiPort,
    AddWifi(usize),
    PutGeneral,
    EnumerateEthernet,
    PullEthernet,
    PutEthernet,
    GetRedirection,
    GetKvm,
    GetOptIn,
    SetRedirection,
    SetKvm,
    PutRedirection,
    PutOptIn,
    AddRootCertificate,
    AddMpServer,
    AddPolicy(usize),
    EnableUserInitiated,
    GetEnvironment,
    PutEnvironment,
    Finished,
}

pub struct Activation {
    plan: Plan,
    link: Link,
    st: St,
    realm: String,
    /// Instances found by an enumeration, deleted one by one.
    doomed: Vec<String>,
    redirection: Option<feat::Redirection>,
    kvm_on: bool,
    opt_in: Option<feat::OptIn>,
    mp_server: Option<String>,
    status: StatusMessage,
    mode: u8,
    /// ConfigurationNonce of host-based setup (ACM).
    fw_nonce: Vec<u8>,
    /// Pages of the current enumeration.
    pages: u32,
    /// CheckSetup is trying the new admin credentials (the lost setup may have applied them).
    checking_as_admin: bool,
    /// AMT_GeneralSettings as first read.
    general: Option<Properties>,
    /// The device has a wireless interface (AMT_EthernetPortSettings 1 with a MAC).
    has_wireless: bool,
}

impl Activation {
    pub fn new(plan: Plan) -> Activation {
        let link = Link::new(&plan.guid, &plan.user, plan.password.expose());
        Activation {
            mode: plan.current_mode,
            plan,
            link,
            st: St::GeneralSettings,
            realm: String::new(),
            doomed: Vec::new(),
            redirection: None,
            kvm_on: false,
            opt_in: None,
            mp_server: None,
            status: StatusMessage::default(),
            fw_nonce: Vec::new(),
            pages: 0,
            checking_as_admin: false,
            general: None,
            has_wireless: false,
        }
    }

    fn target_mode(&self) -> u8 {
        if self.plan.acm.is_some() {
            2
        } else {
            1
        }
    }

    /// The signature AdminSetup and UpgradeClientToAdmin carry: RSA over fwNonce ‖ McNonce
    /// with the provisioning key (SigningAlgorithm 2, SHA-256), base64.
    fn signature(&self) -> Result<String, String> {
        use base64::Engine as _;
        let acm = self
            .plan
            .acm
            .as_ref()
            .ok_or("no provisioning certificate")?;
        let key = acm.key.as_ref().ok_or("no provisioning key")?;
        let mut signer = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), key)
            .map_err(|e| e.to_string())?;
        signer.update(&self.fw_nonce).map_err(|e| e.to_string())?;
        signer.update(&acm.mc_nonce).map_err(|e| e.to_string())?;
        let sig = signer.sign_to_vec().map_err(|e| e.to_string())?;
        Ok(base64::engine::general_purpose::STANDARD.encode(sig))
    }

    fn mode_text(&self) -> &'static str {
        match (self.plan.current_mode, self.target_mode()) {
            (0, 1) => "Client control mode.",
            (0, _) => "Admin control mode.",
            (1, 2) => "Upgraded to admin control mode.",
            (1, _) => "already enabled in client mode.",
            _ => "already enabled in admin mode.",
        }
    }

    /// Ends the flow failed. The reason is always in `Status` (the one field rpc prints for
    /// an error); a failure in the CIRA steps is also marked in `CIRAConnection`.
    fn fail(&mut self, why: impl Into<String>) -> Output {
        let in_cira = matches!(
            self.st,
            St::AddRootCertificate
                | St::AddMpServer
                | St::AddPolicy(_)
                | St::EnableUserInitiated
                | St::GetEnvironment
                | St::PutEnvironment
        );
        self.st = St::Finished;
        let why = why.into();
        let mut status = self.status.clone();
        status.status = Some(if self.mode == self.plan.current_mode && self.mode == 0 {
            format!("Failed to activate: {why}")
        } else {
            format!("{} Configuration failed: {why}", self.mode_text())
        });
        if in_cira {
            status.cira_connection = Some("Failed".into());
        }
        Output::Done(Finish::failed(status, super::mode_name(self.mode)))
    }

    /// Enters `st` and produces its first output.
    fn enter(&mut self, st: St) -> Output {
        self.st = st;
        let p = &self.plan;
        let req = match &self.st {
            // These states' requests are sent by the answer that leads to them (a pull's
            // context, a Put of what was read); nothing enters them from here.
            St::PullSap
            | St::PullCerts
            | St::PullWifi
            | St::PutWifiService
            | St::PullEthernet
            | St::PutEthernet
            | St::PutEnvironment => return self.fail("a state was entered out of order"),
            St::GeneralSettings => Request::get(amt::GENERAL_SETTINGS),
            St::SaveSecrets => {
                return Output::Effect(Effect::SaveSecrets {
                    amt_password: p.amt_password.clone(),
                    mps_password: p.cira.as_ref().map(|c| c.password.clone()),
                    mebx_password: p.acm.as_ref().and_then(|a| a.mebx_password.clone()),
                })
            }
            St::Setup => Request::invoke(
                HOST_BASED_SETUP,
                "Setup",
                &[
                    ("NetAdminPassEncryptionType", "2".into()),
                    (
                        "NetworkAdminPassword",
                        admin_password_hash(&self.realm, p.amt_password.expose()),
                    ),
                ],
            ),
            St::CheckSetup => Request::get(HOST_BASED_SETUP),
            St::Register => {
                return Output::Effect(Effect::Register {
                    after_setup: self.mode != p.current_mode,
                    control_mode: super::mode_name(self.mode),
                    mps_username: p.cira.as_ref().map(|c| c.username.clone()),
                })
            }
            St::SetupService => Request::get(HOST_BASED_SETUP),
            St::AddCert(i) => {
                let chain = p
                    .acm
                    .as_ref()
                    .map(|a| a.chain.as_slice())
                    .unwrap_or_default();
                let Some(cert) = chain.get(*i) else {
                    return self.fail("no certificate to add");
                };
                Request::invoke(
                    HOST_BASED_SETUP,
                    "AddNextCertInChain",
                    &[
                        ("NextCertificate", cert.clone()),
                        ("IsLeafCertificate", (*i == 0).to_string()),
                        ("IsRootCertificate", (*i + 1 == chain.len()).to_string()),
                    ],
                )
            }
            St::AdminSetup | St::Upgrade => {
                use base64::Engine as _;
                let signature = match self.signature() {
                    Ok(s) => s,
                    Err(e) => return self.fail(format!("signing the setup: {e}")),
                };
                let nonce = p
                    .acm
                    .as_ref()
                    .map(|a| base64::engine::general_purpose::STANDARD.encode(a.mc_nonce))
                    .unwrap_or_default();
                if self.st == St::AdminSetup {
                    Request::invoke(
                        HOST_BASED_SETUP,
                        "AdminSetup",
                        &[
                            ("NetAdminPassEncryptionType", "2".into()),
                            (
                                "NetworkAdminPassword",
                                admin_password_hash(&self.realm, p.amt_password.expose()),
                            ),
                            ("McNonce", nonce),
                            ("SigningAlgorithm", "2".into()),
                            ("DigitalSignature", signature),
                        ],
                    )
                } else {
                    Request::invoke(
                        HOST_BASED_SETUP,
                        "UpgradeClientToAdmin",
                        &[
                            ("McNonce", nonce),
                            ("SigningAlgorithm", "2".into()),
                            ("DigitalSignature", signature),
                        ],
                    )
                }
            }
            St::SetMebx => Request::invoke(
                amt::SETUP_AND_CONFIGURATION,
                "SetMEBxPassword",
                &[(
                    "Password",
                    xml_text(
                        p.acm
                            .as_ref()
                            .and_then(|a| a.mebx_password.as_ref())
                            .map(|m| m.expose())
                            .unwrap_or_default(),
                    ),
                )],
            ),
            St::DeletePolicy(i) => Request::delete(REMOTE_ACCESS_POLICY_RULE)
                .with_selector("CreationClassName", "AMT_RemoteAccessPolicyRule")
                .with_selector("PolicyRuleName", POLICY_RULES[*i])
                .with_selector("SystemCreationClassName", "CIM_ComputerSystem")
                .with_selector("SystemName", "Intel(r) AMT"),
            St::EnumerateSap | St::EnumerateCerts => {
                self.pages = 0;
                Request::enumerate(if self.st == St::EnumerateSap {
                    MANAGEMENT_PRESENCE_SAP
                } else {
                    PUBLIC_KEY_CERTIFICATE
                })
            }
            St::DeleteSap => match self.doomed.last() {
                Some(name) => Request::delete(MANAGEMENT_PRESENCE_SAP)
                    .with_selector("CreationClassName", "AMT_ManagementPresenceRemoteSAP")
                    .with_selector("Name", name)
                    .with_selector("SystemCreationClassName", "CIM_ComputerSystem")
                    .with_selector("SystemName", "Intel(r) AMT"),
                None => return self.enter(St::EnumerateCerts),
            },
            St::DeleteCert => match self.doomed.last() {
                Some(id) => Request::delete(PUBLIC_KEY_CERTIFICATE).with_selector("InstanceID", id),
                None => return self.enter(St::EnumerateWifi),
            },
            St::EnumerateWifi => {
                self.pages = 0;
                Request::enumerate(WIFI_ENDPOINT_SETTINGS)
            }
            St::DeleteWifi => match self.doomed.last() {
                Some(id) => Request::delete(WIFI_ENDPOINT_SETTINGS).with_selector("InstanceID", id),
                None => return self.network(),
            },
            St::GetWifiService => Request::get(WIFI_PORT_SERVICE),
            St::EnableWifiPort => Request::invoke(
                WIFI_PORT,
                "RequestStateChange",
                &[("RequestedState", "32769".into())],
            ),
            St::AddWifi(i) => {
                let Some(w) = p.wifi.profiles.get(*i) else {
                    return self.after_wifi();
                };
                add_wifi_settings(w)
            }
            St::PutGeneral => {
                let mut props = self.general.clone().unwrap_or_default();
                props.set("SharedFQDN", "true");
                props.set("AMTNetworkEnabled", "1");
                props.set("RmcpPingResponseEnabled", "true");
                props.to_put(amt::GENERAL_SETTINGS)
            }
            St::EnumerateEthernet => Request::enumerate(ETHERNET_PORT),
            St::GetRedirection => Request::get(amt::REDIRECTION_SERVICE),
            St::GetKvm => Request::get(amt::KVM_REDIRECTION_SAP),
            St::GetOptIn => Request::get(amt::OPT_IN_SERVICE),
            St::SetRedirection => feat::redirection_state_change(p.features.sol, p.features.ider),
            St::SetKvm => feat::kvm_state_change(p.features.kvm),
            St::PutRedirection => {
                let mut props = self
                    .redirection
                    .as_ref()
                    .map(|r| r.properties.clone())
                    .unwrap_or_default();
                let any = p.features.kvm || p.features.sol || p.features.ider;
                props.set("ListenerEnabled", any.to_string());
                props.set(
                    "EnabledState",
                    (32768 + u32::from(p.features.ider) + 2 * u32::from(p.features.sol))
                        .to_string(),
                );
                props.to_put(amt::REDIRECTION_SERVICE)
            }
            St::PutOptIn => {
                let mut props = self
                    .opt_in
                    .as_ref()
                    .map(|o| o.properties.clone())
                    .unwrap_or_default();
                props.set("OptInRequired", p.features.consent.to_string());
                props.to_put(amt::OPT_IN_SERVICE)
            }
            St::AddRootCertificate => match &p.cira {
                Some(c) => Request::invoke(
                    PUBLIC_KEY_MANAGEMENT,
                    "AddTrustedRootCertificate",
                    &[("CertificateBlob", c.root_certificate.clone())],
                ),
                None => return self.finish(),
            },
            St::AddMpServer => {
                let Some(c) = &p.cira else {
                    return self.finish();
                };
                let mut params = vec![
                    ("AccessInfo", xml_text(&c.address)),
                    ("InfoFormat", c.format.to_string()),
                    ("Port", c.port.to_string()),
                    ("AuthMethod", "2".to_string()),
                    ("Username", xml_text(&c.username)),
                    ("Password", xml_text(c.password.expose())),
                ];
                if c.format == 3 && !c.common_name.is_empty() {
                    params.push(("CN", xml_text(&c.common_name)));
                }
                Request::invoke(REMOTE_ACCESS_SERVICE, "AddMpServer", &params)
            }
            St::AddPolicy(i) => {
                let name = self.mp_server.clone().unwrap_or_default();
                let server = epr(
                    MANAGEMENT_PRESENCE_SAP,
                    &[
                        ("CreationClassName", "AMT_ManagementPresenceRemoteSAP"),
                        ("Name", &name),
                        ("SystemCreationClassName", "CIM_ComputerSystem"),
                        ("SystemName", "Intel(r) AMT"),
                    ],
                );
                let (trigger, lifetime, extended) = if *i == 0 {
                    (2, 0, Some(PERIODIC_EXTENDED_DATA))
                } else {
                    (0, USER_INITIATED_LIFETIME, None)
                };
                let mut params = vec![
                    ("Trigger", trigger.to_string()),
                    ("TunnelLifeTime", lifetime.to_string()),
                ];
                if let Some(x) = extended {
                    params.push(("ExtendedData", x.to_string()));
                }
                params.push(("MpServer", server));
                Request::invoke(REMOTE_ACCESS_SERVICE, "AddRemoteAccessPolicyRule", &params)
            }
            St::EnableUserInitiated => Request::invoke(
                USER_INITIATED_CONNECTION,
                "RequestStateChange",
                &[("RequestedState", "32771".into())],
            ),
            St::GetEnvironment => Request::get(ENVIRONMENT_DETECTION),
            St::Finished => return self.finish(),
        };
        Output::Send(self.link.send(&req))
    }

    fn send(&mut self, req: &Request) -> Output {
        Output::Send(self.link.send(req))
    }

    fn finish(&mut self) -> Output {
        self.st = St::Finished;
        self.status.status = Some(self.mode_text().into());
        Output::Done(Finish {
            ok: true,
            status: self.status.clone(),
            outcome: "activated",
            control_mode: super::mode_name(self.mode),
        })
    }

    /// The answer to the current state's request, parsed; `Err` ends the flow.
    fn answer(&mut self, resp: Response) -> Output {
        match self.st.clone() {
            St::GeneralSettings => {
                let realm = amt::instance(&resp, amt::GENERAL_SETTINGS)
                    .ok()
                    .and_then(|e| e.text_of("DigestRealm"))
                    .unwrap_or_default()
                    .to_string();
                if !realm_is_valid(&realm) {
                    return self.fail("the device's digest realm is not Digest: and 32 hex digits");
                }
                self.realm = realm;
                self.general = amt::instance(&resp, amt::GENERAL_SETTINGS)
                    .ok()
                    .map(Properties::from_element);
                self.enter(St::SaveSecrets)
            }
            St::Setup => match resp.method_output("Setup") {
                Ok((_, 0)) => self.after_setup(),
                // The device may have taken it before answering badly: check.
                Ok((_, rv)) => {
                    tracing::debug!(device = %self.plan.guid, rv, "Setup refused");
                    self.fail(format!(
                        "Setup returned {rv} ({})",
                        amt::return_value_text(rv)
                    ))
                }
                Err(_) => self.enter(St::CheckSetup),
            },
            St::CheckSetup => {
                let mode: u32 = amt::instance(&resp, HOST_BASED_SETUP)
                    .and_then(|e| number(e, "CurrentControlMode"))
                    .unwrap_or(0);
                let target = u32::from(self.target_mode());
                match mode {
                    m if m == target && target == 1 => self.after_setup(),
                    m if m == target => {
                        self.mode = 2;
                        let pw = self.plan.amt_password.expose().to_string();
                        self.link.set_credentials("admin", &pw);
                        self.after_admin()
                    }
                    _ => self.fail("the setup was not applied; run the client again"),
                }
            }
            St::SetupService => {
                use base64::Engine as _;
                let Ok(e) = amt::instance(&resp, HOST_BASED_SETUP) else {
                    return self.fail("no IPS_HostBasedSetupService");
                };
                let allowed: Vec<&str> = e.texts_of("AllowedControlModes").collect();
                if !allowed.contains(&"2") {
                    return self.fail("the device does not allow admin control mode");
                }
                self.fw_nonce = match base64::engine::general_purpose::STANDARD
                    .decode(e.text_of("ConfigurationNonce").unwrap_or_default())
                {
                    Ok(n) if !n.is_empty() => n,
                    _ => return self.fail("the device sent no configuration nonce"),
                };
                self.enter(St::AddCert(0))
            }
            St::AddCert(i) => match resp.method_output("AddNextCertInChain") {
                Ok((_, 0)) => {
                    let n = self.plan.acm.as_ref().map_or(0, |a| a.chain.len());
                    if i + 1 < n {
                        self.enter(St::AddCert(i + 1))
                    } else if self.plan.current_mode == 0 {
                        self.enter(St::AdminSetup)
                    } else {
                        self.enter(St::Upgrade)
                    }
                }
                Ok((_, rv)) => self.fail(format!(
                    "AddNextCertInChain returned {rv} ({}): the device refused the provisioning certificate chain",
                    amt::return_value_text(rv)
                )),
                Err(e) => self.fail(e.to_string()),
            },
            St::AdminSetup | St::Upgrade => {
                let method = if self.st == St::AdminSetup {
                    "AdminSetup"
                } else {
                    "UpgradeClientToAdmin"
                };
                match resp.method_output(method) {
                    Ok((_, 0)) => {
                        self.mode = 2;
                        if self.st == St::AdminSetup {
                            let pw = self.plan.amt_password.expose().to_string();
                            self.link.set_credentials("admin", &pw);
                        }
                        self.after_admin()
                    }
                    Ok((_, rv)) => self.fail(format!(
                        "{method} returned {rv} ({})",
                        amt::return_value_text(rv)
                    )),
                    Err(_) => self.enter(St::CheckSetup),
                }
            }
            St::SetMebx => match resp.method_output("SetMEBxPassword") {
                Ok((_, 0)) => self.enter(St::Register),
                Ok((_, rv)) => self.fail(format!(
                    "SetMEBxPassword returned {rv} ({})",
                    amt::return_value_text(rv)
                )),
                Err(e) => self.fail(e.to_string()),
            },
            St::EnumerateSap | St::EnumerateCerts => {
                let Ok(ctx) = amt::enumeration_context(&resp) else {
                    return self.fail("enumeration without a context");
                };
                let class = if self.st == St::EnumerateSap {
                    self.st = St::PullSap;
                    MANAGEMENT_PRESENCE_SAP
                } else {
                    self.st = St::PullCerts;
                    PUBLIC_KEY_CERTIFICATE
                };
                self.send(&Request::pull(class, &ctx))
            }
            St::PullSap | St::PullCerts => {
                let sap = self.st == St::PullSap;
                let (class, key) = if sap {
                    (MANAGEMENT_PRESENCE_SAP, "Name")
                } else {
                    (PUBLIC_KEY_CERTIFICATE, "InstanceID")
                };
                match self.collect(&resp, class, key, |_| true) {
                    Err(why) => return self.fail(why),
                    Ok(Some(next)) => return self.send(&next),
                    Ok(None) => {}
                }
                if sap && !self.doomed.is_empty() {
                    self.status.cira_connection = Some("unconfigured".into());
                }
                self.enter(if sap { St::DeleteSap } else { St::DeleteCert })
            }
            St::DeleteSap | St::DeleteCert => {
                self.doomed.pop();
                let st = self.st.clone();
                self.enter(st)
            }
            St::DeletePolicy(i) => self.next_policy(i),
            St::EnumerateWifi => match amt::enumeration_context(&resp) {
                Ok(ctx) => {
                    self.st = St::PullWifi;
                    self.send(&Request::pull(WIFI_ENDPOINT_SETTINGS, &ctx))
                }
                // No Wi-Fi on this device: nothing to remove.
                Err(_) => self.network(),
            },
            St::PullWifi => {
                // Priority 0 is a profile the OS synchronised; only those a server added go.
                let added = |e: &Element| e.text_of("Priority").is_some_and(|p| p != "0");
                match self.collect(&resp, WIFI_ENDPOINT_SETTINGS, "InstanceID", added) {
                    Err(why) => self.fail(why),
                    Ok(Some(next)) => self.send(&next),
                    Ok(None) => self.enter(St::DeleteWifi),
                }
            }
            St::DeleteWifi => {
                self.doomed.pop();
                self.enter(St::DeleteWifi)
            }
            St::GetWifiService => {
                let Ok(e) = amt::instance(&resp, WIFI_PORT_SERVICE) else {
                    return self.fail("no AMT_WiFiPortConfigurationService");
                };
                let props = Properties::from_element(e);
                let want = if self.plan.wifi.local_sync { "3" } else { "0" };
                let is_on = props.get("localProfileSynchronizationEnabled").unwrap_or("0") != "0";
                if is_on != self.plan.wifi.local_sync {
                    let mut put = props.clone();
                    put.set("localProfileSynchronizationEnabled", want);
                    self.st = St::PutWifiService;
                    return self.send(&put.to_put(WIFI_PORT_SERVICE));
                }
                self.enter(St::EnableWifiPort)
            }
            St::PutWifiService => self.enter(St::EnableWifiPort),
            St::EnableWifiPort => match resp.method_output("RequestStateChange") {
                Ok((_, 0)) => self.enter(St::AddWifi(0)),
                Ok((_, rv)) => self.fail(format!(
                    "enabling the Wi-Fi port returned {rv} ({})",
                    amt::return_value_text(rv)
                )),
                Err(e) => self.fail(e.to_string()),
            },
            St::AddWifi(i) => match resp.method_output("AddWiFiSettings") {
                Ok((_, 0)) => self.enter(St::AddWifi(i + 1)),
                Ok((_, rv)) => {
                    let name = self.plan.wifi.profiles.get(i).map(|w| w.name.clone()).unwrap_or_default();
                    self.fail(format!(
                        "adding Wi-Fi profile {name} returned {rv} ({})",
                        amt::return_value_text(rv)
                    ))
                }
                Err(e) => self.fail(e.to_string()),
            },
            St::PutGeneral => self.enter(St::EnumerateEthernet),
            St::EnumerateEthernet => match amt::enumeration_context(&resp) {
                Ok(ctx) => {
                    self.st = St::PullEthernet;
                    self.send(&Request::pull(ETHERNET_PORT, &ctx))
                }
                Err(e) => self.fail(format!("AMT_EthernetPortSettings: {e}")),
            },
            St::PullEthernet => {
                let Ok(page) = pull_page(&resp) else {
                    return self.fail("unreadable AMT_EthernetPortSettings");
                };
                let wired = page
                    .items
                    .iter()
                    .find(|e| e.text_of("InstanceID") == Some(WIRED))
                    .map(|e| Properties::from_element(e));
                self.has_wireless = page.items.iter().any(|e| {
                    e.text_of("InstanceID") == Some(WIRELESS)
                        && e.text_of("MACAddress").is_some_and(|m| m != "00-00-00-00-00-00")
                });
                let (Some(wired), Some(net)) = (wired, self.plan.network) else {
                    // A wireless-only device: nothing to set on a wired interface.
                    self.status.network = Some("No wired interface".into());
                    return self.wireless();
                };
                let is = |k: &str| wired.get(k) == Some("true");
                let (dhcp, sync) = (net.dhcp, net.dhcp || net.ip_sync);
                if is("DHCPEnabled") == dhcp && is("IpSyncEnabled") == sync && is("SharedStaticIp") == (!dhcp && sync) {
                    self.status.network = Some("Wired Network Configured".into());
                    return self.wireless();
                }
                if !dhcp && !sync && (wired.get("IPAddress").unwrap_or_default().is_empty() || wired.get("SubnetMask").unwrap_or_default().is_empty()) {
                    return self.fail("a static profile without IP sync needs the device's IP address and mask set first");
                }
                let mut put = wired.clone();
                put.set("DHCPEnabled", dhcp.to_string());
                put.set("IpSyncEnabled", sync.to_string());
                put.set("SharedStaticIp", (!dhcp && sync).to_string());
                if dhcp {
                    for k in ["IPAddress", "SubnetMask", "DefaultGateway", "PrimaryDNS", "SecondaryDNS"] {
                        put.0.retain(|(n, _)| n != k);
                    }
                }
                self.st = St::PutEthernet;
                self.send(&put.to_put(ETHERNET_PORT).with_selector("InstanceID", WIRED))
            }
            St::PutEthernet => {
                let applied = amt::instance(&resp, ETHERNET_PORT)
                    .ok()
                    .and_then(|e| e.text_of("DHCPEnabled").map(|v| v == "true"));
                match (applied, self.plan.network) {
                    (Some(d), Some(net)) if d == net.dhcp => {
                        self.status.network = Some("Wired Network Configured".into());
                        self.wireless()
                    }
                    _ => self.fail("the device did not take the wired network settings"),
                }
            }
            St::GetRedirection => match feat::redirection(&resp) {
                Ok(r) => {
                    self.redirection = Some(r);
                    self.enter(St::GetKvm)
                }
                Err(e) => self.fail(format!("AMT_RedirectionService: {e}")),
            },
            St::GetKvm => {
                self.kvm_on = feat::kvm_enabled(&resp).unwrap_or(false);
                self.enter(St::GetOptIn)
            }
            St::GetOptIn => match feat::opt_in(&resp) {
                Ok(o) => {
                    self.opt_in = Some(o);
                    self.features_next(St::GetOptIn)
                }
                Err(e) => self.fail(format!("IPS_OptInService: {e}")),
            },
            St::SetRedirection | St::SetKvm => match resp.method_output("RequestStateChange") {
                Ok((_, 0)) => {
                    let st = self.st.clone();
                    self.features_next(st)
                }
                Ok((_, rv)) => self.fail(format!(
                    "redirection change returned {rv} ({})",
                    amt::return_value_text(rv)
                )),
                Err(e) => self.fail(e.to_string()),
            },
            St::PutRedirection => self.features_next(St::PutRedirection),
            St::PutOptIn => self.features_next(St::PutOptIn),
            St::AddRootCertificate => match resp.method_output("AddTrustedRootCertificate") {
                Ok((_, 0)) => self.enter(St::AddMpServer),
                Ok((_, rv)) => self.fail(format!(
                    "AddTrustedRootCertificate returned {rv} ({})",
                    amt::return_value_text(rv)
                )),
                Err(e) => self.fail(e.to_string()),
            },
            St::AddMpServer => match resp.method_output("AddMpServer") {
                Ok((out, 0)) => {
                    self.mp_server = out
                        .find("SelectorSet")
                        .and_then(|set| {
                            set.children
                                .iter()
                                .find(|c| c.attribute("Name") == Some("Name"))
                        })
                        .map(|c| c.text.trim().to_string())
                        .filter(|n| !n.is_empty());
                    if self.mp_server.is_none() {
                        return self.fail("AddMpServer did not name the new entry");
                    }
                    self.enter(St::AddPolicy(0))
                }
                Ok((_, rv)) => self.fail(format!(
                    "AddMpServer returned {rv} ({})",
                    amt::return_value_text(rv)
                )),
                Err(e) => self.fail(e.to_string()),
            },
            St::AddPolicy(i) => match resp.method_output("AddRemoteAccessPolicyRule") {
                Ok((_, 0)) if i == 0 => self.enter(St::AddPolicy(1)),
                Ok((_, 0)) => self.enter(St::EnableUserInitiated),
                Ok((_, rv)) => self.fail(format!(
                    "AddRemoteAccessPolicyRule returned {rv} ({})",
                    amt::return_value_text(rv)
                )),
                Err(e) => self.fail(e.to_string()),
            },
            St::EnableUserInitiated => match resp.method_output("RequestStateChange") {
                Ok((_, 0)) => self.enter(St::GetEnvironment),
                Ok((_, rv)) => self.fail(format!(
                    "user-initiated connections: {rv} ({})",
                    amt::return_value_text(rv)
                )),
                Err(e) => self.fail(e.to_string()),
            },
            St::GetEnvironment => {
                let Ok(e) = amt::instance(&resp, ENVIRONMENT_DETECTION) else {
                    return self.fail("no AMT_EnvironmentDetectionSettingData");
                };
                let mut props = Properties::from_element(e);
                props.0.retain(|(k, _)| k != "DetectionStrings");
                let domain = self
                    .plan
                    .cira
                    .as_ref()
                    .map(|c| c.environment_domain.clone())
                    .unwrap_or_default();
                props.set("DetectionStrings", domain);
                self.st = St::PutEnvironment;
                self.send(&props.to_put(ENVIRONMENT_DETECTION))
            }
            St::PutEnvironment => {
                self.status.cira_connection = Some("Configured".into());
                self.finish()
            }
            St::SaveSecrets | St::Register | St::Finished => {
                self.fail("answer while no request was outstanding")
            }
        }
    }

    /// The answer was lost or cut off. A setup that may have been applied is checked on the
    /// device instead of being sent again (a second Setup would be refused); anything else is
    /// sent again, a bounded number of times.
    fn lost_answer(&mut self, why: &str) -> Output {
        match self.st {
            St::Setup | St::AdminSetup => {
                // If the device took the setup, only the new admin credentials work now.
                let pw = self.plan.amt_password.expose().to_string();
                self.link.set_credentials("admin", &pw);
                self.link.reset_challenges();
                self.checking_as_admin = true;
                self.enter(St::CheckSetup)
            }
            St::Upgrade => self.enter(St::CheckSetup),
            St::SaveSecrets | St::Register | St::Finished => self.fail(why.to_string()),
            _ => match self.link.resend() {
                Some(bytes) => Output::Send(bytes),
                None => self.fail(format!("{why} (sent three times)")),
            },
        }
    }

    /// Adds the `key` of each item of a pull page that `keep` accepts to the entries to
    /// delete, within the bounds an enumeration may take; `Ok(Some(..))` is the request for the
    /// next page, `Ok(None)` the end of the enumeration.
    fn collect(
        &mut self,
        resp: &Response,
        class: Class,
        key: &str,
        keep: impl Fn(&Element) -> bool,
    ) -> Result<Option<Request>, String> {
        let page = pull_page(resp).map_err(|e| format!("{}: unreadable pull: {e}", class.name))?;
        self.pages += 1;
        if self.pages > MAX_PAGES || self.doomed.len() + page.items.len() > MAX_ITEMS {
            return Err("the device listed more entries than AMT holds".into());
        }
        self.doomed.extend(
            page.items
                .iter()
                .filter(|e| keep(e))
                .filter_map(|e| e.text_of(key))
                .map(str::to_string),
        );
        Ok(match page.context {
            Some(ctx) if !page.end_of_sequence => Some(Request::pull(class, &ctx)),
            _ => None,
        })
    }

    /// The network step: general settings AMT needs on the network, then the wired interface.
    fn network(&mut self) -> Output {
        if self.plan.network.is_none() {
            return self.enter(St::GetRedirection);
        }
        let g = self.general.clone().unwrap_or_default();
        let needs_put = g.get("SharedFQDN") != Some("true")
            || g.get("AMTNetworkEnabled") != Some("1")
            || g.get("RmcpPingResponseEnabled") != Some("true");
        if needs_put && self.general.is_some() {
            self.enter(St::PutGeneral)
        } else {
            self.enter(St::EnumerateEthernet)
        }
    }

    /// Wi-Fi, when the profile asks for it and the device has a wireless interface.
    fn wireless(&mut self) -> Output {
        let w = &self.plan.wifi;
        if !w.local_sync && w.profiles.is_empty() {
            return self.enter(St::GetRedirection);
        }
        if !self.has_wireless {
            self.add_network_status("No wireless interface");
            return self.enter(St::GetRedirection);
        }
        self.enter(St::GetWifiService)
    }

    fn after_wifi(&mut self) -> Output {
        let n = self.plan.wifi.profiles.len();
        let text = if n == 0 {
            "Wireless Only Local Profile Sync Configured".to_string()
        } else {
            format!(
                "Wireless Configured ({n} profile{})",
                if n == 1 { "" } else { "s" }
            )
        };
        self.add_network_status(&text);
        self.enter(St::GetRedirection)
    }

    fn add_network_status(&mut self, text: &str) {
        self.status.network = Some(match self.status.network.take() {
            Some(wired) => format!("{wired}. {text}"),
            None => text.to_string(),
        });
    }

    /// Admin control mode reached: the MEBx password, when there is one to set.
    fn after_admin(&mut self) -> Output {
        if self
            .plan
            .acm
            .as_ref()
            .is_some_and(|a| a.mebx_password.is_some())
        {
            self.enter(St::SetMebx)
        } else {
            self.enter(St::Register)
        }
    }

    fn after_setup(&mut self) -> Output {
        self.mode = 1;
        let pw = self.plan.amt_password.expose().to_string();
        self.link.set_credentials("admin", &pw);
        self.enter(St::Register)
    }

    fn next_policy(&mut self, i: usize) -> Output {
        if i + 1 < POLICY_RULES.len() {
            self.enter(St::DeletePolicy(i + 1))
        } else {
            self.doomed.clear();
            self.enter(St::EnumerateSap)
        }
    }

    /// After `done`, the next feature step that changes something, or CIRA.
    fn features_next(&mut self, done: St) -> Output {
        let want = self.plan.features;
        let redirection = self.redirection.clone();
        let redirection_differs = redirection
            .as_ref()
            .is_some_and(|r| r.sol != want.sol || r.ider != want.ider);
        let listener_differs = redirection
            .as_ref()
            .is_some_and(|r| r.listener_enabled != (want.kvm || want.sol || want.ider));
        let order = [
            St::SetRedirection,
            St::SetKvm,
            St::PutRedirection,
            St::PutOptIn,
        ];
        let start = order.iter().position(|s| *s == done).map_or(0, |i| i + 1);
        for st in order.into_iter().skip(start) {
            let needed = match st {
                St::SetRedirection => redirection_differs,
                St::SetKvm => self.kvm_on != want.kvm,
                St::PutRedirection => redirection_differs || listener_differs,
                St::PutOptIn => self
                    .opt_in
                    .as_ref()
                    .is_some_and(|o| o.required != want.consent),
                _ => false,
            };
            if needed {
                return self.enter(st);
            }
        }
        self.status.features = Some(describe(want));
        self.enter(St::AddRootCertificate)
    }
}

fn describe(f: Features) -> String {
    let consent = match f.consent {
        CONSENT_NONE => "none",
        CONSENT_KVM => "KVM",
        CONSENT_ALL => "all",
        _ => "other",
    };
    format!(
        "KVM {}, SOL {}, IDER {}, user consent {consent}",
        on(f.kvm),
        on(f.sol),
        on(f.ider)
    )
}

fn on(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// AddWiFiSettings as the Open AMT libraries send it: the endpoint's EPR and the settings in
/// CIM_WiFiEndpointSettings' own namespace.
fn add_wifi_settings(w: &WifiProfile) -> Request {
    let service = WIFI_PORT_SERVICE.uri();
    let settings = WIFI_ENDPOINT_SETTINGS.uri();
    let endpoint = epr(
        Class::cim("CIM_WiFiEndpoint"),
        &[("Name", "WiFi Endpoint 0")],
    );
    let body = format!(
        r#"<h:AddWiFiSettings_INPUT xmlns:h="{service}"><h:WiFiEndpoint>{endpoint}</h:WiFiEndpoint><q:WiFiEndpointSettingsInput xmlns:q="{settings}"><q:ElementName>{name}</q:ElementName><q:InstanceID>Intel(r) AMT:WiFi Endpoint Settings {name}</q:InstanceID><q:AuthenticationMethod>{auth}</q:AuthenticationMethod><q:EncryptionMethod>{enc}</q:EncryptionMethod><q:SSID>{ssid}</q:SSID><q:Priority>{priority}</q:Priority><q:PSKPassPhrase>{psk}</q:PSKPassPhrase></q:WiFiEndpointSettingsInput></h:AddWiFiSettings_INPUT>"#,
        name = xml_text(&w.name),
        auth = w.authentication_method,
        enc = w.encryption_method,
        ssid = xml_text(&w.ssid),
        priority = w.priority,
        psk = xml_text(w.passphrase.expose()),
    );
    Request {
        action: WIFI_PORT_SERVICE.method("AddWiFiSettings"),
        resource_uri: service,
        selectors: Vec::new(),
        body,
    }
}

fn xml_text(s: &str) -> String {
    homeport_wsman::xml::escape(s).into_owned()
}

impl Flow for Activation {
    fn start(&mut self) -> Output {
        self.enter(St::GeneralSettings)
    }

    fn on_reply(&mut self, http: &[u8]) -> Output {
        if self.st == St::Finished {
            return self.fail("answer after the end");
        }
        if self.link.exchanges() > MAX_EXCHANGES {
            return self.fail("too many exchanges");
        }
        match self.link.receive(http) {
            Ok(Reply::Resend(bytes)) => Output::Send(bytes),
            Ok(Reply::Ok(resp)) => self.answer(resp),
            // Deleting a rule that is not there is a fault AMT answers with 400.
            Ok(Reply::Fault(_)) if matches!(self.st, St::DeletePolicy(_)) => {
                let St::DeletePolicy(i) = self.st else {
                    return self.fail("state");
                };
                self.next_policy(i)
            }
            Ok(Reply::Fault(_))
                if matches!(self.st, St::DeleteSap | St::DeleteCert | St::DeleteWifi) =>
            {
                self.doomed.pop();
                let st = self.st.clone();
                self.enter(st)
            }
            Ok(Reply::Fault(f)) if self.st == St::GetKvm => {
                // No KVM on this SKU: nothing to switch.
                tracing::debug!(device = %self.plan.guid, fault = %f, "no KVM");
                self.kvm_on = self.plan.features.kvm;
                self.enter(St::GetOptIn)
            }
            Ok(Reply::Fault(f)) => self.fail(f),
            Err(LinkError::Malformed(why)) => self.lost_answer(&why),
            // The new admin credentials are refused: the setup did not apply; ask with the
            // ones the device had.
            Err(LinkError::Unauthorized) if self.st == St::CheckSetup && self.checking_as_admin => {
                self.checking_as_admin = false;
                let (user, pw) = (
                    self.plan.user.clone(),
                    self.plan.password.expose().to_string(),
                );
                self.link.set_credentials(&user, &pw);
                self.link.reset_challenges();
                self.enter(St::CheckSetup)
            }
            Err(e) => self.fail(e.to_string()),
        }
    }

    fn on_timeout(&mut self) -> Output {
        self.lost_answer("no answer in time")
    }

    fn on_effect(&mut self, result: Result<(), String>) -> Output {
        if let Err(e) = result {
            return self.fail(e);
        }
        match self.st {
            St::SaveSecrets => match (self.plan.current_mode, self.target_mode()) {
                (0, 1) => self.enter(St::Setup),
                (0, _) | (1, 2) => self.enter(St::SetupService),
                _ => self.enter(St::Register),
            },
            St::Register => self.enter(St::DeletePolicy(0)),
            _ => self.fail("effect outcome while none was asked for"),
        }
    }

    fn exchanges(&self) -> u32 {
        self.link.exchanges()
    }

    fn abandon(&mut self, why: &str) -> Finish {
        let out = self.fail(why.to_string());
        super::finished(out, why, self.mode)
    }
}
