//! The snapshot channel's own small PKI: a CA that the operator keeps in a Secret, a server
//! certificate for the data planes' admin port and a client certificate for the operator.
//! rcgen makes them (ECDSA P-256, ring); x509-parser reads them back to decide when a leaf
//! must be issued again. Pure: no I/O, time passed in.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
};
use time::OffsetDateTime;
use x509_parser::{extensions::GeneralName, prelude::FromDer};

/// How long the CA is valid. Replacing it means restarting every component, so it is long.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a leaf (server or client certificate) is valid.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// A leaf is issued again once less than this is left: a data-plane pod reads its
/// certificate at start, so pods started before a re-issue keep the old one this long.
pub const RENEW_BEFORE: Duration = Duration::from_secs(120 * 24 * 3600);
/// Certificates start a little in the past, for clocks that lag the operator's.
const BACKDATE: Duration = Duration::from_secs(3600);

/// The common name of the operator's client certificate.
pub const CLIENT_NAME: &str = "parapet-operator";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0} is not a PEM certificate")]
    NotACertificate(&'static str),
    #[error("{0} is not a PEM private key")]
    NotAKey(&'static str),
    #[error("{0} is not a CA certificate")]
    NotACa(&'static str),
    #[error("the CA key does not fit the CA certificate")]
    KeyMismatch,
}

/// A certificate and its private key, PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// The snapshot CA: its PEM (what the Secret holds) and the issuer made from it.
pub struct Ca {
    pem: Pem,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

fn offset(now: OffsetDateTime, d: Duration) -> OffsetDateTime {
    now + time::Duration::try_from(d).unwrap_or(time::Duration::ZERO)
}

impl Ca {
    /// A new self-signed CA that may sign leaves only (path length 0).
    pub fn generate(now: OffsetDateTime) -> Result<Ca, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "parapet snapshot CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = offset(now, Duration::ZERO) - BACKDATE;
        params.not_after = offset(now, CA_VALIDITY);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ca::load(&cert.pem(), &key.serialize_pem())
    }

    /// The CA from what a Secret holds.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(|_| PkiError::NotAKey("ca.key"))?;
        let der = pem_der(cert_pem).ok_or(PkiError::NotACertificate("ca.crt"))?;
        let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(&der)
            .map_err(|_| PkiError::NotACertificate("ca.crt"))?;
        if !parsed.is_ca() {
            return Err(PkiError::NotACa("ca.crt"));
        }
        if parsed.public_key().raw != key.subject_public_key_info() {
            return Err(PkiError::KeyMismatch);
        }
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|_| PkiError::NotACertificate("ca.crt"))?;
        Ok(Ca {
            pem: Pem {
                cert: cert_pem.to_string(),
                key: key_pem.to_string(),
            },
            issuer,
        })
    }

    pub fn pem(&self) -> &Pem {
        &self.pem
    }

    /// The data planes' admin certificate: `dns_name` as SAN and CN, server auth only (so
    /// it cannot pass for the operator's client certificate).
    pub fn issue_server(&self, dns_name: &str, now: OffsetDateTime) -> Result<Pem, PkiError> {
        self.issue(
            vec![dns_name.to_string()],
            dns_name,
            ExtendedKeyUsagePurpose::ServerAuth,
            now,
        )
    }

    /// The operator's client certificate: client auth only.
    pub fn issue_client(&self, now: OffsetDateTime) -> Result<Pem, PkiError> {
        self.issue(
            Vec::new(),
            CLIENT_NAME,
            ExtendedKeyUsagePurpose::ClientAuth,
            now,
        )
    }

    fn issue(
        &self,
        sans: Vec<String>,
        common_name: &str,
        usage: ExtendedKeyUsagePurpose,
        now: OffsetDateTime,
    ) -> Result<Pem, PkiError> {
        let mut params = CertificateParams::new(sans)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - BACKDATE;
        params.not_after = offset(now, LEAF_VALIDITY);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    /// Why `leaf_pem` must be issued again for `dns_name` (`None`: it is fine): unreadable,
    /// not signed by this CA, another name, or less than [`RENEW_BEFORE`] left.
    pub fn reissue_reason(
        &self,
        leaf_pem: &str,
        dns_name: Option<&str>,
        now: OffsetDateTime,
    ) -> Option<String> {
        let Some(der) = pem_der(leaf_pem) else {
            return Some("it holds no PEM certificate".into());
        };
        let Ok((_, leaf)) = x509_parser::certificate::X509Certificate::from_der(&der) else {
            return Some("its certificate cannot be read".into());
        };
        let ca_der = pem_der(&self.pem.cert)?;
        let (_, ca) = x509_parser::certificate::X509Certificate::from_der(&ca_der).ok()?;
        if leaf.verify_signature(Some(ca.public_key())).is_err() {
            return Some("it was not issued by the current CA".into());
        }
        if let Some(name) = dns_name {
            let names: Vec<String> = leaf
                .subject_alternative_name()
                .ok()
                .flatten()
                .map(|san| {
                    san.value
                        .general_names
                        .iter()
                        .filter_map(|g| match g {
                            GeneralName::DNSName(n) => Some(n.to_string()),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            if !names.iter().any(|n| n == name) {
                return Some(format!("it names {names:?}, not {name:?}"));
            }
        }
        let not_after = leaf.validity().not_after.to_datetime();
        if not_after - now < time::Duration::try_from(RENEW_BEFORE).unwrap_or_default() {
            return Some(format!("it expires at {not_after}"));
        }
        None
    }
}

/// When `cert_pem` expires (`None`: unreadable).
pub fn not_after(cert_pem: &str) -> Option<OffsetDateTime> {
    let der = pem_der(cert_pem)?;
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(&der).ok()?;
    Some(c.validity().not_after.to_datetime())
}

/// The DER of the first certificate in `pem`.
fn pem_der(pem: &str) -> Option<Vec<u8>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .next()?
        .ok()
        .map(|c| c.to_vec())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::{
        client::{WebPkiServerVerifier, danger::ServerCertVerifier},
        pki_types::{CertificateDer, ServerName, UnixTime},
        server::WebPkiClientVerifier,
    };

    use super::*;

    const NAME: &str = "parapet-dataplane-admin.parapet.svc";

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from(pem_der(pem).expect("a certificate"))
    }

    fn roots(ca: &Ca) -> Arc<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der(&ca.pem().cert)).unwrap();
        Arc::new(roots)
    }

    fn unix(t: OffsetDateTime) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(t.unix_timestamp() as u64))
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn verify_server(ca: &Ca, leaf: &str, name: &str, at: OffsetDateTime) -> Result<(), String> {
        let v = WebPkiServerVerifier::builder_with_provider(roots(ca), provider())
            .build()
            .unwrap();
        v.verify_server_cert(
            &der(leaf),
            &[],
            &ServerName::try_from(name.to_string()).unwrap(),
            &[],
            unix(at),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    }

    fn verify_client(ca: &Ca, leaf: &str, at: OffsetDateTime) -> Result<(), String> {
        let v = WebPkiClientVerifier::builder_with_provider(roots(ca), provider())
            .build()
            .unwrap();
        v.verify_client_cert(&der(leaf), &[], unix(at))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn leaves_chain_to_the_ca_with_the_right_names_and_usages() {
        let now = OffsetDateTime::now_utc();
        let ca = Ca::generate(now).unwrap();
        let server = ca.issue_server(NAME, now).unwrap();
        let client = ca.issue_client(now).unwrap();

        verify_server(&ca, &server.cert, NAME, now).unwrap();
        verify_client(&ca, &client.cert, now).unwrap();
        // The name is checked, and each leaf has only its own usage.
        assert!(verify_server(&ca, &server.cert, "other.parapet.svc", now).is_err());
        assert!(verify_client(&ca, &server.cert, now).is_err());
        assert!(verify_server(&ca, &client.cert, NAME, now).is_err());
        // Another CA's leaves do not verify.
        let other = Ca::generate(now).unwrap();
        assert!(verify_server(&other, &server.cert, NAME, now).is_err());
        assert!(verify_client(&other, &client.cert, now).is_err());
        // Valid from a little before now to LEAF_VALIDITY after.
        let end = not_after(&server.cert).unwrap();
        assert!((end - offset(now, LEAF_VALIDITY)).abs() < time::Duration::seconds(2));
        assert!(verify_server(&ca, &server.cert, NAME, end + time::Duration::DAY).is_err());
        // The CA cannot sign intermediate CAs and lives ten years.
        let ca_end = not_after(&ca.pem().cert).unwrap();
        assert!((ca_end - offset(now, CA_VALIDITY)).abs() < time::Duration::seconds(2));
    }

    #[test]
    fn a_ca_survives_a_round_trip_through_its_pem() {
        let now = OffsetDateTime::now_utc();
        let ca = Ca::generate(now).unwrap();
        let again = Ca::load(&ca.pem().cert, &ca.pem().key).unwrap();
        let leaf = again.issue_server(NAME, now).unwrap();
        verify_server(&ca, &leaf.cert, NAME, now).unwrap();

        let other = Ca::generate(now).unwrap();
        assert!(matches!(
            Ca::load(&ca.pem().cert, &other.pem().key),
            Err(PkiError::KeyMismatch)
        ));
        assert!(matches!(
            Ca::load("garbage", &ca.pem().key),
            Err(PkiError::NotACertificate("ca.crt"))
        ));
        assert!(matches!(
            Ca::load(&ca.pem().cert, "garbage"),
            Err(PkiError::NotAKey("ca.key"))
        ));
        let leaf = ca.issue_server(NAME, now).unwrap();
        assert!(matches!(
            Ca::load(&leaf.cert, &leaf.key),
            Err(PkiError::NotACa("ca.crt"))
        ));
    }

    #[test]
    fn leaves_are_issued_again_before_they_expire() {
        let now = OffsetDateTime::now_utc();
        let ca = Ca::generate(now).unwrap();
        let leaf = ca.issue_server(NAME, now).unwrap();
        assert_eq!(ca.reissue_reason(&leaf.cert, Some(NAME), now), None);
        let just_before = offset(now, LEAF_VALIDITY - RENEW_BEFORE) - time::Duration::DAY;
        assert_eq!(ca.reissue_reason(&leaf.cert, Some(NAME), just_before), None);
        let due = offset(now, LEAF_VALIDITY - RENEW_BEFORE) + time::Duration::DAY;
        let reason = ca.reissue_reason(&leaf.cert, Some(NAME), due).unwrap();
        assert!(reason.contains("expires at"), "{reason}");
        // At the renewal point the old leaf is still valid, and so is a new one.
        verify_server(&ca, &leaf.cert, NAME, due).unwrap();
        let renewed = ca.issue_server(NAME, due).unwrap();
        assert_eq!(ca.reissue_reason(&renewed.cert, Some(NAME), due), None);

        let reason = ca
            .reissue_reason(&leaf.cert, Some("other.parapet.svc"), now)
            .unwrap();
        assert!(reason.contains("other.parapet.svc"), "{reason}");
        let other = Ca::generate(now).unwrap();
        let foreign = other.issue_server(NAME, now).unwrap();
        let reason = ca.reissue_reason(&foreign.cert, Some(NAME), now).unwrap();
        assert!(reason.contains("not issued by the current CA"), "{reason}");
        assert!(ca.reissue_reason("nothing", Some(NAME), now).is_some());
        // Client leaves have no name to check.
        let client = ca.issue_client(now).unwrap();
        assert_eq!(ca.reissue_reason(&client.cert, None, now), None);
    }
}
