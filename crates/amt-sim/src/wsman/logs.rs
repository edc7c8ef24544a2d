//! The event log (AMT_MessageLog, wsman-amt.md §2.8: 21-byte records, little-endian time,
//! newest first) and the audit log (AMT_AuditLog, §2.9: big-endian variable-length records,
//! oldest first, 10 per ReadRecords), both bounded rings in the device model.

use base64::Engine as _;

use super::model::DeviceModel;
use super::render::{Answer, WsFault, AMT};
use super::xml::Request;
use super::{number, Class, Ctx};

/// AMT_MessageLog capacity (MPS asks for 390 records at once).
pub(crate) const EVENT_LOG_MAX: usize = 390;
/// AMT_AuditLog capacity kept by the simulator.
pub(crate) const AUDIT_LOG_MAX: usize = 256;
/// ReadRecords returns at most this many records per call.
const AUDIT_PAGE: usize = 10;
/// ReadRecords: StartIndex past the end.
const AUDIT_INVALID_INDEX: u32 = 35;

pub(crate) type EventRecord = [u8; 21];

/// BIOS progress steps of one boot: (entity, SystemFirmwareProgress code) — USB, pointing
/// device, keyboard, keyboard controller, disk, as seen on real boots (§2.8).
const BOOT_STEPS: [(u8, u8); 5] = [(34, 6), (7, 24), (7, 23), (7, 12), (4, 2)];
/// Entity 34 (BIOS), progress 5: user-initiated system setup (boot to BIOS setup).
const SETUP_STEP: (u8, u8) = (34, 5);

pub(crate) const CLASSES: &[Class] = &[
    Class {
        methods: &[
            ("PositionToFirstRecord", position_to_first_record),
            ("GetRecords", get_records),
        ],
        ..Class::new("AMT_MessageLog", AMT)
    },
    Class {
        methods: &[("ReadRecords", read_records)],
        ..Class::new("AMT_AuditLog", AMT)
    },
];

/// A firmware-progress record: sensor 15, event type 0x6F, offset 2, source 0x68, severity 1
/// (monitor), data[0] 0x40, data[1] = progress code.
fn progress_record(unix: i64, entity: u8, progress: u8) -> EventRecord {
    let ts = u32::try_from(unix.max(0)).unwrap_or(u32::MAX).to_le_bytes();
    let [t0, t1, t2, t3] = ts;
    [
        t0, t1, t2, t3, 0xFF, 0x0F, 0x6F, 0x02, 0x68, 0x01, 0xFF, entity, 0x00, 0x40, progress, 0,
        0, 0, 0, 0, 0,
    ]
}

/// Who caused an audit event (§2.9 InitiatorType).
pub(crate) enum Initiator<'a> {
    /// 0: an HTTP digest user.
    Digest(&'a str),
    /// 2: local (BIOS/MEBx/firmware).
    Local,
}

/// Encodes one audit record: AppId u16, EventId u16, initiator, TimeStamp u32,
/// MCLocationType u8 + NetAddress (u8 length + ASCII), ExtendedData (u8 length + bytes).
pub(crate) fn audit_record(
    key: u16,
    who: Initiator<'_>,
    unix: i64,
    addr: &str,
    ext: &[u8],
) -> Box<[u8]> {
    let mut r = Vec::with_capacity(16 + addr.len() + ext.len());
    r.extend_from_slice(&(key / 100).to_be_bytes());
    r.extend_from_slice(&(key % 100).to_be_bytes());
    match who {
        Initiator::Digest(user) => {
            r.push(0);
            push_short(&mut r, user.as_bytes());
        }
        Initiator::Local => r.push(2),
    }
    r.extend_from_slice(&u32::try_from(unix.max(0)).unwrap_or(u32::MAX).to_be_bytes());
    let location = match addr.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => 0,
        Ok(std::net::IpAddr::V6(_)) => 1,
        Err(_) => 2,
    };
    r.push(location);
    push_short(&mut r, if location == 2 { &[] } else { addr.as_bytes() });
    push_short(&mut r, ext);
    r.into_boxed_slice()
}

fn push_short(r: &mut Vec<u8>, bytes: &[u8]) {
    let n = bytes.len().min(255);
    r.push(u8::try_from(n).unwrap_or(u8::MAX));
    r.extend_from_slice(bytes.get(..n).unwrap_or_default());
}

/// Seeds a new device: four earlier boots in the event log, provisioning in the audit log.
pub(crate) fn seed(m: &mut DeviceModel, unix: i64) {
    for day in (1..=4).rev() {
        m.boot_records(unix - day * 86_400 + 7 * 3600, false);
    }
    let provisioned = unix - 30 * 86_400;
    m.push_audit(audit_record(1600, Initiator::Local, provisioned, "", &[]));
    m.push_audit(audit_record(
        1601,
        Initiator::Local,
        provisioned + 4,
        "",
        &[],
    ));
    m.push_audit(audit_record(
        1602,
        Initiator::Digest("admin"),
        provisioned + 9,
        "10.0.0.5",
        &[],
    ));
    let time_set = u32::try_from(provisioned.max(0) + 11)
        .unwrap_or(0)
        .to_be_bytes();
    m.push_audit(audit_record(
        2100,
        Initiator::Digest("admin"),
        provisioned + 11,
        "10.0.0.5",
        &time_set,
    ));
}

