//! How a record becomes one line: JSON (an object of the chosen fields), `text` (the same
//! fields as `key=value` pairs, logfmt) or a template with `%field%` placeholders.
//!
//! Every value that comes from the client (path, headers, the SNI…) is escaped so that it
//! stays inside its line and its field: JSON strings by serde_json; in `text` and templates
//! as nginx does, a `"`, a `\`, control characters and bytes outside printable ASCII become
//! `\xHH`. A CR or LF in a request can never start a line of its own.

use std::{io::Write as _, time::SystemTime};

use super::{
    field::Field,
    record::{Record, Upstream, Value},
};

/// How records are written.
#[derive(Clone, Debug, PartialEq)]
pub enum Format {
    Json(Vec<Field>),
    Text(Vec<Field>),
    Template(Template),
}

/// A line with `%field%` placeholders; `%%` is a percent sign.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Literal(String),
    Field(Field),
}

impl Template {
    /// Parses a template, refusing unknown fields (naming the field and the known ones), an
    /// unclosed `%`, and line breaks (each record is one line).
    pub fn parse(s: &str) -> Result<Template, String> {
        if s.contains(['\n', '\r']) {
            return Err(
                "--access-log-template must be one line: each record is written as one line"
                    .to_string(),
            );
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = s;
        while let Some(at) = rest.find('%') {
            literal.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if let Some(r) = after.strip_prefix('%') {
                literal.push('%');
                rest = r;
                continue;
            }
            let Some(end) = after.find('%') else {
                return Err(format!(
                    "--access-log-template has a `%` that opens no field: {:?} is not closed by another `%` (write `%%` for a percent sign)",
                    &rest[at..]
                ));
            };
            let name = &after[..end];
            let field = Field::parse(name).ok_or_else(|| {
                format!(
                    "--access-log-template names an unknown field `%{name}%`; the known fields are: {}",
                    Field::known()
                )
            })?;
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(Part::Field(field));
            rest = &after[end + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        if !parts.iter().any(|p| matches!(p, Part::Field(_))) {
            return Err(format!(
                "--access-log-template names no field; write fields as %name%, e.g. \"%method% %path% %status%\"; the known fields are: {}",
                Field::known()
            ));
        }
        Ok(Template { parts })
    }
}

impl Format {
    /// Appends the record's line, newline included, to `out`.
    pub fn write(&self, out: &mut Vec<u8>, record: &Record, upstream: &Upstream) {
        match self {
            Self::Json(fields) => {
                out.push(b'{');
                for (i, &f) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.push(b'"');
                    out.extend_from_slice(f.name().as_bytes());
                    out.extend_from_slice(b"\":");
                    json(out, record.value(f, upstream));
                }
                out.push(b'}');
            }
            Self::Text(fields) => {
                for (i, &f) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(b' ');
                    }
                    out.extend_from_slice(f.name().as_bytes());
                    out.push(b'=');
                    text(out, record.value(f, upstream), true);
                }
            }
            Self::Template(t) => {
                for part in &t.parts {
                    match part {
                        Part::Literal(s) => out.extend_from_slice(s.as_bytes()),
                        Part::Field(f) => text(out, record.value(*f, upstream), false),
                    }
                }
            }
        }
        out.push(b'\n');
    }
}

/// A value as JSON: strings escaped by serde_json (bytes that are not UTF-8 replaced), an
/// absent value `null`, durations in milliseconds with microseconds.
fn json(out: &mut Vec<u8>, v: Value<'_>) {
    let string = |out: &mut Vec<u8>, s: &str| {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    };
    match v {
        Value::Absent => out.extend_from_slice(b"null"),
        Value::Text(s) => string(out, s),
        Value::Bytes(b) => string(out, &String::from_utf8_lossy(b)),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Millis(d) => {
            let _ = write!(out, "{:.3}", d.as_secs_f64() * 1000.0);
        }
        Value::Time(t) => {
            out.push(b'"');
            rfc3339(out, t);
            out.push(b'"');
        }
        Value::Ip(ip) => {
            let _ = write!(out, "\"{ip}\"");
        }
    }
}

