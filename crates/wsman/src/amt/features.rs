//! Redirection, KVM and user consent (reference §2.7, §2.11).

use super::*;
use crate::response::{boolean, number, opt_number};
use crate::Request;

/// AMT_RedirectionService: EnabledState 32768 + IDER (bit 0) + 2·SOL (bit 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirection {
    pub sol: bool,
    pub ider: bool,
    pub listener_enabled: bool,
    pub properties: Properties,
}

pub fn redirection(r: &Response) -> Result<Redirection, ResponseError> {
    let e = instance(r, REDIRECTION_SERVICE)?;
    let state: u32 = number(e, "EnabledState")?;
    Ok(Redirection {
        sol: state & 2 != 0 && state >= 32768,
        ider: state & 1 != 0 && state >= 32768,
        listener_enabled: boolean(e, "ListenerEnabled"),
        properties: Properties::from_element(e),
    })
}

pub fn redirection_state_change(sol: bool, ider: bool) -> Request {
    let state = 32768 + u32::from(ider) + 2 * u32::from(sol);
    Request::invoke(
        REDIRECTION_SERVICE,
        "RequestStateChange",
        &[("RequestedState", state.to_string())],
    )
}

/// CIM_KVMRedirectionSAP EnabledState: 2 enabled, 6 enabled but offline (idle), 3 disabled.
pub fn kvm_enabled(r: &Response) -> Result<bool, ResponseError> {
    let state: u32 = number(instance(r, KVM_REDIRECTION_SAP)?, "EnabledState")?;
    Ok(matches!(state, 2 | 6))
}

pub fn kvm_state_change(enable: bool) -> Request {
    Request::invoke(
        KVM_REDIRECTION_SAP,
        "RequestStateChange",
        &[("RequestedState", if enable { "2" } else { "3" }.into())],
    )
}

/// IPS_OptInService: which redirections need the user's consent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptIn {
    /// 0 none, 1 KVM only, 4294967295 all.
    pub required: u32,
    /// 0 not started, 1 requested, 2 displayed, 3 received, 4 in session.
    pub state: u32,
    pub properties: Properties,
}

pub fn opt_in(r: &Response) -> Result<OptIn, ResponseError> {
    let e = instance(r, OPT_IN_SERVICE)?;
    Ok(OptIn {
        required: number(e, "OptInRequired")?,
        state: opt_number(e, "OptInState")?.unwrap_or(0),
        properties: Properties::from_element(e),
    })
}

pub const CONSENT_NONE: u32 = 0;
pub const CONSENT_KVM: u32 = 1;
pub const CONSENT_ALL: u32 = 4_294_967_295;

pub fn consent_name(required: u32) -> &'static str {
    match required {
        CONSENT_NONE => "none",
        CONSENT_KVM => "kvm",
        CONSENT_ALL => "all",
        _ => "unknown",
    }
}

pub fn consent_from_name(name: &str) -> Option<u32> {
    match name {
        "none" => Some(CONSENT_NONE),
        "kvm" => Some(CONSENT_KVM),
        "all" => Some(CONSENT_ALL),
        _ => None,
    }
}

pub fn start_opt_in() -> Request {
    Request::invoke(OPT_IN_SERVICE, "StartOptIn", &[])
}

pub fn send_opt_in_code(code: u32) -> Request {
    Request::invoke(
        OPT_IN_SERVICE,
        "SendOptInCode",
        &[("OptInCode", code.to_string())],
    )
}

pub fn cancel_opt_in() -> Request {
    Request::invoke(OPT_IN_SERVICE, "CancelOptIn", &[])
}
