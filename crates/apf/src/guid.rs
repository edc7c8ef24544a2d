//! Conversion between the 16 SMBIOS UUID bytes of PROTOCOL_VERSION and the canonical lowercase
//! GUID string that identifies a device everywhere else (openamt-mps.md §1.3).
//!
//! The wire order is the SMBIOS/Microsoft one: the first three fields are little-endian, so
//! they are byte-reversed relative to the text; the last two fields are in text order.

use std::fmt::Write as _;

/// Why a GUID string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuidParseError {
    #[error("a GUID has 36 characters, got {0}")]
    Length(usize),
    #[error("expected '-' at position {0}")]
    MissingDash(usize),
    #[error("invalid hex digit at position {0}")]
    InvalidHex(usize),
}

/// Maps text byte order to wire byte order and back: the permutation is its own inverse.
fn swap_fields(b: [u8; 16]) -> [u8; 16] {
    let [a0, a1, a2, a3, b0, b1, c0, c1, rest @ ..] = b;
    let [d0, d1, e0, e1, e2, e3, e4, e5] = rest;
    [
        a3, a2, a1, a0, b1, b0, c1, c0, d0, d1, e0, e1, e2, e3, e4, e5,
    ]
}

/// Formats the 16 wire bytes as the canonical lowercase GUID, e.g.
/// `44 45 4C 4C 4B 00 10 42 80 33 B6 C0 4F 50 46 33` → `4c4c4544-004b-4210-8033-b6c04f504633`.
pub fn guid_from_wire(uuid: &[u8; 16]) -> String {
    let text_order = swap_fields(*uuid);
    let mut out = String::with_capacity(36);
    for (i, byte) in text_order.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        // Writing to a String cannot fail.
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// Parses a GUID string (either case) into the 16 wire bytes PROTOCOL_VERSION carries.
pub fn guid_to_wire(guid: &str) -> Result<[u8; 16], GuidParseError> {
    let text = guid.as_bytes();
    if text.len() != 36 {
        return Err(GuidParseError::Length(text.len()));
    }
    let mut bytes = [0u8; 16];
    let mut nibbles = 0usize;
    for (pos, &c) in text.iter().enumerate() {
        if matches!(pos, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return Err(GuidParseError::MissingDash(pos));
            }
            continue;
        }
        let value = hex_value(c).ok_or(GuidParseError::InvalidHex(pos))?;
        // 32 hex digits fill exactly 16 bytes, so `get_mut` always succeeds.
        if let Some(slot) = bytes.get_mut(nibbles / 2) {
            *slot = (*slot << 4) | value;
        }
        nibbles += 1;
    }
    Ok(swap_fields(bytes))
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WIRE: [u8; 16] = [
        0x44, 0x45, 0x4C, 0x4C, 0x4B, 0x00, 0x10, 0x42, 0x80, 0x33, 0xB6, 0xC0, 0x4F, 0x50, 0x46,
        0x33,
    ];
    const TEXT: &str = "4c4c4544-004b-4210-8033-b6c04f504633";

    #[test]
    fn reference_example_both_ways() {
        assert_eq!(guid_from_wire(&WIRE), TEXT);
        assert_eq!(guid_to_wire(TEXT), Ok(WIRE));
        assert_eq!(guid_to_wire(&TEXT.to_uppercase()), Ok(WIRE));
    }

    #[test]
    fn round_trips_every_byte_position() {
        for i in 0..16u8 {
            let mut wire = [0u8; 16];
            for (j, b) in wire.iter_mut().enumerate() {
                *b = i.wrapping_mul(17).wrapping_add(j as u8).wrapping_mul(31);
            }
            let text = guid_from_wire(&wire);
            assert_eq!(text, text.to_lowercase());
            assert_eq!(guid_to_wire(&text), Ok(wire));
        }
    }

    #[test]
    fn parse_errors() {
        assert_eq!(guid_to_wire(""), Err(GuidParseError::Length(0)));
        assert_eq!(
            guid_to_wire("4c4c4544x004b-4210-8033-b6c04f504633"),
            Err(GuidParseError::MissingDash(8))
        );
        assert_eq!(
            guid_to_wire("4c4c4544-004b-4210-8033-b6c04f50463g"),
            Err(GuidParseError::InvalidHex(35))
        );
        assert_eq!(
            guid_to_wire("4c4c4544-004b-4210-8033-b6c04f50463-"),
            Err(GuidParseError::InvalidHex(35))
        );
        // Multi-byte UTF-8 of the right byte length is rejected, not mis-sliced.
        assert!(guid_to_wire("é4c4544-004b-4210-8033-b6c04f504633").is_err());
    }
}
