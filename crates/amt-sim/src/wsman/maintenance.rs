//! What maintenance changes on an activated device (openamt-rps.md §2.10): AMT's clock
//! (AMT_TimeSynchronizationService), the admin password (AMT_AuthorizationService
//! SetAdminAclEntryEx) and the wired interface's settings (AMT_EthernetPortSettings).

use base64::Engine as _;

use super::model::Credentials;
use super::render::{parse_bool, Answer, Item, Px, WsFault, AMT, TRANSFER, W};
use super::xml::Request;
use super::{instance_answer, number, Class, Ctx};

const OK: u32 = 0;
const INVALID_PARAMETER: u32 = 36;
const ETHERNET: &str = "AMT_EthernetPortSettings";
const WIRED: &str = "Intel(r) AMT Ethernet Port Settings 0";
const WIRELESS: &str = "Intel(r) AMT Ethernet Port Settings 1";

pub(crate) const CLASSES: &[Class] = &[
    Class {
        instances: Some(time_service),
        get: true,
        enumerate: true,
        methods: &[
            ("GetLowAccuracyTimeSynch", get_time),
            ("SetHighAccuracyTimeSynch", set_time),
        ],
        ..Class::new("AMT_TimeSynchronizationService", AMT)
    },
    Class {
        instances: Some(authorization_service),
        get: true,
        enumerate: true,
        methods: &[("SetAdminAclEntryEx", set_admin_acl)],
        ..Class::new("AMT_AuthorizationService", AMT)
    },
    Class {
        instances: Some(ethernet),
        get: true,
        enumerate: true,
        put: Some(put_ethernet),
        ..Class::new(ETHERNET, AMT)
    },
];

fn service(px: Px, class: &'static str, name: &str) -> Vec<Item> {
    let mut w = W::new(px, class);
    w.s("CreationClassName", class)
        .s("ElementName", name)
        .s("Name", name)
        .s("SystemCreationClassName", "CIM_ComputerSystem")
        .s("SystemName", "Intel(r) AMT");
    vec![w.finish(class, AMT)]
}

fn time_service(_ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    service(
        px,
        "AMT_TimeSynchronizationService",
        "Intel(r) AMT Time Synchronization Service",
    )
}

fn authorization_service(_ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    service(
        px,
        "AMT_AuthorizationService",
        "Intel(r) AMT Authorization Service",
    )
}

fn offset(ctx: &Ctx<'_>) -> i64 {
    ctx.model.remote.as_ref().map_or(0, |r| r.clock_offset)
}

/// GetLowAccuracyTimeSynch: Ta0, AMT's clock in seconds.
fn get_time(ctx: &mut Ctx<'_>, _req: &Request) -> Result<Answer, WsFault> {
    let class = format!("{AMT}AMT_TimeSynchronizationService");
    let ta0 = ctx.now.unix + offset(ctx);
    Ok(Answer::output(
        &class,
        "GetLowAccuracyTimeSynch",
        &format!("<g:Ta0>{ta0}</g:Ta0><g:ReturnValue>0</g:ReturnValue>"),
    ))
}

/// SetHighAccuracyTimeSynch {Ta0, Tm1, Tm2}: AMT's clock becomes Tm2 (as of now).
fn set_time(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let class = format!("{AMT}AMT_TimeSynchronizationService");
    let rv = match (
        number::<i64>(req, "Ta0"),
        number::<i64>(req, "Tm1"),
        number::<i64>(req, "Tm2"),
    ) {
        (Some(_), Some(_), Some(tm2)) if tm2 > 0 => {
            let now = ctx.now.unix;
            ctx.model
                .remote
                .get_or_insert_with(Box::default)
                .clock_offset = tm2 - now;
            OK
        }
        _ => INVALID_PARAMETER,
    };
    Ok(Answer::return_value(&class, "SetHighAccuracyTimeSynch", rv))
}

