//! Power state and power actions (wsman-amt.md §2.1/§2.2, behaviour §3.3): the power
//! association, RequestPowerStateChange transitions, AMT_BootSettingData Get/Put, boot role and
//! boot order, and what every boot does — consume single-use boot options, log BIOS progress
//! to the event log and the remote-control action to the audit log.

use super::model::DeviceModel;
use super::render::{Answer, Item, Px, WsFault, AMT, CIM, IPS, TRANSFER, W};
use super::xml::Request;
use super::{instance_answer, number, Class, Ctx};

/// CIM RequestPowerStateChange / RequestStateChange: completed, unknown (AMT's answer to an
/// invalid transition), invalid parameter.
const OK: u32 = 0;
const UNKNOWN: u32 = 2;
const INVALID_PARAMETER: u32 = 5;

/// PowerState values the model uses.
pub(crate) const ON: u8 = 2;
pub(crate) const SLEEP: u8 = 4;
pub(crate) const HIBERNATE: u8 = 7;
pub(crate) const OFF: u8 = 8;

/// Boot sources ChangeBootOrder accepts (CIM_BootSourceSetting InstanceIDs, §2.2).
pub(crate) const BOOT_SOURCES: [&str; 5] = [
    "Intel(r) AMT: Force Hard-drive Boot",
    "Intel(r) AMT: Force PXE Boot",
    "Intel(r) AMT: Force CD/DVD Boot",
    "Intel(r) AMT: Force OCR UEFI HTTPS Boot",
    "Intel(r) AMT: Force OCR UEFI Boot Option 1",
];

const BOOT_CONFIG_SETTING: &str = "Intel(r) AMT: Boot Configuration 0";

/// How one AMT_BootSettingData property is stored and rendered.
#[derive(Clone, Copy)]
enum Field {
    /// A writable boolean: bit in `BootSettings::flags`.
    Flag(u32),
    /// A writable number: index into `BootSettings::nums`.
    Num(usize),
    /// Read-only, rendered as is; Put values are ignored.
    Fixed(&'static str),
    /// Read-only BIOSLastStatus, rendered as two values.
    LastStatus,
    /// Read-only: whether the single-use options were consumed.
    OptionsCleared,
}

/// The properties in AMT's (alphabetical) order, as in the AMT 15 capture.
const FIELDS: [(&str, Field); 32] = [
    ("BIOSLastStatus", Field::LastStatus),
    ("BIOSPause", Field::Flag(0)),
    ("BIOSSetup", Field::Flag(1)),
    ("BootMediaIndex", Field::Num(0)),
    ("BootguardStatus", Field::Fixed("127")),
    ("ConfigurationDataReset", Field::Flag(2)),
    (
        "ElementName",
        Field::Fixed("Intel(r) AMT Boot Configuration Settings"),
    ),
    ("EnforceSecureBoot", Field::Flag(3)),
    ("FirmwareVerbosity", Field::Num(1)),
    ("ForcedProgressEvents", Field::Flag(4)),
    ("IDERBootDevice", Field::Num(2)),
    ("InstanceID", Field::Fixed("Intel(r) AMT:BootSettingData 0")),
    ("LockKeyboard", Field::Flag(5)),
    ("LockPowerButton", Field::Flag(6)),
    ("LockResetButton", Field::Flag(7)),
    ("LockSleepButton", Field::Flag(8)),
    ("OptionsCleared", Field::OptionsCleared),
    ("OwningEntity", Field::Fixed("Intel(r) AMT")),
    ("PlatformErase", Field::Flag(9)),
    ("RPEEnabled", Field::Fixed("true")),
    // Write-only: accepted on Put, always read back empty.
    ("RSEPassword", Field::Fixed("")),
    ("ReflashBIOS", Field::Flag(10)),
    ("SecureBootControlEnabled", Field::Fixed("true")),
    ("SecureErase", Field::Flag(11)),
    ("UEFIHTTPSBootEnabled", Field::Fixed("true")),
    ("UEFILocalPBABootEnabled", Field::Fixed("true")),
    ("UefiBootNumberOfParams", Field::Num(3)),
    ("UseIDER", Field::Flag(12)),
    ("UseSOL", Field::Flag(13)),
    ("UseSafeMode", Field::Flag(14)),
    ("UserPasswordBypass", Field::Flag(15)),
    ("WinREBootEnabled", Field::Fixed("true")),
];

const BIOS_SETUP: u32 = 1 << 1;
/// EnforceSecureBoot is a setting, not a one-shot option: it survives boots.
const PERSISTENT: u32 = 1 << 3;

/// The writable part of AMT_BootSettingData.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct BootSettings {
    pub flags: u32,
    pub nums: [u16; 4],
}

