//! Bodies of the fuzz targets under `fuzz/`, also run by a stable test over the recorded
//! responses and mutations of them.

use crate::amt::{self, alarms, boot, features, hardware, logs, power, settings};
use crate::{http, response};

/// Everything a device's answer goes through in mps-command: HTTP framing, the XML reader,
/// the envelope, and every typed decoder. Errors are fine; panics are bugs.
pub fn parse_reply(data: &[u8]) {
    if let Ok(reply) = http::parse_reply(data) {
        decode_all(&reply.body);
    }
    decode_all(data);
}

fn decode_all(doc: &[u8]) {
    let Ok(r) = response::parse(doc) else { return };
    if let Ok(page) = amt::pull_page(&r) {
        let _ = power::power_status(&page);
        let _ = settings::software_identities(&page.items);
        let _ = hardware::processors(&page.items);
        let _ = hardware::memory(&page.items);
        let _ = hardware::storage(&page.items, &page.items);
        let _ = hardware::chip_brands(&page.items);
        let _ = alarms::alarms(&page.items);
    }
    let _ = amt::enumeration_context(&r);
    let _ = settings::general_settings(&r);
    let _ = settings::provisioning(&r);
    let _ = boot::boot_capabilities(&r);
    let _ = hardware::chassis(&r);
    let _ = hardware::board(&r);
    let _ = hardware::bios(&r);
    let _ = hardware::platform_guid(&r);
    let _ = features::redirection(&r);
    let _ = features::kvm_enabled(&r);
    let _ = features::opt_in(&r);
    let _ = logs::event_page(&r);
    let _ = logs::audit_page(&r);
    let _ = power::os_power_saving_state(&r);
    if let Ok((out, _)) = r.method_output("AddAlarm") {
        let _ = alarms::added_alarm_id(out);
    }
}
