//! The WS-Man call sequence behind each device feature (reference §2), producing the
//! published gRPC messages. Sequences follow what MPS does so devices see familiar traffic.

use homeport_proto::device::v1 as pb;
use homeport_wsman::amt::Properties;
use homeport_wsman::amt::{self, alarms, boot, features, hardware, logs, power, settings};

use crate::error::CommandError;
use crate::link::Call;

/// MPS reads at most this many event-log records.
pub const MAX_EVENT_RECORDS: u32 = 390;

fn result(rv: u32) -> pb::CommandResult {
    pb::CommandResult {
        return_value: rv,
        return_value_text: amt::return_value_text(rv).to_string(),
    }
}

pub async fn power_state(call: &mut Call<'_>) -> Result<pb::PowerState, CommandError> {
    let items = call.enumerate(amt::SERVICE_AVAILABLE_TO_ELEMENT).await?;
    let refs: Vec<_> = items.iter().collect();
    let page = amt::PullPage {
        items: refs,
        context: None,
        end_of_sequence: true,
    };
    let s = power::power_status(&page)?;
    Ok(pb::PowerState {
        guid: call.guid.clone(),
        power_state: s.power_state,
        power_state_text: power::power_state_text(s.power_state).to_string(),
        os_power_saving_state: 0,
        available_transitions: s.available_transitions,
    })
}

/// The MPS power action: clear boot options, then RequestPowerStateChange.
pub async fn power_action(
    call: &mut Call<'_>,
    action: u32,
) -> Result<pb::CommandResult, CommandError> {
    if !power::is_valid_action(action) {
        return Err(CommandError::InvalidArgument(format!(
            "power action {action} is not one of 2-8, 10-17"
        )));
    }
    let current = call.get(amt::BOOT_SETTING_DATA).await?;
    let props = Properties::from_element(amt::instance(&current, amt::BOOT_SETTING_DATA)?);
    call.exchange(&boot::cleared_boot_settings(&props).to_put(amt::BOOT_SETTING_DATA))
        .await?;
    let (_, rv) = call
        .invoke(
            &power::request_power_state_change(action),
            "RequestPowerStateChange",
        )
        .await?;
    Ok(result(rv))
}

/// The MPS bootOptions flow (reference §2.2).
pub async fn boot_options(
    call: &mut Call<'_>,
    action: u32,
    use_sol: bool,
) -> Result<pb::CommandResult, CommandError> {
    let plan = boot::boot_plan(action).ok_or_else(|| {
        CommandError::InvalidArgument(format!(
            "boot action {action} is not one of 100, 101, 104, 200-203, 300, 301, 400, 401"
        ))
    })?;
    let current = call.get(amt::BOOT_SETTING_DATA).await?;
    let props = Properties::from_element(amt::instance(&current, amt::BOOT_SETTING_DATA)?);
    call.exchange(
        &boot::planned_boot_settings(&props, &plan, use_sol).to_put(amt::BOOT_SETTING_DATA),
    )
    .await?;
    call.invoke_ok(&boot::set_boot_config_role(), "SetBootConfigRole")
        .await?;
    call.invoke_ok(&boot::change_boot_order(plan.source), "ChangeBootOrder")
        .await?;
    let (_, rv) = call
        .invoke(
            &power::request_power_state_change(plan.power),
            "RequestPowerStateChange",
        )
        .await?;
    Ok(result(rv))
}

async fn software(
    call: &mut Call<'_>,
) -> Result<(Vec<(String, String)>, String, u32), CommandError> {
    let items = call.enumerate(amt::SOFTWARE_IDENTITY).await?;
    let refs: Vec<_> = items.iter().collect();
    let ids = settings::software_identities(&refs);
    let (v, major) = settings::amt_version(&ids)?;
    Ok((ids, v, major))
}

