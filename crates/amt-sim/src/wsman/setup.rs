//! Firmware identity and configuration (wsman-amt.md §2.3-§2.5, §2.12): CIM_SoftwareIdentity,
//! AMT_SetupAndConfigurationService (with Unprovision), AMT_GeneralSettings and
//! AMT_BootCapabilities, rendered from the firmware profile below.

use super::render::{Answer, Item, Px, AMT, CIM, W};
use super::{Class, Ctx, Effect};
use crate::wsman::render::WsFault;
use crate::wsman::xml::Request;

/// Firmware version everything reports (matches `amt::SERVER_HEADER` and `enroll`).
pub(crate) const AMT_VERSION: &str = "15.0.23";
pub(crate) const AMT_BUILD: &str = "1706";
pub(crate) const AMT_SKU: &str = "16392";

/// CIM_SoftwareIdentity instances in AMT's order (§2.4).
const SOFTWARE: [(&str, &str); 11] = [
    ("Flash", AMT_VERSION),
    ("Netstack", AMT_VERSION),
    ("AMTApps", AMT_VERSION),
    ("AMT", AMT_VERSION),
    ("Sku", AMT_SKU),
    ("VendorID", "8086"),
    ("Build Number", AMT_BUILD),
    ("Recovery Version", AMT_VERSION),
    ("Recovery Build Num", AMT_BUILD),
    ("Legacy Mode", "False"),
    ("AMT FW Core Version", AMT_VERSION),
];

/// Unprovision's ReturnValue when the device is not provisioned (PT_STATUS_NOT_PERMITTED).
const NOT_PERMITTED: u32 = 16;
/// PT_STATUS_INVALID_PARAMETER.
const INVALID_PARAMETER: u32 = 36;
/// Audit 1619 ExtendedData[0]: unprovisioned through remote WS-Man.
const UNPROVISION_REMOTE_WSMAN: u8 = 4;

pub(crate) const CLASSES: &[Class] = &[
    Class {
        instances: Some(software_identity),
        get: true,
        enumerate: true,
        ..Class::new("CIM_SoftwareIdentity", CIM)
    },
    Class {
        instances: Some(setup_and_configuration),
        get: true,
        enumerate: true,
        methods: &[
            ("Unprovision", unprovision),
            ("SetMEBxPassword", set_mebx_password),
        ],
        ..Class::new("AMT_SetupAndConfigurationService", AMT)
    },
    Class {
        instances: Some(general_settings),
        get: true,
        enumerate: true,
        put: Some(put_general_settings),
        ..Class::new("AMT_GeneralSettings", AMT)
    },
    Class {
        instances: Some(boot_capabilities),
        get: true,
        enumerate: true,
        ..Class::new("AMT_BootCapabilities", AMT)
    },
];

fn software_identity(_ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    SOFTWARE
        .iter()
        .map(|(id, version)| {
            let mut w = W::new(px, "CIM_SoftwareIdentity");
            w.s("InstanceID", id)
                .v("IsEntity", true)
                .s("VersionString", version);
            w.finish("CIM_SoftwareIdentity", CIM)
        })
        .collect()
}

fn setup_and_configuration(ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    let name = "Intel(r) AMT Setup and Configuration Service";
    let provisioned = ctx.model.provisioned;
    let mut w = W::new(px, "AMT_SetupAndConfigurationService");
    w.s("CreationClassName", "AMT_SetupAndConfigurationService")
        .s("ElementName", name)
        .v("EnabledState", 5)
        .s("Name", name)
        .v("PasswordModel", 1)
        // 1 = admin control mode; reported as 0 once unprovisioned.
        .v("ProvisioningMode", if provisioned { 1 } else { 0 })
        .s(
            "ProvisioningServerOTP",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        )
        .v("ProvisioningState", if provisioned { 2 } else { 0 })
        .v("RequestedState", 12)
        .s("SystemCreationClassName", "CIM_ComputerSystem")
        .s("SystemName", "Intel(r) AMT")
        .v("ZeroTouchConfigurationEnabled", true);
    vec![w.finish("AMT_SetupAndConfigurationService", AMT)]
}

