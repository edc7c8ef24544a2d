//! `devices`: the device registry (list, show, add, update, remove).

use std::path::PathBuf;

use anyhow::anyhow;
use homeport_proto::device::v1::{
    ConnectionStatus, CreateDeviceRequest, Device, DeviceRef, ListDevicesRequest,
    ListDevicesResponse, UpdateDeviceRequest,
};
use serde_json::{json, Value};

use crate::client::Api;
use crate::error::CliError;
use crate::names;
use crate::output::{fields, time, Format, Table};
use crate::secret::password;

#[derive(clap::Subcommand, Debug)]
pub enum DevicesCmd {
    /// List the tenant's devices.
    List(ListArgs),
    /// Show one device.
    Show { guid: String },
    /// Register a device. Passwords come from files or from HOMEPORT_MPS_PASSWORD,
    /// HOMEPORT_AMT_PASSWORD and HOMEPORT_MEBX_PASSWORD, never from the command line.
    Add(AddArgs),
    /// Change a device's host name, friendly name or tags (only the fields given).
    Update(UpdateArgs),
    /// Remove a device from the registry.
    Remove { guid: String },
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// Only devices carrying this tag (repeatable: devices carrying all of them).
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Only devices with exactly this host name.
    #[arg(long)]
    hostname: Option<String>,
    /// Only devices whose guid, host name or friendly name contains this text (any case).
    #[arg(long)]
    search: Option<String>,
    /// Only devices in this connection status.
    #[arg(long, value_enum)]
    status: Option<StatusFilter>,
    /// Devices per page (server default 100, at most 1000).
    #[arg(long)]
    page_size: Option<u32>,
    /// Start at this page (the next-page token a previous listing printed).
    #[arg(long, conflicts_with = "all")]
    page_token: Option<String>,
    /// Follow next-page tokens and list every matching device.
    #[arg(long)]
    all: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum StatusFilter {
    Connected,
    Disconnected,
}

#[derive(clap::Args, Debug)]
pub struct AddArgs {
    guid: String,
    /// CIRA user name the device logs in with.
    #[arg(long)]
    mps_username: String,
    #[arg(long, default_value = "")]
    hostname: String,
    #[arg(long, default_value = "")]
    friendly_name: String,
    /// A tag (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// File holding the CIRA password (else HOMEPORT_MPS_PASSWORD).
    #[arg(long, value_name = "FILE")]
    mps_password_file: Option<PathBuf>,
    /// File holding the AMT admin password (else HOMEPORT_AMT_PASSWORD).
    #[arg(long, value_name = "FILE")]
    amt_password_file: Option<PathBuf>,
    /// File holding the MEBx password (else HOMEPORT_MEBX_PASSWORD).
    #[arg(long, value_name = "FILE")]
    mebx_password_file: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("fields").required(true).multiple(true)))]
pub struct UpdateArgs {
    guid: String,
    /// New host name ("" clears it).
    #[arg(long, group = "fields")]
    hostname: Option<String>,
    /// New friendly name ("" clears it).
    #[arg(long, group = "fields")]
    friendly_name: Option<String>,
    /// Replace the tags with these (repeatable).
    #[arg(long = "tag", value_name = "TAG", group = "fields")]
    tags: Vec<String>,
    /// Remove every tag.
    #[arg(long, group = "fields", conflicts_with = "tags")]
    clear_tags: bool,
}

pub async fn run(cmd: DevicesCmd, api: &mut Api) -> Result<(), CliError> {
    match cmd {
        DevicesCmd::List(args) => list(args, api).await,
        DevicesCmd::Show { guid } => {
            let device = api.registry.get_device(DeviceRef { guid }).await?;
            Ok(api.out.print(device.get_ref(), to_json, human)?)
        }
        DevicesCmd::Add(a) => {
            let request = CreateDeviceRequest {
                guid: a.guid,
                hostname: a.hostname,
                friendly_name: a.friendly_name,
                tags: a.tags,
                mps_username: a.mps_username,
                mps_password: password(a.mps_password_file.as_deref(), "HOMEPORT_MPS_PASSWORD")?
                    .into_exposed(),
                amt_password: password(a.amt_password_file.as_deref(), "HOMEPORT_AMT_PASSWORD")?
                    .into_exposed(),
                mebx_password: password(a.mebx_password_file.as_deref(), "HOMEPORT_MEBX_PASSWORD")?
                    .into_exposed(),
            };
            let device = api.registry.create_device(request).await?;
            Ok(api.out.print(device.get_ref(), to_json, human)?)
        }
        DevicesCmd::Update(u) => {
            let mut mask = Vec::new();
            if u.hostname.is_some() {
                mask.push("hostname".to_string());
            }
            if u.friendly_name.is_some() {
                mask.push("friendly_name".to_string());
            }
            if !u.tags.is_empty() || u.clear_tags {
                mask.push("tags".to_string());
            }
            let request = UpdateDeviceRequest {
                guid: u.guid,
                hostname: u.hostname.unwrap_or_default(),
                friendly_name: u.friendly_name.unwrap_or_default(),
                tags: u.tags,
                update_mask: mask,
            };
            let device = api.registry.update_device(request).await?;
            Ok(api.out.print(device.get_ref(), to_json, human)?)
        }
        DevicesCmd::Remove { guid } => {
            api.registry
                .delete_device(DeviceRef { guid: guid.clone() })
                .await?;
            Ok(api
                .out
                .print(&guid, |_| json!({}), |g| format!("removed device {g}"))?)
        }
    }
}

