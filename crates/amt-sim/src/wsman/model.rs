//! The mutable state of one simulated device (wsman-amt.md §3.2). Everything immutable
//! (hardware profile, firmware version, templates) lives in statics; this holds only what
//! changes, so an idle device costs about a kilobyte once it has been talked to.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::amt::AmtState;

use super::alarms::Alarm;
use super::consent::OptIn;
use super::logs::{self, EventRecord};
use super::power::BootSettings;

/// Open enumeration contexts kept per device; MPS leaves polymorphic pulls unfinished, so the
/// oldest are evicted rather than letting the table grow.
pub(crate) const MAX_CONTEXTS: usize = 8;
/// An enumeration context nobody pulled for this long is forgotten.
pub(crate) const CONTEXT_TTL: Duration = Duration::from_secs(120);

/// The time a request is handled at: monotonic for expiries, wall clock for records.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Now {
    pub mono: Instant,
    pub unix: i64,
}

impl Now {
    pub(crate) fn current() -> Now {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        Now {
            mono: Instant::now(),
            unix,
        }
    }
}

/// A WS-Enumeration context: which class, how far the client has pulled.
#[derive(Debug)]
pub(crate) struct EnumContext {
    pub id: u32,
    pub class: &'static str,
    pub pos: usize,
    pub expires: Instant,
}

/// Digest credentials the device checks: the user and MD5(user:realm:password) (AMT keeps
/// the HA1, not the password).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub ha1: String,
}

/// An MPS server entry (AddMpServer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MpServer {
    pub name: String,
    pub address: String,
    pub port: u16,
    pub username: String,
    pub password: String,
}

/// A remote-access policy bound to a server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub trigger: u8,
    pub tunnel_lifetime: u32,
    pub server: String,
}

/// The remote-access configuration a provisioning server applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteAccess {
    pub servers: Vec<MpServer>,
    pub policies: Vec<Policy>,
    /// Trusted roots: (InstanceID, base64 DER, subject).
    pub roots: Vec<(String, String, String)>,
    pub detection: Vec<String>,
    /// AMT_UserInitiatedConnectionService EnabledState.
    pub user_initiated: u32,
    /// Handle counter for new entries.
    pub counter: u32,
    /// SHA-256 (lower-case hex) of the root certificates the firmware trusts for admin
    /// control mode.
    pub trusted_hashes: Vec<String>,
    /// The provisioning certificate chain added so far (DER, leaf first).
    pub chain: Vec<Vec<u8>>,
    /// The chain ended in a trusted root.
    pub chain_complete: bool,
    /// `RpcFault`-style injection: AdminSetup answers with an error.
    pub refuse_admin_setup: bool,
    /// Injection: SetAdminAclEntryEx answers with an error.
    pub refuse_password_change: bool,
    /// SetMEBxPassword was called.
    pub mebx_set: bool,
    /// AMT's clock minus the host's, seconds (SetHighAccuracyTimeSynch moves it).
    pub clock_offset: i64,
    /// AMT_GeneralSettings.HostName once set over WS-Man.
    pub hostname: Option<String>,
    /// The wired interface's AMT_EthernetPortSettings.
    pub wired: Wired,
    /// Wi-Fi profiles added over WS-Man.
    pub wifi: Vec<WifiProfile>,
    /// AMT_WiFiPortConfigurationService.localProfileSynchronizationEnabled.
    pub wifi_local_sync: u32,
    /// CIM_WiFiPort EnabledState (3 disabled, 32769 enabled in S0 and Sx/AC).
    pub wifi_port_state: u32,
}

/// One Wi-Fi profile (what the simulator keeps of CIM_WiFiEndpointSettings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WifiProfile {
    pub instance_id: String,
    pub ssid: String,
    pub priority: u32,
}

/// Wired network settings of AMT (what syncip changes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wired {
    pub dhcp: bool,
    pub ip_sync: bool,
    pub shared_static: bool,
    pub ip: String,
    pub mask: String,
    pub gateway: String,
    pub dns1: String,
    pub dns2: String,
}

