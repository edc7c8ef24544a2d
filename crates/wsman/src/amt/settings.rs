//! AMT version, provisioning facts and general settings (reference §2.4–§2.5, §2.12).

use super::*;
use crate::response::{boolean, number, opt_number, string};
use crate::Request;

/// CIM_SoftwareIdentity entries: InstanceID → VersionString, in device order.
pub fn software_identities(items: &[&Element]) -> Vec<(String, String)> {
    items
        .iter()
        .filter(|i| i.name == "CIM_SoftwareIdentity")
        .map(|i| (string(i, "InstanceID"), string(i, "VersionString")))
        .collect()
}

/// The AMT version ("15.0.23") and its major number from the software identities.
pub fn amt_version(ids: &[(String, String)]) -> Result<(String, u32), ResponseError> {
    let v = ids
        .iter()
        .find(|(id, _)| id == "AMT")
        .map(|(_, v)| v.clone())
        .ok_or_else(|| ResponseError::Missing("CIM_SoftwareIdentity AMT".into()))?;
    let major = v
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| ResponseError::Invalid {
            field: "AMT VersionString".into(),
            value: v.chars().take(32).collect(),
        })?;
    Ok((v, major))
}

/// Provisioning facts of AMT_SetupAndConfigurationService.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provisioning {
    /// 1 ACM, 4 CCM.
    pub mode: u32,
    /// 0 pre, 1 in, 2 post.
    pub state: u32,
}

pub fn provisioning(r: &Response) -> Result<Provisioning, ResponseError> {
    let e = instance(r, SETUP_AND_CONFIGURATION)?;
    Ok(Provisioning {
        mode: opt_number(e, "ProvisioningMode")?.unwrap_or(0),
        state: number(e, "ProvisioningState")?,
    })
}

/// Unprovision (full unprovisioning, ProvisioningMode 1).
pub fn unprovision() -> Request {
    Request::invoke(
        SETUP_AND_CONFIGURATION,
        "Unprovision",
        &[("ProvisioningMode", "1".into())],
    )
}

/// AMT_GeneralSettings: the fields operators look at, plus every property as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneralSettings {
    pub digest_realm: String,
    pub host_name: String,
    pub domain_name: String,
    pub host_os_fqdn: String,
    pub network_interface_enabled: bool,
    pub ping_response_enabled: bool,
    pub power_source: u32,
    pub privacy_level: u32,
    pub amt_network_enabled: bool,
    pub properties: Properties,
}

pub fn general_settings(r: &Response) -> Result<GeneralSettings, ResponseError> {
    let e = instance(r, GENERAL_SETTINGS)?;
    Ok(GeneralSettings {
        digest_realm: string(e, "DigestRealm"),
        host_name: string(e, "HostName"),
        domain_name: string(e, "DomainName"),
        host_os_fqdn: string(e, "HostOSFQDN"),
        network_interface_enabled: boolean(e, "NetworkInterfaceEnabled"),
        ping_response_enabled: boolean(e, "PingResponseEnabled"),
        power_source: opt_number(e, "PowerSource")?.unwrap_or(0),
        privacy_level: opt_number(e, "PrivacyLevel")?.unwrap_or(0),
        amt_network_enabled: opt_number::<u32>(e, "AMTNetworkEnabled")?.unwrap_or(0) == 1,
        properties: Properties::from_element(e),
    })
}