/// A value in a `text` line or a template: escaped (see the module's doc), `-` when
/// absent. `quote`: in `key=value` pairs, a value that is empty or holds a space or `=` is
/// put in quotes, so pairs split unambiguously.
fn text(out: &mut Vec<u8>, v: Value<'_>, quote: bool) {
    match v {
        Value::Absent => out.push(b'-'),
        Value::Text(s) => escaped(out, s.as_bytes(), quote),
        Value::Bytes(b) => escaped(out, b, quote),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Millis(d) => {
            let _ = write!(out, "{:.3}", d.as_secs_f64() * 1000.0);
        }
        Value::Time(t) => rfc3339(out, t),
        Value::Ip(ip) => {
            let _ = write!(out, "{ip}");
        }
    }
}

/// nginx's escaping (`escape=default`): `"`, `\`, control characters and bytes outside
/// printable ASCII as `\xHH`; everything else as it is.
fn escaped(out: &mut Vec<u8>, b: &[u8], quote: bool) {
    let quoted = quote && (b.is_empty() || b.iter().any(|&c| c == b' ' || c == b'='));
    if quoted {
        out.push(b'"');
    }
    for &c in b {
        if c == b'"' || c == b'\\' || !(0x20..0x7f).contains(&c) {
            let _ = write!(out, "\\x{c:02X}");
        } else {
            out.push(c);
        }
    }
    if quoted {
        out.push(b'"');
    }
}

/// RFC 3339 in UTC with milliseconds: `2025-03-01T12:34:56.789Z`.
fn rfc3339(out: &mut Vec<u8>, t: SystemTime) {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        since.subsec_millis()
    );
}