impl DeviceModel {
    pub(crate) fn push_event(&mut self, r: EventRecord) {
        if self.events.len() >= EVENT_LOG_MAX {
            self.events.pop_front();
        }
        self.events.push_back(r);
    }

    pub(crate) fn push_audit(&mut self, r: Box<[u8]>) {
        if self.audit.len() >= AUDIT_LOG_MAX {
            self.audit.pop_front();
        }
        self.audit.push_back(r);
    }

    /// BIOS progress records of one boot starting at `unix`.
    pub(crate) fn boot_records(&mut self, unix: i64, into_setup: bool) {
        let mut t = unix;
        for (entity, progress) in BOOT_STEPS {
            self.push_event(progress_record(t, entity, progress));
            t += 2;
        }
        if into_setup {
            self.push_event(progress_record(t, SETUP_STEP.0, SETUP_STEP.1));
        }
    }
}

impl Ctx<'_> {
    /// Audits an action of the remote digest user, from the channel's originator address.
    pub(crate) fn audit_remote(&mut self, key: u16, ext: &[u8]) {
        let r = audit_record(
            key,
            Initiator::Digest("admin"),
            self.now.unix,
            self.peer,
            ext,
        );
        self.model.push_audit(r);
    }
}

fn message_log() -> String {
    format!("{AMT}AMT_MessageLog")
}

/// PositionToFirstRecord: IterationIdentifier 1, or ReturnValue 2 when the log is empty.
fn position_to_first_record(ctx: &mut Ctx<'_>, _req: &Request) -> Result<Answer, WsFault> {
    let fields = if ctx.model.events.is_empty() {
        "<g:ReturnValue>2</g:ReturnValue>".to_string()
    } else {
        "<g:IterationIdentifier>1</g:IterationIdentifier><g:ReturnValue>0</g:ReturnValue>"
            .to_string()
    };
    Ok(Answer::output(
        &message_log(),
        "PositionToFirstRecord",
        &fields,
    ))
}

/// GetRecords(IterationIdentifier, MaxReadRecords): newest first from the 1-based position.
fn get_records(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let uri = message_log();
    let total = ctx.model.events.len();
    let start: usize = number(req, "IterationIdentifier").unwrap_or(1);
    let max: usize = number::<usize>(req, "MaxReadRecords")
        .unwrap_or(EVENT_LOG_MAX)
        .min(EVENT_LOG_MAX);
    if total == 0 {
        return Ok(Answer::return_value(&uri, "GetRecords", 3));
    }
    if start == 0 || start > total {
        return Ok(Answer::return_value(&uri, "GetRecords", 2));
    }
    let engine = base64::engine::general_purpose::STANDARD;
    let records: Vec<String> = ctx
        .model
        .events
        .iter()
        .rev()
        .skip(start - 1)
        .take(max)
        .map(|r| engine.encode(r))
        .collect();
    let next = start + records.len();
    let mut fields = format!(
        "<g:IterationIdentifier>{next}</g:IterationIdentifier><g:NoMoreRecords>{}</g:NoMoreRecords>",
        next > total
    );
    for r in &records {
        fields.push_str(&format!("<g:RecordArray>{r}</g:RecordArray>"));
    }
    fields.push_str("<g:ReturnValue>0</g:ReturnValue>");
    Ok(Answer::output(&uri, "GetRecords", &fields))
}

