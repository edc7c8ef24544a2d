//! `version`, `settings`, `hardware`: read-only facts a device reports about itself.

use homeport_proto::device::v1::{AmtVersion, GeneralSettings, HardwareInfo};
use serde_json::{json, Value};

use crate::names::{label, POWER_SOURCE, PRIVACY_LEVEL, PROVISIONING_MODE, PROVISIONING_STATE};
use crate::output::{fields, sorted, yes_no, Table};

pub fn version_json(v: &AmtVersion) -> Value {
    json!({
        "amt": v.amt, "major": v.major, "build_number": v.build_number, "sku": v.sku,
        "software_identity": v.software_identity, "provisioning_mode": v.provisioning_mode,
        "provisioning_state": v.provisioning_state,
    })
}

pub fn version_human(v: &AmtVersion) -> String {
    let mut text = fields(&[
        ("AMT", v.amt.clone()),
        ("Major", v.major.to_string()),
        ("Build", v.build_number.clone()),
        ("SKU", v.sku.clone()),
        (
            "Provisioning mode",
            label(PROVISIONING_MODE, v.provisioning_mode),
        ),
        (
            "Provisioning state",
            label(PROVISIONING_STATE, v.provisioning_state),
        ),
    ]);
    text.push('\n');
    text.push_str(&map_table(&["COMPONENT", "VERSION"], &v.software_identity));
    text
}

pub fn settings_json(s: &GeneralSettings) -> Value {
    json!({
        "digest_realm": s.digest_realm, "host_name": s.host_name, "domain_name": s.domain_name,
        "host_os_fqdn": s.host_os_fqdn, "network_interface_enabled": s.network_interface_enabled,
        "ping_response_enabled": s.ping_response_enabled, "power_source": s.power_source,
        "privacy_level": s.privacy_level, "amt_network_enabled": s.amt_network_enabled,
        "properties": s.properties,
    })
}

pub fn settings_human(s: &GeneralSettings) -> String {
    let mut text = fields(&[
        ("Digest realm", s.digest_realm.clone()),
        ("Host name", s.host_name.clone()),
        ("Domain name", s.domain_name.clone()),
        ("Host OS FQDN", s.host_os_fqdn.clone()),
        ("Network interface", yes_no(s.network_interface_enabled)),
        ("Ping response", yes_no(s.ping_response_enabled)),
        ("Power source", label(POWER_SOURCE, s.power_source)),
        ("Privacy level", label(PRIVACY_LEVEL, s.privacy_level)),
        ("AMT network", yes_no(s.amt_network_enabled)),
    ]);
    text.push('\n');
    text.push_str(&map_table(&["PROPERTY", "VALUE"], &s.properties));
    text
}

fn map_table(header: &[&str], map: &std::collections::HashMap<String, String>) -> String {
    let mut table = Table::new(header);
    for (k, v) in sorted(map) {
        table.row(vec![k, v]);
    }
    table.render()
}

pub fn hardware_json(h: &HardwareInfo) -> Value {
    let board = h.board.as_ref().map(|b| {
        json!({ "manufacturer": b.manufacturer, "model": b.model,
                "serial_number": b.serial_number, "version": b.version })
    });
    let bios = h.bios.as_ref().map(|b| {
        json!({ "manufacturer": b.manufacturer, "version": b.version,
                "release_date": b.release_date })
    });
    let processors: Vec<Value> = h
        .processors
        .iter()
        .map(|p| {
            json!({
                "device_id": p.device_id, "brand": p.brand, "family": p.family,
                "current_clock_mhz": p.current_clock_mhz, "max_clock_mhz": p.max_clock_mhz,
            })
        })
        .collect();
    let memory: Vec<Value> = h.memory.iter().map(|m| json!({
        "bank_label": m.bank_label, "capacity_bytes": m.capacity_bytes, "speed_mhz": m.speed_mhz,
        "manufacturer": m.manufacturer, "part_number": m.part_number,
        "serial_number": m.serial_number,
    })).collect();
    let storage: Vec<Value> = h
        .storage
        .iter()
        .map(|s| {
            json!({
                "device_id": s.device_id, "model": s.model, "serial_number": s.serial_number,
                "max_media_size_kb": s.max_media_size_kb,
            })
        })
        .collect();
    json!({
        "manufacturer": h.manufacturer, "model": h.model, "serial_number": h.serial_number,
        "platform_guid": h.platform_guid, "board": board, "bios": bios,
        "processors": processors, "memory": memory, "storage": storage,
    })
}

