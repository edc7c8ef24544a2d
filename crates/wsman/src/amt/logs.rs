//! Event log (AMT_MessageLog) and audit log (AMT_AuditLog) records (reference §2.8–§2.9).

use base64::Engine;

use super::*;
use crate::response::{boolean, number};
use crate::Request;

pub fn position_to_first_record() -> Request {
    Request::invoke(MESSAGE_LOG, "PositionToFirstRecord", &[])
}

pub fn get_records(iteration: u32, max: u32) -> Request {
    Request::invoke(
        MESSAGE_LOG,
        "GetRecords",
        &[
            ("IterationIdentifier", iteration.to_string()),
            ("MaxReadRecords", max.to_string()),
        ],
    )
}

pub fn read_audit_records(start_index: u32) -> Request {
    Request::invoke(
        AUDIT_LOG,
        "ReadRecords",
        &[("StartIndex", start_index.to_string())],
    )
}

fn b64(s: &str, field: &str) -> Result<Vec<u8>, ResponseError> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|_| ResponseError::Invalid {
            field: field.to_string(),
            value: s.chars().take(48).collect(),
        })
}

/// One 21-byte event-log record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRecord {
    pub time: u32,
    pub device_address: u8,
    pub sensor_type: u8,
    pub event_type: u8,
    pub event_offset: u8,
    pub event_source_type: u8,
    pub severity: u8,
    pub sensor_number: u8,
    pub entity: u8,
    pub entity_instance: u8,
    pub data: [u8; 8],
}

pub const EVENT_RECORD_LEN: usize = 21;

impl EventRecord {
    pub fn decode(b: &[u8]) -> Option<EventRecord> {
        if b.len() != EVENT_RECORD_LEN {
            return None;
        }
        let mut data = [0u8; 8];
        data.copy_from_slice(b.get(13..21)?);
        Some(EventRecord {
            // Little-endian, unlike everything else AMT sends.
            time: u32::from_le_bytes(b.get(0..4)?.try_into().ok()?),
            device_address: b[4],
            sensor_type: b[5],
            event_type: b[6],
            event_offset: b[7],
            event_source_type: b[8],
            severity: b[9],
            sensor_number: b[10],
            entity: b[11],
            entity_instance: b[12],
            data,
        })
    }

    pub fn encode(&self) -> [u8; EVENT_RECORD_LEN] {
        let mut b = [0u8; EVENT_RECORD_LEN];
        b[0..4].copy_from_slice(&self.time.to_le_bytes());
        b[4..13].copy_from_slice(&[
            self.device_address,
            self.sensor_type,
            self.event_type,
            self.event_offset,
            self.event_source_type,
            self.severity,
            self.sensor_number,
            self.entity,
            self.entity_instance,
        ]);
        b[13..21].copy_from_slice(&self.data);
        b
    }

    pub fn severity_text(&self) -> &'static str {
        match self.severity {
            0 => "unspecified",
            1 => "monitor",
            2 => "information",
            4 => "ok",
            8 => "non-critical",
            16 => "critical",
            32 => "non-recoverable",
            _ => "unknown",
        }
    }

    pub fn entity_text(&self) -> &'static str {
        match self.entity {
            3 => "Processor",
            4 => "Disk",
            7 => "System board",
            19 => "Chassis",
            32 => "Memory",
            34 => "BIOS",
            35 | 38 => "Intel(r) ME",
            _ => "Unknown",
        }
    }

    /// What MPS shows for the record.
    pub fn description(&self) -> String {
        match self.sensor_type {
            6 => format!(
                "Authentication failed {} times",
                u16::from(self.data[1]) + 256 * u16::from(self.data[2])
            ),
            15 if self.data[0] == 0xEB => "Invalid firmware progress record".into(),
            15 if self.event_offset == 0 => format!("System firmware error {}", self.data[1]),
            15 => match self.data[1] {
                1 => "Memory initialization".into(),
                2 => "Hard-disk initialization".into(),
                6 => "USB resource configuration".into(),
                // IPMI's System Firmware Progress offsets: 0x09 is video, 0x0C the keyboard
                // controller.
                9 => "Video initialization".into(),
                12 => "Keyboard controller initialization".into(),
                19 => "Starting operating system boot process".into(),
                23 => "Keyboard test".into(),
                24 => "Pointing device test".into(),
                n => format!("System firmware progress {n}"),
            },
            18 => "Watchdog event".into(),
            30 => "No bootable media".into(),
            32 => "Operating system lockup or power interrupt".into(),
            35 => "System boot failure".into(),
            37 => "Firmware started".into(),
            n => format!("Sensor {n} event"),
        }
    }
}

/// A GetRecords page: records (newest first), and whether the log is exhausted.
pub struct EventPage {
    pub records: Vec<EventRecord>,
    pub next_iteration: u32,
    pub no_more_records: bool,
}

pub fn event_page(r: &Response) -> Result<(EventPage, u32), ResponseError> {
    let (out, rv) = r.method_output("GetRecords")?;
    let mut records = Vec::new();
    for s in out.texts_of("RecordArray") {
        let bytes = b64(s, "RecordArray")?;
        records.push(
            EventRecord::decode(&bytes).ok_or_else(|| ResponseError::Invalid {
                field: "RecordArray".into(),
                value: format!("{} bytes", bytes.len()),
            })?,
        );
    }
    Ok((
        EventPage {
            records,
            next_iteration: crate::response::opt_number(out, "IterationIdentifier")?.unwrap_or(0),
            no_more_records: boolean(out, "NoMoreRecords"),
        },
        rv,
    ))
}

