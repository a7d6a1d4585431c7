//! Hand-written protobuf encoder for the OTLP trace messages sluice sends.
//!
//! Owns: the wire encoding of `ExportTraceServiceRequest` (opentelemetry-proto v1,
//! `collector/trace/v1/trace_service.proto`) with exactly one `ResourceSpans` holding one
//! `ScopeSpans`, and the varint / length-delimited primitives it is built from.
//!
//! Field numbers (opentelemetry-proto v1):
//! * `ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1; }`
//! * `ResourceSpans { Resource resource = 1; repeated ScopeSpans scope_spans = 2; }`
//! * `Resource { repeated KeyValue attributes = 1; }`
//! * `ScopeSpans { InstrumentationScope scope = 1; repeated Span spans = 2; }`
//! * `InstrumentationScope { string name = 1; string version = 2; }`
//! * `Span { bytes trace_id = 1; bytes span_id = 2; bytes parent_span_id = 4; string name = 5;
//!   SpanKind kind = 6; fixed64 start_time_unix_nano = 7; fixed64 end_time_unix_nano = 8;
//!   repeated KeyValue attributes = 9; Status status = 15; }`
//! * `Status { string message = 2; StatusCode code = 3; }` (`STATUS_CODE_ERROR = 2`)
//! * `KeyValue { string key = 1; AnyValue value = 2; }`
//! * `AnyValue { oneof { string string_value = 1; bool bool_value = 2; int64 int_value = 3;
//!   double double_value = 4; } }`
//!
//! Why hand-written: five message types do not justify `prost` + `protoc` build weight on a
//! 2-core builder, and the encoder is verified against the official Python protobuf classes
//! (`tests/otel_export.rs` with `tests/e2e/otlp_receiver.py`).
//!
//! Invariants:
//! * Never panics, whatever the input (all arithmetic is on `usize` lengths of existing data).
//! * No allocation besides the output buffer: nested message lengths are computed by a sizing
//!   pass (`*_len` functions) before each length prefix is written, so nothing is encoded into
//!   a temporary buffer. The whole request is sized once and the buffer reserved up front.
//! * Oneof members of `AnyValue` are always written, even when they hold the default value
//!   (otherwise a receiver could not tell `0` from "no value").

use super::{AttrValue, SpanRecord};

/// Protobuf wire type: varint.
const WIRE_VARINT: u8 = 0;
/// Protobuf wire type: 64-bit little-endian.
const WIRE_FIXED64: u8 = 1;
/// Protobuf wire type: length-delimited.
const WIRE_LEN: u8 = 2;

/// `Span.SpanKind.SPAN_KIND_SERVER`.
pub const SPAN_KIND_SERVER: u64 = 2;
/// `Span.SpanKind.SPAN_KIND_CLIENT`.
pub const SPAN_KIND_CLIENT: u64 = 3;
/// `Status.StatusCode.STATUS_CODE_ERROR`.
pub const STATUS_CODE_ERROR: u64 = 2;

/// Number of bytes `v` takes as a base-128 varint (1..=10).
pub fn varint_len(v: u64) -> usize {
    // 64 bits in groups of 7; 0 still takes one byte.
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Append `v` as a base-128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn tag_len(field: u32) -> usize {
    varint_len(u64::from(field) << 3)
}

fn put_tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

/// Size of a length-delimited field whose payload is `payload_len` bytes.
pub fn len_field_len(field: u32, payload_len: usize) -> usize {
    tag_len(field) + varint_len(payload_len as u64) + payload_len
}

/// Append the tag and length prefix of a length-delimited field; the caller writes the payload.
pub fn put_len_prefix(out: &mut Vec<u8>, field: u32, payload_len: usize) {
    put_tag(out, field, WIRE_LEN);
    put_varint(out, payload_len as u64);
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_len_prefix(out, field, bytes.len());
    out.extend_from_slice(bytes);
}

fn varint_field_len(field: u32, v: u64) -> usize {
    tag_len(field) + varint_len(v)
}

fn put_varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    put_tag(out, field, WIRE_VARINT);
    put_varint(out, v);
}

fn fixed64_field_len(field: u32) -> usize {
    tag_len(field) + 8
}

fn put_fixed64_field(out: &mut Vec<u8>, field: u32, bits: u64) {
    put_tag(out, field, WIRE_FIXED64);
    out.extend_from_slice(&bits.to_le_bytes());
}

// ---- AnyValue / KeyValue -------------------------------------------------------------------

fn any_value_len(v: &AttrValue) -> usize {
    match v {
        AttrValue::Str(s) => len_field_len(1, s.len()),
        AttrValue::Bool(_) => varint_field_len(2, 1),
        // int64 negative values are sign-extended to 10 bytes, as protobuf specifies.
        AttrValue::Int(i) => varint_field_len(3, *i as u64),
        AttrValue::F64(_) => fixed64_field_len(4),
    }
}

