//! Typed models of the AMT classes behind each device-management feature (reference §2),
//! the requests that read and change them, and decoders for their answers.

pub mod alarms;
pub mod boot;
pub mod features;
pub mod hardware;
pub mod logs;
pub mod power;
pub mod settings;

use crate::envelope::Class;
use crate::response::{Response, ResponseError};
use crate::xml::Element;

pub const SERVICE_AVAILABLE_TO_ELEMENT: Class = Class::cim("CIM_ServiceAvailableToElement");
pub const POWER_MANAGEMENT_SERVICE: Class = Class::cim("CIM_PowerManagementService");
pub const IPS_POWER_MANAGEMENT_SERVICE: Class = Class::ips("IPS_PowerManagementService");
pub const BOOT_SETTING_DATA: Class = Class::amt("AMT_BootSettingData");
pub const BOOT_CAPABILITIES: Class = Class::amt("AMT_BootCapabilities");
pub const BOOT_SERVICE: Class = Class::cim("CIM_BootService");
pub const BOOT_CONFIG_SETTING: Class = Class::cim("CIM_BootConfigSetting");
pub const BOOT_SOURCE_SETTING: Class = Class::cim("CIM_BootSourceSetting");
pub const COMPUTER_SYSTEM: Class = Class::cim("CIM_ComputerSystem");
pub const SOFTWARE_IDENTITY: Class = Class::cim("CIM_SoftwareIdentity");
pub const SETUP_AND_CONFIGURATION: Class = Class::amt("AMT_SetupAndConfigurationService");
pub const GENERAL_SETTINGS: Class = Class::amt("AMT_GeneralSettings");
pub const COMPUTER_SYSTEM_PACKAGE: Class = Class::cim("CIM_ComputerSystemPackage");
pub const CHASSIS: Class = Class::cim("CIM_Chassis");
pub const CARD: Class = Class::cim("CIM_Card");
pub const BIOS_ELEMENT: Class = Class::cim("CIM_BIOSElement");
pub const PROCESSOR: Class = Class::cim("CIM_Processor");
pub const CHIP: Class = Class::cim("CIM_Chip");
pub const PHYSICAL_MEMORY: Class = Class::cim("CIM_PhysicalMemory");
pub const MEDIA_ACCESS_DEVICE: Class = Class::cim("CIM_MediaAccessDevice");
pub const PHYSICAL_PACKAGE: Class = Class::cim("CIM_PhysicalPackage");
pub const REDIRECTION_SERVICE: Class = Class::amt("AMT_RedirectionService");
pub const KVM_REDIRECTION_SAP: Class = Class::cim("CIM_KVMRedirectionSAP");
pub const OPT_IN_SERVICE: Class = Class::ips("IPS_OptInService");
pub const MESSAGE_LOG: Class = Class::amt("AMT_MessageLog");
pub const AUDIT_LOG: Class = Class::amt("AMT_AuditLog");
pub const ALARM_CLOCK_OCCURRENCE: Class = Class::ips("IPS_AlarmClockOccurrence");
pub const ALARM_CLOCK_SERVICE: Class = Class::amt("AMT_AlarmClockService");

/// The instance element of a Get/Put response (named after the class).
pub fn instance(r: &Response, class: Class) -> Result<&Element, ResponseError> {
    r.output(class.name)
}

/// The EnumerationContext of an Enumerate response.
pub fn enumeration_context(r: &Response) -> Result<String, ResponseError> {
    r.body
        .path(&["EnumerateResponse", "EnumerationContext"])
        .map(|e| e.text.trim().to_string())
        .ok_or_else(|| ResponseError::Missing("EnumerateResponse.EnumerationContext".into()))
}

/// One page of a Pull: the items (any concrete class), the context to continue with, and
/// whether the enumeration is finished.
pub struct PullPage<'a> {
    pub items: Vec<&'a Element>,
    pub context: Option<String>,
    pub end_of_sequence: bool,
}

pub fn pull_page(r: &Response) -> Result<PullPage<'_>, ResponseError> {
    let p = r.output("PullResponse")?;
    Ok(PullPage {
        items: p
            .child("Items")
            .map(|i| i.children.iter().collect())
            .unwrap_or_default(),
        context: p
            .text_of("EnumerationContext")
            .filter(|c| !c.is_empty())
            .map(str::to_string),
        end_of_sequence: p.child("EndOfSequence").is_some(),
    })
}

/// A flat instance kept as ordered (property, value) pairs, for Get-modify-Put.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Properties(pub Vec<(String, String)>);

impl Properties {
    pub fn from_element(e: &Element) -> Properties {
        Properties(
            e.children
                .iter()
                .filter(|c| c.children.is_empty())
                .map(|c| (c.name.clone(), c.text.trim().to_string()))
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets an existing property or appends it.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value,
            None => self.0.push((name.to_string(), value)),
        }
    }

    pub fn to_put(&self, class: Class) -> crate::Request {
        crate::Request::put(class, crate::envelope::instance(class, &self.0))
    }
}

/// Text for an AMT PT_STATUS / ReturnValue code (the common ones).
pub fn return_value_text(rv: u32) -> &'static str {
    match rv {
        0 => "success",
        1 => "internal error / not supported",
        2 => "not ready / invalid state",
        3 => "timeout / no records",
        4 => "failed",
        5 => "invalid parameter",
        6 => "in use",
        16 => "not permitted",
        35 => "invalid index",
        36 => "invalid parameter",
        2066 => "unsupported (wrong consent code)",
        2076 => "blocking component",
        4096 => "job started",
        4097 => "invalid state transition",
        _ => "unknown return value",
    }
}
