//! The PII audit trail: one log line per detection (entity, action, direction, JSON path,
//! offsets, caller, status; never the value), written by the telemetry thread.
//!
//! Why not `tracing::info!`: callgrind measured about 20,000 instructions per event through
//! tracing-subscriber's JSON formatter (serde visitors, a timestamp formatted per event, one
//! `write` per line). A 4 KiB prompt with six entities then cost more on the telemetry thread
//! than the whole exchange cost the worker, and on a 2-core pod that thread competes with the
//! workers. Here the lines of one telemetry batch are formatted by hand into one reused buffer
//! (about 1,700 instructions per line, same measurement), with one timestamp per batch, and written with one
//! `write_all` under the stderr lock.
//!
//! Invariants:
//! * The lines have the shape of the rest of the log (`--log-format json`: the flattened
//!   tracing JSON object with `timestamp`, `level`, `message`, the fields and `target`; `text`:
//!   tracing's default text layout), so log pipelines see one format.
//! * The `SLUICE_LOG` filter still applies: nothing is written unless the `sluice::audit` target
//!   is enabled at INFO (checked once per batch).
//! * Holding the stderr lock for the whole batch keeps other threads' log lines from being
//!   interleaved inside an audit line; std's stderr lock is the one tracing's writer takes.
//! * No value of a detection ever reaches this module: [`crate::filter::PiiAudit`] carries none.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::write_json_string;
use crate::filter::PiiAudit;

/// Set once at start-up by `main` when `--log-format text` is chosen.
static TEXT_FORMAT: AtomicBool = AtomicBool::new(false);

/// Audit lines buffered before they are written even within one batch, in bytes.
pub const AUDIT_BUFFER_BYTES_MAX: usize = 64 * 1024;

/// Selects the text layout for audit lines (the default is JSON).
pub fn set_text_format(text: bool) {
    TEXT_FORMAT.store(text, Ordering::Relaxed);
}

/// Formats and writes the audit lines of one telemetry batch.
pub struct AuditWriter {
    buf: Vec<u8>,
    ts: [u8; 27],
    enabled: bool,
    text: bool,
}

impl Default for AuditWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl AuditWriter {
    pub fn new() -> Self {
        AuditWriter {
            buf: Vec::with_capacity(4096),
            ts: [b'0'; 27],
            enabled: false,
            text: false,
        }
    }

    /// Starts a batch: reads the filter and the clock once for every line of the batch.
    pub fn begin(&mut self) {
        self.enabled = tracing::enabled!(target: "sluice::audit", tracing::Level::INFO);
        self.text = TEXT_FORMAT.load(Ordering::Relaxed);
        if self.enabled {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            format_rfc3339_micros(now.as_secs(), now.subsec_micros(), &mut self.ts);
        }
    }

    /// Adds one detection's line (no-op when the audit target is filtered out).
    pub fn push(&mut self, a: &PiiAudit, caller: &str, status: u16) {
        if !self.enabled {
            return;
        }
        if self.text {
            self.push_text(a, caller, status);
        } else {
            self.push_json(a, caller, status);
        }
        if self.buf.len() >= AUDIT_BUFFER_BYTES_MAX {
            self.flush();
        }
    }

    fn push_json(&mut self, a: &PiiAudit, caller: &str, status: u16) {
        let b = &mut self.buf;
        b.extend_from_slice(b"{\"timestamp\":\"");
        b.extend_from_slice(&self.ts);
        b.extend_from_slice(
            b"\",\"level\":\"INFO\",\"message\":\"PII detected\",\"event\":\"pii_detection\",\"entity\":",
        );
        write_json_string(b, &a.entity);
        b.extend_from_slice(b",\"action\":");
        write_json_string(b, a.action);
        b.extend_from_slice(b",\"direction\":");
        write_json_string(b, a.direction);
        b.extend_from_slice(b",\"path\":");
        write_json_string(b, &a.path);
        b.extend_from_slice(b",\"start\":");
        push_u64(b, a.start as u64);
        b.extend_from_slice(b",\"end\":");
        push_u64(b, a.end as u64);
        b.extend_from_slice(b",\"caller\":");
        write_json_string(b, caller);
        b.extend_from_slice(b",\"status\":");
        push_u64(b, u64::from(status));
        b.extend_from_slice(b",\"target\":\"sluice::audit\"}\n");
    }

    fn push_text(&mut self, a: &PiiAudit, caller: &str, status: u16) {
        let b = &mut self.buf;
        b.extend_from_slice(&self.ts);
        b.extend_from_slice(b"  INFO sluice::audit: PII detected event=\"pii_detection\" entity=");
        push_text_value(b, &a.entity);
        b.extend_from_slice(b" action=");
        write_json_string(b, a.action);
        b.extend_from_slice(b" direction=");
        write_json_string(b, a.direction);
        b.extend_from_slice(b" path=");
        push_text_value(b, &a.path);
        b.extend_from_slice(b" start=");
        push_u64(b, a.start as u64);
        b.extend_from_slice(b" end=");
        push_u64(b, a.end as u64);
        b.extend_from_slice(b" caller=");
        push_text_value(b, caller);
        b.extend_from_slice(b" status=");
        push_u64(b, u64::from(status));
        b.push(b'\n');
    }

