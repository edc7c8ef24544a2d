//! `alarms`: AMT alarm clocks that power the device on at a given time.

use homeport_proto::device::v1::{
    AddAlarmRequest, Alarm, AlarmList, DeleteAlarmRequest, DeviceRef,
};
use serde_json::{json, Value};

use crate::client::Api;
use crate::error::CliError;
use crate::output::{fields, time, yes_no, Table};

#[derive(clap::Subcommand, Debug)]
pub enum AlarmsCmd {
    /// List the device's alarms.
    List { guid: String },
    /// Add an alarm that powers the device on.
    Add {
        guid: String,
        /// Unique per device, 1-32 characters; also the alarm's instance id.
        name: String,
        /// First wake-up: RFC 3339 (2024-03-01T06:00:00Z) or unix seconds; rounded down to
        /// the minute.
        #[arg(long, value_parser = crate::time::parse_time)]
        start: i64,
        /// Repeat every N minutes (default: once).
        #[arg(long, default_value_t = 0)]
        interval_minutes: u32,
        /// Remove the alarm once it has fired for the last time.
        #[arg(long)]
        delete_on_completion: bool,
    },
    /// Delete an alarm.
    Delete { guid: String, instance_id: String },
}

pub async fn run(cmd: AlarmsCmd, api: &mut Api) -> Result<(), CliError> {
    match cmd {
        AlarmsCmd::List { guid } => {
            let list = api.device.list_alarms(DeviceRef { guid }).await?;
            Ok(api.out.print(list.get_ref(), list_json, list_human)?)
        }
        AlarmsCmd::Add {
            guid,
            name,
            start,
            interval_minutes,
            delete_on_completion,
        } => {
            let request = AddAlarmRequest {
                guid,
                name,
                start_time: start,
                interval_minutes,
                delete_on_completion,
            };
            let alarm = api.device.add_alarm(request).await?;
            Ok(api.out.print(alarm.get_ref(), to_json, human)?)
        }
        AlarmsCmd::Delete { guid, instance_id } => {
            let request = DeleteAlarmRequest {
                guid,
                instance_id: instance_id.clone(),
            };
            api.device.delete_alarm(request).await?;
            Ok(api.out.print(
                &instance_id,
                |_| json!({}),
                |id| format!("deleted alarm {id}"),
            )?)
        }
    }
}

fn to_json(a: &Alarm) -> Value {
    json!({
        "instance_id": a.instance_id, "element_name": a.element_name,
        "start_time": a.start_time, "interval_minutes": a.interval_minutes,
        "delete_on_completion": a.delete_on_completion,
    })
}

fn human(a: &Alarm) -> String {
    fields(&[
        ("Instance ID", a.instance_id.clone()),
        ("Name", a.element_name.clone()),
        ("Start", time(a.start_time)),
        ("Interval", interval(a.interval_minutes)),
        ("Delete on completion", yes_no(a.delete_on_completion)),
    ])
}

fn list_json(l: &AlarmList) -> Value {
    json!({ "alarms": l.alarms.iter().map(to_json).collect::<Vec<_>>() })
}

fn list_human(l: &AlarmList) -> String {
    let mut table = Table::new(&[
        "INSTANCE ID",
        "NAME",
        "START",
        "INTERVAL",
        "DELETE ON COMPLETION",
    ]);
    for a in &l.alarms {
        table.row(vec![
            a.instance_id.clone(),
            a.element_name.clone(),
            time(a.start_time),
            interval(a.interval_minutes),
            yes_no(a.delete_on_completion),
        ]);
    }
    table.render()
}

fn interval(minutes: u32) -> String {
    match minutes {
        0 => "once".into(),
        m if m % 1440 == 0 => format!("every {} d", m / 1440),
        m if m % 60 == 0 => format!("every {} h", m / 60),
        m => format!("every {m} min"),
    }
}
