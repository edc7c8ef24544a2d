//! User consent (wsman-amt.md §2.7/§2.11, behaviour §3.3): IPS_OptInService policy and the
//! StartOptIn → code on the device's screen → SendOptInCode flow. The code is random; tests
//! "read the screen" through the control interface (`DeviceHandle::consent_code`).

use std::time::{Duration, Instant};

use super::model::DeviceModel;
use super::render::{Answer, Item, Px, WsFault, IPS, TRANSFER, W};
use super::xml::Request;
use super::{instance_answer, Class, Ctx};

/// OptInState values (§2.7).
pub(crate) const NOT_STARTED: u8 = 0;
pub(crate) const DISPLAYED: u8 = 2;
pub(crate) const RECEIVED: u8 = 3;

/// OptInRequired: none, KVM only, all redirection and power.
const POLICIES: [u32; 3] = [0, 1, 4_294_967_295];
/// How long the code stays on screen, and how long a granted consent waits for a session.
const DISPLAY_TIMEOUT: Duration = Duration::from_secs(300);
const CODE_TIMEOUT: Duration = Duration::from_secs(120);
/// Wrong codes tolerated before the request is cancelled.
const MAX_FAILURES: u8 = 3;

const OK: u32 = 0;
/// Not ready / invalid state (a request is pending, or none is).
const INVALID_STATE: u32 = 2;
/// PT_STATUS 0x812: the wrong consent code.
const WRONG_CODE: u32 = 2066;

#[derive(Debug, Default)]
pub(crate) struct OptIn {
    pub required: u32,
    pub state: u8,
    /// The 6-digit code on screen while `state` is DISPLAYED.
    pub code: Option<u32>,
    pub failures: u8,
    pub deadline: Option<Instant>,
}

impl OptIn {
    fn reset(&mut self) {
        *self = OptIn {
            required: self.required,
            ..OptIn::default()
        };
    }

    /// The code as the screen shows it (zero-padded to six digits).
    pub(crate) fn screen(&self) -> Option<String> {
        (self.state == DISPLAYED)
            .then_some(self.code)
            .flatten()
            .map(|c| format!("{c:06}"))
    }
}

impl DeviceModel {
    pub(crate) fn expire_opt_in(&mut self, now: Instant) {
        if self.optin.deadline.is_some_and(|d| now >= d) {
            self.optin.reset();
        }
    }
}

pub(crate) const CLASSES: &[Class] = &[Class {
    instances: Some(opt_in_service),
    get: true,
    enumerate: true,
    put: Some(put_opt_in_service),
    methods: &[
        ("StartOptIn", start_opt_in),
        ("SendOptInCode", send_opt_in_code),
        ("CancelOptIn", cancel_opt_in),
    ],
    ..Class::new("IPS_OptInService", IPS)
}];

fn uri() -> String {
    format!("{IPS}IPS_OptInService")
}

fn opt_in_service(ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    let name = "Intel(r) AMT OptIn Service";
    let o = &ctx.model.optin;
    let mut w = W::new(px, "IPS_OptInService");
    // Admin control mode: the policy may be changed remotely.
    w.v("CanModifyOptInPolicy", 1)
        .s("CreationClassName", "IPS_OptInService")
        .s("ElementName", name)
        .s("Name", name)
        .v("OptInCodeTimeout", CODE_TIMEOUT.as_secs())
        .v("OptInDisplayTimeout", DISPLAY_TIMEOUT.as_secs())
        .v("OptInRequired", o.required)
        .v("OptInState", o.state)
        .s("SystemCreationClassName", "CIM_ComputerSystem")
        .s("SystemName", "Intel(r) AMT");
    vec![w.finish("IPS_OptInService", IPS)]
}

/// Audit 3000's encoding of a policy: 0 none, 1 KVM, 2 all.
fn policy_code(p: u32) -> u8 {
    match p {
        0 => 0,
        1 => 1,
        _ => 2,
    }
}

/// Put: only OptInRequired is writable (0, 1 or 4294967295); changes audit 3000.
fn put_opt_in_service(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let instance = req
        .input()
        .filter(|i| i.name() == "IPS_OptInService")
        .ok_or(WsFault::InvalidRepresentation)?;
    if let Some(v) = instance.child("OptInRequired") {
        let next: u32 = v
            .text()
            .parse()
            .map_err(|_| WsFault::InvalidRepresentation)?;
        if !POLICIES.contains(&next) {
            return Err(WsFault::InvalidRepresentation);
        }
        let before = ctx.model.optin.required;
        if before != next {
            ctx.model.optin.required = next;
            ctx.audit_remote(3000, &[policy_code(before), policy_code(next)]);
        }
    }
    let item = opt_in_service(ctx, super::render::GET_PX)
        .into_iter()
        .next()
        .ok_or(WsFault::InvalidRepresentation)?;
    Ok(instance_answer(&format!("{TRANSFER}PutResponse"), item))
}

/// StartOptIn: puts a fresh random code on screen; 2 while a request is already under way.
fn start_opt_in(ctx: &mut Ctx<'_>, _req: &Request) -> Result<Answer, WsFault> {
    let o = &mut ctx.model.optin;
    let rv = if o.state == NOT_STARTED {
        o.state = DISPLAYED;
        o.code = Some(fastrand::u32(0..1_000_000));
        o.failures = 0;
        o.deadline = Some(ctx.now.mono + DISPLAY_TIMEOUT);
        OK
    } else {
        INVALID_STATE
    };
    Ok(Answer::return_value(&uri(), "StartOptIn", rv))
}