fn put_any_value(out: &mut Vec<u8>, v: &AttrValue) {
    match v {
        AttrValue::Str(s) => put_bytes(out, 1, s.as_bytes()),
        AttrValue::Bool(b) => put_varint_field(out, 2, u64::from(*b)),
        AttrValue::Int(i) => put_varint_field(out, 3, *i as u64),
        AttrValue::F64(f) => put_fixed64_field(out, 4, f.to_bits()),
    }
}

fn key_value_len(key: &str, v: &AttrValue) -> usize {
    len_field_len(1, key.len()) + len_field_len(2, any_value_len(v))
}

fn put_key_value(out: &mut Vec<u8>, key: &str, v: &AttrValue) {
    put_bytes(out, 1, key.as_bytes());
    put_len_prefix(out, 2, any_value_len(v));
    put_any_value(out, v);
}

/// Append a `repeated KeyValue` field numbered `field`.
fn put_attributes(out: &mut Vec<u8>, field: u32, attrs: &[(&str, AttrValue)]) {
    for (k, v) in attrs {
        put_len_prefix(out, field, key_value_len(k, v));
        put_key_value(out, k, v);
    }
}

fn attributes_len(field: u32, attrs: &[(&str, AttrValue)]) -> usize {
    attrs
        .iter()
        .map(|(k, v)| len_field_len(field, key_value_len(k, v)))
        .sum()
}

// ---- Span ----------------------------------------------------------------------------------

fn status_len(message: &str) -> usize {
    let msg = if message.is_empty() {
        0
    } else {
        len_field_len(2, message.len())
    };
    msg + varint_field_len(3, STATUS_CODE_ERROR)
}

fn span_kind(span: &SpanRecord) -> u64 {
    if span.kind_client {
        SPAN_KIND_CLIENT
    } else {
        SPAN_KIND_SERVER
    }
}

/// Encoded size of one `Span` message (without its own tag and length prefix).
pub fn span_len(span: &SpanRecord) -> usize {
    let mut n = len_field_len(1, span.trace_id.len()) + len_field_len(2, span.span_id.len());
    if let Some(p) = &span.parent_span_id {
        n += len_field_len(4, p.len());
    }
    n += len_field_len(5, span.name.len());
    n += varint_field_len(6, span_kind(span));
    n += fixed64_field_len(7) + fixed64_field_len(8);
    n += attributes_len(9, &span.attributes);
    if let Some(msg) = &span.error {
        n += len_field_len(15, status_len(msg));
    }
    n
}

/// Append one `Span` message body.
pub fn put_span(out: &mut Vec<u8>, span: &SpanRecord) {
    put_bytes(out, 1, &span.trace_id);
    put_bytes(out, 2, &span.span_id);
    if let Some(p) = &span.parent_span_id {
        put_bytes(out, 4, p);
    }
    put_bytes(out, 5, span.name.as_bytes());
    put_varint_field(out, 6, span_kind(span));
    put_fixed64_field(out, 7, span.start_unix_ns);
    put_fixed64_field(out, 8, span.end_unix_ns);
    put_attributes(out, 9, &span.attributes);
    if let Some(msg) = &span.error {
        put_len_prefix(out, 15, status_len(msg));
        if !msg.is_empty() {
            put_bytes(out, 2, msg.as_bytes());
        }
        put_varint_field(out, 3, STATUS_CODE_ERROR);
    }
}

// ---- Request -------------------------------------------------------------------------------

