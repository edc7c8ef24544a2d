//! Boot settings, boot capabilities and the boot-option flow (reference §2.2–§2.3).

use super::*;
use crate::envelope::epr;
use crate::response::boolean;
use crate::Request;

/// Flags cleared before a plain power action and reset by a boot-options request, as the
/// reference does. EnforceSecureBoot is a setting that survives boots, not a one-shot option,
/// so it is kept.
const BOOT_FLAGS: [&str; 14] = [
    "BIOSPause",
    "BIOSSetup",
    "ConfigurationDataReset",
    "ForcedProgressEvents",
    "LockKeyboard",
    "LockPowerButton",
    "LockResetButton",
    "LockSleepButton",
    "ReflashBIOS",
    "UseIDER",
    "UseSOL",
    "UseSafeMode",
    "UserPasswordBypass",
    "SecureErase",
];
const BOOT_NUMBERS: [&str; 3] = ["BootMediaIndex", "FirmwareVerbosity", "IDERBootDevice"];

/// AMT_BootSettingData with every boot flag cleared (what MPS Puts before a power action).
pub fn cleared_boot_settings(current: &Properties) -> Properties {
    let mut p = current.clone();
    for f in BOOT_FLAGS {
        if p.get(f).is_some() {
            p.set(f, "false");
        }
    }
    for f in BOOT_NUMBERS {
        p.set(f, "0");
    }
    p
}

/// What one MPS boot action does: which boot settings, which boot source, which power change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootPlan {
    pub bios_setup: bool,
    pub use_ider: bool,
    pub ider_boot_device: u32,
    /// InstanceID of the CIM_BootSourceSetting to boot from, if any.
    pub source: Option<&'static str>,
    /// RequestPowerStateChange code: 10 reset or 2 power on.
    pub power: u32,
}

/// The MPS boot actions (100, 101, 104, 200-203, 300, 301, 400, 401); `None` for others.
pub fn boot_plan(action: u32) -> Option<BootPlan> {
    if !matches!(action, 100 | 101 | 104 | 200..=203 | 300 | 301 | 400 | 401) {
        return None;
    }
    Some(BootPlan {
        bios_setup: action < 104,
        use_ider: (200..300).contains(&action),
        ider_boot_device: u32::from(matches!(action, 202 | 203)),
        source: matches!(action, 400 | 401).then_some("Intel(r) AMT: Force PXE Boot"),
        power: if matches!(action, 101 | 200 | 202 | 301 | 400) {
            10
        } else {
            2
        },
    })
}

/// Boot settings for `plan`, starting from the cleared current ones.
pub fn planned_boot_settings(current: &Properties, plan: &BootPlan, use_sol: bool) -> Properties {
    let mut p = cleared_boot_settings(current);
    p.set("BIOSSetup", plan.bios_setup.to_string());
    p.set("UseIDER", plan.use_ider.to_string());
    p.set("IDERBootDevice", plan.ider_boot_device.to_string());
    p.set("UseSOL", use_sol.to_string());
    // Action 104 ("reset to secure erase") sends SecureErase false like the reference: a
    // true here would wipe the disk on the next boot, which no client of the API expects.
    p
}

/// SetBootConfigRole: make the AMT boot configuration the next single-use one (Role 1).
pub fn set_boot_config_role() -> Request {
    Request::invoke(
        BOOT_SERVICE,
        "SetBootConfigRole",
        &[
            (
                "BootConfigSetting",
                epr(
                    BOOT_CONFIG_SETTING,
                    &[("InstanceID", "Intel(r) AMT: Boot Configuration 0")],
                ),
            ),
            ("Role", "1".into()),
        ],
    )
}

/// ChangeBootOrder: with a source, boot from it; without, clear the boot source.
pub fn change_boot_order(source: Option<&str>) -> Request {
    match source {
        Some(s) => Request::invoke(
            BOOT_CONFIG_SETTING,
            "ChangeBootOrder",
            &[("Source", epr(BOOT_SOURCE_SETTING, &[("InstanceID", s)]))],
        ),
        None => Request::invoke(BOOT_CONFIG_SETTING, "ChangeBootOrder", &[]),
    }
}

