//! Output: aligned plain-text tables and field lists for people, pretty JSON for scripts.

use std::io::{self, Write};

use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
}

/// Where responses go (stdout; a buffer in tests) and in which format.
pub struct Output {
    pub format: Format,
    sink: Box<dyn Write + Send>,
}

impl Output {
    pub fn new(format: Format, sink: Box<dyn Write + Send>) -> Self {
        Self { format, sink }
    }

    /// Prints `value` as JSON or as text, each built by its own function.
    pub fn print<T>(
        &mut self,
        value: &T,
        json: impl FnOnce(&T) -> Value,
        human: impl FnOnce(&T) -> String,
    ) -> io::Result<()> {
        let text = match self.format {
            Format::Json => serde_json::to_string_pretty(&json(value)).map_err(io::Error::other)?,
            Format::Human => human(value),
        };
        write_line(&mut self.sink, &text)
    }
}

/// Writes `text` with exactly one final newline.
pub fn write_line(sink: &mut dyn Write, text: &str) -> io::Result<()> {
    sink.write_all(text.trim_end_matches('\n').as_bytes())?;
    sink.write_all(b"\n")?;
    sink.flush()
}

/// Columns separated by two spaces, each as wide as its widest cell, the first row as header.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.iter().map(|c| cell(c)).collect());
    }

    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|i| {
                let cells = self.rows.iter().filter_map(|r| r.get(i));
                cells.map(|c| c.chars().count()).max().unwrap_or(0)
            })
            .collect();
        let mut text = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, width) in row.iter().zip(&widths) {
                line.push_str(c);
                line.extend(std::iter::repeat_n(' ', width - c.chars().count() + 2));
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }
}

/// `Label:  value` lines with the values aligned.
pub fn fields(rows: &[(&str, String)]) -> String {
    let width = rows
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0)
        + 1;
    let mut text = String::new();
    for (label, value) in rows {
        let label = format!("{label}:");
        text.push_str(format!("{label:<width$}  {}", cell(value)).trim_end());
        text.push('\n');
    }
    text
}

/// A value as shown in a table: `-` when empty, and control characters (newlines, terminal
/// escapes, both possible in text a device sends) replaced so one record stays one line.
pub fn cell(value: &str) -> String {
    if value.is_empty() {
        return "-".into();
    }
    value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A timestamp in unix seconds as RFC 3339 UTC, `-` for 0 (unknown).
pub fn time(unix: i64) -> String {
    if unix == 0 {
        "-".into()
    } else {
        crate::time::rfc3339(unix)
    }
}

pub fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

/// Sorted `(key, value)` pairs of a protobuf map, for stable output.
pub fn sorted<V: Clone>(map: &std::collections::HashMap<String, V>) -> Vec<(String, V)> {
    let mut pairs: Vec<(String, V)> = map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_align_to_the_widest_cell() {
        let mut t = Table::new(&["GUID", "STATUS", "TAGS"]);
        t.row(vec!["a".into(), "connected".into(), "x,y".into()]);
        t.row(vec!["bbbbbb".into(), "".into(), "".into()]);
        t.row(vec!["ü".into(), "off".into(), "z".into()]);
        assert_eq!(
            t.render(),
            "GUID    STATUS     TAGS\n\
             a       connected  x,y\n\
             bbbbbb  -          -\n\
             ü       off        z\n"
        );
    }

    #[test]
    fn header_only_table_and_short_rows() {
        assert_eq!(Table::new(&["A", "B"]).render(), "A  B\n");
        let mut t = Table::new(&["NAME", "VALUE"]);
        t.row(vec!["long name".into()]);
        assert_eq!(t.render(), "NAME       VALUE\nlong name\n");
    }

    #[test]
    fn fields_align_values() {
        assert_eq!(
            fields(&[("GUID", "abc".into()), ("Hostname", "".into())]),
            "GUID:      abc\nHostname:  -\n"
        );
    }

    #[test]
    fn cells_stay_on_one_line() {
        assert_eq!(cell("a\nb\x1b[31mc"), "a b [31mc");
    }

    #[test]
    fn zero_time_is_unknown() {
        assert_eq!(time(0), "-");
        assert_eq!(time(1), "1970-01-01T00:00:01Z");
    }
}
