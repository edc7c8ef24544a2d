//! The command tree and its dispatch: one module per group of the device API.

pub mod alarms;
pub mod devices;
pub mod features;
pub mod info;
pub mod logs;
pub mod power;
pub mod provisioning;

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
    /// Provisioning profiles (rps admin API, --rps-endpoint).
    #[command(subcommand)]
    Profiles(provisioning::ProfilesCmd),
    /// CIRA configurations: where activated devices dial in (rps admin API).
    #[command(subcommand, name = "cira-configs")]
    CiraConfigs(provisioning::CiraCmd),
    /// ACM provisioning certificates per DNS suffix (rps admin API).
    #[command(subcommand)]
    Domains(provisioning::DomainsCmd),
    /// Wi-Fi profiles (rps admin API).
    #[command(subcommand)]
    Wireless(provisioning::WirelessCmd),
    /// Unprovision AMT on the device and remove it from Homeport.
    Deactivate {
        guid: String,
        /// Confirm: the device must be provisioned again to be managed.
        #[arg(long)]
        yes: bool,
    },
}

impl Command {
    /// Whether the command talks to the provisioning admin API (rps) rather than the device
    /// API.
    pub fn is_provisioning(&self) -> bool {
        matches!(
            self,
            Command::Profiles(_)
                | Command::CiraConfigs(_)
                | Command::Domains(_)
                | Command::Wireless(_)
        )
    }

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
        Command::Profiles(cmd) => provisioning::run_profiles(cmd, api).await,
        Command::CiraConfigs(cmd) => provisioning::run_cira(cmd, api).await,
        Command::Domains(cmd) => provisioning::run_domains(cmd, api).await,
        Command::Wireless(cmd) => provisioning::run_wireless(cmd, api).await,
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