impl BootSettings {
    fn single_use_set(&self) -> bool {
        self.flags & !PERSISTENT != 0 || self.nums.iter().any(|&n| n != 0)
    }
}

pub(crate) const CLASSES: &[Class] = &[
    Class {
        instances: Some(association),
        enumerate: true,
        ..Class::new("CIM_ServiceAvailableToElement", CIM)
    },
    Class {
        instances: Some(association),
        enumerate: true,
        ..Class::new("CIM_AssociatedPowerManagementService", CIM)
    },
    Class {
        instances: Some(power_service),
        get: true,
        enumerate: true,
        methods: &[("RequestPowerStateChange", request_power_state_change)],
        ..Class::new("CIM_PowerManagementService", CIM)
    },
    Class {
        instances: Some(ips_power_service),
        get: true,
        enumerate: true,
        methods: &[("RequestOSPowerSavingStateChange", request_os_power_saving)],
        ..Class::new("IPS_PowerManagementService", IPS)
    },
    Class {
        instances: Some(boot_setting_data),
        get: true,
        enumerate: true,
        put: Some(put_boot_setting_data),
        ..Class::new("AMT_BootSettingData", AMT)
    },
    Class {
        methods: &[("SetBootConfigRole", set_boot_config_role)],
        ..Class::new("CIM_BootService", CIM)
    },
    Class {
        methods: &[("ChangeBootOrder", change_boot_order)],
        ..Class::new("CIM_BootConfigSetting", CIM)
    },
];

impl DeviceModel {
    /// AvailableRequestedPowerStates for the current state (§3.3).
    pub(crate) fn available_power_states(&self) -> &'static [u8] {
        match (self.power, self.in_band_agent) {
            (ON, true) => &[10, 8, 5, 11, 4, 7, 14, 12],
            (ON, false) => &[10, 8, 5, 11],
            _ => &[2],
        }
    }

    /// The state `requested` leads to from the current one, and whether it boots the host.
    fn transition(&self, requested: u32) -> Option<(u8, bool)> {
        let agent = self.in_band_agent;
        match (self.power, requested) {
            (ON, 5) => Some((ON, true)),
            (ON, 8) => Some((OFF, false)),
            (ON, 10) => Some((ON, true)),
            (ON, 11) => Some((ON, false)),
            (ON, 4) if agent => Some((SLEEP, false)),
            (ON, 7) if agent => Some((HIBERNATE, false)),
            (ON, 12) if agent => Some((OFF, false)),
            (ON, 14) if agent => Some((ON, true)),
            (OFF, 2) => Some((ON, true)),
            // Waking from S4 runs the BIOS again; from S3 it does not.
            (HIBERNATE, 2) => Some((ON, true)),
            (SLEEP, 2) => Some((ON, false)),
            (SLEEP | HIBERNATE, 8) => Some((OFF, false)),
            _ => None,
        }
    }

    /// Boots the host at `unix`: BIOS progress records, single-use options consumed.
    /// Returns whether boot options had been set.
    pub(crate) fn boot_host(&mut self, unix: i64) -> bool {
        let had_options = self.boot.single_use_set() || self.boot_source.is_some();
        let into_setup = self.boot.flags & BIOS_SETUP != 0;
        self.boot_records(unix, into_setup);
        self.boot.flags &= PERSISTENT;
        self.boot.nums = [0; 4];
        self.boot_source = None;
        self.boot_role = None;
        self.power = ON;
        had_options
    }

    /// Applies a power action; the ReturnValue of RequestPowerStateChange.
    pub(crate) fn request_power(&mut self, requested: u32, unix: i64) -> (u32, Option<bool>) {
        match self.transition(requested) {
            None => (UNKNOWN, None),
            Some((next, boots)) => {
                let options = if boots {
                    Some(self.boot_host(unix))
                } else {
                    self.power = next;
                    None
                };
                (OK, options)
            }
        }
    }
}

