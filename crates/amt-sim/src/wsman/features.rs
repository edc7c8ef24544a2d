//! Redirection features (wsman-amt.md §2.7): AMT_RedirectionService (SOL/IDER state and the
//! redirection listener), CIM_KVMRedirectionSAP and IPS_KVMRedirectionSettingData. The KVM
//! classes do not exist on the no-KVM SKU (the dispatcher answers DestinationUnreachable).

use super::render::{parse_bool, Answer, Item, Px, WsFault, AMT, CIM, IPS, TRANSFER, W};
use super::xml::Request;
use super::{instance_answer, number, Class, Ctx};

const OK: u32 = 0;
/// CIM RequestStateChange: invalid parameter.
const INVALID_PARAMETER: u32 = 5;

/// AMT_RedirectionService EnabledState: 32768 + IDER (bit 0) + 2·SOL (bit 1).
const REDIRECTION_STATES: std::ops::RangeInclusive<u32> = 32768..=32771;

pub(crate) const CLASSES: &[Class] = &[
    Class {
        instances: Some(redirection_service),
        get: true,
        enumerate: true,
        put: Some(put_redirection_service),
        methods: &[("RequestStateChange", redirection_state_change)],
        ..Class::new("AMT_RedirectionService", AMT)
    },
    Class {
        instances: Some(kvm_sap),
        get: true,
        enumerate: true,
        methods: &[("RequestStateChange", kvm_state_change)],
        kvm: true,
        ..Class::new("CIM_KVMRedirectionSAP", CIM)
    },
    Class {
        instances: Some(kvm_settings),
        get: true,
        enumerate: true,
        kvm: true,
        ..Class::new("IPS_KVMRedirectionSettingData", IPS)
    },
];

fn redirection_service(ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    let name = "Intel(r) AMT Redirection Service";
    let mut w = W::new(px, "AMT_RedirectionService");
    w.s("CreationClassName", "AMT_RedirectionService")
        .s("ElementName", name)
        .v("EnabledState", ctx.model.redirection)
        .v("ListenerEnabled", ctx.model.listener)
        .s("Name", name)
        .s("SystemCreationClassName", "CIM_ComputerSystem")
        .s("SystemName", "Intel(r) AMT");
    vec![w.finish("AMT_RedirectionService", AMT)]
}

/// Put: only ListenerEnabled is writable; the answer is the stored instance.
fn put_redirection_service(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let instance = req
        .input()
        .filter(|i| i.name() == "AMT_RedirectionService")
        .ok_or(WsFault::InvalidRepresentation)?;
    if let Some(v) = instance.child("ListenerEnabled") {
        ctx.model.listener = parse_bool(v.text()).ok_or(WsFault::InvalidRepresentation)?;
    }
    let item = redirection_service(ctx, super::render::GET_PX)
        .into_iter()
        .next()
        .ok_or(WsFault::InvalidRepresentation)?;
    Ok(instance_answer(&format!("{TRANSFER}PutResponse"), item))
}

/// RequestStateChange(32768..=32771); audits IDER/SOL enable/disable (1802/1803, 1806/1807).
fn redirection_state_change(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let uri = format!("{AMT}AMT_RedirectionService");
    let rv = match number::<u32>(req, "RequestedState") {
        Some(s) if REDIRECTION_STATES.contains(&s) => {
            let before = u32::from(ctx.model.redirection) - 32768;
            let after = s - 32768;
            ctx.model.redirection = u16::try_from(s).unwrap_or(32768);
            for (bit, on, off) in [(1u32, 1802u16, 1803u16), (2, 1806, 1807)] {
                if before & bit != after & bit {
                    ctx.audit_remote(if after & bit != 0 { on } else { off }, &[]);
                }
            }
            OK
        }
        _ => INVALID_PARAMETER,
    };
    Ok(Answer::return_value(&uri, "RequestStateChange", rv))
}

fn kvm_sap(ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    let name = "KVM Redirection Service Access Point";
    let mut w = W::new(px, "CIM_KVMRedirectionSAP");
    w.s("CreationClassName", "CIM_KVMRedirectionSAP")
        .s("ElementName", name)
        .v("EnabledState", ctx.model.kvm_enabled)
        .v("KVMProtocol", 4)
        .s("Name", name)
        .v("RequestedState", ctx.model.kvm_requested)
        .s("SystemCreationClassName", "CIM_ComputerSystem")
        .s("SystemName", "ManagedSystem");
    vec![w.finish("CIM_KVMRedirectionSAP", CIM)]
}

