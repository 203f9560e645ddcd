//! The compact JWS form, read without trusting it: its three parts, its header (`alg`,
//! `kid`) and, when a route has several providers, the `iss` that picks one. Nothing read
//! here is believed until the signature is checked; it only says which key and which
//! provider's rules to check it with.

use std::borrow::Cow;

use serde::Deserialize;

use super::refusal::Refusal;

/// Tokens longer than this are refused before any decoding (8 KiB: identity providers'
/// tokens are well under 2 KiB, and every byte is base64-decoded and parsed at least once).
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The signature algorithms a provider may accept: asymmetric only. `none` and the HMACs
/// are not representable, so no configuration can let them through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
}

/// The kind of public key an algorithm verifies with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl Alg {
    /// The JOSE name (`RS256`…); `None` for anything else, `none` and `HS256` included.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "RS256" => Self::Rs256,
            "RS384" => Self::Rs384,
            "RS512" => Self::Rs512,
            "PS256" => Self::Ps256,
            "PS384" => Self::Ps384,
            "PS512" => Self::Ps512,
            "ES256" => Self::Es256,
            "ES384" => Self::Es384,
            "EdDSA" => Self::EdDsa,
            _ => return None,
        })
    }

    pub fn jwt(self) -> jsonwebtoken::Algorithm {
        use jsonwebtoken::Algorithm as A;
        match self {
            Self::Rs256 => A::RS256,
            Self::Rs384 => A::RS384,
            Self::Rs512 => A::RS512,
            Self::Ps256 => A::PS256,
            Self::Ps384 => A::PS384,
            Self::Ps512 => A::PS512,
            Self::Es256 => A::ES256,
            Self::Es384 => A::ES384,
            Self::EdDsa => A::EdDSA,
        }
    }

    pub fn key_kind(self) -> KeyKind {
        match self {
            Self::Rs256 | Self::Rs384 | Self::Rs512 | Self::Ps256 | Self::Ps384 | Self::Ps512 => {
                KeyKind::Rsa
            }
            Self::Es256 => KeyKind::P256,
            Self::Es384 => KeyKind::P384,
            Self::EdDsa => KeyKind::Ed25519,
        }
    }
}

/// A token's three base64url parts, checked for shape only.
#[derive(Clone, Copy, Debug)]
pub struct Parts<'t> {
    pub header: &'t str,
    pub payload: &'t str,
}

/// Splits `header.payload.signature`; anything else (a JWE's five parts, stray characters,
/// padding) is `Malformed`. The signature may be empty here, so that `alg: none` is refused
/// for its algorithm, not its shape.
pub fn split(token: &str) -> Result<Parts<'_>, Refusal> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(Refusal::Malformed);
    }
    let mut it = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (it.next(), it.next(), it.next(), it.next())
    else {
        return Err(Refusal::Malformed);
    };
    let b64 = |s: &str| s.bytes().all(is_b64url);
    if header.is_empty() || payload.is_empty() || !b64(header) || !b64(payload) || !b64(signature) {
        return Err(Refusal::Malformed);
    }
    Ok(Parts { header, payload })
}

/// The JOSE header fields the check reads. Unknown fields are ignored, as RFC 7515 asks,
/// except `crit`: it names extensions the verifier must understand, and this one
/// understands none.
#[derive(Deserialize)]
struct RawHeader<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(borrow, default)]
    kid: Option<Cow<'a, str>>,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

/// The header as the check uses it.
#[derive(Debug)]
pub struct Header {
    /// `None`: an algorithm this check never accepts (`none`, `HS256`, an unknown name).
    pub alg: Option<Alg>,
    pub kid: Option<Box<str>>,
}

pub fn header(part: &str) -> Result<Header, Refusal> {
    let json = b64url_decode(part).ok_or(Refusal::Malformed)?;
    let raw: RawHeader<'_> = serde_json::from_slice(&json).map_err(|_| Refusal::Malformed)?;
    if raw.crit.is_some() {
        return Err(Refusal::Malformed);
    }
    Ok(Header {
        alg: Alg::parse(&raw.alg),
        kid: raw.kid.map(|k| Box::from(k.as_ref())),
    })
}

/// The `iss` a payload names, unverified: only used to pick which provider checks it.
/// `None` when there is none or it is not a string.
pub fn issuer(payload: &str) -> Result<Option<String>, Refusal> {
    #[derive(Deserialize)]
    struct Peek {
        #[serde(default)]
        iss: Option<serde_json::Value>,
    }
    let json = b64url_decode(payload).ok_or(Refusal::Malformed)?;
    let peek: Peek = serde_json::from_slice(&json).map_err(|_| Refusal::Malformed)?;
    Ok(match peek.iss {
        Some(serde_json::Value::String(s)) => Some(s),
        _ => None,
    })
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn b64url_value(b: u8) -> Option<u32> {
    Some(match b {
        b'A'..=b'Z' => b - b'A',
        b'a'..=b'z' => b - b'a' + 26,
        b'0'..=b'9' => b - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => return None,
    } as u32)
}

/// Unpadded base64url (RFC 7515 §2). `None` on any other character or an impossible length.
pub fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3 + 2);
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (i, &b) in chunk.iter().enumerate() {
            acc |= b64url_value(b)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

/// Key material in a JWKS: base64url, tolerating the padding some publishers add.
pub fn b64url_decode_lenient(s: &str) -> Option<Vec<u8>> {
    b64url_decode(s.trim_end_matches('='))
}
