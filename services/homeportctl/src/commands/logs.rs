//! `logs`: the device's hardware event log and AMT audit log.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use homeport_proto::device::v1::{AuditLog, EventLog, GetAuditLogRequest, GetEventLogRequest};
use serde_json::{json, Value};

use crate::client::Api;
use crate::error::CliError;
use crate::output::{time, Table};

#[derive(clap::Subcommand, Debug)]
pub enum LogsCmd {
    /// Hardware event log, newest first.
    Events {
        guid: String,
        /// At most this many records (server default and maximum 390).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        max: Option<u32>,
    },
    /// AMT audit log, oldest first.
    Audit {
        guid: String,
        /// 1-based index of the first record.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        start: Option<u32>,
    },
}

pub async fn run(cmd: LogsCmd, api: &mut Api) -> Result<(), CliError> {
    match cmd {
        LogsCmd::Events { guid, max } => {
            let request = GetEventLogRequest {
                guid,
                max_records: max.unwrap_or(0),
            };
            let log = api.device.get_event_log(request).await?;
            Ok(api.out.print(log.get_ref(), events_json, events_human)?)
        }
        LogsCmd::Audit { guid, start } => {
            let start_index = start.unwrap_or(1);
            let request = GetAuditLogRequest { guid, start_index };
            let log = api.device.get_audit_log(request).await?;
            Ok(api
                .out
                .print(log.get_ref(), audit_json, |l| audit_human(l, start_index))?)
        }
    }
}

/// Bytes as in protobuf's JSON mapping: standard base64 with padding.
fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn events_json(log: &EventLog) -> Value {
    let records: Vec<Value> = log
        .records
        .iter()
        .map(|r| {
            json!({
                "time": r.time, "sensor_type": r.sensor_type, "event_type": r.event_type,
                "event_offset": r.event_offset, "event_source_type": r.event_source_type,
                "severity": r.severity, "sensor_number": r.sensor_number, "entity": r.entity,
                "entity_instance": r.entity_instance, "event_data": b64(&r.event_data),
                "description": r.description,
            })
        })
        .collect();
    json!({ "records": records, "no_more_records": log.no_more_records })
}

fn events_human(log: &EventLog) -> String {
    let mut table = Table::new(&["TIME", "SEVERITY", "ENTITY", "DESCRIPTION"]);
    for r in &log.records {
        table.row(vec![
            time(r.time),
            r.severity.clone(),
            r.entity.clone(),
            r.description.clone(),
        ]);
    }
    let mut text = table.render();
    if !log.no_more_records {
        text.push_str("(older records exist on the device)\n");
    }
    text
}

fn audit_json(log: &AuditLog) -> Value {
    let records: Vec<Value> = log
        .records
        .iter()
        .map(|r| {
            json!({
                "app_id": r.app_id, "event_id": r.event_id, "app_name": r.app_name,
                "event_name": r.event_name, "initiator_type": r.initiator_type,
                "initiator": r.initiator, "time": r.time, "net_address": r.net_address,
                "extended_data": b64(&r.extended_data),
            })
        })
        .collect();
    json!({ "total_records": log.total_records, "records": records })
}

fn audit_human(log: &AuditLog, start: u32) -> String {
    let mut table = Table::new(&["TIME", "APPLICATION", "EVENT", "INITIATOR", "ADDRESS"]);
    for r in &log.records {
        let initiator = match (r.initiator_type.as_str(), r.initiator.as_str()) {
            ("", who) | (who, "") => who.to_string(),
            (kind, who) => format!("{who} ({kind})"),
        };
        table.row(vec![
            time(r.time),
            r.app_name.clone(),
            r.event_name.clone(),
            initiator,
            r.net_address.clone(),
        ]);
    }
    let shown = u32::try_from(log.records.len()).unwrap_or(u32::MAX);
    let mut text = table.render();
    if shown > 0 {
        let last = start.saturating_add(shown - 1);
        text.push_str(&format!(
            "records {start}-{last} of {}\n",
            log.total_records
        ));
        if last < log.total_records {
            text.push_str(&format!("(more: --start {})\n", last + 1));
        }
    } else {
        text.push_str(&format!(
            "no records from {start} of {}\n",
            log.total_records
        ));
    }
    text
}
