//! Names for the numbers the device API speaks: power and boot actions and enum-like fields.

use homeport_proto::device::v1::ConnectionStatus;

/// A number the API uses and the name operators type or read for it.
pub type Names = &'static [(&'static str, u32)];

/// RequestPowerStateChange codes (`PowerActionRequest.action`, `available_transitions`).
pub const POWER_ACTIONS: Names = &[
    ("on", 2),
    ("sleep", 4),
    ("cycle", 5),
    ("hibernate", 7),
    ("off", 8),
    ("reset", 10),
    ("nmi", 11),
    ("soft-off", 12),
    ("soft-reset", 14),
];

/// MPS boot actions (`BootOptionsRequest.action`): a bare target powers up to it,
/// `reset-<target>` resets to it.
pub const BOOT_ACTIONS: Names = &[
    ("bios", 100),
    ("reset-bios", 101),
    ("secure-erase", 104),
    ("reset-ider-floppy", 200),
    ("ider-floppy", 201),
    ("reset-ider-cd", 202),
    ("ider-cd", 203),
    ("diagnostics", 300),
    ("reset-diagnostics", 301),
    ("reset-pxe", 400),
    ("pxe", 401),
];

pub const OS_POWER_SAVING: Names = &[
    ("unknown", 0),
    ("unsupported", 1),
    ("full power", 2),
    ("saving", 3),
];
pub const PROVISIONING_MODE: Names = &[("ACM", 1), ("CCM", 4)];
pub const PROVISIONING_STATE: Names = &[("pre", 0), ("in", 1), ("post", 2)];
pub const OPT_IN_STATE: Names = &[
    ("not started", 0),
    ("requested", 1),
    ("displayed", 2),
    ("received", 3),
    ("in session", 4),
];
/// AMT_GeneralSettings.PowerSource and PrivacyLevel.
pub const POWER_SOURCE: Names = &[("AC", 0), ("DC", 1)];
pub const PRIVACY_LEVEL: Names = &[("default", 0), ("enhanced", 1), ("extreme", 2)];

/// A code given as a number or as one of `names` (case and `_`/`-` insensitive).
pub fn parse(names: Names, text: &str) -> Result<u32, String> {
    if let Ok(code) = text.parse::<u32>() {
        return Ok(code);
    }
    let wanted = text.to_ascii_lowercase().replace('_', "-");
    names
        .iter()
        .find(|(name, _)| *name == wanted)
        .map(|&(_, code)| code)
        .ok_or_else(|| {
            let known: Vec<String> = names.iter().map(|(n, c)| format!("{n}={c}")).collect();
            format!("expected a number or one of: {}", known.join(", "))
        })
}

pub fn parse_power_action(text: &str) -> Result<u32, String> {
    parse(POWER_ACTIONS, text)
}

pub fn parse_boot_action(text: &str) -> Result<u32, String> {
    parse(BOOT_ACTIONS, text)
}

pub fn name(names: Names, code: u32) -> Option<&'static str> {
    names.iter().find(|&&(_, c)| c == code).map(|&(n, _)| n)
}

/// `ACM (1)`, or the bare number when it has no name.
pub fn label(names: Names, code: u32) -> String {
    match name(names, code) {
        Some(n) => format!("{n} ({code})"),
        None => code.to_string(),
    }
}

/// `connected`, `disconnected`, `unspecified`, or the number of a status this build does not
/// know.
pub fn status(value: i32) -> String {
    match ConnectionStatus::try_from(value) {
        Ok(ConnectionStatus::Connected) => "connected".into(),
        Ok(ConnectionStatus::Disconnected) => "disconnected".into(),
        Ok(ConnectionStatus::Unspecified) => "unspecified".into(),
        Err(_) => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_actions_by_name_or_number() {
        let expected = [
            ("on", 2),
            ("sleep", 4),
            ("cycle", 5),
            ("hibernate", 7),
            ("off", 8),
            ("reset", 10),
            ("nmi", 11),
            ("soft-off", 12),
            ("soft-reset", 14),
        ];
        for (text, code) in expected {
            assert_eq!(parse_power_action(text), Ok(code), "{text}");
        }
        assert_eq!(parse_power_action("SOFT_OFF"), Ok(12));
        assert_eq!(parse_power_action("10"), Ok(10));
        assert_eq!(parse_power_action("99"), Ok(99), "numbers pass through");
        let err = parse_power_action("reboot").unwrap_err();
        assert!(err.contains("soft-reset=14"), "{err}");
        assert!(parse_power_action("-1").is_err());
    }

    #[test]
    fn boot_actions_follow_the_mps_codes() {
        assert_eq!(parse_boot_action("bios"), Ok(100));
        assert_eq!(parse_boot_action("reset-bios"), Ok(101));
        assert_eq!(parse_boot_action("pxe"), Ok(401));
        assert_eq!(parse_boot_action("reset-pxe"), Ok(400));
        assert_eq!(parse_boot_action("ider-cd"), Ok(203));
        assert_eq!(parse_boot_action("202"), Ok(202));
        assert!(parse_boot_action("cdrom").is_err());
    }

    #[test]
    fn names_are_unique_both_ways() {
        for names in [POWER_ACTIONS, BOOT_ACTIONS, OS_POWER_SAVING, OPT_IN_STATE] {
            for (i, (n, c)) in names.iter().enumerate() {
                assert!(names[i + 1..].iter().all(|(m, d)| m != n && d != c));
            }
        }
    }

    #[test]
    fn labels_show_name_and_number() {
        assert_eq!(label(PROVISIONING_MODE, 1), "ACM (1)");
        assert_eq!(label(PROVISIONING_MODE, 3), "3");
        assert_eq!(status(2), "connected");
        assert_eq!(status(9), "9");
    }
}