/// The date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use http::{HeaderValue, Request};
    use tokio::time::Instant;

    use super::*;
    use crate::{cache::CacheStatus, proxy::TlsSession};

    fn record(uri: &str, headers: &[(&'static str, &[u8])]) -> Box<Record> {
        let mut req = Request::get(uri).body(()).unwrap();
        for &(k, v) in headers {
            req.headers_mut()
                .append(k, HeaderValue::from_bytes(v).unwrap());
        }
        let started = Instant::now();
        let rid = HeaderValue::from_static("rid-1");
        let client = "10.1.2.3:40000".parse().unwrap();
        let mut r = Record::arrive(&req, client, None, started, &rid);
        r.time = SystemTime::UNIX_EPOCH + Duration::from_millis(1_740_832_496_789);
        r.status = 200;
        r.bytes_sent = 12;
        r.ended = Some(started + Duration::from_micros(1500));
        r
    }

    fn line(format: &Format, r: &Record) -> String {
        let mut out = Vec::new();
        format.write(&mut out, r, &Upstream::default());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn time_is_rfc3339_utc_with_milliseconds() {
        let at = |ms: u64| {
            let mut out = Vec::new();
            rfc3339(&mut out, SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
            String::from_utf8(out).unwrap()
        };
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(1_740_832_496_789), "2025-03-01T12:34:56.789Z");
        assert_eq!(at(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
    }

    #[test]
    fn json_lines_hold_the_chosen_fields_in_order() {
        let r = record("/a/b?token=s3cret", &[("host", b"api.example")]);
        let f = Format::Json(vec![
            Field::Status,
            Field::Path,
            Field::Authority,
            Field::Route,
            Field::DurationMs,
            Field::Time,
            Field::Client,
        ]);
        assert_eq!(
            line(&f, &r),
            "{\"status\":200,\"path\":\"/a/b\",\"authority\":\"api.example\",\"route\":null,\"duration_ms\":1.500,\"time\":\"2025-03-01T12:34:56.789Z\",\"client\":\"10.1.2.3\"}\n"
        );
        // The default fields never include the query string.
        let all = line(&Format::Json(Field::defaults()), &r);
        assert!(!all.contains("s3cret"), "{all}");
        let v: serde_json::Value = serde_json::from_str(&all).unwrap();
        assert_eq!(v.as_object().unwrap().len(), Field::defaults().len());
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert_eq!(v["client_port"], 40000);
        assert_eq!(v["upstream_ms"], serde_json::Value::Null);
    }

    #[test]
    fn values_cannot_break_a_line_or_a_field() {
        // Header values may carry any byte but CR, LF and NUL on the wire, but nothing here
        // relies on that: the escaping holds whatever the bytes.
        // Header values and URIs cannot hold CR, LF or other control characters (the
        // parsers refuse them), but nothing here relies on that: an SNI is a string, and
        // the escaping holds whatever the bytes.
        let evil: &[u8] = b"x\r\n{\"status\":200} \x1b[31m\"q\\ \xff";
        let mut r = record("/p", &[]);
        let mut tls = TlsSession {
            version: "TLSv1.3",
            sni: Some(String::from_utf8_lossy(evil).into()),
        };
        r.tls = Some(Arc::new(tls.clone()));
        for format in [
            Format::Json(vec![Field::Sni, Field::Status]),
            Format::Text(vec![Field::Sni, Field::Status]),
            Format::Template(Template::parse("%sni% %status%").unwrap()),
        ] {
            let l = line(&format, &r);
            assert_eq!(l.matches('\n').count(), 1, "{format:?}: {l:?}");
            assert!(l.ends_with('\n') && !l.contains('\r'), "{l:?}");
            assert!(!l.contains('\x1b'), "{l:?}");
            if let Format::Json(_) = format {
                let v: serde_json::Value = serde_json::from_str(l.trim_end()).unwrap();
                assert_eq!(v["status"], 200);
                assert_eq!(v["sni"], String::from_utf8_lossy(evil).as_ref());
            }
        }
        assert_eq!(
            line(&Format::Text(vec![Field::Sni, Field::Status]), &r),
            "sni=\"x\\x0D\\x0A{\\x22status\\x22:200} \\x1B[31m\\x22q\\x5C \\xEF\\xBF\\xBD\" status=200\n"
        );
        tls.sni = None;
        r.tls = Some(Arc::new(tls));
        assert_eq!(
            line(
                &Format::Template(Template::parse("[%sni%] %tls_version%").unwrap()),
                &r
            ),
            "[-] TLSv1.3\n"
        );
    }

    #[test]
    fn text_quotes_values_with_spaces_and_marks_absent_ones() {
        let mut r = record("/p?", &[("user-agent", b"curl/8.0 (x)"), ("referer", b"")]);
        r.cache = Some(CacheStatus::Hit);
        let f = Format::Text(vec![
            Field::UserAgent,
            Field::Referer,
            Field::Query,
            Field::Route,
            Field::Cache,
            Field::Method,
        ]);
        assert_eq!(
            line(&f, &r),
            "user_agent=\"curl/8.0 (x)\" referer=\"\" query=\"\" route=- cache=hit method=GET\n"
        );
    }

    #[test]
    fn templates_render_literals_and_fields() {
        let r = record("/a?x=1", &[("host", b"h.example")]);
        let t = Template::parse("%METHOD% %path%?%query% 100%% \"%authority%\" %status%").unwrap();
        assert_eq!(
            line(&Format::Template(t), &r),
            "GET /a?x=1 100% \"h.example\" 200\n"
        );
    }

    #[test]
    fn templates_refuse_unknown_fields_unclosed_marks_and_line_breaks() {
        let e = Template::parse("%method% %upstream_host%").unwrap_err();
        assert!(
            e.contains("`%upstream_host%`") && e.contains("upstream_endpoint, attempts"),
            "{e}"
        );
        let e = Template::parse("%method% 100% done").unwrap_err();
        assert!(e.contains("%%"), "{e}");
        assert!(Template::parse("%method%\n%path%").is_err());
        assert!(Template::parse("no fields 100%%").is_err());
        assert!(Template::parse("%%%status%%%").is_ok());
    }
}