/// The remote-control audit event of a power action (§2.9, app 17).
fn audit_key(requested: u32) -> Option<u16> {
    Some(match requested {
        2 => 1700,
        8 => 1701,
        5 => 1702,
        10 => 1703,
        12 => 1705,
        14 => 1706,
        4 => 1707,
        7 => 1708,
        11 => 1709,
        _ => return None,
    })
}

fn association(ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    let class = "CIM_AssociatedPowerManagementService";
    let mut w = W::new(px, class);
    for s in ctx.model.available_power_states() {
        w.v("AvailableRequestedPowerStates", s);
    }
    w.v("PowerState", ctx.model.power)
        .epr(
            "ServiceProvided",
            &format!("{CIM}CIM_PowerManagementService"),
            &[
                ("CreationClassName", "CIM_PowerManagementService"),
                ("Name", "Intel(r) AMT Power Management Service"),
                ("SystemCreationClassName", "CIM_ComputerSystem"),
                ("SystemName", "Intel(r) AMT"),
            ],
        )
        .epr(
            "UserOfService",
            &format!("{CIM}CIM_ComputerSystem"),
            &[
                ("CreationClassName", "CIM_ComputerSystem"),
                ("Name", "ManagedSystem"),
            ],
        );
    vec![w.finish(class, CIM)]
}

fn service(px: Px, class: &'static str, base: &'static str, os_saving: Option<u8>) -> Item {
    let name = "Intel(r) AMT Power Management Service";
    let mut w = W::new(px, class);
    w.s("CreationClassName", class)
        .s("ElementName", name)
        .v("EnabledState", 5)
        .s("Name", name)
        .v("RequestedState", 12)
        .s("SystemCreationClassName", "CIM_ComputerSystem")
        .s("SystemName", "Intel(r) AMT");
    if let Some(s) = os_saving {
        w.v("OSPowerSavingState", s);
    }
    w.finish(class, base)
}

fn power_service(_ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    vec![service(px, "CIM_PowerManagementService", CIM, None)]
}

/// OSPowerSavingState is absent while the host is not running (mps#2278).
fn ips_power_service(ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    let saving = (ctx.model.power == ON).then_some(ctx.model.os_power_saving);
    vec![service(px, "IPS_PowerManagementService", IPS, saving)]
}

fn request_power_state_change(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let uri = format!("{CIM}CIM_PowerManagementService");
    let Some(requested) = number::<u32>(req, "PowerState") else {
        return Ok(Answer::return_value(
            &uri,
            "RequestPowerStateChange",
            INVALID_PARAMETER,
        ));
    };
    let (rv, booted_with) = ctx.model.request_power(requested, ctx.now.unix);
    if rv == OK {
        if booted_with == Some(true) {
            ctx.audit_remote(1704, &[]);
        }
        if let Some(key) = audit_key(requested) {
            ctx.audit_remote(key, &[]);
        }
    }
    Ok(Answer::return_value(&uri, "RequestPowerStateChange", rv))
}

fn request_os_power_saving(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let uri = format!("{IPS}IPS_PowerManagementService");
    let rv = match number::<u8>(req, "OSPowerSavingState") {
        _ if ctx.model.power != ON || !ctx.model.in_band_agent => UNKNOWN,
        Some(s @ (2 | 3)) => {
            ctx.model.os_power_saving = s;
            OK
        }
        _ => INVALID_PARAMETER,
    };
    Ok(Answer::return_value(
        &uri,
        "RequestOSPowerSavingStateChange",
        rv,
    ))
}

fn boot_setting_data(ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    let b = &ctx.model.boot;
    let cleared = !(b.single_use_set() || ctx.model.boot_source.is_some());
    let mut w = W::new(px, "AMT_BootSettingData");
    for (name, field) in FIELDS {
        match field {
            Field::Flag(bit) => w.v(name, b.flags & (1 << bit) != 0),
            Field::Num(i) => w.v(name, b.nums.get(i).copied().unwrap_or(0)),
            Field::Fixed(v) => w.s(name, v),
            Field::LastStatus => w.v(name, 2).v(name, 0),
            Field::OptionsCleared => w.v(name, cleared),
        };
    }
    vec![w.finish("AMT_BootSettingData", AMT)]
}

