//! Maintenance of an activated device (openamt-rps.md §2.10): change the admin password,
//! synchronise AMT's clock, its wired IP settings or its host name with the PC's, or refresh
//! the registry's device facts. One task per run, each its own short sequence.

use base64::Engine as _;
use homeport_secrets::SecretString;
use homeport_wsman::amt::{self, pull_page, Properties};
use homeport_wsman::envelope::Class;
use homeport_wsman::{Request, Response};

use super::{realm_is_valid, Effect, Finish, Flow, Link, Output, Reply};
use crate::protocol::StatusMessage;

pub const TIME_SYNCHRONIZATION: Class = Class::amt("AMT_TimeSynchronizationService");
pub const AUTHORIZATION: Class = Class::amt("AMT_AuthorizationService");
pub const ETHERNET_PORT: Class = Class::amt("AMT_EthernetPortSettings");
/// The wired interface's settings instance.
const WIRED: &str = "Intel(r) AMT Ethernet Port Settings 0";

/// The PC's wired configuration, as rpc reads it from the OS (`ipConfiguration`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpConfig {
    pub ip: String,
    pub netmask: String,
    pub gateway: String,
    pub primary_dns: String,
    pub secondary_dns: String,
}

#[derive(Clone, Debug)]
pub enum Job {
    /// The new admin password (the device's current one is the link's).
    ChangePassword {
        new: SecretString,
        old: SecretString,
        mps_password: Option<SecretString>,
        mebx_password: Option<SecretString>,
    },
    /// Seconds since the epoch on the PC, read when the task started.
    SyncTime {
        now: i64,
    },
    SyncIp(IpConfig),
    SyncHostname(String),
    SyncDeviceInfo,
}

impl Job {
    fn name(&self) -> &'static str {
        match self {
            Job::ChangePassword { .. } => "changepassword",
            Job::SyncTime { .. } => "synctime",
            Job::SyncIp(_) => "syncip",
            Job::SyncHostname(_) => "synchostname",
            Job::SyncDeviceInfo => "syncdeviceinfo",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    GeneralSettings,
    SaveNew,
    SetAcl,
    RestoreOld,
    GetTime,
    SetTime,
    EnumerateEthernet,
    PullEthernet,
    PutEthernet,
    PutHostname,
    Refresh,
    Finished,
}

pub struct Maintenance {
    job: Job,
    link: Link,
    st: St,
    mode: u8,
    realm: String,
    general: Option<Properties>,
    /// The error a failed password change reports once the old password is restored.
    failure: Option<String>,
}

impl Maintenance {
    /// `password` is the device's current admin password; `mode` its control mode (1 or 2).
    pub fn new(guid: &str, password: &str, mode: u8, job: Job) -> Maintenance {
        Maintenance {
            job,
            link: Link::new(guid, "admin", password),
            st: St::GeneralSettings,
            mode,
            realm: String::new(),
            general: None,
            failure: None,
        }
    }

    fn fail(&mut self, why: impl Into<String>) -> Output {
        self.st = St::Finished;
        Output::Done(Finish::failed(
            StatusMessage::status(format!("{} failed: {}", self.job.name(), why.into())),
            super::mode_name(self.mode),
        ))
    }

    fn done(&mut self) -> Output {
        self.st = St::Finished;
        Output::Done(Finish {
            ok: true,
            status: StatusMessage::status(format!("{} completed successfully", self.job.name())),
            outcome: "maintained",
            control_mode: super::mode_name(self.mode),
        })
    }

    fn send(&mut self, st: St, req: &Request) -> Output {
        self.st = st;
        Output::Send(self.link.send(req))
    }

    fn effect(&mut self, st: St, e: Effect) -> Output {
        self.st = st;
        Output::Effect(e)
    }

    fn save(&self, amt_password: SecretString) -> Effect {
        match &self.job {
            Job::ChangePassword {
                mps_password,
                mebx_password,
                ..
            } => Effect::SaveSecrets {
                amt_password,
                mps_password: mps_password.clone(),
                mebx_password: mebx_password.clone(),
            },
            _ => Effect::SaveSecrets {
                amt_password,
                mps_password: None,
                mebx_password: None,
            },
        }
    }

