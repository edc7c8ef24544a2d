//! Hardware inventory (wsman-amt.md §2.6) rendered from one shared, immutable profile — a Dell
//! OptiPlex 7090 (§3.4) — with serial numbers derived from the device index and PlatformGUID
//! from the device's wire UUID, so nothing per device is stored for it.

use super::render::{Item, Px, CIM, W};
use super::{Class, Ctx};

/// The hardware every simulated device has.
pub(crate) struct Profile {
    pub manufacturer: &'static str,
    pub model: &'static str,
    pub chassis_version: &'static str,
    pub chassis_package_type: u32,
    pub board_model: &'static str,
    pub board_version: &'static str,
    pub bios_vendor: &'static str,
    pub bios_version: &'static str,
    pub bios_date: &'static str,
    pub cpu_brand: &'static str,
    pub cpu_family: u32,
    pub cpu_current_mhz: u32,
    pub cpu_max_mhz: u32,
    pub cpu_stepping: u32,
    pub dimm_count: u32,
    pub dimm_bytes: u64,
    pub dimm_mhz: u32,
    pub dimm_vendor: &'static str,
    pub dimm_part: &'static str,
    pub disk_kb: u64,
    pub disk_model: &'static str,
}

pub(crate) static OPTIPLEX_7090: Profile = Profile {
    manufacturer: "Dell Inc.",
    model: "OptiPlex 7090",
    chassis_version: "",
    chassis_package_type: 3,
    board_model: "0MVDNX",
    board_version: "A00",
    bios_vendor: "Dell Inc.",
    bios_version: "1.1.38",
    bios_date: "2021-07-23T00:00:00Z",
    cpu_brand: "11th Gen Intel(R) Core(TM) i7-11700 @ 2.50GHz",
    cpu_family: 198,
    cpu_current_mhz: 2700,
    cpu_max_mhz: 4500,
    cpu_stepping: 1,
    dimm_count: 2,
    dimm_bytes: 17_179_869_184,
    dimm_mhz: 3200,
    dimm_vendor: "80AD",
    // SMBIOS part numbers are space-padded; clients must not trim-compare blindly.
    dimm_part: "HMA82GU6DJR8N-XN    ",
    disk_kb: 500_107_862,
    disk_model: "PC SN730 NVMe WDC 512GB                 ",
};

/// A Dell-style 7-character service tag, unique per index (an affine map modulo 36^7 with a
/// multiplier coprime to 36 is a bijection).
pub(crate) fn service_tag(index: u64) -> String {
    const DIGITS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut x = index.wrapping_mul(1_000_003).wrapping_add(0x2F_5A3B) % 36u64.pow(7);
    let mut tag = [b'0'; 7];
    for slot in tag.iter_mut().rev() {
        let d = usize::try_from(x % 36).unwrap_or(0);
        *slot = DIGITS.get(d).copied().unwrap_or(b'0');
        x /= 36;
    }
    String::from_utf8_lossy(&tag).into_owned()
}

pub(crate) const CLASSES: &[Class] = &[
    Class {
        instances: Some(computer_system_package),
        get: true,
        enumerate: true,
        ..Class::new("CIM_ComputerSystemPackage", CIM)
    },
    Class {
        instances: Some(computer_system_package),
        enumerate: true,
        ..Class::new("CIM_SystemPackaging", CIM)
    },
    Class {
        instances: Some(chassis),
        get: true,
        enumerate: true,
        ..Class::new("CIM_Chassis", CIM)
    },
    Class {
        instances: Some(card),
        get: true,
        enumerate: true,
        ..Class::new("CIM_Card", CIM)
    },
    Class {
        instances: Some(bios),
        get: true,
        enumerate: true,
        ..Class::new("CIM_BIOSElement", CIM)
    },
    Class {
        instances: Some(processor),
        get: true,
        enumerate: true,
        ..Class::new("CIM_Processor", CIM)
    },
    Class {
        instances: Some(memory),
        get: true,
        enumerate: true,
        ..Class::new("CIM_PhysicalMemory", CIM)
    },
    Class {
        instances: Some(media),
        get: true,
        enumerate: true,
        ..Class::new("CIM_MediaAccessDevice", CIM)
    },
    Class {
        instances: Some(physical_package),
        get: true,
        enumerate: true,
        ..Class::new("CIM_PhysicalPackage", CIM)
    },
    Class {
        instances: Some(chip),
        get: true,
        enumerate: true,
        ..Class::new("CIM_Chip", CIM)
    },
];