/// Put copies the writable properties present in the body and ignores read-only ones (the
/// Go library sends some, and BIOSLastStatus twice); the answer is the stored instance.
fn put_boot_setting_data(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let instance = req
        .input()
        .filter(|i| i.name() == "AMT_BootSettingData")
        .ok_or(WsFault::InvalidRepresentation)?;
    let mut next = ctx.model.boot.clone();
    for (name, field) in FIELDS {
        let Some(value) = instance.child(name).map(|e| e.text()) else {
            continue;
        };
        match field {
            Field::Flag(bit) => {
                let on = super::render::parse_bool(value).ok_or(WsFault::InvalidRepresentation)?;
                if on {
                    next.flags |= 1 << bit;
                } else {
                    next.flags &= !(1 << bit);
                }
            }
            Field::Num(i) => {
                let n = value.parse().map_err(|_| WsFault::InvalidRepresentation)?;
                if let Some(slot) = next.nums.get_mut(i) {
                    *slot = n;
                }
            }
            Field::Fixed(_) | Field::LastStatus | Field::OptionsCleared => {}
        }
    }
    ctx.model.boot = next;
    let item = boot_setting_data(ctx, super::render::GET_PX)
        .into_iter()
        .next()
        .ok_or(WsFault::InvalidRepresentation)?;
    Ok(instance_answer(&format!("{TRANSFER}PutResponse"), item))
}

/// SetBootConfigRole(BootConfigSetting EPR, Role): 0 for the one boot configuration AMT has.
fn set_boot_config_role(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let uri = format!("{CIM}CIM_BootService");
    let setting = req.body().and_then(|b| b.find("BootConfigSetting"));
    let id_ok = setting.is_none_or(|s| {
        s.selectors()
            .iter()
            .all(|(n, v)| *n != "InstanceID" || *v == BOOT_CONFIG_SETTING)
    });
    let rv = match number::<u8>(req, "Role") {
        Some(role @ 0..=2) if id_ok => {
            ctx.model.boot_role = Some(role);
            OK
        }
        _ => INVALID_PARAMETER,
    };
    Ok(Answer::return_value(&uri, "SetBootConfigRole", rv))
}