    /// The formatted, not yet written lines.
    #[cfg(test)]
    fn pending(&self) -> &[u8] {
        &self.buf
    }

    /// Writes the buffered lines to stderr in one `write_all` under its lock. A failed write
    /// (closed stderr) drops the lines: the audit never blocks or fails telemetry.
    pub fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(&self.buf);
        self.buf.clear();
    }
}

/// A text-format value: bare when it is plain (letters, digits, `_-.:/[]@`), else JSON-quoted,
/// so a caller name or path can never forge a field.
fn push_text_value(b: &mut Vec<u8>, v: &str) {
    let plain = !v.is_empty()
        && v.bytes().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, b'_' | b'-' | b'.' | b':' | b'/' | b'[' | b']' | b'@')
        });
    if plain {
        b.extend_from_slice(v.as_bytes());
    } else {
        write_json_string(b, v);
    }
}

fn push_u64(b: &mut Vec<u8>, mut v: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    b.extend_from_slice(&tmp[i..]);
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC), the layout tracing-subscriber uses.
fn format_rfc3339_micros(secs: u64, micros: u32, out: &mut [u8; 27]) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (rem / 3600, (rem / 60) % 60, rem % 60);
    let put = |out: &mut [u8; 27], at: usize, v: u64, width: usize| {
        let mut v = v;
        for i in (0..width).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(out, 0, y.clamp(0, 9999) as u64, 4);
    out[4] = b'-';
    put(out, 5, u64::from(m), 2);
    out[7] = b'-';
    put(out, 8, u64::from(d), 2);
    out[10] = b'T';
    put(out, 11, hh, 2);
    out[13] = b':';
    put(out, 14, mm, 2);
    out[16] = b':';
    put(out, 17, ss, 2);
    out[19] = b'.';
    put(out, 20, u64::from(micros.min(999_999)), 6);
    out[26] = b'Z';
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn audit() -> PiiAudit {
        PiiAudit {
            entity: Arc::from("SSN"),
            action: "redact",
            direction: "request",
            path: "messages[1].content".into(),
            start: 77,
            end: 88,
        }
    }

    #[test]
    fn timestamps_match_known_dates() {
        let mut ts = [0u8; 27];
        format_rfc3339_micros(0, 0, &mut ts);
        assert_eq!(&ts, b"1970-01-01T00:00:00.000000Z");
        // 2026-11-29T21:24:29.724942Z
        format_rfc3339_micros(1_795_987_469, 724_942, &mut ts);
        assert_eq!(&ts, b"2026-11-29T21:24:29.724942Z");
        // A leap day.
        format_rfc3339_micros(951_782_400, 1, &mut ts);
        assert_eq!(&ts, b"2000-02-29T00:00:00.000001Z");
    }

    #[test]
    fn json_line_has_the_tracing_shape_and_no_value() {
        let mut w = AuditWriter::new();
        w.enabled = true;
        w.push(&audit(), "svc \"x\"", 200);
        let line = std::str::from_utf8(w.pending()).unwrap();
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "PII detected");
        assert_eq!(v["event"], "pii_detection");
        assert_eq!(v["entity"], "SSN");
        assert_eq!(v["action"], "redact");
        assert_eq!(v["direction"], "request");
        assert_eq!(v["path"], "messages[1].content");
        assert_eq!(v["start"], 77);
        assert_eq!(v["end"], 88);
        assert_eq!(v["caller"], "svc \"x\"");
        assert_eq!(v["status"], 200);
        assert_eq!(v["target"], "sluice::audit");
        assert_eq!(v["timestamp"].as_str().unwrap().len(), 27);
    }

    #[test]
    fn text_line_quotes_anything_that_could_forge_a_field() {
        let mut w = AuditWriter::new();
        w.enabled = true;
        w.text = true;
        w.push(&audit(), "evil status=500", 200);
        let line = std::str::from_utf8(w.pending()).unwrap();
        assert!(
            line.contains(" INFO sluice::audit: PII detected event=\"pii_detection\" entity=SSN")
        );
        assert!(line.contains(" path=messages[1].content start=77 end=88"));
        assert!(line.contains(" caller=\"evil status=500\" status=200\n"));
    }

    #[test]
    fn disabled_writer_buffers_nothing() {
        let mut w = AuditWriter::new();
        w.push(&audit(), "c", 200);
        assert!(w.pending().is_empty());
    }
}
