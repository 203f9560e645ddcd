//! Why a token was refused, and how the answer says so (RFC 6750).

use http::{HeaderValue, StatusCode};

/// Why a request's token was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No token where the route looks for one.
    Missing,
    /// Not a compact JWS, sent twice, too large, or without `exp`.
    Malformed,
    /// `iss` names no provider of the route.
    UnknownIssuer,
    /// No key with the token's `kid` (after looking for a rotated one).
    UnknownKey,
    BadSignature,
    /// `alg` not accepted, or not the type of the key its `kid` names.
    Algorithm,
    Expired,
    NotYetValid,
    WrongAudience,
    /// Valid, but without a claim (or claim value) the route requires.
    Claims,
    /// The provider's keys were never fetched: not the client's fault.
    KeysUnavailable,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Self::Missing => "jwt_missing",
            Self::Malformed => "jwt_malformed",
            Self::UnknownIssuer => "jwt_unknown_issuer",
            Self::UnknownKey => "jwt_unknown_key",
            Self::BadSignature => "jwt_bad_signature",
            Self::Algorithm => "jwt_algorithm",
            Self::Expired => "jwt_expired",
            Self::NotYetValid => "jwt_not_yet_valid",
            Self::WrongAudience => "jwt_wrong_audience",
            Self::Claims => "jwt_claims",
            Self::KeysUnavailable => "jwt_keys_unavailable",
        }
    }

    /// 401 for a missing or unacceptable token; 403 for a valid one without the claims the
    /// route requires (RFC 6750 `insufficient_scope`); 503 when the provider's keys could
    /// never be fetched, since no token could pass and the client can only retry (the
    /// caller adds `Retry-After`).
    pub fn status(self) -> StatusCode {
        match self {
            Self::Claims => StatusCode::FORBIDDEN,
            Self::KeysUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The `WWW-Authenticate` challenge (RFC 6750 §3), fixed text only: nothing from the
    /// token is echoed. `Missing` and `KeysUnavailable` carry no error attribute (the
    /// client did nothing wrong with a token); a 503 may leave the header out.
    pub fn www_authenticate(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Self::Missing | Self::KeysUnavailable => r#"Bearer realm="parapet""#,
            Self::Malformed => {
                r#"Bearer realm="parapet", error="invalid_token", error_description="the token is malformed""#
            }
            Self::UnknownIssuer => {
                r#"Bearer realm="parapet", error="invalid_token", error_description="the token issuer is not accepted""#
            }
            Self::UnknownKey => {
                r#"Bearer realm="parapet", error="invalid_token", error_description="the token signing key is unknown""#
            }
            Self::BadSignature => {
                r#"Bearer realm="parapet", error="invalid_token", error_description="the token signature is invalid""#
            }
            Self::Algorithm => {
                r#"Bearer realm="parapet", error="invalid_token", error_description="the token algorithm is not accepted""#
            }
            Self::Expired => {
                r#"Bearer realm="parapet", error="invalid_token", error_description="the token has expired""#
            }
            Self::NotYetValid => {
                r#"Bearer realm="parapet", error="invalid_token", error_description="the token is not valid yet""#
            }
            Self::WrongAudience => {
                r#"Bearer realm="parapet", error="invalid_token", error_description="the token is not meant for this audience""#
            }
            Self::Claims => {
                r#"Bearer realm="parapet", error="insufficient_scope", error_description="the token lacks a required claim""#
            }
        })
    }

    /// A sentence for the problem body.
    pub fn detail(self) -> &'static str {
        match self {
            Self::Missing => {
                "this route needs a bearer token (a JWT) from one of its identity providers, and the request carries none where the route looks for it"
            }
            Self::Malformed => {
                "the bearer token is malformed: it must be a signed JWT (three base64url parts) with an exp claim, sent once"
            }
            Self::UnknownIssuer => "the bearer token's issuer (iss) is not one this route accepts",
            Self::UnknownKey => {
                "the bearer token is signed with a key (kid) its identity provider does not publish"
            }
            Self::BadSignature => "the bearer token's signature does not verify",
            Self::Algorithm => {
                "the bearer token's signature algorithm (alg) is not one this route accepts for its key"
            }
            Self::Expired => {
                "the bearer token has expired; get a new one from the identity provider"
            }
            Self::NotYetValid => "the bearer token is not valid yet (its nbf is in the future)",
            Self::WrongAudience => {
                "the bearer token is not meant for this service (its aud names another)"
            }
            Self::Claims => {
                "the bearer token is valid but lacks a claim or claim value this route requires"
            }
            Self::KeysUnavailable => {
                "the identity provider's signing keys could not be fetched, so no token can be checked; try again shortly"
            }
        }
    }
}
