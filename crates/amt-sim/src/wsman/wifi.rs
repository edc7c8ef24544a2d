//! Wi-Fi as provisioning sets it (openamt-rps.md §2.4, §2.5): AMT_WiFiPortConfigurationService
//! (local profile synchronisation, AddWiFiSettings), CIM_WiFiPort (enabling the port) and the
//! profiles themselves (CIM_WiFiEndpointSettings: listed and deleted by unconfiguration).

use super::model::WifiProfile;
use super::render::{Answer, Item, Px, WsFault, AMT, CIM, TRANSFER, W};
use super::xml::Request;
use super::{instance_answer, number, Class, Ctx};

const OK: u32 = 0;
const INVALID_PARAMETER: u32 = 36;
const DUPLICATE: u32 = 2058;
const LIMIT: u32 = 23;
const SERVICE: &str = "AMT_WiFiPortConfigurationService";
const ENDPOINT_SETTINGS: &str = "CIM_WiFiEndpointSettings";
/// Profiles AMT keeps at most.
const MAX_PROFILES: usize = 16;

pub(crate) const CLASSES: &[Class] = &[
    Class {
        instances: Some(service),
        get: true,
        enumerate: true,
        put: Some(put_service),
        methods: &[("AddWiFiSettings", add_wifi_settings)],
        ..Class::new(SERVICE, AMT)
    },
    Class {
        instances: Some(port),
        get: true,
        enumerate: true,
        methods: &[("RequestStateChange", port_state_change)],
        ..Class::new("CIM_WiFiPort", CIM)
    },
    Class {
        instances: Some(profiles),
        get: true,
        enumerate: true,
        delete: Some(delete_profile),
        ..Class::new(ENDPOINT_SETTINGS, CIM)
    },
];

fn remote<'m>(ctx: &'m mut Ctx<'_>) -> &'m mut super::model::RemoteAccess {
    ctx.model.remote.get_or_insert_with(Box::default)
}

fn service(ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    let sync = ctx.model.remote.as_ref().map_or(0, |r| r.wifi_local_sync);
    let name = "Intel(r) AMT WiFi Port Configuration Service";
    let mut w = W::new(px, SERVICE);
    w.s("CreationClassName", SERVICE)
        .s("ElementName", name)
        .v("EnabledState", 5)
        .v("HealthState", 5)
        .v("LastConnectedSsidUnderMeControl", "")
        .s("Name", name)
        .v("NoHostCsmeSoftwarePolicy", 0)
        .v("RequestedState", 5)
        .s("SystemCreationClassName", "CIM_ComputerSystem")
        .s("SystemName", "Intel(r) AMT")
        .v("localProfileSynchronizationEnabled", sync);
    vec![w.finish(SERVICE, AMT)]
}

/// Put: localProfileSynchronizationEnabled (0 off, 1-3 on).
fn put_service(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let instance = req
        .input()
        .filter(|i| i.name() == SERVICE)
        .ok_or(WsFault::InvalidRepresentation)?;
    if let Some(v) = instance.child("localProfileSynchronizationEnabled") {
        let v: u32 = v
            .text()
            .trim()
            .parse()
            .map_err(|_| WsFault::InvalidRepresentation)?;
        if v > 3 {
            return Err(WsFault::InvalidRepresentation);
        }
        remote(ctx).wifi_local_sync = v;
    }
    let item = service(ctx, super::render::GET_PX)
        .into_iter()
        .next()
        .ok_or(WsFault::InvalidRepresentation)?;
    Ok(instance_answer(&format!("{TRANSFER}PutResponse"), item))
}

