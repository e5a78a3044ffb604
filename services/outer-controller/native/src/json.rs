//! JSON output byte-identical to `orjson.dumps` (the Python reference implementation's serialiser).
//!
//! Why not serde_json's writer: orjson formats floats its own way (shortest round-trip digits, fixed
//! notation for decimal exponents -5..=15, else `d.ddde+N` / `d.ddde-N`), and the durable state and the
//! session records must not change bytes when the native path replaces the Python one.

/// Append `x` as orjson writes a finite float (callers check finiteness: orjson has no NaN/inf).
///
/// ryu's shortest round-trip output already uses orjson's layout (fixed notation for decimal
/// exponents -5..=15, `1.0` for integral values); orjson only adds a `+` to positive exponents.
pub fn write_f64(out: &mut Vec<u8>, x: f64) {
    let mut buf = ryu::Buffer::new();
    let s = buf.format_finite(x).as_bytes();
    match s.iter().position(|&c| c == b'e') {
        Some(i) if s[i + 1] != b'-' => {
            out.extend_from_slice(&s[..=i]);
            out.push(b'+');
            out.extend_from_slice(&s[i + 1..]);
        }
        _ => out.extend_from_slice(s),
    }
}

/// Append an integer.
pub fn write_i64(out: &mut Vec<u8>, x: i64) {
    let mut ib = itoa::Buffer::new();
    out.extend_from_slice(ib.format(x).as_bytes());
}

/// Append `s` as a JSON string, escaped as orjson escapes (`"`, `\`, control characters; nothing else).
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let b = s.as_bytes();
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\t' => b"\\t",
            b'\r' => b"\\r",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&b[start..i]);
        if esc.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(c >> 4) as usize]);
            out.push(HEX[(c & 15) as usize]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&b[start..]);
    out.push(b'"');
}

/// Append an optional float (`null` for `None`).
pub fn write_opt_f64(out: &mut Vec<u8>, x: Option<f64>) {
    match x {
        Some(v) => write_f64(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

pub fn write_bool(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}