pub fn hardware_human(h: &HardwareInfo) -> String {
    let board = h.board.clone().unwrap_or_default();
    let bios = h.bios.clone().unwrap_or_default();
    let mut text = fields(&[
        ("Manufacturer", h.manufacturer.clone()),
        ("Model", h.model.clone()),
        ("Serial number", h.serial_number.clone()),
        ("Platform GUID", h.platform_guid.clone()),
        (
            "Board",
            join(&[&board.manufacturer, &board.model, &board.version]),
        ),
        ("Board serial", board.serial_number),
        ("BIOS", join(&[&bios.manufacturer, &bios.version])),
        ("BIOS date", bios.release_date),
    ]);
    let mut cpus = Table::new(&["CPU", "BRAND", "FAMILY", "MHZ", "MAX MHZ"]);
    for p in &h.processors {
        let family = p.family.to_string();
        let (now, max) = (p.current_clock_mhz.to_string(), p.max_clock_mhz.to_string());
        cpus.row(vec![p.device_id.clone(), p.brand.clone(), family, now, max]);
    }
    let mut memory = Table::new(&["BANK", "SIZE", "MHZ", "MANUFACTURER", "PART", "SERIAL"]);
    for m in &h.memory {
        memory.row(vec![
            m.bank_label.clone(),
            binary_size(m.capacity_bytes),
            m.speed_mhz.to_string(),
            m.manufacturer.clone(),
            m.part_number.clone(),
            m.serial_number.clone(),
        ]);
    }
    let mut disks = Table::new(&["DISK", "MODEL", "SERIAL", "SIZE"]);
    for s in &h.storage {
        let size = decimal_size_kb(s.max_media_size_kb);
        disks.row(vec![
            s.device_id.clone(),
            s.model.clone(),
            s.serial_number.clone(),
            size,
        ]);
    }
    for table in [cpus, memory, disks] {
        text.push('\n');
        text.push_str(&table.render());
    }
    text
}

fn join(parts: &[&String]) -> String {
    let parts: Vec<&str> = parts
        .iter()
        .map(|s| s.as_str())
        .filter(|s| !s.is_empty())
        .collect();
    parts.join(" ")
}

/// Memory sizes are powers of two: `16 GiB`, `512 MiB`, else plain bytes.
fn binary_size(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    match bytes {
        0 => String::new(),
        b if b % GIB == 0 => format!("{} GiB", b / GIB),
        b if b % MIB == 0 => format!("{} MiB", b / MIB),
        b => format!("{b} B"),
    }
}

/// Disk sizes in decimal gigabytes, as drives are sold (CIM reports MaxMediaSize in kB).
fn decimal_size_kb(kb: u64) -> String {
    if kb == 0 {
        return String::new();
    }
    format!("{}.{} GB", kb / 1_000_000, kb % 1_000_000 / 100_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names_the_provisioning_numbers() {
        let v = AmtVersion {
            amt: "16.1.25".into(),
            major: 16,
            provisioning_mode: 1,
            provisioning_state: 2,
            software_identity: [("Flash".to_string(), "16.1.25".to_string())].into(),
            ..AmtVersion::default()
        };
        assert_eq!(
            version_human(&v),
            "AMT:                 16.1.25\n\
             Major:               16\n\
             Build:               -\n\
             SKU:                 -\n\
             Provisioning mode:   ACM (1)\n\
             Provisioning state:  post (2)\n\
             \n\
             COMPONENT  VERSION\n\
             Flash      16.1.25\n"
        );
        assert_eq!(version_json(&v)["software_identity"]["Flash"], "16.1.25");
    }

    #[test]
    fn sizes() {
        assert_eq!(binary_size(16 << 30), "16 GiB");
        assert_eq!(binary_size(512 << 20), "512 MiB");
        assert_eq!(binary_size(1000), "1000 B");
        assert_eq!(binary_size(0), "");
        assert_eq!(decimal_size_kb(500_107_608), "500.1 GB");
        assert_eq!(decimal_size_kb(0), "");
    }
}