/// RequestStateChange 2 (enable → EnabledState 6 "enabled but offline", as idle real devices
/// show) or 3 (disable); audits 1810/1811 on a change.
fn kvm_state_change(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let uri = format!("{CIM}CIM_KVMRedirectionSAP");
    let was_on = ctx.model.kvm_enabled != 3;
    let rv = match number::<u32>(req, "RequestedState") {
        Some(2) => {
            (ctx.model.kvm_enabled, ctx.model.kvm_requested) = (6, 2);
            if !was_on {
                ctx.audit_remote(1810, &[]);
            }
            OK
        }
        Some(3) => {
            (ctx.model.kvm_enabled, ctx.model.kvm_requested) = (3, 3);
            if was_on {
                ctx.audit_remote(1811, &[]);
            }
            OK
        }
        _ => INVALID_PARAMETER,
    };
    Ok(Answer::return_value(&uri, "RequestStateChange", rv))
}

fn kvm_settings(ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    let name = "Intel(r) KVM Redirection Settings";
    let mut w = W::new(px, "IPS_KVMRedirectionSettingData");
    w.v("BackToBackFbMode", false)
        .v("DefaultScreen", 0)
        .v("DoubleBufferMode", false)
        .v("DoubleBufferState", false)
        .s("ElementName", name)
        .v("EnabledByMEBx", true)
        .v("GreyscalePixelFormatSupported", true)
        .v("InitialDecimationModeForLowRes", 0)
        .s("InstanceID", name)
        .v("Is5900PortEnabled", false)
        .v("OptInPolicy", ctx.model.optin.required != 0)
        .v("SessionTimeout", 0)
        .v("ZlibControlSupported", true);
    vec![w.finish("IPS_KVMRedirectionSettingData", IPS)]
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    #[test]
    fn redirection_state_and_listener() {
        let mut sim = Sim::new();
        let uri = format!("{AMT}AMT_RedirectionService");
        let r = sim.get(&uri);
        assert_eq!(r.text("EnabledState"), Some("32771"));
        assert_eq!(r.text("ListenerEnabled"), Some("true"));
        let rsc = |sim: &mut Sim, s: u32| {
            sim.invoke(
                &uri,
                "RequestStateChange",
                &format!("<h:RequestedState>{s}</h:RequestedState>"),
            )
            .return_value()
        };
        assert_eq!(rsc(&mut sim, 32770), Some(0));
        assert_eq!(rsc(&mut sim, 32772), Some(5));
        assert_eq!(rsc(&mut sim, 2), Some(5));
        assert_eq!(sim.get(&uri).text("EnabledState"), Some("32770"));
        assert_eq!(sim.audit_events().last(), Some(&1803), "IDER disabled");
        let put = format!(
            r#"<h:AMT_RedirectionService xmlns:h="{uri}"><h:CreationClassName>AMT_RedirectionService</h:CreationClassName><h:ElementName>Intel(r) AMT Redirection Service</h:ElementName><h:EnabledState>32771</h:EnabledState><h:ListenerEnabled>false</h:ListenerEnabled><h:Name>Intel(r) AMT Redirection Service</h:Name></h:AMT_RedirectionService>"#
        );
        let r = sim.call(&uri, PUT, &put);
        assert!(r.ok);
        assert_eq!(r.text("ListenerEnabled"), Some("false"));
        assert_eq!(
            r.text("EnabledState"),
            Some("32770"),
            "EnabledState is not writable by Put"
        );
    }

    #[test]
    fn kvm_sap_and_no_kvm_sku() {
        let mut sim = Sim::new();
        let uri = format!("{CIM}CIM_KVMRedirectionSAP");
        let r = sim.get(&uri);
        assert_eq!(
            (r.text("EnabledState"), r.text("RequestedState")),
            (Some("6"), Some("2"))
        );
        let rsc = |sim: &mut Sim, s: u32| {
            sim.invoke(
                &uri,
                "RequestStateChange",
                &format!("<h:RequestedState>{s}</h:RequestedState>"),
            )
            .return_value()
        };
        assert_eq!(rsc(&mut sim, 3), Some(0));
        let r = sim.get(&uri);
        assert_eq!(
            (r.text("EnabledState"), r.text("RequestedState")),
            (Some("3"), Some("3"))
        );
        assert_eq!(rsc(&mut sim, 2), Some(0));
        assert_eq!(sim.get(&uri).text("EnabledState"), Some("6"));
        assert_eq!(rsc(&mut sim, 7), Some(5));
        assert_eq!(&sim.audit_events()[4..], &[1811, 1810]);

        let mut no_kvm = Sim::with(true);
        for r in [
            no_kvm.get(&uri),
            no_kvm.invoke(
                &uri,
                "RequestStateChange",
                "<h:RequestedState>2</h:RequestedState>",
            ),
            no_kvm.get(&format!("{IPS}IPS_KVMRedirectionSettingData")),
        ] {
            assert!(!r.ok);
            assert_eq!(r.subcode(), Some("b:DestinationUnreachable"));
        }
        assert!(no_kvm.get(&format!("{AMT}AMT_RedirectionService")).ok);
    }
}