fn computer_system_package(ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    let class = "CIM_ComputerSystemPackage";
    let guid: String = ctx
        .id
        .uuid_wire
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    let mut w = W::new(px, class);
    w.epr(
        "Antecedent",
        &format!("{CIM}CIM_Chassis"),
        &[("CreationClassName", "CIM_Chassis"), ("Tag", "CIM_Chassis")],
    )
    .epr(
        "Dependent",
        &format!("{CIM}CIM_ComputerSystem"),
        &[
            ("CreationClassName", "CIM_ComputerSystem"),
            ("Name", "ManagedSystem"),
        ],
    )
    .s("PlatformGUID", &guid);
    vec![w.finish(class, CIM)]
}

fn chassis_item(ctx: &Ctx<'_>, px: Px) -> Item {
    let p = &OPTIPLEX_7090;
    let mut w = W::new(px, "CIM_Chassis");
    w.v("ChassisPackageType", p.chassis_package_type)
        .s("CreationClassName", "CIM_Chassis")
        .s("ElementName", "Managed System Chassis")
        .s("Manufacturer", p.manufacturer)
        .s("Model", p.model)
        .v("OperationalStatus", 0)
        .v("PackageType", 3)
        .s("SerialNumber", &service_tag(ctx.id.index))
        .s("Tag", "CIM_Chassis")
        .s("Version", p.chassis_version);
    w.finish("CIM_Chassis", CIM)
}

fn chassis(ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    vec![chassis_item(ctx, px)]
}

fn card_item(ctx: &Ctx<'_>, px: Px) -> Item {
    let p = &OPTIPLEX_7090;
    let board_serial = format!(
        "/{}/CNPEC{:09X}/",
        service_tag(ctx.id.index),
        ctx.id.index.wrapping_mul(7919).wrapping_add(0x0175_00BC) & 0xF_FFFF_FFFF
    );
    let mut w = W::new(px, "CIM_Card");
    w.v("CanBeFRUed", true)
        .s("CreationClassName", "CIM_Card")
        .s("ElementName", "Managed System Base Board")
        .s("Manufacturer", p.manufacturer)
        .s("Model", p.board_model)
        .v("OperationalStatus", 0)
        .v("PackageType", 9)
        .s("SerialNumber", &board_serial)
        .s("Tag", "CIM_Card")
        .s("Version", p.board_version);
    w.finish("CIM_Card", CIM)
}

fn card(ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    vec![card_item(ctx, px)]
}

fn bios(_ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    let p = &OPTIPLEX_7090;
    let mut w = W::new(px, "CIM_BIOSElement");
    w.s("ElementName", "Primary BIOS")
        .s("Manufacturer", p.bios_vendor)
        .s("Name", "Primary BIOS")
        .v("OperationalStatus", 0)
        .v("PrimaryBIOS", true)
        .datetime("ReleaseDate", p.bios_date)
        .s("SoftwareElementID", p.bios_version)
        .v("SoftwareElementState", 2)
        .v("TargetOperatingSystem", 66)
        .s("Version", p.bios_version);
    vec![w.finish("CIM_BIOSElement", CIM)]
}

fn processor(_ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    let p = &OPTIPLEX_7090;
    let mut w = W::new(px, "CIM_Processor");
    w.v("CPUStatus", 1)
        .s("CreationClassName", "CIM_Processor")
        .v("CurrentClockSpeed", p.cpu_current_mhz)
        .s("DeviceID", "CPU 0")
        .s("ElementName", "Managed System CPU")
        .v("EnabledState", 2)
        .v("ExternalBusClockSpeed", 100)
        .v("Family", p.cpu_family)
        .v("HealthState", 0)
        .v("MaxClockSpeed", p.cpu_max_mhz)
        .v("OperationalStatus", 0)
        .s("OtherFamilyDescription", "")
        .v("RequestedState", 12)
        .s("Role", "Central")
        .v("Stepping", p.cpu_stepping)
        .s("SystemCreationClassName", "CIM_ComputerSystem")
        .s("SystemName", "ManagedSystem")
        .v("UpgradeMethod", 1);
    vec![w.finish("CIM_Processor", CIM)]
}