pub async fn version(call: &mut Call<'_>) -> Result<pb::AmtVersion, CommandError> {
    let (ids, amt_version, major) = software(call).await?;
    let prov = settings::provisioning(&call.get(amt::SETUP_AND_CONFIGURATION).await?)?;
    let find = |k: &str| {
        ids.iter()
            .find(|(i, _)| i == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    Ok(pb::AmtVersion {
        amt: amt_version,
        major,
        build_number: find("Build Number"),
        sku: find("Sku"),
        software_identity: ids.into_iter().collect(),
        provisioning_mode: prov.mode,
        provisioning_state: prov.state,
    })
}

pub async fn power_capabilities(
    call: &mut Call<'_>,
) -> Result<pb::PowerCapabilities, CommandError> {
    let (_, _, major) = software(call).await?;
    let caps = boot::boot_capabilities(&call.get(amt::BOOT_CAPABILITIES).await?)?;
    Ok(pb::PowerCapabilities {
        actions: boot::power_capabilities(major, &caps)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    })
}

pub async fn general_settings(call: &mut Call<'_>) -> Result<pb::GeneralSettings, CommandError> {
    let g = settings::general_settings(&call.get(amt::GENERAL_SETTINGS).await?)?;
    Ok(pb::GeneralSettings {
        digest_realm: g.digest_realm,
        host_name: g.host_name,
        domain_name: g.domain_name,
        host_os_fqdn: g.host_os_fqdn,
        network_interface_enabled: g.network_interface_enabled,
        ping_response_enabled: g.ping_response_enabled,
        power_source: g.power_source,
        privacy_level: g.privacy_level,
        amt_network_enabled: g.amt_network_enabled,
        properties: g.properties.0.into_iter().collect(),
    })
}

pub async fn hardware_info(call: &mut Call<'_>) -> Result<pb::HardwareInfo, CommandError> {
    let platform_guid = hardware::platform_guid(&call.get(amt::COMPUTER_SYSTEM_PACKAGE).await?)?;
    let chassis = hardware::chassis(&call.get(amt::CHASSIS).await?)?;
    let board = hardware::board(&call.get(amt::CARD).await?)?;
    let bios = hardware::bios(&call.get(amt::BIOS_ELEMENT).await?)?;
    let cpu_items = call.enumerate(amt::PROCESSOR).await?;
    let chip_items = call.enumerate(amt::CHIP).await?;
    let mem_items = call.enumerate(amt::PHYSICAL_MEMORY).await?;
    let media_items = call.enumerate(amt::MEDIA_ACCESS_DEVICE).await?;
    let pkg_items = call.enumerate(amt::PHYSICAL_PACKAGE).await?;
    let mut cpus = hardware::processors(&refs(&cpu_items))?;
    for (cpu, brand) in cpus
        .iter_mut()
        .zip(hardware::chip_brands(&refs(&chip_items)))
    {
        cpu.brand = brand;
    }
    let memory = hardware::memory(&refs(&mem_items))?;
    let storage = hardware::storage(&refs(&media_items), &refs(&pkg_items))?;
    Ok(pb::HardwareInfo {
        manufacturer: chassis.manufacturer,
        model: chassis.model,
        serial_number: chassis.serial_number,
        platform_guid,
        board: Some(pb::Board {
            manufacturer: board.manufacturer,
            model: board.model,
            serial_number: board.serial_number,
            version: board.version,
        }),
        bios: Some(pb::Bios {
            manufacturer: bios.manufacturer,
            version: bios.version,
            release_date: bios.release_date,
        }),
        processors: cpus
            .into_iter()
            .map(|c| pb::Processor {
                device_id: c.device_id,
                brand: c.brand,
                family: c.family,
                current_clock_mhz: c.current_clock_mhz,
                max_clock_mhz: c.max_clock_mhz,
            })
            .collect(),
        memory: memory
            .into_iter()
            .map(|m| pb::MemoryModule {
                bank_label: m.bank_label,
                capacity_bytes: m.capacity_bytes,
                speed_mhz: m.speed_mhz,
                manufacturer: m.manufacturer,
                part_number: m.part_number,
                serial_number: m.serial_number,
            })
            .collect(),
        storage: storage
            .into_iter()
            .map(|s| pb::StorageDevice {
                device_id: s.device_id,
                model: s.model,
                serial_number: s.serial_number,
                max_media_size_kb: s.max_media_size_kb,
            })
            .collect(),
    })
}

fn refs(v: &[homeport_wsman::xml::Element]) -> Vec<&homeport_wsman::xml::Element> {
    v.iter().collect()
}

/// KVM state, or `None` on a SKU without KVM (DestinationUnreachable).
async fn kvm(call: &mut Call<'_>) -> Result<Option<bool>, CommandError> {
    match call.get(amt::KVM_REDIRECTION_SAP).await {
        Ok(r) => Ok(Some(features::kvm_enabled(&r)?)),
        Err(CommandError::Fault(f)) if f.is_destination_unreachable() => Ok(None),
        Err(e) => Err(e),
    }
}

pub async fn get_features(call: &mut Call<'_>) -> Result<pb::AmtFeatures, CommandError> {
    let red = features::redirection(&call.get(amt::REDIRECTION_SERVICE).await?)?;
    let opt = features::opt_in(&call.get(amt::OPT_IN_SERVICE).await?)?;
    let kvm = kvm(call).await?;
    Ok(pb::AmtFeatures {
        user_consent: features::consent_name(opt.required).to_string(),
        redirection: red.listener_enabled,
        kvm: kvm.unwrap_or(false),
        sol: red.sol,
        ider: red.ider,
        opt_in_state: opt.state,
        kvm_available: kvm.is_some(),
    })
}

/// The MPS features update: redirection state, KVM state, listener, then consent policy.
pub async fn set_features(
    call: &mut Call<'_>,
    req: &pb::SetFeaturesRequest,
) -> Result<pb::AmtFeatures, CommandError> {
    let consent = features::consent_from_name(&req.user_consent).ok_or_else(|| {
        CommandError::InvalidArgument(format!(
            "user_consent must be \"none\", \"kvm\" or \"all\", not {:?}",
            req.user_consent
        ))
    })?;
    let red = features::redirection(&call.get(amt::REDIRECTION_SERVICE).await?)?;
    let opt = features::opt_in(&call.get(amt::OPT_IN_SERVICE).await?)?;
    let kvm = kvm(call).await?;
    if req.enable_kvm && kvm.is_none() {
        return Err(CommandError::InvalidArgument(
            "this device has no KVM".into(),
        ));
    }
    let listener = req.enable_sol || req.enable_ider || req.enable_kvm;
    if red.sol != req.enable_sol
        || red.ider != req.enable_ider
        || kvm.is_some_and(|k| k != req.enable_kvm)
        || red.listener_enabled != listener
    {
        call.invoke_ok(
            &features::redirection_state_change(req.enable_sol, req.enable_ider),
            "RequestStateChange",
        )
        .await?;
        if kvm.is_some() {
            call.invoke_ok(
                &features::kvm_state_change(req.enable_kvm),
                "RequestStateChange",
            )
            .await?;
        }
        let fresh = features::redirection(&call.get(amt::REDIRECTION_SERVICE).await?)?;
        let mut props = fresh.properties;
        props.set("ListenerEnabled", listener.to_string());
        call.exchange(&props.to_put(amt::REDIRECTION_SERVICE))
            .await?;
    }
    if opt.required != consent {
        let mut props = opt.properties;
        props.set("OptInRequired", consent.to_string());
        call.exchange(&props.to_put(amt::OPT_IN_SERVICE)).await?;
    }
    get_features(call).await
}

pub async fn start_consent(call: &mut Call<'_>) -> Result<pb::CommandResult, CommandError> {
    let (_, rv) = call.invoke(&features::start_opt_in(), "StartOptIn").await?;
    Ok(result(rv))
}

pub async fn send_consent_code(
    call: &mut Call<'_>,
    code: &str,
) -> Result<pb::CommandResult, CommandError> {
    let code = code.trim();
    let n: u32 = code
        .parse()
        .ok()
        .filter(|_| code.len() == 6)
        .ok_or_else(|| CommandError::InvalidArgument("the consent code is six digits".into()))?;
    let (_, rv) = call
        .invoke(&features::send_opt_in_code(n), "SendOptInCode")
        .await?;
    Ok(result(rv))
}

pub async fn cancel_consent(call: &mut Call<'_>) -> Result<pb::CommandResult, CommandError> {
    let (_, rv) = call
        .invoke(&features::cancel_opt_in(), "CancelOptIn")
        .await?;
    Ok(result(rv))
}

pub async fn event_log(call: &mut Call<'_>, max: u32) -> Result<pb::EventLog, CommandError> {
    let max = if max == 0 {
        MAX_EVENT_RECORDS
    } else {
        max.min(MAX_EVENT_RECORDS)
    };
    let (r, rv) = call
        .invoke(&logs::position_to_first_record(), "PositionToFirstRecord")
        .await?;
    if rv == 2 {
        return Ok(pb::EventLog {
            records: Vec::new(),
            no_more_records: true,
        });
    }
    if rv != 0 {
        return Err(CommandError::ReturnValue {
            method: "PositionToFirstRecord".into(),
            value: rv,
        });
    }
    let (out, _) = r.method_output("PositionToFirstRecord")?;
    let mut iteration: u32 = homeport_wsman::response::number(out, "IterationIdentifier")?;
    let mut records = Vec::new();
    let mut no_more = false;
    while (records.len() as u32) < max && !no_more {
        let want = max - records.len() as u32;
        let r = call.exchange(&logs::get_records(iteration, want)).await?;
        let (page, rv) = logs::event_page(&r)?;
        if rv == 3 {
            no_more = true;
            break;
        }
        if rv != 0 {
            return Err(CommandError::ReturnValue {
                method: "GetRecords".into(),
                value: rv,
            });
        }
        no_more = page.no_more_records || page.records.is_empty();
        iteration = page.next_iteration;
        records.extend(
            page.records
                .into_iter()
                .take(want as usize)
                .map(|e| pb::EventLogRecord {
                    time: i64::from(e.time),
                    sensor_type: e.sensor_type.into(),
                    event_type: e.event_type.into(),
                    event_offset: e.event_offset.into(),
                    event_source_type: e.event_source_type.into(),
                    severity: e.severity_text().to_string(),
                    sensor_number: e.sensor_number.into(),
                    entity: e.entity_text().to_string(),
                    entity_instance: e.entity_instance.into(),
                    event_data: e.data.to_vec(),
                    description: e.description(),
                }),
        );
    }
    Ok(pb::EventLog {
        records,
        no_more_records: no_more,
    })
}

pub async fn audit_log(call: &mut Call<'_>, start: u32) -> Result<pb::AuditLog, CommandError> {
    let start = start.max(1);
    let r = call.exchange(&logs::read_audit_records(start)).await?;
    let (total, records, rv) = logs::audit_page(&r)?;
    if rv != 0 {
        return Err(CommandError::ReturnValue {
            method: "ReadRecords".into(),
            value: rv,
        });
    }
    Ok(pb::AuditLog {
        total_records: total,
        records: records
            .into_iter()
            .map(|a| pb::AuditLogRecord {
                app_id: a.app_id.into(),
                event_id: a.event_id.into(),
                app_name: a.app_name().to_string(),
                event_name: a.event_name().to_string(),
                initiator_type: a.initiator_type_text().to_string(),
                initiator: a.initiator,
                time: i64::from(a.time),
                net_address: a.net_address,
                extended_data: a.extended_data,
            })
            .collect(),
    })
}

fn to_alarm(a: alarms::Alarm) -> pb::Alarm {
    pb::Alarm {
        instance_id: a.instance_id,
        element_name: a.element_name,
        start_time: a.start_time,
        interval_minutes: a.interval_minutes,
        delete_on_completion: a.delete_on_completion,
    }
}

pub async fn list_alarms(call: &mut Call<'_>) -> Result<pb::AlarmList, CommandError> {
    let items = call.enumerate(amt::ALARM_CLOCK_OCCURRENCE).await?;
    let refs: Vec<_> = items.iter().collect();
    Ok(pb::AlarmList {
        alarms: alarms::alarms(&refs)?.into_iter().map(to_alarm).collect(),
    })
}

pub async fn add_alarm(
    call: &mut Call<'_>,
    req: &pb::AddAlarmRequest,
    now_unix: i64,
) -> Result<pb::Alarm, CommandError> {
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 32 {
        return Err(CommandError::InvalidArgument(
            "alarm name must be 1-32 characters".into(),
        ));
    }
    let start = req.start_time.saturating_sub(req.start_time.rem_euclid(60));
    if start <= now_unix {
        return Err(CommandError::InvalidArgument(
            "alarm start time must be in the future".into(),
        ));
    }
    let r = call
        .invoke_ok(
            &alarms::add_alarm(name, start, req.interval_minutes, req.delete_on_completion),
            "AddAlarm",
        )
        .await?;
    let (out, _) = r.method_output("AddAlarm")?;
    Ok(pb::Alarm {
        instance_id: alarms::added_alarm_id(out).unwrap_or_else(|| name.to_string()),
        element_name: name.to_string(),
        start_time: start,
        interval_minutes: req.interval_minutes,
        delete_on_completion: req.delete_on_completion,
    })
}

pub async fn delete_alarm(call: &mut Call<'_>, instance_id: &str) -> Result<(), CommandError> {
    if instance_id.is_empty() {
        return Err(CommandError::InvalidArgument(
            "instance_id is required".into(),
        ));
    }
    match call.exchange(&alarms::delete_alarm(instance_id)).await {
        Ok(_) => Ok(()),
        Err(CommandError::Fault(f)) if f.subcode == "InvalidSelectors" => Err(
            CommandError::NotFound(format!("alarm {instance_id:?} on {}", call.guid)),
        ),
        Err(e) => Err(e),
    }
}

pub async fn deactivate(call: &mut Call<'_>) -> Result<pb::CommandResult, CommandError> {
    let (_, rv) = call.invoke(&settings::unprovision(), "Unprovision").await?;
    Ok(result(rv))
}

/// Ends the device's CIRA session through its ingress node (no WS-Man).
pub async fn disconnect(
    call: &mut Call<'_>,
    tunnel: &homeport_contracts::tunnel::TunnelClient,
    timeout: std::time::Duration,
) -> Result<pb::CommandResult, CommandError> {
    match tunnel.disconnect(&call.guid, timeout).await {
        Ok(true) => Ok(result(0)),
        Ok(false) => Err(CommandError::NotConnected(call.guid.clone())),
        Err(homeport_contracts::tunnel::TunnelCallError::Timeout(g)) => {
            Err(CommandError::Timeout(g))
        }
        Err(e) => Err(CommandError::Unavailable(e.to_string())),
    }
}