async fn list(args: ListArgs, api: &mut Api) -> Result<(), CliError> {
    let status = match args.status {
        None => ConnectionStatus::Unspecified,
        Some(StatusFilter::Connected) => ConnectionStatus::Connected,
        Some(StatusFilter::Disconnected) => ConnectionStatus::Disconnected,
    };
    let mut request = ListDevicesRequest {
        tags: args.tags,
        hostname: args.hostname.unwrap_or_default(),
        status: status.into(),
        page_size: args.page_size.unwrap_or(0),
        page_token: args.page_token.unwrap_or_default(),
        search: args.search.unwrap_or_default(),
        ..Default::default()
    };
    let mut page = api
        .registry
        .list_devices(request.clone())
        .await?
        .into_inner();
    if args.all {
        let mut devices = std::mem::take(&mut page.devices);
        while !page.next_page_token.is_empty() {
            if page.next_page_token == request.page_token {
                return Err(anyhow!("the server returned the same page token twice").into());
            }
            request.page_token = std::mem::take(&mut page.next_page_token);
            page = api
                .registry
                .list_devices(request.clone())
                .await?
                .into_inner();
            devices.append(&mut page.devices);
        }
        page.devices = devices;
    }
    api.out.print(&page, list_json, list_human)?;
    if api.out.format == Format::Human && !page.next_page_token.is_empty() {
        eprintln!(
            "more devices: --page-token {} (or --all)",
            page.next_page_token
        );
    }
    Ok(())
}

pub fn to_json(d: &Device) -> Value {
    json!({
        "guid": d.guid, "tenant": d.tenant, "hostname": d.hostname,
        "friendly_name": d.friendly_name, "tags": d.tags, "mps_username": d.mps_username,
        "status": status_json(d.status), "node": d.node, "connected_since": d.connected_since,
        "created_at": d.created_at, "updated_at": d.updated_at, "fw_version": d.fw_version,
        "fw_build": d.fw_build, "fw_sku": d.fw_sku, "control_mode": d.control_mode,
        "last_connected_at": d.last_connected_at, "last_disconnected_at": d.last_disconnected_at,
        "last_seen": d.last_seen,
    })
}

/// The enum's protobuf name, as in protobuf's JSON mapping; a number this build does not
/// know stays a number.
fn status_json(value: i32) -> Value {
    match ConnectionStatus::try_from(value) {
        Ok(s) => s.as_str_name().into(),
        Err(_) => value.into(),
    }
}

fn human(d: &Device) -> String {
    fields(&[
        ("GUID", d.guid.clone()),
        ("Tenant", d.tenant.clone()),
        ("Hostname", d.hostname.clone()),
        ("Friendly name", d.friendly_name.clone()),
        ("Tags", d.tags.join(", ")),
        ("MPS username", d.mps_username.clone()),
        ("Status", names::status(d.status)),
        ("Node", d.node.clone()),
        ("Connected since", time(d.connected_since)),
        ("Created", time(d.created_at)),
        ("Updated", time(d.updated_at)),
        ("Firmware", d.fw_version.clone()),
        ("Firmware build", d.fw_build.clone()),
        ("Firmware SKU", d.fw_sku.clone()),
        ("Control mode", d.control_mode.clone()),
        ("Last connected", time(d.last_connected_at)),
        ("Last disconnected", time(d.last_disconnected_at)),
        ("Last seen", time(d.last_seen)),
    ])
}

fn list_json(page: &ListDevicesResponse) -> Value {
    let devices: Vec<Value> = page.devices.iter().map(to_json).collect();
    json!({ "devices": devices, "next_page_token": page.next_page_token })
}

fn list_human(page: &ListDevicesResponse) -> String {
    let mut table = Table::new(&[
        "GUID", "HOSTNAME", "NAME", "STATUS", "NODE", "SINCE", "CONTROL", "TAGS",
    ]);
    for d in &page.devices {
        table.row(vec![
            d.guid.clone(),
            d.hostname.clone(),
            d.friendly_name.clone(),
            names::status(d.status),
            d.node.clone(),
            time(d.connected_since),
            d.control_mode.clone(),
            d.tags.join(","),
        ]);
    }
    table.render()
}
