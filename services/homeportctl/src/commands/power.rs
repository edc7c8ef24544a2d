//! `power`: power state (one device or many), power actions, boot options, capabilities.

use anyhow::anyhow;
use homeport_proto::device::v1::{
    BootOptionsRequest, DeviceRef, GetPowerStatesRequest, GetPowerStatesResponse,
    PowerActionRequest, PowerCapabilities, PowerState,
};
use serde_json::{json, Value};

use super::{result_human, result_json};
use crate::client::Api;
use crate::error::CliError;
use crate::names::{self, label, OS_POWER_SAVING, POWER_ACTIONS};
use crate::output::{fields, Table};

#[derive(clap::Subcommand, Debug)]
pub enum PowerCmd {
    /// Power state of one device, or of several in one bulk call.
    State {
        #[arg(required = true, value_name = "GUID")]
        guids: Vec<String>,
    },
    /// Change the power state.
    Action {
        guid: String,
        /// on, sleep, cycle, hibernate, off, reset, nmi, soft-off, soft-reset, or a
        /// RequestPowerStateChange code.
        #[arg(value_parser = names::parse_power_action)]
        action: u32,
    },
    /// Boot to BIOS setup, PXE, IDE-R or diagnostics, powering up or resetting.
    Boot {
        guid: String,
        /// bios, reset-bios, secure-erase, pxe, reset-pxe, ider-cd, reset-ider-cd,
        /// ider-floppy, reset-ider-floppy, diagnostics, reset-diagnostics, or an MPS code.
        #[arg(value_parser = names::parse_boot_action)]
        action: u32,
        /// Open a Serial-over-LAN session for the boot.
        #[arg(long)]
        sol: bool,
    },
    /// The power actions the device supports.
    Capabilities { guid: String },
}

pub async fn run(cmd: PowerCmd, api: &mut Api) -> Result<(), CliError> {
    match cmd {
        PowerCmd::State { mut guids } if guids.len() == 1 => {
            let guid = guids.remove(0);
            let state = api.device.get_power_state(DeviceRef { guid }).await?;
            Ok(api.out.print(state.get_ref(), state_json, state_human)?)
        }
        PowerCmd::State { guids } => {
            let request = GetPowerStatesRequest { guids };
            let response = api.device.get_power_states(request).await?.into_inner();
            api.out.print(&response, bulk_json, bulk_human)?;
            let failed = response
                .entries
                .iter()
                .filter(|e| e.state.is_none())
                .count();
            if failed > 0 {
                let total = response.entries.len();
                return Err(anyhow!("{failed} of {total} power-state queries failed").into());
            }
            Ok(())
        }
        PowerCmd::Action { guid, action } => {
            let request = PowerActionRequest { guid, action };
            let result = api.device.power_action(request).await?;
            Ok(api.out.print(result.get_ref(), result_json, result_human)?)
        }
        PowerCmd::Boot { guid, action, sol } => {
            let request = BootOptionsRequest {
                guid,
                action,
                use_sol: sol,
            };
            let result = api.device.set_boot_options(request).await?;
            Ok(api.out.print(result.get_ref(), result_json, result_human)?)
        }
        PowerCmd::Capabilities { guid } => {
            let caps = api
                .device
                .get_power_capabilities(DeviceRef { guid })
                .await?;
            Ok(api.out.print(
                caps.get_ref(),
                |c| json!({ "actions": c.actions }),
                caps_human,
            )?)
        }
    }
}

fn state_json(s: &PowerState) -> Value {
    json!({
        "guid": s.guid, "power_state": s.power_state, "power_state_text": s.power_state_text,
        "os_power_saving_state": s.os_power_saving_state,
        "available_transitions": s.available_transitions,
    })
}

fn state_human(s: &PowerState) -> String {
    let transitions: Vec<String> = s
        .available_transitions
        .iter()
        .map(|&t| label(POWER_ACTIONS, t))
        .collect();
    fields(&[
        ("GUID", s.guid.clone()),
        ("Power state", power_state(s)),
        (
            "OS power saving",
            label(OS_POWER_SAVING, s.os_power_saving_state),
        ),
        ("Transitions", transitions.join(", ")),
    ])
}

fn power_state(s: &PowerState) -> String {
    if s.power_state_text.is_empty() {
        s.power_state.to_string()
    } else {
        format!("{} ({})", s.power_state_text, s.power_state)
    }
}

fn bulk_json(r: &GetPowerStatesResponse) -> Value {
    let entries: Vec<Value> = r
        .entries
        .iter()
        .map(|e| {
            json!({
                "guid": e.guid, "state": e.state.as_ref().map(state_json),
                "error_code": e.error_code, "error_message": e.error_message,
            })
        })
        .collect();
    json!({ "entries": entries })
}

fn bulk_human(r: &GetPowerStatesResponse) -> String {
    let mut table = Table::new(&["GUID", "POWER STATE", "OS POWER SAVING", "ERROR"]);
    for e in &r.entries {
        let (state, saving) = match &e.state {
            Some(s) => (
                power_state(s),
                label(OS_POWER_SAVING, s.os_power_saving_state),
            ),
            None => (String::new(), String::new()),
        };
        let error = match (e.error_code.as_str(), e.error_message.as_str()) {
            ("", m) | (m, "") => m.to_string(),
            (c, m) => format!("{c}: {m}"),
        };
        table.row(vec![e.guid.clone(), state, saving, error]);
    }
    table.render()
}

fn caps_human(c: &PowerCapabilities) -> String {
    let mut actions: Vec<(&String, &u32)> = c.actions.iter().collect();
    actions.sort_by_key(|&(name, code)| (*code, name.clone()));
    let mut table = Table::new(&["ACTION", "CODE"]);
    for (name, code) in actions {
        table.row(vec![name.clone(), code.to_string()]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_are_shown_by_name() {
        let s = PowerState {
            guid: "g".into(),
            power_state: 2,
            power_state_text: "on".into(),
            os_power_saving_state: 2,
            available_transitions: vec![8, 10, 99],
        };
        assert_eq!(
            state_human(&s),
            "GUID:             g\n\
             Power state:      on (2)\n\
             OS power saving:  full power (2)\n\
             Transitions:      off (8), reset (10), 99\n"
        );
    }
}
