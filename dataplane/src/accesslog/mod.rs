//! Access logs: one line per request, written off the request path.
//!
//! The request side fills a [`Record`] (`record.rs`): what the request said when it came,
//! what its stages decided (route, rate limit, cache, the attempts' [`Tally`]), then what its
//! response body came to (`body.rs`: bytes sent and the total duration, known only when the
//! body ends or is dropped). The finished record goes into a bounded queue, never waited on
//! (`writer.rs`); a thread of its own formats it (`format.rs`: JSON, `text` or a template,
//! with the fields of `field.rs`) and writes it. A full queue drops the record and counts
//! it. With the access log off none of this runs: the request path tests one `Option`.

mod body;
mod field;
mod format;
mod record;
mod writer;

use std::{path::PathBuf, sync::Arc};

use tokio::time::Instant;

pub use self::{
    body::Logged,
    field::Field,
    format::{Format, Template},
    record::{CLIENT_CLOSED, RateLimited, Record, Tally, TraceId, trace_id},
    writer::{AccessLog, Destination, Sink},
};

/// Records queued for the writer by default: about 150 ms of traffic at 100,000 requests a
/// second. Only queued records take memory (about 550 bytes each: 9 MB for a full queue).
pub const DEFAULT_BUFFER: usize = 16_384;

/// `--access-log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatName {
    /// One JSON object per line, with the `--access-log-fields`.
    Json,
    /// `key=value` pairs (logfmt), with the `--access-log-fields`.
    Text,
    /// `--access-log-template`.
    Template,
}

/// The access-log flags as given.
#[derive(Clone, Debug, Default)]
pub struct Flags<'a> {
    pub format: Option<FormatName>,
    pub template: Option<&'a str>,
    pub fields: Option<&'a str>,
    pub path: Option<&'a std::path::Path>,
    /// `--log-format`, the format when none is given.
    pub log_format: &'a str,
}

/// The format and destination the flags describe, or why they describe none: an unknown
/// field (named, with the known ones), a template without `template` format or the other
/// way round.
pub fn settings(flags: &Flags<'_>) -> Result<(Format, Destination), String> {
    let name = match (flags.format, flags.template) {
        (Some(f), _) => f,
        (None, Some(_)) => FormatName::Template,
        (None, None) if flags.log_format == "json" => FormatName::Json,
        (None, None) => FormatName::Text,
    };
    let fields = || match flags.fields {
        Some(list) => Field::parse_list(list),
        None => Ok(Field::defaults()),
    };
    let format = match (name, flags.template) {
        (FormatName::Template, Some(t)) => {
            if flags.fields.is_some() {
                return Err("--access-log-fields does not apply to a template: name the fields in --access-log-template".into());
            }
            Format::Template(Template::parse(t)?)
        }
        (FormatName::Template, None) => {
            return Err(format!(
                "--access-log-format template needs --access-log-template, e.g. '%time% %client% \"%method% %path% %protocol%\" %status% %bytes_sent% %duration_ms%'; the known fields are: {}",
                Field::known()
            ));
        }
        (_, Some(_)) => {
            return Err(
                "--access-log-template is only used with --access-log-format template".into(),
            );
        }
        (FormatName::Json, None) => Format::Json(fields()?),
        (FormatName::Text, None) => Format::Text(fields()?),
    };
    let to = match flags.path {
        None => Destination::Stdout,
        Some(p) if p.as_os_str() == "-" => Destination::Stdout,
        Some(p) => Destination::File(PathBuf::from(p)),
    };
    Ok((format, to))
}

/// A request's record while its stages run. Dropped before the answer (the client went
/// away, the connection closed), it is still sent, with status 499.
pub struct Pending<'s> {
    record: Option<Box<Record>>,
    sink: &'s Arc<Sink>,
}

impl<'s> Pending<'s> {
    pub fn new(record: Box<Record>, sink: &'s Arc<Sink>) -> Self {
        Self {
            record: Some(record),
            sink,
        }
    }

    pub fn tally(&self) -> Option<&Tally> {
        self.record.as_ref().map(|r| &r.tally)
    }

    /// The record, to finish with the answer.
    pub fn take(mut self) -> Option<(Box<Record>, Arc<Sink>)> {
        self.record.take().map(|r| (r, self.sink.clone()))
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(mut r) = self.record.take() {
            r.ended = Some(Instant::now());
            self.sink.send(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags<'a>(
        format: Option<FormatName>,
        template: Option<&'a str>,
        fields: Option<&'a str>,
    ) -> Flags<'a> {
        Flags {
            format,
            template,
            fields,
            path: None,
            log_format: "text",
        }
    }

    #[test]
    fn the_format_follows_the_flags() {
        let (f, to) = settings(&flags(None, None, None)).unwrap();
        assert_eq!(f, Format::Text(Field::defaults()));
        assert_eq!(to, Destination::Stdout);
        let json = Flags {
            log_format: "json",
            ..flags(None, None, Some("status"))
        };
        assert_eq!(
            settings(&json).unwrap().0,
            Format::Json(vec![Field::Status])
        );
        // A template alone means the template format.
        assert!(matches!(
            settings(&flags(None, Some("%status%"), None)).unwrap().0,
            Format::Template(_)
        ));
        let file = Flags {
            path: Some(std::path::Path::new("/var/log/a.log")),
            ..flags(Some(FormatName::Json), None, None)
        };
        assert_eq!(
            settings(&file).unwrap().1,
            Destination::File("/var/log/a.log".into())
        );
    }

    #[test]
    fn contradictory_flags_are_refused() {
        for (f, t, fields) in [
            (Some(FormatName::Template), None, None),
            (Some(FormatName::Json), Some("%status%"), None),
            (None, Some("%status%"), Some("status")),
            (None, Some("%nope%"), None),
            (Some(FormatName::Json), None, Some("nope")),
        ] {
            assert!(
                settings(&flags(f, t, fields)).is_err(),
                "{f:?} {t:?} {fields:?}"
            );
        }
    }
}
