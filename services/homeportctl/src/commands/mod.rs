//! The command tree and its dispatch: one module per group of the device API.

pub mod alarms;
pub mod devices;
pub mod features;
pub mod info;
pub mod logs;
pub mod power;

use homeport_proto::device::v1::{CommandResult, DeviceRef};
use serde_json::{json, Value};

use crate::client::Api;
use crate::error::CliError;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// The device registry.
    #[command(subcommand)]
    Devices(devices::DevicesCmd),
    /// Power state, power actions and boot options.
    #[command(subcommand)]
    Power(power::PowerCmd),
    /// AMT firmware version and provisioning state.
    Version { guid: String },
    /// AMT general settings.
    Settings { guid: String },
    /// Hardware inventory.
    Hardware { guid: String },
    /// Redirection features and user-consent policy.
    #[command(subcommand)]
    Features(features::FeaturesCmd),
    /// User consent (opt-in) codes.
    #[command(subcommand)]
    Consent(features::ConsentCmd),
    /// Event and audit logs.
    #[command(subcommand)]
    Logs(logs::LogsCmd),
    /// Alarm clocks.
    #[command(subcommand)]
    Alarms(alarms::AlarmsCmd),
    /// Unprovision AMT on the device and remove it from Homeport.
    Deactivate {
        guid: String,
        /// Confirm: the device must be provisioned again to be managed.
        #[arg(long)]
        yes: bool,
    },
}

impl Command {
    /// Refusals that need no connection: `deactivate` without `--yes`.
    pub fn check(&self) -> Result<(), CliError> {
        match self {
            Command::Deactivate { guid, yes: false } => Err(CliError::Usage(format!(
                "deactivate unprovisions AMT on {guid} and removes it from Homeport; \
                 add --yes to confirm"
            ))),
            _ => Ok(()),
        }
    }
}

/// Runs a command against the API (after [`Command::check`]).
pub async fn run(command: Command, api: &mut Api) -> Result<(), CliError> {
    match command {
        Command::Devices(cmd) => devices::run(cmd, api).await,
        Command::Power(cmd) => power::run(cmd, api).await,
        Command::Version { guid } => {
            let v = api.device.get_version(DeviceRef { guid }).await?;
            Ok(api
                .out
                .print(v.get_ref(), info::version_json, info::version_human)?)
        }
        Command::Settings { guid } => {
            let s = api.device.get_general_settings(DeviceRef { guid }).await?;
            Ok(api
                .out
                .print(s.get_ref(), info::settings_json, info::settings_human)?)
        }
        Command::Hardware { guid } => {
            let h = api.device.get_hardware_info(DeviceRef { guid }).await?;
            Ok(api
                .out
                .print(h.get_ref(), info::hardware_json, info::hardware_human)?)
        }
        Command::Features(cmd) => features::run_features(cmd, api).await,
        Command::Consent(cmd) => features::run_consent(cmd, api).await,
        Command::Logs(cmd) => logs::run(cmd, api).await,
        Command::Alarms(cmd) => alarms::run(cmd, api).await,
        Command::Deactivate { guid, .. } => {
            let result = api.device.deactivate(DeviceRef { guid }).await?;
            Ok(api.out.print(result.get_ref(), result_json, result_human)?)
        }
    }
}

pub fn result_json(r: &CommandResult) -> Value {
    json!({ "return_value": r.return_value, "return_value_text": r.return_value_text })
}

pub fn result_human(r: &CommandResult) -> String {
    match r.return_value_text.as_str() {
        "" => format!("return value {}", r.return_value),
        text => format!(
            "{} (return value {})",
            crate::output::cell(text),
            r.return_value
        ),
    }
}