impl Default for Wired {
    fn default() -> Self {
        Wired {
            dhcp: true,
            ip_sync: false,
            shared_static: false,
            ip: "192.168.1.37".into(),
            mask: "255.255.255.0".into(),
            gateway: "192.168.1.1".into(),
            dns1: "192.168.1.1".into(),
            dns2: String::new(),
        }
    }
}

impl Default for RemoteAccess {
    fn default() -> Self {
        RemoteAccess {
            servers: Vec::new(),
            policies: Vec::new(),
            roots: Vec::new(),
            detection: Vec::new(),
            user_initiated: 32768,
            counter: 0,
            trusted_hashes: Vec::new(),
            chain: Vec::new(),
            chain_complete: false,
            refuse_admin_setup: false,
            refuse_password_change: false,
            mebx_set: false,
            clock_offset: 0,
            hostname: None,
            wired: Wired::default(),
            wifi: Vec::new(),
            wifi_local_sync: 0,
            wifi_port_state: 3,
        }
    }
}

pub(crate) struct DeviceModel {
    /// Digest nonces; here so they survive reconnects like on real firmware (§1.2).
    pub digest: AmtState,
    /// Credentials set by provisioning; `None`: the identity's admin password.
    pub credentials: Option<Box<Credentials>>,
    /// 0 pre-provisioning, 1 client control mode, 2 admin control mode.
    pub control_mode: u8,
    /// CIRA configuration applied through WS-Man (provisioning devices only).
    pub remote: Option<Box<RemoteAccess>>,
    /// IPS_HostBasedSetupService.ConfigurationNonce, made on first read.
    pub nonce: Option<Box<[u8; 20]>>,
    message_counter: u32,
    enum_counter: u32,
    pub contexts: Vec<EnumContext>,
    /// ProvisioningState 2 (post) when true, 0 (pre) after Unprovision.
    pub provisioned: bool,
    /// The no-KVM SKU answers the KVM classes with DestinationUnreachable.
    pub no_kvm: bool,
    /// `Fault::VanishMidCall` fires once per device.
    pub vanish_fired: bool,
    /// DMTF PowerState: 2 on, 4 sleep, 7 hibernate, 8 off.
    pub power: u8,
    /// An in-band agent (LMS) makes the graceful and OS power actions available.
    pub in_band_agent: bool,
    pub os_power_saving: u8,
    pub boot: BootSettings,
    /// Index into `power::BOOT_SOURCES` set by ChangeBootOrder, consumed by the next boot.
    pub boot_source: Option<u8>,
    pub boot_role: Option<u8>,
    /// AMT_RedirectionService EnabledState 32768..=32771.
    pub redirection: u16,
    pub listener: bool,
    pub kvm_enabled: u8,
    pub kvm_requested: u8,
    pub optin: OptIn,
    pub alarms: Vec<Alarm>,
    /// AMT_MessageLog, oldest first, bounded by `logs::EVENT_LOG_MAX`.
    pub events: VecDeque<EventRecord>,
    /// AMT_AuditLog, oldest first, bounded by `logs::AUDIT_LOG_MAX`.
    pub audit: VecDeque<Box<[u8]>>,
}

impl DeviceModel {
    /// A provisioned, powered-on device with seeded logs (§3.4), as of `unix`.
    pub(crate) fn new(no_kvm: bool, unix: i64) -> DeviceModel {
        let mut m = DeviceModel {
            digest: AmtState::default(),
            credentials: None,
            control_mode: 2,
            remote: None,
            nonce: None,
            message_counter: 0x0200,
            enum_counter: 0x02C0,
            contexts: Vec::new(),
            provisioned: true,
            no_kvm,
            vanish_fired: false,
            power: 2,
            in_band_agent: true,
            os_power_saving: 2,
            boot: BootSettings::default(),
            boot_source: None,
            boot_role: None,
            redirection: 32771,
            listener: true,
            kvm_enabled: 6,
            kvm_requested: 2,
            optin: OptIn::default(),
            alarms: Vec::new(),
            events: VecDeque::new(),
            audit: VecDeque::new(),
        };
        logs::seed(&mut m, unix);
        m
    }