    fn answer(&mut self, resp: Response) -> Output {
        match self.st {
            St::GeneralSettings => {
                let Ok(e) = amt::instance(&resp, amt::GENERAL_SETTINGS) else {
                    return self.fail("no AMT_GeneralSettings");
                };
                let props = Properties::from_element(e);
                self.realm = props.get("DigestRealm").unwrap_or_default().to_string();
                if !realm_is_valid(&self.realm) {
                    return self.fail("the device's digest realm is not Digest: and 32 hex digits");
                }
                match self.job.clone() {
                    Job::ChangePassword { new, .. } => {
                        let e = self.save(new);
                        self.effect(St::SaveNew, e)
                    }
                    Job::SyncHostname(name) => {
                        if props.get("HostName") == Some(name.as_str()) {
                            return self.fail(format!("the host name is already {name}"));
                        }
                        let mut put = props.clone();
                        put.set("HostName", name);
                        self.general = Some(props);
                        self.send(St::PutHostname, &put.to_put(amt::GENERAL_SETTINGS))
                    }
                    _ => self.fail("unexpected state"),
                }
            }
            St::SetAcl => match resp.method_output("SetAdminAclEntryEx") {
                Ok((_, 0)) => self.done(),
                Ok((_, rv)) => {
                    self.failure = Some(format!(
                        "SetAdminAclEntryEx returned {rv} ({})",
                        amt::return_value_text(rv)
                    ));
                    self.restore()
                }
                Err(e) => {
                    self.failure = Some(e.to_string());
                    self.restore()
                }
            },
            St::GetTime => match resp.method_output("GetLowAccuracyTimeSynch") {
                Ok((out, 0)) => {
                    let Some(ta0) = out
                        .text_of("Ta0")
                        .and_then(|t| t.parse::<i64>().ok())
                        .map(|t| t.to_string())
                    else {
                        return self.fail("the device's clock (Ta0) is not a number");
                    };
                    let Job::SyncTime { now } = self.job else {
                        return self.fail("unexpected state");
                    };
                    let req = Request::invoke(
                        TIME_SYNCHRONIZATION,
                        "SetHighAccuracyTimeSynch",
                        &[
                            ("Ta0", ta0),
                            ("Tm1", now.to_string()),
                            ("Tm2", now.to_string()),
                        ],
                    );
                    self.send(St::SetTime, &req)
                }
                Ok((_, rv)) => self.fail(format!("GetLowAccuracyTimeSynch returned {rv}")),
                Err(e) => self.fail(e.to_string()),
            },
            St::SetTime => match resp.method_output("SetHighAccuracyTimeSynch") {
                Ok((_, 0)) => self.done(),
                Ok((_, rv)) => self.fail(format!(
                    "SetHighAccuracyTimeSynch returned {rv} ({})",
                    amt::return_value_text(rv)
                )),
                Err(e) => self.fail(e.to_string()),
            },
            St::EnumerateEthernet => match amt::enumeration_context(&resp) {
                Ok(ctx) => self.send(St::PullEthernet, &Request::pull(ETHERNET_PORT, &ctx)),
                Err(e) => self.fail(e.to_string()),
            },
            St::PullEthernet => {
                let Ok(page) = pull_page(&resp) else {
                    return self.fail("unreadable pull");
                };
                let Some(wired) = page
                    .items
                    .iter()
                    .find(|e| e.text_of("InstanceID") == Some(WIRED))
                    .map(|e| Properties::from_element(e))
                else {
                    return self.fail("the device has no wired interface settings");
                };
                let Job::SyncIp(ip) = self.job.clone() else {
                    return self.fail("unexpected state");
                };
                let mut put = wired.clone();
                if wired.get("DHCPEnabled") == Some("true") {
                    if wired.get("IpSyncEnabled") == Some("true") {
                        return self.fail("IPAddress already synchronized (DHCP with IP sync)");
                    }
                    put.set("IpSyncEnabled", "true");
                } else {
                    if ip.ip.is_empty() || ip.netmask.is_empty() {
                        return self.fail("the client sent no static IP configuration");
                    }
                    if wired.get("IPAddress") == Some(ip.ip.as_str()) {
                        return self.fail("IPAddress already synchronized");
                    }
                    put.set("IpSyncEnabled", "false");
                    put.set("SharedStaticIp", "false");
                    put.set("IPAddress", ip.ip);
                    put.set("SubnetMask", ip.netmask);
                    put.set("DefaultGateway", ip.gateway);
                    put.set("PrimaryDNS", ip.primary_dns);
                    put.set("SecondaryDNS", ip.secondary_dns);
                }
                let req = put.to_put(ETHERNET_PORT).with_selector("InstanceID", WIRED);
                self.send(St::PutEthernet, &req)
            }
            St::PutEthernet => self.done(),
            St::PutHostname => {
                let Job::SyncHostname(name) = self.job.clone() else {
                    return self.fail("unexpected state");
                };
                self.effect(
                    St::Refresh,
                    Effect::Refresh {
                        hostname: Some(name),
                    },
                )
            }
            _ => self.fail("answer while no request was outstanding"),
        }
    }

