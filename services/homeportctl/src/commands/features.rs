//! `features` and `consent`: AMT redirection features and the user-consent (opt-in) flow.

use homeport_proto::device::v1::{
    AmtFeatures, DeviceRef, SendUserConsentCodeRequest, SetFeaturesRequest,
};
use serde_json::{json, Value};

use super::{result_human, result_json};
use crate::client::Api;
use crate::error::CliError;
use crate::names::{label, OPT_IN_STATE};
use crate::output::{fields, yes_no};

#[derive(clap::Subcommand, Debug)]
pub enum FeaturesCmd {
    /// Show user consent, redirection, KVM, SOL and IDE-R settings.
    Show { guid: String },
    /// Set user consent and the redirection features; features not named are disabled.
    Set {
        guid: String,
        /// Which sessions need the user's consent.
        #[arg(long, value_enum)]
        user_consent: UserConsent,
        /// Enable KVM.
        #[arg(long)]
        kvm: bool,
        /// Enable Serial-over-LAN.
        #[arg(long)]
        sol: bool,
        /// Enable IDE redirection.
        #[arg(long)]
        ider: bool,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum UserConsent {
    None,
    Kvm,
    All,
}

#[derive(clap::Subcommand, Debug)]
pub enum ConsentCmd {
    /// Ask the device to show a consent code on its screen.
    Start { guid: String },
    /// Send the code the user read from the screen.
    Send { guid: String, code: String },
    /// Cancel a pending or granted consent.
    Cancel { guid: String },
}

pub async fn run_features(cmd: FeaturesCmd, api: &mut Api) -> Result<(), CliError> {
    let features = match cmd {
        FeaturesCmd::Show { guid } => api.device.get_features(DeviceRef { guid }).await?,
        FeaturesCmd::Set {
            guid,
            user_consent,
            kvm,
            sol,
            ider,
        } => {
            let user_consent = match user_consent {
                UserConsent::None => "none",
                UserConsent::Kvm => "kvm",
                UserConsent::All => "all",
            };
            let request = SetFeaturesRequest {
                guid,
                user_consent: user_consent.into(),
                enable_kvm: kvm,
                enable_sol: sol,
                enable_ider: ider,
            };
            api.device.set_features(request).await?
        }
    };
    Ok(api.out.print(features.get_ref(), to_json, human)?)
}

pub async fn run_consent(cmd: ConsentCmd, api: &mut Api) -> Result<(), CliError> {
    let result = match cmd {
        ConsentCmd::Start { guid } => api.device.start_user_consent(DeviceRef { guid }).await?,
        ConsentCmd::Send { guid, code } => {
            let request = SendUserConsentCodeRequest { guid, code };
            api.device.send_user_consent_code(request).await?
        }
        ConsentCmd::Cancel { guid } => api.device.cancel_user_consent(DeviceRef { guid }).await?,
    };
    Ok(api.out.print(result.get_ref(), result_json, result_human)?)
}

fn to_json(f: &AmtFeatures) -> Value {
    json!({
        "user_consent": f.user_consent, "redirection": f.redirection, "kvm": f.kvm,
        "sol": f.sol, "ider": f.ider, "opt_in_state": f.opt_in_state,
        "kvm_available": f.kvm_available,
    })
}

fn human(f: &AmtFeatures) -> String {
    fields(&[
        ("User consent", f.user_consent.clone()),
        ("Redirection", yes_no(f.redirection)),
        ("KVM", yes_no(f.kvm)),
        ("SOL", yes_no(f.sol)),
        ("IDE-R", yes_no(f.ider)),
        ("Opt-in state", label(OPT_IN_STATE, f.opt_in_state)),
        ("KVM available", yes_no(f.kvm_available)),
    ])
}
