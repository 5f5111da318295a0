//! Report files: CSV (the `csv` crate; a final `TOTAL` row where a report has totals) or JSON
//! (`{"report", "as_of", "columns", "rows": [{column: value}], "totals", "notes"}`), written
//! into a buffer the caller drains as it goes.

use malaka_inventory::{ReportKind, ReportSummary};

use super::ReportError;

/// A report file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated values with a header row.
    Csv,
    /// One JSON document.
    Json,
}

impl Format {
    /// Every format.
    pub const ALL: [Self; 2] = [Self::Csv, Self::Json];

    /// `csv` or `json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Json => "json",
        }
    }

    /// `csv` or `json`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "csv" => Some(Self::Csv),
            "json" => Some(Self::Json),
            _ => None,
        }
    }

    /// Its media type.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Csv => "text/csv; charset=utf-8",
            Self::Json => "application/json",
        }
    }
}

/// Writes one report's file into a buffer.
pub struct Writer {
    format: Format,
    kind: ReportKind,
    csv: Option<csv::Writer<Vec<u8>>>,
    json: Vec<u8>,
    first: bool,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

fn io(e: impl std::fmt::Display) -> ReportError {
    ReportError::Write(e.to_string())
}

impl Writer {
    /// A writer of `kind` in `format`, its header written.
    ///
    /// # Errors
    /// Never in practice (writing to memory).
    pub fn new(format: Format, kind: ReportKind) -> Result<Self, ReportError> {
        let mut w = Self {
            format,
            kind,
            csv: None,
            json: Vec::with_capacity(64 * 1024),
            first: true,
        };
        match format {
            Format::Csv => {
                let mut c = csv::Writer::from_writer(Vec::with_capacity(64 * 1024));
                c.write_record(kind.columns()).map_err(io)?;
                w.csv = Some(c);
            }
            Format::Json => {
                let head = serde_json::json!(kind.as_str());
                let cols = serde_json::to_string(kind.columns()).map_err(io)?;
                w.json.extend_from_slice(
                    format!("{{\"report\":{head},\"columns\":{cols},\"rows\":[").as_bytes(),
                );
            }
        }
        Ok(w)
    }

    /// Appends rows.
    ///
    /// # Errors
    /// Never in practice (writing to memory).
    pub fn rows(&mut self, cells: &[&str]) -> Result<(), ReportError> {
        let cols = self.kind.columns();
        if let Some(c) = &mut self.csv {
            for r in cells.chunks(cols.len()) {
                c.write_record(r).map_err(io)?;
            }
            return Ok(());
        }
        for r in cells.chunks(cols.len()) {
            if !self.first {
                self.json.push(b',');
            }
            self.first = false;
            self.json.push(b'{');
            for (i, (k, v)) in cols.iter().zip(r).enumerate() {
                if i > 0 {
                    self.json.push(b',');
                }
                serde_json::to_writer(&mut self.json, k).map_err(io)?;
                self.json.push(b':');
                serde_json::to_writer(&mut self.json, v).map_err(io)?;
            }
            self.json.push(b'}');
        }
        Ok(())
    }

    /// Bytes waiting to be taken.
    pub fn buffered(&self) -> usize {
        match &self.csv {
            Some(c) => c.get_ref().len(),
            None => self.json.len(),
        }
    }

    /// Takes the bytes written so far.
    pub fn take(&mut self) -> Vec<u8> {
        match &mut self.csv {
            Some(c) => {
                let fresh = csv::Writer::from_writer(Vec::with_capacity(64 * 1024));
                std::mem::replace(c, fresh)
                    .into_inner()
                    .unwrap_or_else(|e| e.into_inner().get_ref().clone())
            }
            None => std::mem::take(&mut self.json),
        }
    }

    /// Writes the end: the totals row (CSV) or the totals, notes and time (JSON).
    ///
    /// # Errors
    /// Never in practice (writing to memory).
    pub fn finish(&mut self, summary: &ReportSummary) -> Result<(), ReportError> {
        if let Some(c) = &mut self.csv {
            let cols = self.kind.columns();
            let totals: Vec<(usize, &String)> = cols
                .iter()
                .enumerate()
                .filter_map(|(i, col)| {
                    let key = if *col == "value" { "total_value" } else { col };
                    summary.totals.get(key).map(|v| (i, v))
                })
                .collect();
            if !totals.is_empty() {
                let mut row = vec![String::new(); cols.len()];
                row[0] = "TOTAL".to_owned();
                for (i, v) in totals {
                    row[i].clone_from(v);
                }
                c.write_record(&row).map_err(io)?;
            }
            c.flush().map_err(io)?;
            return Ok(());
        }
        self.json.extend_from_slice(b"],\"totals\":");
        serde_json::to_writer(&mut self.json, &summary.totals).map_err(io)?;
        self.json.extend_from_slice(b",\"notes\":");
        serde_json::to_writer(&mut self.json, &summary.notes).map_err(io)?;
        self.json.extend_from_slice(b",\"as_of\":");
        serde_json::to_writer(&mut self.json, &summary.as_of).map_err(io)?;
        self.json.push(b'}');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> ReportSummary {
        let mut s = ReportSummary {
            rows: 2,
            ..ReportSummary::default()
        };
        s.totals.insert("total_value".into(), "30".into());
        s
    }

    fn rows() -> Vec<&'static str> {
        vec![
            "A",
            "Bolt, \"M8\"",
            "MAIN",
            "fifo",
            "1",
            "10",
            "10", // first row
            "B",
            "Bolt, \"M8\"",
            "MAIN",
            "fifo",
            "1",
            "20",
            "20",
        ]
    }

    #[test]
    fn csv_quotes_cells_and_ends_with_the_totals() {
        let mut w = Writer::new(Format::Csv, ReportKind::Valuation).unwrap();
        w.rows(&rows()).unwrap();
        w.finish(&summary()).unwrap();
        let text = String::from_utf8(w.take()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "sku,name,warehouse,method,qty,rate,value");
        assert_eq!(lines[1], "A,\"Bolt, \"\"M8\"\"\",MAIN,fifo,1,10,10");
        assert_eq!(lines[3], "TOTAL,,,,,,30");
    }

    #[test]
    fn json_is_one_document() {
        let mut w = Writer::new(Format::Json, ReportKind::Valuation).unwrap();
        w.rows(&rows()[..7]).unwrap();
        let mut out = w.take();
        w.rows(&rows()[7..]).unwrap();
        w.finish(&summary()).unwrap();
        out.extend(w.take());
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["report"], "valuation");
        assert_eq!(v["rows"][1]["sku"], "B");
        assert_eq!(v["rows"][0]["name"], "Bolt, \"M8\"");
        assert_eq!(v["totals"]["total_value"], "30");
    }
}