    /// A device fresh from the factory: pre-provisioning mode, only the local system account
    /// (`user`, HA1 of its password) accepted, no remote-access configuration.
    pub(crate) fn unprovisioned(no_kvm: bool, unix: i64, lsa: Credentials) -> DeviceModel {
        let mut m = DeviceModel::new(no_kvm, unix);
        m.provisioned = false;
        m.control_mode = 0;
        m.credentials = Some(Box::new(lsa));
        m.remote = Some(Box::default());
        let mut nonce = [0u8; 20];
        nonce.iter_mut().for_each(|b| *b = fastrand::u8(..));
        m.nonce = Some(Box::new(nonce));
        m
    }

    /// The 20-byte firmware nonce of host-based setup, base64.
    pub(crate) fn configuration_nonce(&self) -> String {
        use base64::Engine as _;
        let bytes = self.nonce.as_deref().copied().unwrap_or([0x5a; 20]);
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// The per-device response counter behind MessageIDs.
    pub(crate) fn next_counter(&mut self) -> u32 {
        self.message_counter = self.message_counter.wrapping_add(1);
        self.message_counter
    }

    /// `uuid:00000000-8086-8086-8086-%012X` with a per-device counter, like AMT.
    pub(crate) fn next_message_id(&mut self) -> String {
        format!("uuid:00000000-8086-8086-8086-{:012X}", self.next_counter())
    }

    /// Opens an enumeration context, evicting expired ones and then the oldest.
    pub(crate) fn open_context(&mut self, class: &'static str, now: Instant) -> u32 {
        self.contexts.retain(|c| c.expires > now);
        if self.contexts.len() >= MAX_CONTEXTS {
            self.contexts.remove(0);
        }
        self.enum_counter = self.enum_counter.wrapping_add(1);
        self.contexts.push(EnumContext {
            id: self.enum_counter,
            class,
            pos: 0,
            expires: now + CONTEXT_TTL,
        });
        self.enum_counter
    }

    /// Index of a live context by its wire form.
    pub(crate) fn find_context(&mut self, wire: &str, now: Instant) -> Option<usize> {
        self.contexts.retain(|c| c.expires > now);
        self.contexts
            .iter()
            .position(|c| context_wire(c.id).eq_ignore_ascii_case(wire.trim()))
    }

    /// Applies what happened while nobody asked: consent timeouts, alarms that went off.
    pub(crate) fn tick(&mut self, now: Now) {
        self.expire_opt_in(now.mono);
        self.fire_alarms(now.unix);
    }
}

/// AMT's context form: the counter's bytes little-endian in the first group
/// (`D3020000-0000-0000-0000-000000000000` for 0x02D3).
pub(crate) fn context_wire(id: u32) -> String {
    format!("{:08X}-0000-0000-0000-000000000000", id.swap_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_are_bounded_and_expire() {
        let mut m = DeviceModel::new(false, 1_700_000_000);
        let t0 = Instant::now();
        let first = m.open_context("CIM_Chip", t0);
        assert_eq!(context_wire(0x02D3), "D3020000-0000-0000-0000-000000000000");
        assert!(m.find_context(&context_wire(first), t0).is_some());
        for _ in 0..MAX_CONTEXTS {
            m.open_context("CIM_Chip", t0);
        }
        assert_eq!(m.contexts.len(), MAX_CONTEXTS);
        assert!(
            m.find_context(&context_wire(first), t0).is_none(),
            "evicted"
        );
        let last = m.open_context("CIM_Chip", t0);
        let later = t0 + CONTEXT_TTL + Duration::from_secs(1);
        assert!(
            m.find_context(&context_wire(last), later).is_none(),
            "expired"
        );
        assert!(m.contexts.is_empty());
    }

    #[test]
    fn message_ids_look_like_amt() {
        let mut m = DeviceModel::new(false, 0);
        let id = m.next_message_id();
        assert!(id.starts_with("uuid:00000000-8086-8086-8086-"));
        assert_eq!(id.len(), "uuid:00000000-8086-8086-8086-".len() + 12);
        assert_ne!(id, m.next_message_id());
    }
}