/// AddWiFiSettings {WiFiEndpoint, WiFiEndpointSettingsInput{ElementName, InstanceID,
/// AuthenticationMethod, EncryptionMethod, SSID, Priority, PSKPassPhrase}}.
fn add_wifi_settings(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let class = format!("{AMT}{SERVICE}");
    let method = "AddWiFiSettings";
    let Some(settings) = req.body().and_then(|b| b.find("WiFiEndpointSettingsInput")) else {
        return Ok(Answer::return_value(&class, method, INVALID_PARAMETER));
    };
    let text = |k: &str| settings.find_text(k).unwrap_or_default().trim().to_string();
    let num = |k: &str| text(k).parse::<u32>().ok();
    let (id, ssid, psk) = (text("InstanceID"), text("SSID"), text("PSKPassPhrase"));
    let (auth, enc, priority) = (
        num("AuthenticationMethod"),
        num("EncryptionMethod"),
        num("Priority"),
    );
    let valid = !id.is_empty()
        && (1..=32).contains(&ssid.len())
        && matches!(auth, Some(4 | 6))
        && matches!(enc, Some(3 | 4))
        && priority.is_some_and(|p| (1..=255).contains(&p))
        && (8..=63).contains(&psk.len());
    if !valid {
        return Ok(Answer::return_value(&class, method, INVALID_PARAMETER));
    }
    let r = remote(ctx);
    if r.wifi.iter().any(|p| p.instance_id == id) {
        return Ok(Answer::return_value(&class, method, DUPLICATE));
    }
    if r.wifi.len() >= MAX_PROFILES {
        return Ok(Answer::return_value(&class, method, LIMIT));
    }
    r.wifi.push(WifiProfile {
        instance_id: id,
        ssid,
        priority: priority.unwrap_or(1),
    });
    Ok(Answer::return_value(&class, method, OK))
}

fn port(ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    let state = ctx.model.remote.as_ref().map_or(3, |r| r.wifi_port_state);
    let mut w = W::new(px, "CIM_WiFiPort");
    w.s("CreationClassName", "CIM_WiFiPort")
        .s("DeviceID", "WiFi Port 0")
        .s("ElementName", "WiFi Port 0")
        .v("EnabledState", state)
        .v("HealthState", 5)
        .v("LinkTechnology", 11)
        .s("PermanentAddress", "a4ae111e4654")
        .v("PortType", 108)
        .v("RequestedState", state)
        .s("SystemCreationClassName", "CIM_ComputerSystem")
        .s("SystemName", "ManagedSystem");
    vec![w.finish("CIM_WiFiPort", CIM)]
}

/// RequestStateChange: 3 disabled, 32768 enabled in S0, 32769 enabled in S0 and Sx/AC.
fn port_state_change(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let class = format!("{CIM}CIM_WiFiPort");
    let rv = match number::<u32>(req, "RequestedState") {
        Some(s @ (3 | 32768 | 32769)) => {
            remote(ctx).wifi_port_state = s;
            OK
        }
        _ => INVALID_PARAMETER,
    };
    Ok(Answer::return_value(&class, "RequestStateChange", rv))
}

fn profiles(ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    let Some(r) = &ctx.model.remote else {
        return Vec::new();
    };
    r.wifi
        .iter()
        .map(|p| {
            let mut w = W::new(px, ENDPOINT_SETTINGS);
            w.v("AuthenticationMethod", 6)
                .s(
                    "ElementName",
                    p.instance_id
                        .trim_start_matches("Intel(r) AMT:WiFi Endpoint Settings "),
                )
                .v("EncryptionMethod", 4)
                .s("InstanceID", &p.instance_id)
                .v("Priority", p.priority)
                .s("SSID", &p.ssid);
            w.finish(ENDPOINT_SETTINGS, CIM)
        })
        .collect()
}

fn delete_profile(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let id = req
        .selector("InstanceID")
        .ok_or(WsFault::InvalidSelectors)?
        .to_string();
    let r = remote(ctx);
    let before = r.wifi.len();
    r.wifi.retain(|p| p.instance_id != id);
    if r.wifi.len() == before {
        return Err(WsFault::InvalidSelectors);
    }
    Ok(Answer::deleted())
}