/// One audit-log record (big-endian fields, variable length).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    pub app_id: u16,
    pub event_id: u16,
    pub initiator_type: u8,
    pub initiator: String,
    pub time: u32,
    pub net_address: String,
    pub extended_data: Vec<u8>,
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn short_bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
}

impl AuditRecord {
    pub fn decode(b: &[u8]) -> Option<AuditRecord> {
        let mut c = Cursor(b);
        let app_id = c.u16()?;
        let event_id = c.u16()?;
        let initiator_type = c.u8()?;
        let initiator = match initiator_type {
            0 => String::from_utf8_lossy(c.short_bytes()?).into_owned(),
            1 => {
                c.take(4)?;
                String::from_utf8_lossy(c.short_bytes()?).into_owned()
            }
            _ => String::new(),
        };
        let time = c.u32()?;
        let _location = c.u8()?;
        let net_address = String::from_utf8_lossy(c.short_bytes()?).into_owned();
        let extended_data = c.short_bytes()?.to_vec();
        Some(AuditRecord {
            app_id,
            event_id,
            initiator_type,
            initiator,
            time,
            net_address,
            extended_data,
        })
    }

    pub fn initiator_type_text(&self) -> &'static str {
        match self.initiator_type {
            0 => "http-digest",
            1 => "kerberos",
            2 => "local",
            3 => "kvm-default-port",
            _ => "unknown",
        }
    }

    pub fn app_name(&self) -> &'static str {
        match self.app_id {
            16 => "Security Admin",
            17 => "Remote Control",
            18 => "Redirection Manager",
            19 => "Firmware Update Manager",
            20 => "Security Audit Log",
            21 => "Network Time",
            22 => "Network Administration",
            23 => "Storage Administration",
            24 => "Event Manager",
            25 => "Circuit Breaker Manager",
            26 => "Agent Presence Manager",
            27 => "Wireless Configuration",
            28 => "EAC",
            29 => "KVM",
            30 => "User Opt-In",
            32 => "Screen Blanking",
            33 => "Watchdog",
            _ => "Unknown",
        }
    }

    pub fn event_name(&self) -> &'static str {
        match u32::from(self.app_id) * 100 + u32::from(self.event_id) {
            1600 => "Provisioning Started",
            1601 => "Provisioning Completed",
            1602 => "ACL Entry Added",
            1603 => "ACL Entry Modified",
            1604 => "ACL Entry Removed",
            1607 => "TLS State Changed",
            1619 => "Unprovisioning Started",
            1700 => "Performed Power Up",
            1701 => "Performed Power Down",
            1702 => "Performed Power Cycle",
            1703 => "Performed Reset",
            1704 => "Set Boot Options",
            1800..=1811 => "Redirection Session Event",
            1900 => "Firmware Updated",
            2100 => "Intel(R) ME Time Set",
            3000 => "Opt-In Policy Change",
            3001 => "Send Consent Code Event",
            3002 => "Start Opt-In Blocked",
            _ => "Unknown",
        }
    }
}

/// A ReadRecords answer: total count and the records (oldest first).
pub fn audit_page(r: &Response) -> Result<(u32, Vec<AuditRecord>, u32), ResponseError> {
    let (out, rv) = r.method_output("ReadRecords")?;
    let total = crate::response::opt_number(out, "TotalRecordCount")?.unwrap_or(0);
    let mut records = Vec::new();
    for s in out.texts_of("EventRecords") {
        let bytes = b64(s, "EventRecords")?;
        records.push(
            AuditRecord::decode(&bytes).ok_or_else(|| ResponseError::Invalid {
                field: "EventRecords".into(),
                value: format!("{} bytes", bytes.len()),
            })?,
        );
    }
    let _ = number::<u32>;
    Ok((total, records, rv))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_audit_record_decodes() {
        // Reference §2.9: firmware update 12.0.40.1433 → 12.0.36.1428, local initiator.
        let b = base64::engine::general_purpose::STANDARD
            .decode("ABMAAAI/9M1uAgAQAAwAAAAoBZkADAAAACQFlA==")
            .unwrap();
        let r = AuditRecord::decode(&b).unwrap();
        assert_eq!((r.app_id, r.event_id, r.initiator_type), (19, 0, 2));
        assert_eq!(r.event_name(), "Firmware Updated");
        assert_eq!(r.extended_data.len(), 16);
        assert!(AuditRecord::decode(&b[..b.len() - 1]).is_none());
    }

    #[test]
    fn event_record_round_trips() {
        let raw = [
            0x10, 0, 0, 0, 0xFF, 0x0F, 0x6F, 0x02, 0x68, 0x01, 0xFF, 34, 0, 0x40, 6, 0, 0, 0, 0, 0,
            0,
        ];
        let r = EventRecord::decode(&raw).unwrap();
        assert_eq!(r.time, 16);
        assert_eq!(r.entity_text(), "BIOS");
        assert_eq!(r.description(), "USB resource configuration");
        assert_eq!(r.encode(), raw);
        assert!(EventRecord::decode(&raw[..20]).is_none());
    }

    #[test]
    fn firmware_progress_offsets_follow_ipmi() {
        let mut raw = [
            0x10, 0, 0, 0, 0xFF, 0x0F, 0x6F, 0x02, 0x68, 0x01, 0xFF, 34, 0, 0x40, 0x0C, 0, 0, 0, 0,
            0, 0,
        ];
        let r = EventRecord::decode(&raw).unwrap();
        assert_eq!(r.description(), "Keyboard controller initialization");
        raw[14] = 0x09;
        let r = EventRecord::decode(&raw).unwrap();
        assert_eq!(r.description(), "Video initialization");
    }
}
