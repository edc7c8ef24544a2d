//! Provisioning flows as explicit, sans-IO state machines (openamt-rps.md §2). A flow is fed
//! the device's raw HTTP answers and the outcomes of the effects it asked for, and answers
//! with the next thing to do: send WS-Man to the client, run an effect (store secrets,
//! register the device, forget it), or finish with a result. No sockets, clocks or stores:
//! the session (`crate::session`) does all of that and the tests drive flows directly.

pub mod activation;
pub mod deactivation;
mod link;
pub mod maintenance;

pub use link::{Link, LinkError, Reply};

use homeport_secrets::SecretString;

use crate::protocol::StatusMessage;

/// What a flow asks for next. `Debug` shows sizes, not the requests (they carry passwords).
pub enum Output {
    /// Send these HTTP bytes to the device (through the client) and feed back its answer.
    Send(Vec<u8>),
    /// Run this and feed back whether it worked.
    Effect(Effect),
    /// The flow is over.
    Done(Finish),
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::Send(b) => write!(f, "Send({} bytes)", b.len()),
            Output::Effect(e) => write!(f, "Effect({e:?})"),
            Output::Done(d) => write!(f, "Done({d:?})"),
        }
    }
}

/// Side effects a flow needs from outside.
#[derive(Debug)]
pub enum Effect {
    /// Store the device's credentials (before they are set on the device, so a flow cut off
    /// after the device took them can be completed by running the client again).
    SaveSecrets {
        amt_password: SecretString,
        mps_password: Option<SecretString>,
        mebx_password: Option<SecretString>,
    },
    /// Register the device (create or update its registry row) in this control mode.
    Register {
        /// The device was set up by this flow (some firmware wants a pause first).
        after_setup: bool,
        control_mode: &'static str,
        mps_username: Option<String>,
    },
    /// Remove the device's registry row and credentials (it was deactivated).
    Forget,
    /// Update the device's registry row from the client's facts (and this host name).
    Refresh { hostname: Option<String> },
}

/// How a flow ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finish {
    pub ok: bool,
    pub status: StatusMessage,
    /// "activated", "deactivated", "maintained" or "failed".
    pub outcome: &'static str,
    /// "pre-provisioning", "ccm" or "acm".
    pub control_mode: &'static str,
}

impl Finish {
    pub fn failed(status: StatusMessage, control_mode: &'static str) -> Finish {
        Finish {
            ok: false,
            status,
            outcome: "failed",
            control_mode,
        }
    }
}

/// The result a flow's `fail` produced, for `Flow::abandon` (a `fail` always ends the flow).
pub(crate) fn finished(out: Output, why: &str, mode: u8) -> Finish {
    match out {
        Output::Done(f) => f,
        _ => Finish::failed(StatusMessage::status(why), mode_name(mode)),
    }
}

/// Control mode names used in events and the registry.
pub fn mode_name(mode: u8) -> &'static str {
    match mode {
        1 => "ccm",
        2 => "acm",
        _ => "pre-provisioning",
    }
}

/// A flow the session can drive.
pub trait Flow: Send {
    /// The first output (nothing has been sent yet).
    fn start(&mut self) -> Output;
    /// The device's complete HTTP answer to the last `Send`.
    fn on_reply(&mut self, http: &[u8]) -> Output;
    /// The outcome of the last `Effect`.
    fn on_effect(&mut self, result: Result<(), String>) -> Output;
    /// No answer to the last `Send` within the step deadline (rpc-go sends nothing when the
    /// firmware said nothing within its own read deadline).
    fn on_timeout(&mut self) -> Output;
    /// WS-Man exchanges so far (for events and metrics).
    fn exchanges(&self) -> u32;
    /// The device stopped answering or the client went away: the result to report.
    fn abandon(&mut self, why: &str) -> Finish;
}

/// `MD5("admin:<realm>:<password>")` in hex: what Setup and AdminSetup take as the new
/// password (the device stores the digest HA1, never the password).
pub fn admin_password_hash(realm: &str, password: &str) -> String {
    homeport_wsman::digest::md5_hex(&format!("admin:{realm}:{password}"))
}

/// AMT's digest realm: `Digest:` and 32 hex digits (§2.2 CHECK_DIGEST_REALM).
pub fn realm_is_valid(realm: &str) -> bool {
    realm
        .strip_prefix("Digest:")
        .is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests;