/// AMT_BootCapabilities, the flags that decide which boot actions a device offers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootCapabilities {
    pub bios_setup: bool,
    pub secure_erase: bool,
    pub force_pxe_boot: bool,
    pub force_diagnostic_boot: bool,
    pub ider: bool,
    pub sol: bool,
}

pub fn boot_capabilities(r: &Response) -> Result<BootCapabilities, ResponseError> {
    let e = instance(r, BOOT_CAPABILITIES)?;
    Ok(BootCapabilities {
        bios_setup: boolean(e, "BIOSSetup"),
        secure_erase: boolean(e, "SecureErase"),
        force_pxe_boot: boolean(e, "ForcePXEBoot"),
        force_diagnostic_boot: boolean(e, "ForceDiagnosticBoot"),
        ider: boolean(e, "IDER"),
        sol: boolean(e, "SOL"),
    })
}

/// Power and boot actions the device supports, by name (like MPS's capabilities map).
pub fn power_capabilities(amt_major: u32, caps: &BootCapabilities) -> Vec<(&'static str, u32)> {
    let mut v = vec![
        ("Power up", 2),
        ("Power cycle", 5),
        ("Power down", 8),
        ("Reset", 10),
    ];
    if amt_major > 9 {
        v.extend([
            ("Soft-off", 12),
            ("Soft-reset", 14),
            ("Sleep", 4),
            ("Hibernate", 7),
        ]);
    }
    if caps.bios_setup {
        v.extend([("Power up to BIOS", 100), ("Reset to BIOS", 101)]);
    }
    if caps.secure_erase {
        v.push(("Reset to secure erase", 104));
    }
    v.extend([
        ("Reset to IDE-R floppy", 200),
        ("Power on to IDE-R floppy", 201),
        ("Reset to IDE-R CD-ROM", 202),
        ("Power on to IDE-R CD-ROM", 203),
    ]);
    if caps.force_diagnostic_boot {
        v.extend([
            ("Power on to diagnostic", 300),
            ("Reset to diagnostic", 301),
        ]);
    }
    v.extend([("Reset to PXE", 400), ("Power on to PXE", 401)]);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_plans_follow_mps() {
        let bios = boot_plan(100).unwrap();
        assert!(bios.bios_setup && !bios.use_ider && bios.source.is_none());
        assert_eq!(bios.power, 2);
        let pxe = boot_plan(400).unwrap();
        assert_eq!(
            (pxe.source, pxe.power),
            (Some("Intel(r) AMT: Force PXE Boot"), 10)
        );
        let cd = boot_plan(202).unwrap();
        assert!(cd.use_ider);
        assert_eq!((cd.ider_boot_device, cd.power), (1, 10));
        assert!(boot_plan(7).is_none());
        let current = Properties(vec![
            ("BIOSSetup".into(), "false".into()),
            ("UseSOL".into(), "true".into()),
        ]);
        let p = planned_boot_settings(&current, &bios, false);
        assert_eq!(p.get("BIOSSetup"), Some("true"));
        assert_eq!(p.get("UseSOL"), Some("false"));
        assert_eq!(cleared_boot_settings(&p).get("BIOSSetup"), Some("false"));
    }

    #[test]
    fn power_actions_keep_secure_boot_and_never_ask_for_a_secure_erase() {
        let current = Properties(vec![
            ("EnforceSecureBoot".into(), "true".into()),
            ("SecureErase".into(), "true".into()),
            ("BIOSSetup".into(), "true".into()),
        ]);
        let cleared = cleared_boot_settings(&current);
        assert_eq!(cleared.get("EnforceSecureBoot"), Some("true"));
        assert_eq!(cleared.get("SecureErase"), Some("false"));
        let erase = boot_plan(104).unwrap();
        let p = planned_boot_settings(&current, &erase, false);
        assert_eq!(p.get("SecureErase"), Some("false"));
        assert_eq!(p.get("EnforceSecureBoot"), Some("true"));
        assert_eq!(erase.power, 2);
    }
}
