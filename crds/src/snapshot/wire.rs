//! How a table travels: the content codings a push may use, and decoding bounded by the
//! receiver's limit (a small compressed body must not inflate into memory).

use std::{borrow::Cow, io::Read};

/// A push body's `Content-Encoding`. Receivers list the ones they read in an
/// `Accept-Encoding` response header (RFC 7694), and answer 415 to any other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Coding {
    Identity,
    Gzip,
    Zstd,
}

/// What this build reads, best first: the `Accept-Encoding` a receiver answers with.
pub const ACCEPTED: &str = "zstd, gzip";

/// zstd at its default level: about as fast as gzip's fastest and a third smaller on
/// tables, whose JSON repeats the same keys thousands of times.
const ZSTD_LEVEL: i32 = 3;

impl Coding {
    /// The coding a `Content-Encoding` header value names; `None` for one not read here.
    pub fn from_header(v: Option<&[u8]>) -> Option<Self> {
        let Some(v) = v else {
            return Some(Self::Identity);
        };
        let v = v.trim_ascii();
        if v.eq_ignore_ascii_case(b"zstd") {
            Some(Self::Zstd)
        } else if v.eq_ignore_ascii_case(b"gzip") {
            Some(Self::Gzip)
        } else if v.eq_ignore_ascii_case(b"identity") {
            Some(Self::Identity)
        } else {
            None
        }
    }

    /// The `Content-Encoding` value, `None` for identity.
    pub fn header(self) -> Option<&'static str> {
        match self {
            Self::Identity => None,
            Self::Gzip => Some("gzip"),
            Self::Zstd => Some("zstd"),
        }
    }

    /// The best coding an `Accept-Encoding` value offers (a receiver's answer to a push
    /// it could not read). Identity when it names none this build writes.
    pub fn best_accepted(v: &[u8]) -> Self {
        let offered = |name: &[u8]| {
            v.split(|b| *b == b',').any(|item| {
                let mut parts = item.split(|b| *b == b';');
                let coding = parts.next().unwrap_or_default().trim_ascii();
                // `q=0` means "not this one".
                let refused = parts.any(|p| {
                    let p = p.trim_ascii();
                    p.len() >= 2
                        && p[..2].eq_ignore_ascii_case(b"q=")
                        && p[2..].iter().all(|b| matches!(b, b'0' | b'.'))
                });
                coding.eq_ignore_ascii_case(name) && !refused
            })
        };
        if offered(b"zstd") {
            Self::Zstd
        } else if offered(b"gzip") {
            Self::Gzip
        } else {
            Self::Identity
        }
    }

    /// `data` in this coding.
    pub fn encode(self, data: &[u8]) -> Vec<u8> {
        match self {
            Self::Identity => data.to_vec(),
            Self::Gzip => {
                use std::io::Write;
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                // Writing to a Vec cannot fail.
                enc.write_all(data).expect("gzip into memory");
                enc.finish().expect("gzip into memory")
            }
            Self::Zstd => zstd::bulk::compress(data, ZSTD_LEVEL).expect("zstd into memory"),
        }
    }

    /// `body` decoded, at most `max` bytes as sent and once decoded (decoding stops one
    /// byte past the limit).
    pub fn decode(self, body: &[u8], max: usize) -> Result<Cow<'_, [u8]>, WireError> {
        if body.len() > max {
            return Err(WireError::TooLarge { max });
        }
        let mut out = Vec::new();
        let limit = (max as u64).saturating_add(1);
        match self {
            Self::Identity => return Ok(Cow::Borrowed(body)),
            Self::Gzip => flate2::read::GzDecoder::new(body)
                .take(limit)
                .read_to_end(&mut out)
                .map_err(|e| WireError::Corrupt("gzip", e))?,
            Self::Zstd => zstd::stream::read::Decoder::new(body)
                .map_err(|e| WireError::Corrupt("zstd", e))?
                .take(limit)
                .read_to_end(&mut out)
                .map_err(|e| WireError::Corrupt("zstd", e))?,
        };
        if out.len() > max {
            return Err(WireError::TooLarge { max });
        }
        Ok(Cow::Owned(out))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The body, or what it decompresses to, is larger than the limit (a compression bomb,
    /// or a table too large).
    #[error("the snapshot is larger than {max} bytes (decompressed); raise --max-snapshot-bytes")]
    TooLarge { max: usize },
    #[error("the {0} body could not be decompressed: {1}")]
    Corrupt(&'static str, std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_coding_round_trips_and_decoding_stops_at_the_limit() {
        let data = br#"{"virtualHosts":[]}"#.repeat(1000);
        for c in [Coding::Identity, Coding::Gzip, Coding::Zstd] {
            let sent = c.encode(&data);
            assert_eq!(c.decode(&sent, data.len()).unwrap().as_ref(), &data[..]);
            assert!(
                matches!(
                    c.decode(&sent, data.len() - 1),
                    Err(WireError::TooLarge { .. })
                ),
                "{c:?}"
            );
        }
        assert!(matches!(
            Coding::Zstd.decode(b"not zstd", 100),
            Err(WireError::Corrupt("zstd", _))
        ));
    }

    #[test]
    fn content_and_accept_encodings() {
        assert_eq!(Coding::from_header(None), Some(Coding::Identity));
        assert_eq!(Coding::from_header(Some(b" ZSTD")), Some(Coding::Zstd));
        assert_eq!(Coding::from_header(Some(b"gzip")), Some(Coding::Gzip));
        assert_eq!(Coding::from_header(Some(b"br")), None);
        assert_eq!(Coding::from_header(Some(b"gzip, zstd")), None);
        assert_eq!(Coding::best_accepted(ACCEPTED.as_bytes()), Coding::Zstd);
        assert_eq!(Coding::best_accepted(b"gzip"), Coding::Gzip);
        assert_eq!(Coding::best_accepted(b"zstd;q=0, gzip"), Coding::Gzip);
        assert_eq!(Coding::best_accepted(b"zstd;q=0.5"), Coding::Zstd);
        assert_eq!(Coding::best_accepted(b"br"), Coding::Identity);
        assert_eq!(Coding::best_accepted(b""), Coding::Identity);
    }
}