fn memory(ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    let p = &OPTIPLEX_7090;
    (0..p.dimm_count)
        .map(|slot| {
            let serial = (ctx.id.index.wrapping_mul(2) + u64::from(slot)).wrapping_mul(0x9E37_79B1)
                & 0xFFFF_FFFF;
            let tag = if slot == 0 {
                "9876543210".to_string()
            } else {
                format!("9876543210 (#{slot})")
            };
            let mut w = W::new(px, "CIM_PhysicalMemory");
            w.s("BankLabel", &format!("BANK {slot}"))
                .v("Capacity", p.dimm_bytes)
                .v("ConfiguredMemoryClockSpeed", p.dimm_mhz)
                .s("CreationClassName", "CIM_PhysicalMemory")
                .s("ElementName", "Managed System Memory Chip")
                .v("FormFactor", 8)
                .v("IsSpeedInMhz", true)
                .s("Manufacturer", p.dimm_vendor)
                .v("MaxMemorySpeed", p.dimm_mhz)
                .v("MemoryType", 26)
                .s("PartNumber", p.dimm_part)
                .s("SerialNumber", &format!("{serial:08X}"))
                .v("Speed", 0)
                .s("Tag", &tag);
            w.finish("CIM_PhysicalMemory", CIM)
        })
        .collect()
}

fn media(_ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    let p = &OPTIPLEX_7090;
    let mut w = W::new(px, "CIM_MediaAccessDevice");
    w.v("Capabilities", 4)
        .v("Capabilities", 10)
        .v("Capabilities", 7)
        .s("CreationClassName", "CIM_MediaAccessDevice")
        .s("DeviceID", "MEDIA DEV 0")
        .s("ElementName", "Managed System Media Access Device")
        .v("EnabledDefault", 2)
        .v("EnabledState", 0)
        .v("MaxMediaSize", p.disk_kb)
        .v("OperationalStatus", 0)
        .v("RequestedState", 12)
        .v("Security", 2)
        .s("SystemCreationClassName", "CIM_ComputerSystem")
        .s("SystemName", "ManagedSystem");
    vec![w.finish("CIM_MediaAccessDevice", CIM)]
}

fn storage_package(ctx: &Ctx<'_>, px: Px) -> Item {
    let p = &OPTIPLEX_7090;
    let serial = format!(
        "21{:010}",
        ctx.id.index.wrapping_mul(7_777) % 10_000_000_000
    );
    let mut w = W::new(px, "CIM_PhysicalPackage");
    w.v("CanBeFRUed", true)
        .s("CreationClassName", "CIM_PhysicalPackage")
        .s("ElementName", "Managed System Storage Media Package")
        .s("Model", p.disk_model)
        .v("OperationalStatus", 0)
        .v("PackageType", 15)
        .s("SerialNumber", &serial)
        .s("Tag", "Storage Media Package 0");
    w.finish("CIM_PhysicalPackage", CIM)
}

/// Polymorphic: the board first (MPS reads `Items.CIM_Card` from the first page), then storage
/// media packages, then the chassis (§1.5).
fn physical_package(ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    vec![
        card_item(ctx, px),
        storage_package(ctx, px),
        chassis_item(ctx, px),
    ]
}

