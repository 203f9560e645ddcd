//! Query strings, read the way HTML forms write them.
//!
//! `a=1&b=x%20y&flag`: pairs are separated by `&`, a name ends at the first `=`, a pair
//! without `=` has the empty value, empty pairs are skipped. Names and values are
//! percent-decoded and `+` reads as a space; a `%` not followed by two hex digits stays as
//! it is, and bytes that do not decode to UTF-8 are replaced with U+FFFD. Nothing is
//! allocated unless a name or value holds a `%` or a `+`.

use std::borrow::Cow;

/// The `(name, value)` pairs of a query string, in order and still encoded: decode each
/// with [`decode`] when needed.
pub fn pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// Percent-decodes one name or value; see the module docs.
pub fn decode(raw: &str) -> Cow<'_, str> {
    match decode_bytes(raw) {
        Cow::Borrowed(_) => Cow::Borrowed(raw),
        Cow::Owned(out) => match String::from_utf8(out) {
            Ok(s) => Cow::Owned(s),
            Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
        },
    }
}

/// Percent-decodes one name or value to bytes, whatever they are (a credential need not
/// be UTF-8).
pub fn decode_bytes(raw: &str) -> Cow<'_, [u8]> {
    if !raw.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(raw.as_bytes());
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let digit = |at: usize| bytes.get(at).copied().and_then(hex);
                if let (Some(hi), Some(lo)) = (digit(i + 1), digit(i + 2)) {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_handles_percent_plus_and_broken_escapes() {
        let cases = [
            ("plain", "plain"),
            ("a%20b", "a b"),
            ("a+b", "a b"),
            ("%41%62", "Ab"),
            ("100%", "100%"),
            ("%4", "%4"),
            ("%zz", "%zz"),
            ("%e2%82%ac", "€"),
            ("%ff", "\u{fffd}"),
            ("%%41", "%A"),
            ("", ""),
        ];
        for (raw, want) in cases {
            assert_eq!(decode(raw), want, "{raw}");
        }
    }

    #[test]
    fn decode_borrows_when_there_is_nothing_to_decode() {
        assert!(matches!(decode("abc"), Cow::Borrowed("abc")));
    }

    #[test]
    fn pairs_split_on_ampersand_and_first_equals() {
        let got: Vec<(String, String)> = pairs("a=1&&b=x=y&flag&c%3D=%3D&=v")
            .map(|(n, v)| (decode(n).into_owned(), decode(v).into_owned()))
            .collect();
        let want = [
            ("a", "1"),
            ("b", "x=y"),
            ("flag", ""),
            ("c=", "="),
            ("", "v"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, want);
    }
}