fn general_settings(ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    let id = ctx.id;
    let hostname = ctx
        .model
        .remote
        .as_ref()
        .and_then(|r| r.hostname.clone())
        .unwrap_or_else(|| id.hostname.clone());
    let fqdn = format!("{hostname}.sim.homeport.test");
    let mut w = W::new(px, "AMT_GeneralSettings");
    w.v("AMTNetworkEnabled", 1)
        .v("DDNSPeriodicUpdateInterval", 1440)
        .v("DDNSTTL", 900)
        .v("DDNSUpdateByDHCPServerEnabled", true)
        .v("DDNSUpdateEnabled", false)
        .v("DHCPSyncRequiresHostname", 1)
        .v("DHCPv6ConfigurationTimeout", 0)
        .s("DigestRealm", &id.realm)
        .s("DomainName", "sim.homeport.test")
        .s("ElementName", "Intel(r) AMT: General Settings")
        .s("HostName", &hostname)
        .s("HostOSFQDN", &fqdn)
        .v("IdleWakeTimeout", 65535)
        .s("InstanceID", "Intel(r) AMT: General Settings")
        .v("NetworkInterfaceEnabled", true)
        .v("PingResponseEnabled", true)
        .v("PowerSource", 0)
        .v("PreferredAddressFamily", 0)
        .v("PresenceNotificationInterval", 0)
        .v("PrivacyLevel", 0)
        .v("RmcpPingResponseEnabled", true)
        .v("SharedFQDN", true)
        .v("ThunderboltDockEnabled", 0)
        .v("WsmanOnlyMode", false);
    vec![w.finish("AMT_GeneralSettings", AMT)]
}

fn boot_capabilities(_ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    let mut w = W::new(px, "AMT_BootCapabilities");
    w.v("BIOSPause", false)
        .v("BIOSReflash", true)
        .v("BIOSSecureBoot", true)
        .v("BIOSSetup", true)
        .v("ConfigurationDataReset", false)
        .s("ElementName", "Intel(r) AMT: Boot Capabilities")
        .v("ForceCDorDVDBoot", true)
        .v("ForceDiagnosticBoot", false)
        .v("ForceHardDriveBoot", true)
        .v("ForceHardDriveSafeModeBoot", false)
        .v("ForcePXEBoot", true)
        .v("ForcedProgressEvents", true)
        .v("IDER", true)
        .s("InstanceID", "Intel(r) AMT:BootCapabilities 0")
        .v("KeyboardLock", true)
        .v("PowerButtonLock", false)
        .v("ResetButtonLock", false)
        .v("SOL", true)
        .v("SecureErase", false)
        .v("SleepButtonLock", false)
        .v("UserPasswordBypass", true)
        .v("VerbosityQuiet", false)
        .v("VerbosityScreenBlank", false)
        .v("VerbosityVerbose", false);
    vec![w.finish("AMT_BootCapabilities", AMT)]
}

/// Put: HostName (1-63 characters) is what a provisioning server changes; the rest stays.
fn put_general_settings(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let instance = req
        .input()
        .filter(|i| i.name() == "AMT_GeneralSettings")
        .ok_or(WsFault::InvalidRepresentation)?;
    if let Some(h) = instance.child("HostName") {
        let h = h.text().trim();
        if h.is_empty() || h.len() > 63 {
            return Err(WsFault::InvalidRepresentation);
        }
        ctx.model.remote.get_or_insert_with(Box::default).hostname = Some(h.to_string());
    }
    let item = general_settings(ctx, super::render::GET_PX)
        .into_iter()
        .next()
        .ok_or(WsFault::InvalidRepresentation)?;
    Ok(super::instance_answer(
        &format!("{}PutResponse", super::render::TRANSFER),
        item,
    ))
}