/// SetAdminAclEntryEx {Username, DigestPassword = base64 of the raw MD5 of
/// "user:realm:password"}: the new admin credentials, effective for the next request.
fn set_admin_acl(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let class = format!("{AMT}AMT_AuthorizationService");
    let user = req
        .body_text("Username")
        .unwrap_or_default()
        .trim()
        .to_string();
    let digest = base64::engine::general_purpose::STANDARD
        .decode(req.body_text("DigestPassword").unwrap_or_default().trim())
        .ok()
        .filter(|d| d.len() == 16);
    let refuse = ctx
        .model
        .remote
        .as_ref()
        .is_some_and(|r| r.refuse_password_change);
    let rv = match digest {
        _ if refuse => 1,
        Some(d) if user == "admin" && ctx.model.control_mode != 0 => {
            let ha1: String = d.iter().map(|b| format!("{b:02x}")).collect();
            ctx.model.credentials = Some(Box::new(Credentials { user, ha1 }));
            OK
        }
        _ => INVALID_PARAMETER,
    };
    Ok(Answer::return_value(&class, "SetAdminAclEntryEx", rv))
}

fn ethernet(ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    let wired = ctx
        .model
        .remote
        .as_ref()
        .map(|r| r.wired.clone())
        .unwrap_or_default();
    let mut w = W::new(px, ETHERNET);
    w.v("DHCPEnabled", wired.dhcp)
        .s("DefaultGateway", &wired.gateway)
        .s("ElementName", "Intel(r) AMT Ethernet Port Settings")
        .s("IPAddress", &wired.ip)
        .s("InstanceID", WIRED)
        .v("IpSyncEnabled", wired.ip_sync)
        .v("LinkIsUp", true)
        .s("MACAddress", "a4-ae-11-1e-46-53")
        .s("PrimaryDNS", &wired.dns1)
        .s("SecondaryDNS", &wired.dns2)
        .v("SharedDynamicIP", true)
        .v("SharedMAC", true)
        .v("SharedStaticIp", wired.shared_static)
        .s("SubnetMask", &wired.mask);
    let mut wireless = W::new(px, ETHERNET);
    wireless
        .v("DHCPEnabled", true)
        .s("ElementName", "Intel(r) AMT Ethernet Port Settings")
        .s("InstanceID", WIRELESS)
        .v("LinkIsUp", false)
        .s("MACAddress", "a4-ae-11-1e-46-54");
    vec![w.finish(ETHERNET, AMT), wireless.finish(ETHERNET, AMT)]
}

/// Put of the wired instance (selector InstanceID): DHCP, IP sync and the static settings.
fn put_ethernet(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    if req.selector("InstanceID") != Some(WIRED) {
        return Err(WsFault::InvalidSelectors);
    }
    let instance = req
        .input()
        .filter(|i| i.name() == ETHERNET)
        .ok_or(WsFault::InvalidRepresentation)?;
    let text = |k: &str| instance.child(k).map(|c| c.text().trim().to_string());
    let flag = |k: &str| match text(k) {
        None => Ok(None),
        Some(v) => parse_bool(&v)
            .map(Some)
            .ok_or(WsFault::InvalidRepresentation),
    };
    let (dhcp, ip_sync, shared) = (
        flag("DHCPEnabled")?,
        flag("IpSyncEnabled")?,
        flag("SharedStaticIp")?,
    );
    let wired = &mut ctx.model.remote.get_or_insert_with(Box::default).wired;
    let mut next = wired.clone();
    next.dhcp = dhcp.unwrap_or(next.dhcp);
    next.ip_sync = ip_sync.unwrap_or(next.ip_sync);
    next.shared_static = shared.unwrap_or(next.shared_static);
    if !next.dhcp {
        for (field, key) in [
            (&mut next.ip, "IPAddress"),
            (&mut next.mask, "SubnetMask"),
            (&mut next.gateway, "DefaultGateway"),
            (&mut next.dns1, "PrimaryDNS"),
            (&mut next.dns2, "SecondaryDNS"),
        ] {
            if let Some(v) = text(key) {
                *field = v;
            }
        }
        if next.ip.parse::<std::net::Ipv4Addr>().is_err()
            || next.mask.parse::<std::net::Ipv4Addr>().is_err()
        {
            return Err(WsFault::InvalidRepresentation);
        }
    }
    *wired = next;
    let item = ethernet(ctx, super::render::GET_PX)
        .into_iter()
        .next()
        .ok_or(WsFault::InvalidRepresentation)?;
    Ok(instance_answer(&format!("{TRANSFER}PutResponse"), item))
}