/// ChangeBootOrder: empty input clears the boot source; a Source EPR selects one of
/// `BOOT_SOURCES` by InstanceID; anything else is 5 (invalid parameter).
fn change_boot_order(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let uri = format!("{CIM}CIM_BootConfigSetting");
    let source = req.body().and_then(|b| b.find("Source"));
    let rv = match source {
        None => {
            ctx.model.boot_source = None;
            OK
        }
        Some(s) => {
            let selectors = s.selectors();
            let id = selectors
                .iter()
                .find(|(n, _)| *n == "InstanceID")
                .map(|(_, v)| *v);
            match id.and_then(|id| BOOT_SOURCES.iter().position(|b| *b == id)) {
                Some(i) => {
                    ctx.model.boot_source = u8::try_from(i).ok();
                    OK
                }
                None => INVALID_PARAMETER,
            }
        }
    };
    Ok(Answer::return_value(&uri, "ChangeBootOrder", rv))
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    fn power_state(sim: &mut Sim) -> (String, Vec<String>) {
        let r = sim.enumerate_pull(&format!("{CIM}CIM_ServiceAvailableToElement"), Some(999));
        assert_eq!(r.item_names(), ["CIM_AssociatedPowerManagementService"]);
        assert!(r.xml.contains(
            r#"xmlns:h="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_AssociatedPowerManagementService""#
        ));
        let available = r
            .all("AvailableRequestedPowerStates")
            .iter()
            .map(|s| s.to_string())
            .collect();
        (r.text("PowerState").unwrap().to_string(), available)
    }

    fn power(sim: &mut Sim, state: u32) -> u32 {
        let uri = format!("{CIM}CIM_PowerManagementService");
        let epr = r#"<h:ManagedElement><Address xmlns="http://schemas.xmlsoap.org/ws/2004/08/addressing">http://schemas.xmlsoap.org/ws/2004/08/addressing</Address><ReferenceParameters xmlns="http://schemas.xmlsoap.org/ws/2004/08/addressing"><ResourceURI xmlns="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd">http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ComputerSystem</ResourceURI><SelectorSet xmlns="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"><Selector Name="CreationClassName">CIM_ComputerSystem</Selector><Selector Name="Name">ManagedSystem</Selector></SelectorSet></ReferenceParameters></h:ManagedElement>"#;
        let r = sim.invoke(
            &uri,
            "RequestPowerStateChange",
            &format!("<h:PowerState>{state}</h:PowerState>{epr}"),
        );
        assert!(r.ok);
        assert_eq!(
            r.text("Action"),
            Some("http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_PowerManagementService/RequestPowerStateChangeResponse")
        );
        r.return_value().unwrap()
    }

    #[test]
    fn transitions() {
        let mut sim = Sim::new();
        assert_eq!(
            power_state(&mut sim),
            (
                "2".into(),
                ["10", "8", "5", "11", "4", "7", "14", "12"]
                    .map(String::from)
                    .to_vec()
            )
        );
        assert_eq!(power(&mut sim, 2), 2, "power on while on is invalid");
        assert_eq!(power(&mut sim, 8), 0);
        assert_eq!(power_state(&mut sim), ("8".into(), vec!["2".into()]));
        let ips = sim.get(&format!("{IPS}IPS_PowerManagementService"));
        assert_eq!(ips.text("OSPowerSavingState"), None, "absent when off");
        for invalid in [10, 5, 8, 12, 99] {
            assert_eq!(power(&mut sim, invalid), 2, "{invalid} while off");
        }
        assert_eq!(power(&mut sim, 2), 0);
        assert_eq!(
            sim.get(&format!("{IPS}IPS_PowerManagementService"))
                .text("OSPowerSavingState"),
            Some("2")
        );
        assert_eq!(power(&mut sim, 10), 0);
        assert_eq!(power(&mut sim, 5), 0);
        assert_eq!(power(&mut sim, 4), 0);
        assert_eq!(power_state(&mut sim).0, "4");
        assert_eq!(power(&mut sim, 2), 0);
        assert_eq!(power(&mut sim, 7), 0);
        assert_eq!(power(&mut sim, 8), 0);
        assert_eq!(power(&mut sim, 2), 0);
        sim.model.in_band_agent = false;
        assert_eq!(power(&mut sim, 12), 2, "graceful needs the agent");
        assert_eq!(power_state(&mut sim).1, ["10", "8", "5", "11"]);
        let audits = sim.audit_events();
        assert_eq!(
            &audits[4..],
            &[1701, 1700, 1703, 1702, 1707, 1700, 1708, 1701, 1700]
        );
    }

    #[test]
    fn boot_options_are_consumed_by_the_next_boot() {
        let mut sim = Sim::new();
        let uri = format!("{AMT}AMT_BootSettingData");
        let got = sim.get(&uri);
        assert_eq!(
            got.text("InstanceID"),
            Some("Intel(r) AMT:BootSettingData 0")
        );
        assert_eq!(got.all("BIOSLastStatus"), ["2", "0"]);
        assert_eq!(got.text("OptionsCleared"), Some("true"));
        // MPS bootOptions 101 (reset to BIOS setup): Put BIOSSetup, role, PXE-less order, reset.
        let put = format!(
            r#"<h:AMT_BootSettingData xmlns:h="{uri}"><h:BIOSLastStatus>2</h:BIOSLastStatus><h:BIOSLastStatus>0</h:BIOSLastStatus><h:BIOSPause>false</h:BIOSPause><h:BIOSSetup>true</h:BIOSSetup><h:BootMediaIndex>0</h:BootMediaIndex><h:ElementName>ignored</h:ElementName><h:IDERBootDevice>1</h:IDERBootDevice><h:InstanceID>Intel(r) AMT:BootSettingData 0</h:InstanceID><h:UseSOL>true</h:UseSOL><h:OptionsCleared>true</h:OptionsCleared></h:AMT_BootSettingData>"#
        );
        let r = sim.call(&uri, PUT, &put);
        assert!(r.ok, "{}", r.xml);
        assert_eq!(
            r.text("Action"),
            Some("http://schemas.xmlsoap.org/ws/2004/09/transfer/PutResponse")
        );
        assert_eq!(r.text("BIOSSetup"), Some("true"));
        assert_eq!(r.text("IDERBootDevice"), Some("1"));
        assert_eq!(
            r.text("ElementName"),
            Some("Intel(r) AMT Boot Configuration Settings")
        );
        assert_eq!(r.text("OptionsCleared"), Some("false"));
        let role = sim.invoke(
            &format!("{CIM}CIM_BootService"),
            "SetBootConfigRole",
            r#"<h:BootConfigSetting><Address xmlns="http://schemas.xmlsoap.org/ws/2004/08/addressing">http://schemas.xmlsoap.org/ws/2004/08/addressing</Address><ReferenceParameters xmlns="http://schemas.xmlsoap.org/ws/2004/08/addressing"><ResourceURI xmlns="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd">http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_BootConfigSetting</ResourceURI><SelectorSet xmlns="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"><Selector Name="InstanceID">Intel(r) AMT: Boot Configuration 0</Selector></SelectorSet></ReferenceParameters></h:BootConfigSetting><h:Role>1</h:Role>"#,
        );
        assert_eq!(role.return_value(), Some(0));
        let order_uri = format!("{CIM}CIM_BootConfigSetting");
        assert_eq!(
            sim.invoke(&order_uri, "ChangeBootOrder", "").return_value(),
            Some(0)
        );
        let pxe = |id: &str| {
            format!(
                r#"<h:Source><Address xmlns="http://schemas.xmlsoap.org/ws/2004/08/addressing">x</Address><ReferenceParameters xmlns="http://schemas.xmlsoap.org/ws/2004/08/addressing"><ResourceURI xmlns="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd">http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_BootSourceSetting</ResourceURI><SelectorSet xmlns="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"><Selector wsman:Name="InstanceID" xmlns:wsman="w">{id}</Selector></SelectorSet></ReferenceParameters></h:Source>"#
            )
        };
        assert_eq!(
            sim.invoke(
                &order_uri,
                "ChangeBootOrder",
                &pxe("Intel(r) AMT: Force Floppy Boot")
            )
            .return_value(),
            Some(5)
        );
        assert_eq!(
            sim.invoke(
                &order_uri,
                "ChangeBootOrder",
                &pxe("Intel(r) AMT: Force PXE Boot")
            )
            .return_value(),
            Some(0)
        );
        assert_eq!(sim.model.boot_source, Some(1));
        let events_before = sim.model.events.len();
        assert_eq!(power(&mut sim, 10), 0);
        // Consumed: flags cleared, source gone, BIOS setup step logged, 1704 then 1703 audited.
        let after = sim.get(&uri);
        assert_eq!(after.text("BIOSSetup"), Some("false"));
        assert_eq!(after.text("UseSOL"), Some("false"));
        assert_eq!(after.text("IDERBootDevice"), Some("0"));
        assert_eq!(after.text("OptionsCleared"), Some("true"));
        assert_eq!(sim.model.boot_source, None);
        assert_eq!(sim.model.events.len(), events_before + 6);
        assert_eq!(
            sim.model.events.back().map(|r| (r[11], r[14])),
            Some((34, 5))
        );
        assert_eq!(&sim.audit_events()[4..], &[1704, 1703]);
        // A plain reset afterwards has no boot options to report.
        assert_eq!(power(&mut sim, 10), 0);
        assert_eq!(&sim.audit_events()[6..], &[1703]);
        // Invalid Put values are a representation fault.
        let bad = format!(
            r#"<h:AMT_BootSettingData xmlns:h="{uri}"><h:BIOSSetup>maybe</h:BIOSSetup></h:AMT_BootSettingData>"#
        );
        assert_eq!(
            sim.call(&uri, PUT, &bad).subcode(),
            Some("e:InvalidRepresentation")
        );
    }
}