/// ReadRecords(StartIndex): up to 10 records oldest first from the 1-based index.
fn read_records(ctx: &mut Ctx<'_>, req: &Request) -> Result<Answer, WsFault> {
    let uri = format!("{AMT}AMT_AuditLog");
    let total = ctx.model.audit.len();
    let start: usize = number::<usize>(req, "StartIndex").unwrap_or(1).max(1);
    if start > total {
        return Ok(Answer::return_value(
            &uri,
            "ReadRecords",
            AUDIT_INVALID_INDEX,
        ));
    }
    let engine = base64::engine::general_purpose::STANDARD;
    let records: Vec<String> = ctx
        .model
        .audit
        .iter()
        .skip(start - 1)
        .take(AUDIT_PAGE)
        .map(|r| engine.encode(r))
        .collect();
    let mut fields = format!(
        "<g:TotalRecordCount>{total}</g:TotalRecordCount><g:RecordsReturned>{}</g:RecordsReturned>",
        records.len()
    );
    for r in &records {
        fields.push_str(&format!("<g:EventRecords>{r}</g:EventRecords>"));
    }
    fields.push_str("<g:ReturnValue>0</g:ReturnValue>");
    Ok(Answer::output(&uri, "ReadRecords", &fields))
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    fn decode(s: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.decode(s).unwrap()
    }

    #[test]
    fn audit_record_layout_matches_capture() {
        // §2.9's captured record: app 19 event 0, local initiator, MCLocation 2, 16 ext bytes.
        let ext = decode("ABMAAAI/9M1uAgAQAAwAAAAoBZkADAAAACQFlA==");
        let mine = audit_record(
            1900,
            Initiator::Local,
            0x3FF4_CD6E,
            "",
            ext.get(12..).unwrap(),
        );
        assert_eq!(&mine[..], &ext[..]);
        let r = audit_record(1700, Initiator::Digest("admin"), 1, "1.2.3.4", &[]);
        assert_eq!(&r[..6], &[0, 17, 0, 0, 0, 5]);
        assert_eq!(&r[6..11], b"admin");
        assert_eq!(&r[11..15], &[0, 0, 0, 1]);
        assert_eq!(r[15], 0, "IPv4");
        assert_eq!(&r[16..24], b"\x071.2.3.4");
        assert_eq!(r[24], 0, "no extended data");
    }

    #[test]
    fn event_log_paging_newest_first() {
        let mut sim = Sim::new();
        let uri = message_log();
        let p = sim.invoke(&uri, "PositionToFirstRecord", "");
        assert_eq!(p.text("IterationIdentifier"), Some("1"));
        assert_eq!(p.return_value(), Some(0));
        let total = sim.model.events.len();
        assert_eq!(total, 20, "seeded with four boots");
        let page = |sim: &mut Sim, start: usize, max: usize| {
            sim.invoke(
                &uri,
                "GetRecords",
                &format!("<h:IterationIdentifier>{start}</h:IterationIdentifier><h:MaxReadRecords>{max}</h:MaxReadRecords>"),
            )
        };
        let first = page(&mut sim, 1, 8);
        assert_eq!(first.return_value(), Some(0));
        assert_eq!(first.text("NoMoreRecords"), Some("false"));
        assert_eq!(first.text("IterationIdentifier"), Some("9"));
        let recs: Vec<Vec<u8>> = first.all("RecordArray").iter().map(|r| decode(r)).collect();
        assert_eq!(recs.len(), 8);
        assert!(recs.iter().all(|r| r.len() == 21));
        let ts = |r: &Vec<u8>| u32::from_le_bytes([r[0], r[1], r[2], r[3]]);
        assert!(
            recs.windows(2).all(|w| ts(&w[0]) >= ts(&w[1])),
            "newest first"
        );
        assert_eq!(recs[0][5], 0x0F, "firmware progress sensor");
        let last = page(&mut sim, 17, 8);
        assert_eq!(last.all("RecordArray").len(), 4);
        assert_eq!(last.text("NoMoreRecords"), Some("true"));
        assert_eq!(page(&mut sim, 21, 8).return_value(), Some(2));
        // Bounded ring.
        for i in 0..500 {
            sim.model.push_event(progress_record(i, 34, 1));
        }
        assert_eq!(sim.model.events.len(), EVENT_LOG_MAX);
        sim.model.events.clear();
        let p = sim.invoke(&uri, "PositionToFirstRecord", "");
        assert_eq!(p.return_value(), Some(2));
    }

    #[test]
    fn audit_paging_and_invalid_index() {
        let mut sim = Sim::new();
        let uri = format!("{AMT}AMT_AuditLog");
        assert_eq!(sim.audit_events(), [1600, 1601, 1602, 2100]);
        for _ in 0..9 {
            sim.model.push_audit(audit_record(
                1703,
                Initiator::Digest("admin"),
                5,
                "1.2.3.4",
                &[],
            ));
        }
        let read = |sim: &mut Sim, start: u32| {
            sim.invoke(
                &uri,
                "ReadRecords",
                &format!("<h:StartIndex>{start}</h:StartIndex>"),
            )
        };
        let r = read(&mut sim, 1);
        assert_eq!(r.return_value(), Some(0));
        assert_eq!(r.text("TotalRecordCount"), Some("13"));
        assert_eq!(r.text("RecordsReturned"), Some("10"));
        let first = decode(r.all("EventRecords")[0]);
        assert_eq!(&first[..4], &[0, 16, 0, 0], "1600 first: oldest first");
        let r = read(&mut sim, 11);
        assert_eq!(r.text("RecordsReturned"), Some("3"));
        assert_eq!(read(&mut sim, 14).return_value(), Some(35));
        for _ in 0..300 {
            sim.model
                .push_audit(audit_record(1700, Initiator::Local, 1, "", &[]));
        }
        assert_eq!(sim.model.audit.len(), AUDIT_LOG_MAX);
    }
}
