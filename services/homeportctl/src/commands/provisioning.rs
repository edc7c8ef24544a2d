//! `profiles`, `cira-configs`, `domains`, `wireless`: the remote provisioning admin API of rps
//! (`proto/homeport/provisioning/v1`), reached at `--rps-endpoint`. Secrets are given through
//! files or the environment, never on the command line, and never printed.

use homeport_proto::provisioning::v1 as pb;
use serde_json::{json, Value};

use crate::client::Api;
use crate::error::CliError;
use crate::output::{fields, yes_no, Table};

fn read_secret(path: &Option<std::path::PathBuf>, what: &str) -> Result<String, CliError> {
    match path {
        None => Ok(String::new()),
        Some(p) => std::fs::read_to_string(p)
            .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
            .map_err(|e| CliError::Usage(format!("reading the {what} from {}: {e}", p.display()))),
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum ProfilesCmd {
    /// List the tenant's profiles.
    List(ListArgs),
    /// Show one profile.
    Get { name: String },
    /// Create a profile.
    Create(ProfileArgs),
    /// Change a profile: the flags given replace those settings, the rest stays (a static
    /// password is write-only, so a profile with one needs it again).
    Update(ProfileUpdate),
    /// Delete a profile.
    Delete { name: String },
}

#[derive(clap::Args, Debug)]
pub struct ProfileUpdate {
    name: String,
    /// File with a new static AMT admin password.
    #[arg(long, conflicts_with = "random_password")]
    amt_password_file: Option<std::path::PathBuf>,
    /// From now on a fresh AMT password per device.
    #[arg(long)]
    random_password: bool,
    /// File with the static MEBx password (ACM profiles that have one).
    #[arg(long)]
    mebx_password_file: Option<std::path::PathBuf>,
    #[arg(long, conflicts_with = "no_cira")]
    cira_config: Option<String>,
    /// No CIRA configuration any more.
    #[arg(long)]
    no_cira: bool,
    /// Replace the tags (repeat or comma-separate).
    #[arg(long, value_delimiter = ',')]
    tags: Option<Vec<String>>,
    #[arg(long)]
    user_consent: Option<String>,
    #[arg(long, action = clap::ArgAction::Set)]
    kvm: Option<bool>,
    #[arg(long, action = clap::ArgAction::Set)]
    sol: Option<bool>,
    #[arg(long, action = clap::ArgAction::Set)]
    ider: Option<bool>,
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[arg(long, default_value_t = 0)]
    skip: u32,
    #[arg(long, default_value_t = 100)]
    top: u32,
}

#[derive(clap::Args, Debug)]
pub struct ProfileArgs {
    name: String,
    /// ccm or acm.
    #[arg(long, default_value = "ccm")]
    activation: String,
    /// File with a static AMT admin password; without it each device gets its own.
    #[arg(long)]
    amt_password_file: Option<std::path::PathBuf>,
    /// File with a static MEBx password (ACM); without it each device gets its own.
    #[arg(long)]
    mebx_password_file: Option<std::path::PathBuf>,
    /// CIRA configuration applied after activation.
    #[arg(long)]
    cira_config: Option<String>,
    /// Tags given to activated devices (repeat or comma-separate).
    #[arg(long, value_delimiter = ',')]
    tags: Vec<String>,
    /// User consent: none, kvm or all (CCM needs all).
    #[arg(long)]
    user_consent: Option<String>,
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    kvm: bool,
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    sol: bool,
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    ider: bool,
    /// Static IP instead of DHCP.
    #[arg(long)]
    static_ip: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum CiraCmd {
    List(ListArgs),
    Get {
        name: String,
    },
    /// Create a CIRA configuration: where activated devices dial in.
    Create(CiraArgs),
    Delete {
        name: String,
    },
}

#[derive(clap::Args, Debug)]
pub struct CiraArgs {
    name: String,
    /// The ingress's address as devices reach it (FQDN or IPv4).
    #[arg(long)]
    address: String,
    #[arg(long, default_value_t = 4433)]
    port: u32,
    /// CIRA user name (5-16 letters and digits).
    #[arg(long)]
    username: String,
    /// File with a static CIRA password; without it each device gets its own.
    #[arg(long)]
    password_file: Option<std::path::PathBuf>,
    /// PEM or base64 DER file of the ingress root; without it the ingress's own is used.
    #[arg(long)]
    root_certificate_file: Option<std::path::PathBuf>,
}

#[derive(clap::Subcommand, Debug)]
pub enum DomainsCmd {
    List(ListArgs),
    Get {
        name: String,
    },
    /// Add an ACM provisioning certificate for a DNS suffix.
    Create(DomainArgs),
    Delete {
        name: String,
    },
}

#[derive(clap::Args, Debug)]
pub struct DomainArgs {
    name: String,
    #[arg(long)]
    suffix: String,
    /// The PKCS#12 (.pfx) file.
    #[arg(long)]
    pfx_file: std::path::PathBuf,
    /// File with the PFX's password.
    #[arg(long)]
    pfx_password_file: std::path::PathBuf,
}

#[derive(clap::Subcommand, Debug)]
pub enum WirelessCmd {
    List(ListArgs),
    Get {
        name: String,
    },
    /// Add a Wi-Fi profile (WPA/WPA2 PSK).
    Create(WirelessArgs),
    Delete {
        name: String,
    },
}

#[derive(clap::Args, Debug)]
pub struct WirelessArgs {
    name: String,
    #[arg(long)]
    ssid: String,
    /// 4 WPA-PSK or 6 WPA2-PSK.
    #[arg(long, default_value_t = 6)]
    authentication_method: u32,
    /// 3 TKIP or 4 CCMP.
    #[arg(long, default_value_t = 4)]
    encryption_method: u32,
    /// File with the passphrase.
    #[arg(long)]
    psk_file: std::path::PathBuf,
}

fn activation_name(a: i32) -> &'static str {
    match pb::Activation::try_from(a) {
        Ok(pb::Activation::Acm) => "acm",
        Ok(pb::Activation::Ccm) => "ccm",
        _ => "?",
    }
}

fn consent_name(c: i32) -> &'static str {
    match pb::UserConsent::try_from(c) {
        Ok(pb::UserConsent::None) => "none",
        Ok(pb::UserConsent::Kvm) => "kvm",
        Ok(pb::UserConsent::All) => "all",
        _ => "?",
    }
}

fn profile_json(p: &pb::Profile) -> Value {
    json!({
        "name": p.name, "activation": activation_name(p.activation),
        "generate_random_password": p.generate_random_password,
        "cira_config": p.cira_config_name, "tags": p.tags,
        "user_consent": consent_name(p.user_consent), "kvm": p.kvm_enabled,
        "sol": p.sol_enabled, "ider": p.ider_enabled, "dhcp": p.dhcp_enabled,
        "tenant": p.tenant, "version": p.version,
    })
}

fn profile_human(p: &pb::Profile) -> String {
    fields(&[
        ("Name", p.name.clone()),
        ("Activation", activation_name(p.activation).into()),
        (
            "AMT password",
            if p.generate_random_password {
                "random per device"
            } else {
                "static"
            }
            .into(),
        ),
        ("CIRA config", p.cira_config_name.clone()),
        ("Tags", p.tags.join(", ")),
        ("User consent", consent_name(p.user_consent).into()),
        ("KVM", yes_no(p.kvm_enabled)),
        ("SOL", yes_no(p.sol_enabled)),
        ("IDER", yes_no(p.ider_enabled)),
        ("DHCP", yes_no(p.dhcp_enabled)),
        ("Version", p.version.to_string()),
    ])
}

fn profiles_human(l: &pb::ProfileList) -> String {
    let mut t = Table::new(&[
        "NAME",
        "ACTIVATION",
        "CIRA CONFIG",
        "CONSENT",
        "TAGS",
        "VERSION",
    ]);
    for p in &l.profiles {
        t.row(vec![
            p.name.clone(),
            activation_name(p.activation).into(),
            p.cira_config_name.clone(),
            consent_name(p.user_consent).into(),
            p.tags.join(","),
            p.version.to_string(),
        ]);
    }
    format!("{}{} of {}", t.render(), l.profiles.len(), l.total)
}

fn cira_json(c: &pb::CiraConfig) -> Value {
    json!({
        "name": c.name, "address": c.mps_server_address, "format": c.server_address_format,
        "port": c.mps_port, "username": c.username, "auth_method": c.auth_method,
        "tenant": c.tenant, "version": c.version,
    })
}

fn cira_human(c: &pb::CiraConfig) -> String {
    fields(&[
        ("Name", c.name.clone()),
        (
            "Address",
            format!("{}:{}", c.mps_server_address, c.mps_port),
        ),
        ("User name", c.username.clone()),
        (
            "Root certificate",
            format!("{} bytes (base64 DER)", c.mps_root_certificate.len()),
        ),
        ("Version", c.version.to_string()),
    ])
}

fn ciras_human(l: &pb::CiraConfigList) -> String {
    let mut t = Table::new(&["NAME", "ADDRESS", "PORT", "USER NAME", "VERSION"]);
    for c in &l.cira_configs {
        t.row(vec![
            c.name.clone(),
            c.mps_server_address.clone(),
            c.mps_port.to_string(),
            c.username.clone(),
            c.version.to_string(),
        ]);
    }
    format!("{}{} of {}", t.render(), l.cira_configs.len(), l.total)
}

fn domain_json(d: &pb::Domain) -> Value {
    json!({
        "name": d.name, "suffix": d.domain_suffix, "expires": d.expiration_date,
        "tenant": d.tenant, "version": d.version,
    })
}

fn domain_human(d: &pb::Domain) -> String {
    fields(&[
        ("Name", d.name.clone()),
        ("Suffix", d.domain_suffix.clone()),
        ("Expires", crate::output::time(d.expiration_date)),
        ("Version", d.version.to_string()),
    ])
}

fn domains_human(l: &pb::DomainList) -> String {
    let mut t = Table::new(&["NAME", "SUFFIX", "EXPIRES", "VERSION"]);
    for d in &l.domains {
        t.row(vec![
            d.name.clone(),
            d.domain_suffix.clone(),
            crate::output::time(d.expiration_date),
            d.version.to_string(),
        ]);
    }
    format!("{}{} of {}", t.render(), l.domains.len(), l.total)
}

fn wireless_json(w: &pb::WirelessConfig) -> Value {
    json!({
        "name": w.name, "ssid": w.ssid, "authentication_method": w.authentication_method,
        "encryption_method": w.encryption_method, "tenant": w.tenant, "version": w.version,
    })
}

fn wireless_human(w: &pb::WirelessConfig) -> String {
    fields(&[
        ("Name", w.name.clone()),
        ("SSID", w.ssid.clone()),
        ("Authentication", w.authentication_method.to_string()),
        ("Encryption", w.encryption_method.to_string()),
        ("Version", w.version.to_string()),
    ])
}

fn wirelesses_human(l: &pb::WirelessConfigList) -> String {
    let mut t = Table::new(&["NAME", "SSID", "AUTH", "ENCRYPTION", "VERSION"]);
    for w in &l.wireless_configs {
        t.row(vec![
            w.name.clone(),
            w.ssid.clone(),
            w.authentication_method.to_string(),
            w.encryption_method.to_string(),
            w.version.to_string(),
        ]);
    }
    format!("{}{} of {}", t.render(), l.wireless_configs.len(), l.total)
}

fn deleted(api: &mut Api, what: &str, name: &str) -> Result<(), CliError> {
    Ok(api.out.print(
        &name.to_string(),
        |_| json!({}),
        |n| format!("deleted {what} {n}"),
    )?)
}

pub async fn run_profiles(cmd: ProfilesCmd, api: &mut Api) -> Result<(), CliError> {
    let admin = &mut api.provisioning;
    match cmd {
        ProfilesCmd::List(l) => {
            let r = admin
                .list_profiles(pb::ListRequest {
                    skip: l.skip,
                    top: l.top,
                })
                .await?;
            Ok(api.out.print(
                r.get_ref(),
                |l| json!({ "profiles": l.profiles.iter().map(profile_json).collect::<Vec<_>>(), "total": l.total }),
                profiles_human,
            )?)
        }
        ProfilesCmd::Get { name } => {
            let r = admin.get_profile(pb::NameRef { name }).await?;
            Ok(api.out.print(r.get_ref(), profile_json, profile_human)?)
        }
        ProfilesCmd::Create(a) => {
            let amt = read_secret(&a.amt_password_file, "AMT password")?;
            let mebx = read_secret(&a.mebx_password_file, "MEBx password")?;
            let acm = match a.activation.as_str() {
                "ccm" => false,
                "acm" => true,
                other => {
                    return Err(CliError::Usage(format!(
                        "--activation must be ccm or acm, not {other:?}"
                    )))
                }
            };
            let consent = match a.user_consent.as_deref() {
                None => pb::UserConsent::Unspecified,
                Some("none") => pb::UserConsent::None,
                Some("kvm") => pb::UserConsent::Kvm,
                Some("all") => pb::UserConsent::All,
                Some(other) => {
                    return Err(CliError::Usage(format!(
                        "--user-consent must be none, kvm or all, not {other:?}"
                    )))
                }
            };
            let request = pb::Profile {
                name: a.name,
                activation: if acm {
                    pb::Activation::Acm
                } else {
                    pb::Activation::Ccm
                } as i32,
                generate_random_password: amt.is_empty(),
                amt_password: amt,
                generate_random_mebx_password: acm && mebx.is_empty(),
                mebx_password: mebx,
                cira_config_name: a.cira_config.unwrap_or_default(),
                tags: a.tags,
                dhcp_enabled: !a.static_ip,
                ip_sync_enabled: true,
                user_consent: consent as i32,
                kvm_enabled: a.kvm,
                sol_enabled: a.sol,
                ider_enabled: a.ider,
                ..Default::default()
            };
            let r = admin.create_profile(request).await?;
            Ok(api.out.print(r.get_ref(), profile_json, profile_human)?)
        }
        ProfilesCmd::Update(a) => {
            // Read, change, send back with the version read (the server refuses a stale one).
            let mut p = admin
                .get_profile(pb::NameRef {
                    name: a.name.clone(),
                })
                .await?
                .into_inner();
            if let Some(f) = &a.amt_password_file {
                p.amt_password = read_secret(&Some(f.clone()), "AMT password")?;
                p.generate_random_password = false;
            }
            if a.random_password {
                p.generate_random_password = true;
            }
            if a.mebx_password_file.is_some() {
                p.mebx_password = read_secret(&a.mebx_password_file, "MEBx password")?;
                p.generate_random_mebx_password = false;
            }
            if let Some(c) = a.cira_config {
                p.cira_config_name = c;
            }
            if a.no_cira {
                p.cira_config_name.clear();
            }
            if let Some(t) = a.tags {
                p.tags = t;
            }
            if let Some(c) = a.user_consent.as_deref() {
                p.user_consent = match c {
                    "none" => pb::UserConsent::None,
                    "kvm" => pb::UserConsent::Kvm,
                    "all" => pb::UserConsent::All,
                    other => {
                        return Err(CliError::Usage(format!(
                            "--user-consent must be none, kvm or all, not {other:?}"
                        )))
                    }
                } as i32;
            }
            p.kvm_enabled = a.kvm.unwrap_or(p.kvm_enabled);
            p.sol_enabled = a.sol.unwrap_or(p.sol_enabled);
            p.ider_enabled = a.ider.unwrap_or(p.ider_enabled);
            let r = admin.update_profile(p).await?;
            Ok(api.out.print(r.get_ref(), profile_json, profile_human)?)
        }
        ProfilesCmd::Delete { name } => {
            admin
                .delete_profile(pb::NameRef { name: name.clone() })
                .await?;
            deleted(api, "profile", &name)
        }
    }
}

pub async fn run_cira(cmd: CiraCmd, api: &mut Api) -> Result<(), CliError> {
    let admin = &mut api.provisioning;
    match cmd {
        CiraCmd::List(l) => {
            let r = admin
                .list_cira_configs(pb::ListRequest {
                    skip: l.skip,
                    top: l.top,
                })
                .await?;
            Ok(api.out.print(
                r.get_ref(),
                |l| json!({ "cira_configs": l.cira_configs.iter().map(cira_json).collect::<Vec<_>>(), "total": l.total }),
                ciras_human,
            )?)
        }
        CiraCmd::Get { name } => {
            let r = admin.get_cira_config(pb::NameRef { name }).await?;
            Ok(api.out.print(r.get_ref(), cira_json, cira_human)?)
        }
        CiraCmd::Create(a) => {
            let password = read_secret(&a.password_file, "CIRA password")?;
            let root = match &a.root_certificate_file {
                None => String::new(),
                Some(p) => {
                    let text = std::fs::read_to_string(p)
                        .map_err(|e| CliError::Usage(format!("reading {}: {e}", p.display())))?;
                    // PEM: the base64 between the markers is the DER.
                    text.lines()
                        .filter(|l| !l.starts_with("-----"))
                        .collect::<String>()
                }
            };
            let format = if a.address.parse::<std::net::Ipv6Addr>().is_ok() {
                4
            } else {
                201
            };
            let r = admin
                .create_cira_config(pb::CiraConfig {
                    name: a.name,
                    mps_server_address: a.address,
                    server_address_format: format,
                    mps_port: a.port,
                    username: a.username,
                    password,
                    auth_method: 2,
                    mps_root_certificate: root,
                    ..Default::default()
                })
                .await?;
            Ok(api.out.print(r.get_ref(), cira_json, cira_human)?)
        }
        CiraCmd::Delete { name } => {
            admin
                .delete_cira_config(pb::NameRef { name: name.clone() })
                .await?;
            deleted(api, "CIRA config", &name)
        }
    }
}

pub async fn run_domains(cmd: DomainsCmd, api: &mut Api) -> Result<(), CliError> {
    use base64::Engine as _;
    let admin = &mut api.provisioning;
    match cmd {
        DomainsCmd::List(l) => {
            let r = admin
                .list_domains(pb::ListRequest {
                    skip: l.skip,
                    top: l.top,
                })
                .await?;
            Ok(api.out.print(
                r.get_ref(),
                |l| json!({ "domains": l.domains.iter().map(domain_json).collect::<Vec<_>>(), "total": l.total }),
                domains_human,
            )?)
        }
        DomainsCmd::Get { name } => {
            let r = admin.get_domain(pb::NameRef { name }).await?;
            Ok(api.out.print(r.get_ref(), domain_json, domain_human)?)
        }
        DomainsCmd::Create(a) => {
            let pfx = std::fs::read(&a.pfx_file)
                .map_err(|e| CliError::Usage(format!("reading {}: {e}", a.pfx_file.display())))?;
            let password = read_secret(&Some(a.pfx_password_file), "PFX password")?;
            let r = admin
                .create_domain(pb::Domain {
                    name: a.name,
                    domain_suffix: a.suffix,
                    provisioning_cert: base64::engine::general_purpose::STANDARD.encode(pfx),
                    provisioning_cert_storage_format: "raw".into(),
                    provisioning_cert_password: password,
                    ..Default::default()
                })
                .await?;
            Ok(api.out.print(r.get_ref(), domain_json, domain_human)?)
        }
        DomainsCmd::Delete { name } => {
            admin
                .delete_domain(pb::NameRef { name: name.clone() })
                .await?;
            deleted(api, "domain", &name)
        }
    }
}

pub async fn run_wireless(cmd: WirelessCmd, api: &mut Api) -> Result<(), CliError> {
    let admin = &mut api.provisioning;
    match cmd {
        WirelessCmd::List(l) => {
            let r = admin
                .list_wireless_configs(pb::ListRequest {
                    skip: l.skip,
                    top: l.top,
                })
                .await?;
            Ok(api.out.print(
                r.get_ref(),
                |l| json!({ "wireless_configs": l.wireless_configs.iter().map(wireless_json).collect::<Vec<_>>(), "total": l.total }),
                wirelesses_human,
            )?)
        }
        WirelessCmd::Get { name } => {
            let r = admin.get_wireless_config(pb::NameRef { name }).await?;
            Ok(api.out.print(r.get_ref(), wireless_json, wireless_human)?)
        }
        WirelessCmd::Create(a) => {
            let psk = read_secret(&Some(a.psk_file), "passphrase")?;
            let r = admin
                .create_wireless_config(pb::WirelessConfig {
                    name: a.name,
                    ssid: a.ssid,
                    authentication_method: a.authentication_method,
                    encryption_method: a.encryption_method,
                    psk_passphrase: psk,
                    ..Default::default()
                })
                .await?;
            Ok(api.out.print(r.get_ref(), wireless_json, wireless_human)?)
        }
        WirelessCmd::Delete { name } => {
            admin
                .delete_wireless_config(pb::NameRef { name: name.clone() })
                .await?;
            deleted(api, "wireless config", &name)
        }
    }
}
