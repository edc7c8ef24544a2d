//! Hardware inventory from the CIM physical classes (reference §2.6).

use super::*;
use crate::response::{opt_number, string};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chassis {
    pub manufacturer: String,
    pub model: String,
    pub serial_number: String,
}

pub fn chassis(r: &Response) -> Result<Chassis, ResponseError> {
    let e = instance(r, CHASSIS)?;
    Ok(Chassis {
        manufacturer: string(e, "Manufacturer"),
        model: string(e, "Model"),
        serial_number: string(e, "SerialNumber"),
    })
}

pub fn platform_guid(r: &Response) -> Result<String, ResponseError> {
    Ok(string(
        instance(r, COMPUTER_SYSTEM_PACKAGE)?,
        "PlatformGUID",
    ))
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Board {
    pub manufacturer: String,
    pub model: String,
    pub serial_number: String,
    pub version: String,
}

pub fn board(r: &Response) -> Result<Board, ResponseError> {
    let e = instance(r, CARD)?;
    Ok(Board {
        manufacturer: string(e, "Manufacturer"),
        model: string(e, "Model"),
        serial_number: string(e, "SerialNumber"),
        version: string(e, "Version"),
    })
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bios {
    pub manufacturer: String,
    pub version: String,
    pub release_date: String,
}

pub fn bios(r: &Response) -> Result<Bios, ResponseError> {
    let e = instance(r, BIOS_ELEMENT)?;
    Ok(Bios {
        manufacturer: string(e, "Manufacturer"),
        version: string(e, "Version"),
        release_date: e
            .path(&["ReleaseDate", "Datetime"])
            .map(|d| d.text.trim().to_string())
            .unwrap_or_default(),
    })
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Processor {
    pub device_id: String,
    pub family: u32,
    pub current_clock_mhz: u32,
    pub max_clock_mhz: u32,
    /// Brand string, from the matching CIM_Chip's Version.
    pub brand: String,
}

pub fn processors(items: &[&Element]) -> Result<Vec<Processor>, ResponseError> {
    items
        .iter()
        .filter(|i| i.name == "CIM_Processor")
        .map(|e| {
            Ok(Processor {
                device_id: string(e, "DeviceID"),
                family: opt_number(e, "Family")?.unwrap_or(0),
                current_clock_mhz: opt_number(e, "CurrentClockSpeed")?.unwrap_or(0),
                max_clock_mhz: opt_number(e, "MaxClockSpeed")?.unwrap_or(0),
                brand: String::new(),
            })
        })
        .collect()
}

/// Brand strings of the CPU chips (CIM_Chip items), in order.
pub fn chip_brands(items: &[&Element]) -> Vec<String> {
    items
        .iter()
        .filter(|i| i.name == "CIM_Chip")
        .map(|e| string(e, "Version"))
        .collect()
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    pub bank_label: String,
    pub capacity_bytes: u64,
    pub speed_mhz: u32,
    pub manufacturer: String,
    pub part_number: String,
    pub serial_number: String,
}

pub fn memory(items: &[&Element]) -> Result<Vec<Memory>, ResponseError> {
    items
        .iter()
        .filter(|i| i.name == "CIM_PhysicalMemory")
        .map(|e| {
            Ok(Memory {
                bank_label: string(e, "BankLabel"),
                capacity_bytes: opt_number(e, "Capacity")?.unwrap_or(0),
                speed_mhz: opt_number(e, "ConfiguredMemoryClockSpeed")?
                    .or(opt_number(e, "Speed")?)
                    .unwrap_or(0),
                manufacturer: string(e, "Manufacturer"),
                part_number: string(e, "PartNumber").trim().to_string(),
                serial_number: string(e, "SerialNumber"),
            })
        })
        .collect()
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Storage {
    pub device_id: String,
    pub model: String,
    pub serial_number: String,
    pub max_media_size_kb: u64,
}

/// Disks: CIM_MediaAccessDevice items, matched by position with the storage-media
/// CIM_PhysicalPackage items (the only link AMT offers).
pub fn storage(media: &[&Element], packages: &[&Element]) -> Result<Vec<Storage>, ResponseError> {
    let pkgs: Vec<&&Element> = packages
        .iter()
        .filter(|p| p.name == "CIM_PhysicalPackage")
        .collect();
    media
        .iter()
        .filter(|i| i.name == "CIM_MediaAccessDevice")
        .enumerate()
        .map(|(n, e)| {
            let pkg = pkgs.get(n);
            Ok(Storage {
                device_id: string(e, "DeviceID"),
                model: pkg
                    .map(|p| string(p, "Model").trim().to_string())
                    .unwrap_or_default(),
                serial_number: pkg
                    .map(|p| string(p, "SerialNumber").trim().to_string())
                    .unwrap_or_default(),
                max_media_size_kb: opt_number(e, "MaxMediaSize")?.unwrap_or(0),
            })
        })
        .collect()
}
