//! Deactivation (openamt-rps.md §2.9): Unprovision over WS-Man, then the device's
//! credentials and registry row are removed. Works for client and admin control mode.

use homeport_wsman::amt::{self, SETUP_AND_CONFIGURATION};
use homeport_wsman::Request;

use super::{Effect, Finish, Flow, Link, Output, Reply};
use crate::protocol::StatusMessage;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    Unprovision,
    Forget,
    Finished,
}

pub struct Deactivation {
    link: Link,
    st: St,
    mode: u8,
}

impl Deactivation {
    /// `password` is the device's admin password (the stored one, or the client's when
    /// forced without one stored).
    pub fn new(guid: &str, password: &str, mode: u8) -> Deactivation {
        Deactivation {
            link: Link::new(guid, "admin", password),
            st: St::Unprovision,
            mode,
        }
    }

    fn fail(&mut self, why: impl Into<String>) -> Output {
        self.st = St::Finished;
        Output::Done(Finish::failed(
            StatusMessage::status(format!("Failed to deactivate: {}", why.into())),
            super::mode_name(self.mode),
        ))
    }
}

impl Flow for Deactivation {
    fn start(&mut self) -> Output {
        self.st = St::Unprovision;
        let req = Request::invoke(
            SETUP_AND_CONFIGURATION,
            "Unprovision",
            &[("ProvisioningMode", "1".into())],
        );
        Output::Send(self.link.send(&req))
    }

    fn on_reply(&mut self, http: &[u8]) -> Output {
        if self.st != St::Unprovision {
            return self.fail("answer while no request was outstanding");
        }
        match self.link.receive(http) {
            Ok(Reply::Resend(bytes)) => Output::Send(bytes),
            Ok(Reply::Ok(resp)) => match resp.method_output("Unprovision") {
                Ok((_, 0)) => {
                    self.st = St::Forget;
                    Output::Effect(Effect::Forget)
                }
                Ok((_, rv)) => self.fail(format!(
                    "Unprovision returned {rv} ({})",
                    amt::return_value_text(rv)
                )),
                Err(e) => self.fail(e.to_string()),
            },
            Ok(Reply::Fault(f)) => self.fail(f),
            Err(e) => self.fail(e.to_string()),
        }
    }

    fn on_timeout(&mut self) -> Output {
        // Unprovision may have been applied; sending it again is harmless (a device already
        // unprovisioned refuses it, and that is reported).
        match self.link.resend() {
            Some(bytes) if self.st == St::Unprovision => Output::Send(bytes),
            _ => self.fail("the device did not answer in time"),
        }
    }

    fn on_effect(&mut self, result: Result<(), String>) -> Output {
        if self.st != St::Forget {
            return self.fail("effect outcome while none was asked for");
        }
        self.st = St::Finished;
        self.mode = 0;
        // The device is unprovisioned whatever the registry says; report what happened.
        let status = match result {
            Ok(()) => "Deactivated".to_string(),
            Err(e) => format!("Deactivated. Registry not updated: {e}"),
        };
        Output::Done(Finish {
            ok: true,
            status: StatusMessage::status(status),
            outcome: "deactivated",
            control_mode: "pre-provisioning",
        })
    }

    fn exchanges(&self) -> u32 {
        self.link.exchanges()
    }

    fn abandon(&mut self, why: &str) -> Finish {
        let out = self.fail(why.to_string());
        super::finished(out, why, self.mode)
    }
}