/// SetMEBxPassword {Password}: only in admin control mode (AMT refuses it in CCM).
fn set_mebx_password(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let uri = format!("{AMT}AMT_SetupAndConfigurationService");
    let rv = match req.body_text("Password") {
        _ if ctx.model.control_mode != 2 => NOT_PERMITTED,
        Some(p) if (8..=32).contains(&p.len()) => {
            ctx.model.remote.get_or_insert_with(Box::default).mebx_set = true;
            0
        }
        _ => INVALID_PARAMETER,
    };
    Ok(Answer::return_value(&uri, "SetMEBxPassword", rv))
}

/// Unprovision {ProvisioningMode}: back to pre-provisioning; the connection then drops CIRA
/// and stays away (§2.12, §3.3).
fn unprovision(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let uri = format!("{AMT}AMT_SetupAndConfigurationService");
    let rv = match req.body_text("ProvisioningMode") {
        None | Some("" | "1") if ctx.model.provisioned => 0,
        None | Some("" | "1") => NOT_PERMITTED,
        Some(_) => INVALID_PARAMETER,
    };
    if rv == 0 {
        ctx.audit_remote(1619, &[UNPROVISION_REMOTE_WSMAN]);
        ctx.model.provisioned = false;
        // A device that came through provisioning goes back to the factory state: only its
        // local system account is accepted, and its CIRA configuration is gone.
        if ctx.model.credentials.is_some() {
            ctx.model.credentials = Some(Box::new(crate::provision::lsa_credentials(ctx.id)));
            ctx.model.control_mode = 0;
            let trusted = ctx
                .model
                .remote
                .as_ref()
                .map(|r| r.trusted_hashes.clone())
                .unwrap_or_default();
            ctx.model.remote = Some(Box::new(super::model::RemoteAccess {
                trusted_hashes: trusted,
                ..Default::default()
            }));
        }
        ctx.effect = Effect::Unprovisioned;
    }
    Ok(Answer::return_value(&uri, "Unprovision", rv))
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    #[test]
    fn version_and_provisioning() {
        let mut sim = Sim::new();
        let r = sim.enumerate_pull(&format!("{CIM}CIM_SoftwareIdentity"), Some(999));
        let ids = r.all("InstanceID");
        assert_eq!(ids.len(), 11);
        let amt = ids.iter().position(|i| *i == "AMT").unwrap();
        assert_eq!(r.all("VersionString")[amt], "15.0.23");
        let uri = format!("{AMT}AMT_SetupAndConfigurationService");
        let r = sim.get(&uri);
        assert_eq!(r.text("ProvisioningMode"), Some("1"));
        assert_eq!(r.text("ProvisioningState"), Some("2"));
        let r = sim.get(&format!("{AMT}AMT_BootCapabilities"));
        assert_eq!(r.text("BIOSSetup"), Some("true"));
    }

    #[test]
    fn unprovision_once() {
        let mut sim = Sim::new();
        let uri = format!("{AMT}AMT_SetupAndConfigurationService");
        let bad = sim.invoke(
            &uri,
            "Unprovision",
            "<h:ProvisioningMode>7</h:ProvisioningMode>",
        );
        assert_eq!(bad.return_value(), Some(36));
        assert_eq!(bad.effect, Effect::None);
        let r = sim.invoke(
            &uri,
            "Unprovision",
            "<h:ProvisioningMode>1</h:ProvisioningMode>",
        );
        assert_eq!(r.return_value(), Some(0));
        assert_eq!(r.effect, Effect::Unprovisioned);
        assert_eq!(
            r.text("Action"),
            Some("http://intel.com/wbem/wscim/1/amt-schema/1/AMT_SetupAndConfigurationService/UnprovisionResponse")
        );
        assert_eq!(sim.audit_events().last(), Some(&1619));
        assert_eq!(sim.get(&uri).text("ProvisioningState"), Some("0"));
        let again = sim.invoke(
            &uri,
            "Unprovision",
            "<h:ProvisioningMode>1</h:ProvisioningMode>",
        );
        assert_eq!(again.return_value(), Some(16));
        assert_eq!(again.effect, Effect::None);
    }
}