/// SendOptInCode(OptInCode): compared as a number, since MPS sends it as one (a code with a
/// leading zero arrives without it). Third wrong code cancels the request and audits 3001.
fn send_opt_in_code(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let sent: Option<u32> = req.body_text("OptInCode").and_then(|c| c.parse().ok());
    let o = &mut ctx.model.optin;
    // (ReturnValue, audit 3001 ExtendedData[0] if the attempt ends the request).
    let (rv, audit) = match (o.state, o.code) {
        (DISPLAYED, Some(code)) if sent == Some(code) => {
            o.state = RECEIVED;
            o.code = None;
            o.failures = 0;
            o.deadline = Some(ctx.now.mono + CODE_TIMEOUT);
            (OK, Some(0))
        }
        (DISPLAYED, Some(_)) => {
            o.failures = o.failures.saturating_add(1);
            if o.failures >= MAX_FAILURES {
                o.reset();
                (WRONG_CODE, Some(1))
            } else {
                (WRONG_CODE, None)
            }
        }
        _ => (INVALID_STATE, None),
    };
    if let Some(result) = audit {
        ctx.audit_remote(3001, &[result]);
    }
    Ok(Answer::return_value(&uri(), "SendOptInCode", rv))
}

fn cancel_opt_in(ctx: &mut Ctx<'_>, _req: &Request) -> Result<Answer, WsFault> {
    ctx.model.optin.reset();
    Ok(Answer::return_value(&uri(), "CancelOptIn", OK))
}

#[cfg(test)]
mod tests {
    use super::super::model::Now;
    use super::super::testkit::*;
    use super::*;

    fn send(sim: &mut Sim, code: &str) -> Option<u32> {
        sim.invoke(
            &uri(),
            "SendOptInCode",
            &format!("<h:OptInCode>{code}</h:OptInCode>"),
        )
        .return_value()
    }

    fn state(sim: &mut Sim) -> String {
        sim.get(&uri())
            .text("OptInState")
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn consent_flow() {
        let mut sim = Sim::new();
        assert_eq!(send(&mut sim, "123456"), Some(2), "nothing pending");
        assert_eq!(sim.invoke(&uri(), "StartOptIn", "").return_value(), Some(0));
        assert_eq!(state(&mut sim), "2");
        assert_eq!(sim.invoke(&uri(), "StartOptIn", "").return_value(), Some(2));
        let code = sim.model.optin.screen().unwrap();
        assert_eq!(code.len(), 6);
        let wrong = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
        assert_eq!(send(&mut sim, &wrong), Some(2066));
        // Numeric comparison: MPS drops leading zeros.
        let numeric = code.parse::<u32>().unwrap().to_string();
        assert_eq!(send(&mut sim, &numeric), Some(0));
        assert_eq!(state(&mut sim), "3");
        assert_eq!(sim.model.optin.screen(), None);
        assert_eq!(sim.audit_events().last(), Some(&3001));
        assert_eq!(sim.model.audit.back().map(|r| r[r.len() - 1]), Some(0));
        assert_eq!(
            sim.invoke(&uri(), "CancelOptIn", "").return_value(),
            Some(0)
        );
        assert_eq!(state(&mut sim), "0");
    }

    #[test]
    fn three_wrong_codes_reset_and_audit() {
        let mut sim = Sim::new();
        sim.invoke(&uri(), "StartOptIn", "");
        let code: u32 = sim.model.optin.screen().unwrap().parse().unwrap();
        let wrong = ((code + 1) % 1_000_000).to_string();
        assert_eq!(send(&mut sim, &wrong), Some(2066));
        assert_eq!(send(&mut sim, "not a number"), Some(2066));
        assert_eq!(state(&mut sim), "2");
        let audits = sim.model.audit.len();
        assert_eq!(send(&mut sim, &wrong), Some(2066));
        assert_eq!(state(&mut sim), "0");
        assert_eq!(sim.model.audit.len(), audits + 1);
        assert_eq!(sim.audit_events().last(), Some(&3001));
        assert_eq!(
            sim.model.audit.back().map(|r| r[r.len() - 1]),
            Some(1),
            "failed 3 times"
        );
        // The right code no longer helps.
        assert_eq!(send(&mut sim, &code.to_string()), Some(2));
    }

    #[test]
    fn code_expires_and_policy_put() {
        let mut sim = Sim::new();
        sim.invoke(&uri(), "StartOptIn", "");
        sim.now = Now {
            mono: sim.now.mono + DISPLAY_TIMEOUT,
            unix: sim.now.unix + 300,
        };
        assert_eq!(state(&mut sim), "0");
        let put = |v: &str| {
            format!(
                r#"<h:IPS_OptInService xmlns:h="{}"><h:CanModifyOptInPolicy>1</h:CanModifyOptInPolicy><h:OptInRequired>{v}</h:OptInRequired><h:OptInState>0</h:OptInState></h:IPS_OptInService>"#,
                uri()
            )
        };
        let r = sim.call(&uri(), PUT, &put("4294967295"));
        assert!(r.ok);
        assert_eq!(r.text("OptInRequired"), Some("4294967295"));
        assert_eq!(sim.audit_events().last(), Some(&3000));
        assert_eq!(
            sim.call(&uri(), PUT, &put("7")).subcode(),
            Some("e:InvalidRepresentation")
        );
        assert_eq!(state(&mut sim), "0");
    }
}