    /// SetAdminAclEntryEx failed: the device keeps its old password, so the store must too.
    fn restore(&mut self) -> Output {
        let Job::ChangePassword { old, .. } = self.job.clone() else {
            return self.fail("unexpected state");
        };
        let e = self.save(old);
        self.effect(St::RestoreOld, e)
    }
}

impl Flow for Maintenance {
    fn start(&mut self) -> Output {
        match &self.job {
            Job::ChangePassword { .. } | Job::SyncHostname(_) => {
                self.send(St::GeneralSettings, &Request::get(amt::GENERAL_SETTINGS))
            }
            Job::SyncTime { .. } => self.send(
                St::GetTime,
                &Request::invoke(TIME_SYNCHRONIZATION, "GetLowAccuracyTimeSynch", &[]),
            ),
            Job::SyncIp(_) => self.send(St::EnumerateEthernet, &Request::enumerate(ETHERNET_PORT)),
            Job::SyncDeviceInfo => self.effect(St::Refresh, Effect::Refresh { hostname: None }),
        }
    }

    fn on_reply(&mut self, http: &[u8]) -> Output {
        match self.link.receive(http) {
            Ok(Reply::Resend(bytes)) => Output::Send(bytes),
            Ok(Reply::Ok(resp)) => self.answer(resp),
            Ok(Reply::Fault(f)) if self.st == St::SetAcl => {
                self.failure = Some(f);
                self.restore()
            }
            Ok(Reply::Fault(f)) => self.fail(f),
            Err(super::LinkError::Malformed(_)) if self.st != St::SetAcl => {
                match self.link.resend() {
                    Some(bytes) => Output::Send(bytes),
                    None => self.fail("the device's answers were cut off three times"),
                }
            }
            // Refused for certain (credentials, HTTP status): the old password stays.
            Err(e @ (super::LinkError::Unauthorized | super::LinkError::Status(_)))
                if self.st == St::SetAcl =>
            {
                self.failure = Some(e.to_string());
                self.restore()
            }
            Err(e) if self.st == St::SetAcl => {
                // The answer is lost or unreadable: whether the device took the new password
                // is unknown; the store keeps the new one (the likelier case once the request
                // reached the device) and says so.
                self.fail(format!(
                    "{e}; the stored password is the new one, check the device with it"
                ))
            }
            Err(e) => self.fail(e.to_string()),
        }
    }

    fn on_timeout(&mut self) -> Output {
        if self.st == St::SetAcl {
            return self.fail(
                "no answer to SetAdminAclEntryEx; the stored password is the new one, check the device with it",
            );
        }
        match self.link.resend() {
            Some(bytes) => Output::Send(bytes),
            None => self.fail("the device did not answer in time"),
        }
    }

    fn on_effect(&mut self, result: Result<(), String>) -> Output {
        match (self.st, result) {
            (St::SaveNew, Ok(())) => {
                let Job::ChangePassword { new, .. } = &self.job else {
                    return self.fail("unexpected state");
                };
                let digest = openssl::hash::hash(
                    openssl::hash::MessageDigest::md5(),
                    format!("admin:{}:{}", self.realm, new.expose()).as_bytes(),
                );
                let Ok(digest) = digest else {
                    return self.fail("MD5 unavailable");
                };
                let req = Request::invoke(
                    AUTHORIZATION,
                    "SetAdminAclEntryEx",
                    &[
                        ("Username", "admin".into()),
                        (
                            "DigestPassword",
                            base64::engine::general_purpose::STANDARD.encode(digest),
                        ),
                    ],
                );
                self.send(St::SetAcl, &req)
            }
            (St::RestoreOld, r) => {
                let why = self.failure.take().unwrap_or_default();
                match r {
                    Ok(()) => self.fail(format!("{why}; the password is unchanged")),
                    Err(e) => self.fail(format!(
                        "{why}; restoring the old password in the store failed too: {e}"
                    )),
                }
            }
            (St::Refresh, Ok(())) => self.done(),
            (_, Err(e)) => self.fail(e),
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
