//! Power state and power actions (reference §2.1–§2.2).

use super::*;
use crate::envelope::epr;
use crate::response::{number, opt_number};
use crate::Request;

/// The device's power state as CIM_AssociatedPowerManagementService reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PowerStatus {
    pub power_state: u32,
    pub available_transitions: Vec<u32>,
}

/// Reads the single association item of a CIM_ServiceAvailableToElement pull.
pub fn power_status(page: &PullPage<'_>) -> Result<PowerStatus, ResponseError> {
    let item = page
        .items
        .iter()
        .find(|i| i.name == "CIM_AssociatedPowerManagementService")
        .ok_or_else(|| ResponseError::Missing("CIM_AssociatedPowerManagementService".into()))?;
    let mut available = Vec::new();
    for t in item.texts_of("AvailableRequestedPowerStates") {
        available.push(t.parse().map_err(|_| ResponseError::Invalid {
            field: "AvailableRequestedPowerStates".into(),
            value: t.chars().take(16).collect(),
        })?);
    }
    Ok(PowerStatus {
        power_state: number(item, "PowerState")?,
        available_transitions: available,
    })
}

/// OSPowerSavingState of IPS_PowerManagementService (absent while the host is off).
pub fn os_power_saving_state(r: &Response) -> Result<Option<u32>, ResponseError> {
    opt_number(
        instance(r, IPS_POWER_MANAGEMENT_SERVICE)?,
        "OSPowerSavingState",
    )
}

/// Codes RequestPowerStateChange accepts (DMTF; MPS accepts 2-8 and 10-17).
pub fn is_valid_action(action: u32) -> bool {
    matches!(action, 2..=8 | 10..=17)
}

pub fn power_state_text(state: u32) -> &'static str {
    match state {
        2 => "on",
        3 => "sleep (light)",
        4 => "sleep (deep)",
        5 | 9 | 15 | 16 => "power cycle",
        6 | 13 => "off (hard)",
        7 => "hibernate",
        8 | 12 => "off (soft)",
        10 | 14 => "reset",
        11 => "NMI",
        17 => "diagnostic interrupt",
        _ => "other",
    }
}

/// RequestPowerStateChange on the power management service, for the managed system.
pub fn request_power_state_change(state: u32) -> Request {
    Request::invoke(
        POWER_MANAGEMENT_SERVICE,
        "RequestPowerStateChange",
        &[
            ("PowerState", state.to_string()),
            (
                "ManagedElement",
                epr(
                    COMPUTER_SYSTEM,
                    &[
                        ("CreationClassName", "CIM_ComputerSystem"),
                        ("Name", "ManagedSystem"),
                    ],
                ),
            ),
        ],
    )
}