/// What identifies the sender: `Resource` attributes and the `InstrumentationScope`.
#[derive(Debug, Clone)]
pub struct Origin {
    /// `Resource.attributes` (at least `service.name`).
    pub resource: Vec<(&'static str, AttrValue)>,
    /// `InstrumentationScope.name`.
    pub scope_name: &'static str,
    /// `InstrumentationScope.version`.
    pub scope_version: &'static str,
}

fn scope_len(o: &Origin) -> usize {
    len_field_len(1, o.scope_name.len()) + len_field_len(2, o.scope_version.len())
}

fn scope_spans_len(o: &Origin, spans: &[SpanRecord]) -> usize {
    len_field_len(1, scope_len(o))
        + spans
            .iter()
            .map(|s| len_field_len(2, span_len(s)))
            .sum::<usize>()
}

fn resource_spans_len(o: &Origin, spans: &[SpanRecord]) -> usize {
    len_field_len(1, attributes_len(1, &o.resource)) + len_field_len(2, scope_spans_len(o, spans))
}

/// Encoded size of the whole `ExportTraceServiceRequest`.
pub fn request_len(o: &Origin, spans: &[SpanRecord]) -> usize {
    len_field_len(1, resource_spans_len(o, spans))
}

/// Append an `ExportTraceServiceRequest` carrying `spans` to `out`.
pub fn encode_request(out: &mut Vec<u8>, o: &Origin, spans: &[SpanRecord]) {
    out.reserve(request_len(o, spans));
    // ExportTraceServiceRequest.resource_spans (1)
    put_len_prefix(out, 1, resource_spans_len(o, spans));
    // ResourceSpans.resource (1) -> Resource.attributes (1)
    put_len_prefix(out, 1, attributes_len(1, &o.resource));
    put_attributes(out, 1, &o.resource);
    // ResourceSpans.scope_spans (2)
    put_len_prefix(out, 2, scope_spans_len(o, spans));
    // ScopeSpans.scope (1)
    put_len_prefix(out, 1, scope_len(o));
    put_bytes(out, 1, o.scope_name.as_bytes());
    put_bytes(out, 2, o.scope_version.as_bytes());
    // ScopeSpans.spans (2)
    for s in spans {
        put_len_prefix(out, 2, span_len(s));
        put_span(out, s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, v);
        out
    }

    #[test]
    fn varint_encoding_matches_the_spec() {
        assert_eq!(varint(0), [0x00]);
        assert_eq!(varint(1), [0x01]);
        assert_eq!(varint(127), [0x7f]);
        assert_eq!(varint(128), [0x80, 0x01]);
        assert_eq!(varint(150), [0x96, 0x01]);
        assert_eq!(varint(300), [0xac, 0x02]);
        assert_eq!(varint(16_383), [0xff, 0x7f]);
        assert_eq!(varint(16_384), [0x80, 0x80, 0x01]);
        // -1 as int64: ten bytes, last one 0x01.
        let neg = varint(-1i64 as u64);
        assert_eq!(neg.len(), 10);
        assert_eq!(neg[9], 0x01);
        assert!(neg[..9].iter().all(|&b| b == 0xff));
        assert_eq!(varint(u64::MAX).len(), 10);
    }

    #[test]
    fn varint_len_agrees_with_encoder() {
        let mut v = 1u64;
        let mut samples = vec![0u64, u64::MAX];
        while v != 0 {
            samples.extend([v - 1, v, v.wrapping_add(1)]);
            v = v.wrapping_shl(1);
        }
        for s in samples {
            assert_eq!(varint_len(s), varint(s).len(), "value {s}");
        }
    }

    #[test]
    fn length_delimited_field_layout() {
        let mut out = Vec::new();
        put_bytes(&mut out, 5, b"abc");
        // tag = 5 << 3 | 2 = 42
        assert_eq!(out, [42, 3, b'a', b'b', b'c']);
        assert_eq!(len_field_len(5, 3), out.len());
        // A 200-byte payload needs a two-byte length; field 15 still has a one-byte tag,
        // field 16 a two-byte one.
        assert_eq!(len_field_len(15, 200), 1 + 2 + 200);
        assert_eq!(len_field_len(16, 200), 2 + 2 + 200);
        let mut out = Vec::new();
        put_fixed64_field(&mut out, 7, 0x0102_0304_0506_0708);
        assert_eq!(out, [57, 8, 7, 6, 5, 4, 3, 2, 1]);
    }

    fn sample_span(attrs: Vec<(&'static str, AttrValue)>, error: Option<&str>) -> SpanRecord {
        SpanRecord {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: Some([3; 8]),
            name: "chat gpt-4o-mini".into(),
            kind_client: true,
            start_unix_ns: 1,
            end_unix_ns: u64::MAX,
            error: error.map(str::to_owned),
            attributes: attrs,
        }
    }

    #[test]
    fn sizing_pass_matches_encoded_size() {
        let origin = Origin {
            resource: vec![("service.name", AttrValue::Str("sluice".into()))],
            scope_name: "sluice",
            scope_version: "0.1.0",
        };
        let big = "x".repeat(300);
        let spans = vec![
            sample_span(vec![], None),
            sample_span(
                vec![
                    ("a", AttrValue::Str(String::new())),
                    ("b", AttrValue::Str(big.clone())),
                    ("c", AttrValue::Int(-5)),
                    ("d", AttrValue::Int(0)),
                    ("e", AttrValue::F64(f64::NAN)),
                    ("f", AttrValue::Bool(false)),
                ],
                Some(""),
            ),
            sample_span(vec![], Some(&big)),
        ];
        for s in &spans {
            let mut out = Vec::new();
            put_span(&mut out, s);
            assert_eq!(out.len(), span_len(s));
        }
        let mut out = Vec::new();
        encode_request(&mut out, &origin, &spans);
        assert_eq!(out.len(), request_len(&origin, &spans));
        let mut empty = Vec::new();
        encode_request(&mut empty, &origin, &[]);
        assert_eq!(empty.len(), request_len(&origin, &[]));
    }

    #[test]
    fn span_fields_are_in_expected_places() {
        let s = sample_span(vec![("k", AttrValue::Bool(true))], Some("boom"));
        let mut out = Vec::new();
        put_span(&mut out, &s);
        // trace_id field 1 (tag 0x0a), 16 bytes
        assert_eq!(&out[..2], &[0x0a, 16]);
        assert_eq!(&out[2..18], &[1; 16]);
        // span_id field 2 (tag 0x12)
        assert_eq!(&out[18..20], &[0x12, 8]);
        // parent_span_id field 4 (tag 0x22)
        assert_eq!(&out[28..30], &[0x22, 8]);
        // status field 15 at the end: tag 0x7a, len, message (0x12 4 "boom"), code (0x18 2)
        let tail = &out[out.len() - 10..];
        assert_eq!(tail, &[0x7a, 8, 0x12, 4, b'b', b'o', b'o', b'm', 0x18, 2]);
    }
}