/// Polymorphic: the CPU chip first (MPS reads `Items.CIM_Chip`), then the DIMMs (§1.5).
fn chip(ctx: &Ctx<'_>, px: Px) -> Vec<Item> {
    let mut w = W::new(px, "CIM_Chip");
    w.v("CanBeFRUed", true)
        .s("CreationClassName", "CIM_Chip")
        .s("ElementName", "Managed System Processor Chip")
        .s("Manufacturer", "Intel(R) Corporation")
        .v("OperationalStatus", 0)
        .s("Tag", "CPU 0")
        .s("Version", OPTIPLEX_7090.cpu_brand);
    let mut items = vec![w.finish("CIM_Chip", CIM)];
    items.extend(memory(ctx, px));
    items
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    #[test]
    fn service_tags_are_distinct_and_dell_shaped() {
        let tags: std::collections::HashSet<_> = (0..100_000).map(service_tag).collect();
        assert_eq!(tags.len(), 100_000);
        assert!(tags
            .iter()
            .all(|t| t.len() == 7 && t.chars().all(|c| c.is_ascii_alphanumeric())));
    }

    #[test]
    fn gets_render_the_profile() {
        let mut sim = Sim::new();
        let r = sim.get(&format!("{CIM}CIM_ComputerSystemPackage"));
        let expected: String = sim
            .id
            .uuid_wire
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        assert_eq!(r.text("PlatformGUID"), Some(expected.as_str()));
        let r = sim.get(&format!("{CIM}CIM_Chassis"));
        assert_eq!(r.text("Model"), Some("OptiPlex 7090"));
        assert_eq!(
            r.text("SerialNumber"),
            Some(service_tag(sim.id.index).as_str())
        );
        let r = sim.get(&format!("{CIM}CIM_BIOSElement"));
        assert_eq!(
            r.doc
                .root()
                .find("ReleaseDate")
                .and_then(|d| d.find_text("Datetime")),
            Some("2021-07-23T00:00:00Z")
        );
        assert!(r
            .xml
            .contains(r#"xmlns:h="http://schemas.dmtf.org/wbem/wscim/1/common""#));
        // Selector-less Get on multi-instance classes answers the first instance (Console).
        assert_eq!(
            sim.get(&format!("{CIM}CIM_Chip")).text("Tag"),
            Some("CPU 0")
        );
        assert_eq!(
            sim.get(&format!("{CIM}CIM_Processor")).text("Family"),
            Some("198")
        );
        assert_eq!(
            sim.get(&format!("{CIM}CIM_Card")).text("Model"),
            Some("0MVDNX")
        );
    }

    #[test]
    fn polymorphic_pulls_start_with_the_first_concrete_class() {
        let mut sim = Sim::new();
        let uri = format!("{CIM}CIM_PhysicalPackage");
        let first = sim.enumerate_pull(&uri, Some(999));
        assert_eq!(first.item_names(), ["CIM_Card"]);
        assert!(first
            .xml
            .contains(r#"xmlns:h="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_Card""#));
        let ctx = first.text("EnumerationContext").unwrap().to_string();
        let second = sim.pull(&uri, &ctx, Some(999));
        assert_eq!(second.item_names(), ["CIM_PhysicalPackage"]);
        let third = sim.pull(&uri, &ctx, Some(999));
        assert_eq!(third.item_names(), ["CIM_Chassis"]);
        assert!(third.doc.root().find("EndOfSequence").is_some());

        let chips = sim.enumerate_pull(&format!("{CIM}CIM_Chip"), Some(999));
        assert_eq!(chips.item_names(), ["CIM_Chip"]);
        let ctx = chips.text("EnumerationContext").unwrap().to_string();
        let dimms = sim.pull(&format!("{CIM}CIM_Chip"), &ctx, Some(999));
        assert_eq!(
            dimms.item_names(),
            ["CIM_PhysicalMemory", "CIM_PhysicalMemory"]
        );

        let mem = sim.enumerate_pull(&format!("{CIM}CIM_PhysicalMemory"), Some(999));
        assert_eq!(mem.all("BankLabel"), ["BANK 0", "BANK 1"]);
        assert!(mem.doc.root().find("EndOfSequence").is_some());
        let pkg = sim.enumerate_pull(&format!("{CIM}CIM_SystemPackaging"), Some(999));
        assert_eq!(pkg.item_names(), ["CIM_ComputerSystemPackage"]);
        let media = sim.enumerate_pull(&format!("{CIM}CIM_MediaAccessDevice"), Some(999));
        assert_eq!(media.all("Capabilities"), ["4", "10", "7"]);
    }
}
