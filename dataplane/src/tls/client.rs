//! Client certificates (mutual TLS) per host: the policy a host's `client_auth` makes, built
//! once per table, and the check each request on a connection meets.
//!
//! The handshake asks for and verifies a certificate under the policy of the ClientHello's
//! server name. Requests are checked again under the policy of their own host, because the
//! handshake alone proves too little: a resumed session brings back the peer's certificates
//! without verifying them again, a revocation list may have changed since, and a connection
//! set up for one host can carry requests for another. The check verifies the chain under
//! the table in force once per connection and policy; the verdict is kept on the connection.

use std::{
    collections::HashMap,
    fmt::Write as _,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use arc_swap::ArcSwapOption;
use http::{HeaderName, HeaderValue, StatusCode};
use parapet_crds::snapshot::{ClientAuth, VirtualHost};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, RootCertStore, ServerConfig,
    SignatureScheme,
    client::danger::HandshakeSignatureValid,
    pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime},
    server::{
        ServerSessionMemoryCache, StoresServerSessions, WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use sha2::{Digest, Sha256};

/// What the gateway tells the upstream of a verified client certificate (Envoy's format).
/// Whatever a client sends under this name is dropped.
pub const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// What a handshake asks for: a CA bundle and a mode. Connections serve only hosts whose
/// policy asks the same, and sessions resume only within it.
type Class = [u8; 32];

/// The class of handshakes that ask for no certificate.
const PLAIN: Class = [0; 32];

/// One way of asking for client certificates (a CA, its revocation lists, a mode) in one
/// table. Hosts asking alike share one.
#[derive(Debug)]
pub struct ClientPolicy {
    /// Unique to this policy of this table: verdicts are kept under it, so a new table (new
    /// revocation lists) verifies again.
    id: u64,
    class: Class,
    required: bool,
    /// `None`: the CA bundle or a revocation list is unusable; every handshake and request
    /// under this policy is refused.
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// The handshake configuration, made on first use from the socket's plain one (whose
    /// certificate resolver it shares), with the plain one it was made from.
    config: OnceLock<(Arc<ServerConfig>, Arc<ServerConfig>)>,
}

impl ClientPolicy {
    /// The policy of `auth`; `host` names it in the warning when it is unusable.
    fn new(auth: &ClientAuth, host: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let (class, verifier) = match verifier(auth) {
            Ok((verifier, ca_der)) => (class_of(&ca_der, auth.required), Some(verifier)),
            Err(e) => {
                // Once per table: the handshakes that meet it fail without a word.
                tracing::warn!(host, error = %e, "client certificates of this host cannot be checked: its TLS handshakes and requests are refused until its CA Secret is fixed");
                let mut ca = b"unusable\n".to_vec();
                ca.extend_from_slice(auth.ca_pem.as_bytes());
                (class_of(&ca, auth.required), None)
            }
        };
        Self {
            id,
            class,
            required: auth.required,
            verifier,
            config: OnceLock::new(),
        }
    }

    /// Whether a certificate is required (`false`: asked for, checked when given).
    pub fn required(&self) -> bool {
        self.required
    }

    /// Whether certificates can be checked at all (its CA and revocation lists parsed).
    pub fn usable(&self) -> bool {
        self.verifier.is_some()
    }

    /// The configuration for handshakes under this policy on a socket whose plain
    /// configuration is `plain`: its certificates and ALPN, this policy's verifier, sessions
    /// of this policy's class. Made once per table for the socket it first meets (every
    /// socket of a kind shares one plain configuration).
    pub fn handshake_config(
        &self,
        plain: &Arc<ServerConfig>,
    ) -> Result<Arc<ServerConfig>, rustls::Error> {
        if let Some((from, config)) = self.config.get()
            && Arc::ptr_eq(from, plain)
        {
            return Ok(config.clone());
        }
        let config = self.make_config(plain)?;
        let _ = self.config.set((plain.clone(), config.clone()));
        Ok(config)
    }

    fn make_config(&self, plain: &ServerConfig) -> Result<Arc<ServerConfig>, rustls::Error> {
        let verifier = self
            .verifier
            .clone()
            .unwrap_or_else(|| Arc::new(RefuseAll::new(plain)));
        let mut cfg = ServerConfig::builder_with_provider(plain.crypto_provider().clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(plain.cert_resolver.clone());
        cfg.alpn_protocols = plain.alpn_protocols.clone();
        cfg.send_tls13_tickets = plain.send_tls13_tickets;
        cfg.ignore_client_order = plain.ignore_client_order;
        cfg.session_storage = sessions(self.class);
        Ok(Arc::new(cfg))
    }

    /// The check a request to a host under this policy meets. `tls`: it came over TLS;
    /// `client`: what the connection's handshake settled, when it asked for a certificate.
    /// `Ok(Some(_))`: the value of `x-forwarded-client-cert` for the verified certificate;
    /// `Ok(None)`: none was presented and the policy only asks for one.
    pub fn check(
        &self,
        tls: bool,
        client: Option<&ClientIdentity>,
    ) -> Result<Option<HeaderValue>, Refusal> {
        let Some(verifier) = &self.verifier else {
            return Err(Refusal::Unusable);
        };
        if !tls {
            return Err(Refusal::NotTls);
        }
        let Some(client) = client.filter(|c| c.class == self.class) else {
            return Err(Refusal::Misdirected);
        };
        let Some(chain) = client.chain.as_deref().filter(|c| !c.is_empty()) else {
            return if self.required {
                Err(Refusal::Missing)
            } else {
                Ok(None)
            };
        };
        let now = UnixTime::now();
        if let Some(v) = &*client.verdict.load()
            && v.policy == self.id
            && now.as_secs() <= v.until
        {
            return v.xfcc.clone().map(Some).ok_or(Refusal::Invalid);
        }
        let xfcc = match verifier.verify_client_cert(&chain[0], &chain[1..], now) {
            Ok(_) => Some(xfcc(&chain[0])),
            Err(e) => {
                tracing::debug!(error = %e, "client certificate refused");
                None
            }
        };
        client.verdict.store(Some(Arc::new(Verdict {
            policy: self.id,
            xfcc: xfcc.clone(),
            until: expiry(chain),
        })));
        xfcc.map(Some).ok_or(Refusal::Invalid)
    }
}

/// The verifier of `auth`, and the DER of its CA certificates (what its class is made of).
fn verifier(auth: &ClientAuth) -> anyhow::Result<(Arc<dyn ClientCertVerifier>, Vec<u8>)> {
    use anyhow::Context;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut auth.ca_pem.as_bytes())
        .collect::<Result<_, _>>()
        .context("the CA bundle (ca.crt) is not valid PEM")?;
    anyhow::ensure!(
        !certs.is_empty(),
        "the CA bundle (ca.crt) holds no certificate"
    );
    let mut roots = RootCertStore::empty();
    let mut der = Vec::new();
    for c in certs {
        der.extend_from_slice(&c);
        roots
            .add(c)
            .context("the CA bundle (ca.crt) holds a certificate that is not a usable CA")?;
    }
    let mut crls: Vec<CertificateRevocationListDer<'static>> = Vec::new();
    for pem in &auth.crl_pem {
        let before = crls.len();
        for crl in rustls_pemfile::crls(&mut pem.as_bytes()) {
            crls.push(crl.context("the revocation list (ca.crl) is not valid PEM")?);
        }
        // A list that cannot be read would let revoked certificates through.
        anyhow::ensure!(
            crls.len() > before,
            "the revocation list (ca.crl) holds no X509 CRL"
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // With revocation lists, every certificate in the chain needs a list from its issuer
    // (a status that cannot be known is a refusal), as Envoy does.
    let builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).with_crls(crls);
    let builder = if auth.required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    let verifier = builder
        .build()
        .context("the CA bundle or revocation list cannot verify client certificates")?;
    Ok((verifier, der))
}

fn class_of(ca: &[u8], required: bool) -> Class {
    let mut h = Sha256::new();
    h.update([u8::from(required)]);
    h.update(ca);
    h.finalize().into()
}

/// Sessions of every handshake, each class apart: a session resumes only under a policy of
/// the class it was made under (the same CA and mode), whichever table is in force, so a
/// table that only changes revocation lists keeps sessions; the requests on a resumed
/// session are checked against the lists of their table.
fn sessions(class: Class) -> Arc<dyn StoresServerSessions> {
    static SHARED: OnceLock<Arc<ServerSessionMemoryCache>> = OnceLock::new();
    let inner = SHARED.get_or_init(|| ServerSessionMemoryCache::new(1024));
    Arc::new(ClassSessions {
        inner: inner.clone(),
        class,
    })
}

/// The sessions of the handshakes that ask for no client certificate.
pub(super) fn plain_sessions() -> Arc<dyn StoresServerSessions> {
    sessions(PLAIN)
}

/// A view of the shared session cache whose keys all begin with one class: a session key a
/// client offers is looked up within the class of the handshake only.
#[derive(Debug)]
struct ClassSessions {
    inner: Arc<ServerSessionMemoryCache>,
    class: Class,
}

impl ClassSessions {
    fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.class.len() + key.len());
        k.extend_from_slice(&self.class);
        k.extend_from_slice(key);
        k
    }
}

impl StoresServerSessions for ClassSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.inner.put(self.key(&key), value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.get(&self.key(key))
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.take(&self.key(key))
    }

    fn can_cache(&self) -> bool {
        self.inner.can_cache()
    }
}

/// The handshake of a host whose CA is unusable: a certificate is required, and none is
/// accepted.
#[derive(Debug)]
struct RefuseAll {
    schemes: Vec<SignatureScheme>,
}

impl RefuseAll {
    fn new(plain: &ServerConfig) -> Self {
        Self {
            schemes: plain
                .crypto_provider()
                .signature_verification_algorithms
                .supported_schemes(),
        }
    }
}

impl ClientCertVerifier for RefuseAll {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        Err(Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ))
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ))
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

/// Why a request was refused for its client certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The host's CA is unusable.
    Unusable,
    /// The request came over plain HTTP.
    NotTls,
    /// The connection's handshake was not made for this host's policy.
    Misdirected,
    /// A certificate is required and none was presented.
    Missing,
    /// The certificate is not valid under the host's policy (untrusted, revoked, expired).
    Invalid,
}

impl Refusal {
    /// The `reason` of `parapet_rejected_requests_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::NotTls | Self::Missing => "client_cert_missing",
            Self::Misdirected => "client_cert_misdirected",
            Self::Unusable | Self::Invalid => "client_cert_invalid",
        }
    }

    /// 421 for a connection made for another host (the client retries on a new one); 403
    /// otherwise: the TLS layer, not HTTP authentication, asks for certificates, so a 401
    /// would have no challenge to offer.
    pub fn status(self) -> StatusCode {
        match self {
            Self::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            _ => StatusCode::FORBIDDEN,
        }
    }

    pub fn detail(self) -> &'static str {
        match self {
            Self::Unusable => {
                "this host cannot check client certificates (its CA Secret is unusable), so it refuses every request until that is fixed"
            }
            Self::NotTls => {
                "this host needs a client certificate, which only an HTTPS connection can present; connect over HTTPS"
            }
            Self::Misdirected => {
                "this connection was not set up for this host's client certificates; open a new connection whose TLS server name is this host"
            }
            Self::Missing => {
                "this host needs a client certificate; present one issued by the CA it trusts"
            }
            Self::Invalid => {
                "the client certificate is not accepted by this host: it is not issued by the CA the host trusts, or it is revoked or expired"
            }
        }
    }
}

/// What a TLS handshake that asked for a client certificate settled, and the verdict the
/// requests on its connection last reached.
#[derive(Debug)]
pub struct ClientIdentity {
    class: Class,
    /// The chain the client presented (end entity first), or restored from the session it
    /// resumed; `None`: it presented none.
    chain: Option<Box<[CertificateDer<'static>]>>,
    verdict: ArcSwapOption<Verdict>,
}

impl ClientIdentity {
    /// The handshake under `policy` gave the peer's chain `chain`.
    pub fn new(policy: &ClientPolicy, chain: Option<&[CertificateDer<'static>]>) -> Self {
        Self {
            class: policy.class,
            chain: chain.map(Into::into),
            verdict: ArcSwapOption::empty(),
        }
    }
}

/// A verification under one policy: the header it makes, or `None` when it failed.
#[derive(Debug)]
struct Verdict {
    policy: u64,
    xfcc: Option<HeaderValue>,
    /// Unix seconds after which it is reached again: the chain's earliest `notAfter`, so a
    /// certificate that expires during a keep-alive connection is refused from then on.
    until: u64,
}

/// The earliest `notAfter` of a chain, in Unix seconds (0, so never kept, when one does
/// not parse).
fn expiry(chain: &[CertificateDer<'static>]) -> u64 {
    chain
        .iter()
        .map(|c| {
            x509_parser::parse_x509_certificate(c).map_or(0, |(_, cert)| {
                u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0)
            })
        })
        .min()
        .unwrap_or(0)
}

/// Policies by host name, matched as the router matches hosts: exact, then the longest
/// `*.suffix`, then `*`. Every host of the set is in it (with `None` when it asks nothing),
/// so a name finds the policy of the host that serves it.
#[derive(Debug, Default)]
pub struct ClientPolicies {
    exact: HashMap<String, Option<Arc<ClientPolicy>>>,
    /// By the suffix after `*.`.
    wildcard: HashMap<String, Option<Arc<ClientPolicy>>>,
    longest_wildcard: usize,
    any: Option<Option<Arc<ClientPolicy>>>,
}

/// Policies already made for a table, by what they ask: hosts asking alike share one.
#[derive(Default)]
pub struct Made<'t>(HashMap<(&'t str, &'t [String], bool), Arc<ClientPolicy>>);

impl ClientPolicies {
    /// The policies of `hosts`; `None` when none asks for client certificates.
    pub fn of<'t>(hosts: &'t [VirtualHost], made: &mut Made<'t>) -> Option<Self> {
        if hosts.iter().all(|h| h.client_auth.is_none()) {
            return None;
        }
        let mut out = Self::default();
        for vh in hosts {
            let policy = vh.client_auth.as_ref().map(|a| {
                made.0
                    .entry((a.ca_pem.as_str(), a.crl_pem.as_slice(), a.required))
                    .or_insert_with(|| Arc::new(ClientPolicy::new(a, &vh.domain)))
                    .clone()
            });
            let domain = vh.domain.to_ascii_lowercase();
            if domain == "*" {
                out.any.get_or_insert(policy);
            } else if let Some(suffix) = domain.strip_prefix("*.") {
                out.longest_wildcard = out.longest_wildcard.max(suffix.len());
                out.wildcard.entry(suffix.to_string()).or_insert(policy);
            } else {
                out.exact.entry(domain).or_insert(policy);
            }
        }
        Some(out)
    }

    /// The policy of the host serving `name` (lower case, no port), if it asks for client
    /// certificates.
    pub fn lookup(&self, name: &str) -> Option<&Arc<ClientPolicy>> {
        if let Some(p) = self.exact.get(name) {
            return p.as_ref();
        }
        if !self.wildcard.is_empty() {
            for (dot, _) in name.match_indices('.').filter(|&(i, _)| i > 0) {
                let suffix = &name[dot + 1..];
                if suffix.len() > self.longest_wildcard {
                    continue;
                }
                if let Some(p) = self.wildcard.get(suffix) {
                    return p.as_ref();
                }
            }
        }
        self.any.as_ref()?.as_ref()
    }
}

/// `x-forwarded-client-cert` for a verified end-entity certificate, as Envoy writes it:
/// `Hash=<hex SHA-256 of the DER>;Subject="<RFC 4514>";URI=<each URI SAN>;DNS=<each DNS SAN>`.
pub fn xfcc(leaf: &CertificateDer<'_>) -> HeaderValue {
    let mut out = String::from("Hash=");
    for b in Sha256::digest(leaf) {
        let _ = write!(out, "{b:02x}");
    }
    let hash_only = out.clone();
    if let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) {
        out.push_str(";Subject=\"");
        rfc4514(cert.subject(), &mut out);
        out.push('"');
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            let names = &san.value.general_names;
            for n in names {
                if let x509_parser::extensions::GeneralName::URI(u) = n {
                    element(&mut out, "URI", u);
                }
            }
            for n in names {
                if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                    element(&mut out, "DNS", d);
                }
            }
        }
    }
    HeaderValue::try_from(out).unwrap_or_else(|_| {
        HeaderValue::try_from(hash_only).expect("hex digits make a header value")
    })
}

/// `;key=value`, quoted when the value holds a separator. Names with characters a header
/// cannot carry (never in a valid DNS name or URI) are left out.
fn element(out: &mut String, key: &str, value: &str) {
    if value.is_empty() || !value.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return;
    }
    let _ = write!(out, ";{key}=");
    if value.contains([',', ';', '=', '"', '\\']) {
        out.push('"');
        for c in value.chars() {
            if matches!(c, '"' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    } else {
        out.push_str(value);
    }
}

/// A distinguished name as RFC 4514 writes it: the last RDN first, `,` between RDNs, `+`
/// within one, short names for the usual attributes and the dotted OID with the value's DER
/// in hex for others. Every byte outside printable ASCII is escaped (`\XX`), so the result
/// fits a header.
fn rfc4514(name: &x509_parser::x509::X509Name<'_>, out: &mut String) {
    for (i, rdn) in name
        .iter_rdn()
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .enumerate()
    {
        if i > 0 {
            out.push(',');
        }
        for (j, atv) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let oid = atv.attr_type().to_id_string();
            let short = match oid.as_str() {
                "2.5.4.3" => Some("CN"),
                "2.5.4.6" => Some("C"),
                "2.5.4.7" => Some("L"),
                "2.5.4.8" => Some("ST"),
                "2.5.4.9" => Some("STREET"),
                "2.5.4.10" => Some("O"),
                "2.5.4.11" => Some("OU"),
                "0.9.2342.19200300.100.1.25" => Some("DC"),
                "0.9.2342.19200300.100.1.1" => Some("UID"),
                _ => None,
            };
            match (short, atv.as_str()) {
                (Some(short), Ok(value)) => {
                    out.push_str(short);
                    out.push('=');
                    escape_value(value, out);
                }
                (short, _) => {
                    out.push_str(short.unwrap_or(&oid));
                    out.push_str("=#");
                    use x509_parser::asn1_rs::ToDer;
                    for b in atv.attr_value().to_der_vec().unwrap_or_default() {
                        let _ = write!(out, "{b:02x}");
                    }
                }
            }
        }
    }
}

fn escape_value(value: &str, out: &mut String) {
    let last = value.len().saturating_sub(1);
    for (i, b) in value.bytes().enumerate() {
        match b {
            b'"' | b'+' | b',' | b';' | b'<' | b'>' | b'\\' => {
                out.push('\\');
                out.push(char::from(b));
            }
            b'#' if i == 0 => out.push_str("\\#"),
            b' ' if i == 0 || i == last => out.push_str("\\ "),
            0x20..=0x7e => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "\\{b:02X}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parapet_crds::snapshot::{ClientAuth, VirtualHost};
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer,
        DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair,
        RevokedCertParams, SanType, SerialNumber,
    };
    use rustls::{pki_types::CertificateDer, server::StoresServerSessions};
    use sha2::{Digest, Sha256};

    use super::{ClassSessions, ClientIdentity, ClientPolicies, ClientPolicy, Made, Refusal};

    struct Ca {
        pem: String,
        issuer: CertifiedIssuer<'static, KeyPair>,
    }

    fn ca(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca {
            pem: issuer.pem(),
            issuer,
        }
    }

    /// A client certificate with serial `serial`, subject `CN=cn,O=Bank, Inc.` and a DNS and
    /// a URI name.
    fn client(ca: &Ca, cn: &str, serial: u64) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Bank, Inc.");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = vec![
            SanType::DnsName("client.bank.example".try_into().unwrap()),
            SanType::URI("spiffe://bank.example/teller".try_into().unwrap()),
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(SerialNumber::from(serial));
        let cert = params
            .signed_by(&KeyPair::generate().unwrap(), &ca.issuer)
            .unwrap();
        cert.der().clone()
    }

    fn crl(ca: &Ca, revoked: &[u64]) -> String {
        CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2100, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&ca.issuer)
        .unwrap()
        .pem()
        .unwrap()
    }

    fn policy(ca: &Ca, crls: Vec<String>, required: bool) -> ClientPolicy {
        ClientPolicy::new(
            &ClientAuth {
                ca_pem: ca.pem.clone(),
                crl_pem: crls,
                required,
            },
            "test.example",
        )
    }

    fn connection(policy: &ClientPolicy, chain: &[CertificateDer<'static>]) -> ClientIdentity {
        ClientIdentity::new(policy, (!chain.is_empty()).then_some(chain))
    }

    #[test]
    fn a_verified_certificate_goes_upstream_as_envoy_writes_it() {
        let ca = ca("Bank CA");
        let leaf = client(&ca, "teller-1", 7);
        let p = policy(&ca, Vec::new(), true);
        let xfcc = p
            .check(true, Some(&connection(&p, std::slice::from_ref(&leaf))))
            .unwrap()
            .unwrap();
        let hash = hex::encode(Sha256::digest(&leaf));
        assert_eq!(
            xfcc.to_str().unwrap(),
            format!(
                "Hash={hash};Subject=\"CN=teller-1,O=Bank\\, Inc.\";URI=spiffe://bank.example/teller;DNS=client.bank.example"
            )
        );
    }

    /// A kept verdict lasts no longer than the certificate: one that expires during a
    /// keep-alive connection is refused from its `notAfter` on.
    #[test]
    fn a_kept_verdict_ends_when_the_certificate_expires() {
        let ca = ca("Bank CA");
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "brief");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let expires = std::time::SystemTime::now() + std::time::Duration::from_secs(2);
        params.not_after = expires.into();
        let leaf = params
            .signed_by(&KeyPair::generate().unwrap(), &ca.issuer)
            .unwrap()
            .der()
            .clone();
        let p = policy(&ca, Vec::new(), true);
        let conn = connection(&p, &[leaf]);
        assert!(p.check(true, Some(&conn)).unwrap().is_some());
        let deadline = std::time::SystemTime::now() + std::time::Duration::from_secs(10);
        while p.check(true, Some(&conn)).is_ok() {
            assert!(
                std::time::SystemTime::now() < deadline,
                "the expired certificate is still accepted"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(std::time::SystemTime::now() >= expires);
        assert_eq!(p.check(true, Some(&conn)), Err(Refusal::Invalid));
    }

    #[test]
    fn a_connection_verifies_once_per_policy_and_again_under_a_new_table() {
        let ca = ca("Bank CA");
        let leaf = client(&ca, "teller-1", 7);
        let first = policy(&ca, vec![crl(&ca, &[99])], true);
        let conn = connection(&first, &[leaf]);
        assert!(first.check(true, Some(&conn)).unwrap().is_some());
        let kept = conn.verdict.load_full().expect("a verdict is kept");
        assert_eq!(kept.policy, first.id);
        assert!(first.check(true, Some(&conn)).unwrap().is_some());
        assert!(
            Arc::ptr_eq(&kept, &conn.verdict.load_full().unwrap()),
            "the second request reuses the verdict"
        );
        // The next table revokes the certificate: the same connection (a resumed session
        // alike) is refused under it.
        let revoked = policy(&ca, vec![crl(&ca, &[7])], true);
        assert_eq!(revoked.class, first.class, "same CA and mode: same class");
        assert_eq!(revoked.check(true, Some(&conn)), Err(Refusal::Invalid));
        assert_eq!(revoked.check(true, Some(&conn)), Err(Refusal::Invalid));
    }

    #[test]
    fn certificates_of_another_ca_or_unknown_revocation_status_are_refused() {
        let (ca_a, ca_b) = (ca("A"), ca("B"));
        let p = policy(&ca_a, Vec::new(), true);
        let stranger = connection(&p, &[client(&ca_b, "x", 1)]);
        assert_eq!(p.check(true, Some(&stranger)), Err(Refusal::Invalid));
        // A revocation list of another issuer says nothing of this one's certificates.
        let p = policy(&ca_a, vec![crl(&ca_b, &[])], true);
        let conn = connection(&p, &[client(&ca_a, "x", 1)]);
        assert_eq!(p.check(true, Some(&conn)), Err(Refusal::Invalid));
    }

    #[test]
    fn missing_misdirected_plain_and_unusable_are_refused_as_such() {
        let (ca_a, ca_b) = (ca("A"), ca("B"));
        let require = policy(&ca_a, Vec::new(), true);
        let request = policy(&ca_a, Vec::new(), false);
        assert_eq!(
            require.check(true, Some(&connection(&require, &[]))),
            Err(Refusal::Missing)
        );
        assert_eq!(
            request.check(true, Some(&connection(&request, &[]))),
            Ok(None)
        );
        // A connection whose handshake asked nothing, or asked for another CA or mode.
        let leaf = client(&ca_a, "x", 1);
        assert_eq!(require.check(true, None), Err(Refusal::Misdirected));
        let other = policy(&ca_b, Vec::new(), true);
        assert_eq!(
            require.check(true, Some(&connection(&other, std::slice::from_ref(&leaf)))),
            Err(Refusal::Misdirected)
        );
        assert_eq!(
            require.check(true, Some(&connection(&request, &[leaf]))),
            Err(Refusal::Misdirected)
        );
        assert_eq!(require.check(false, None), Err(Refusal::NotTls));
        assert_eq!(request.check(false, None), Err(Refusal::NotTls));
        for broken in ["", "not PEM"] {
            let auth = ClientAuth {
                ca_pem: broken.to_string(),
                crl_pem: Vec::new(),
                required: false,
            };
            let p = ClientPolicy::new(&auth, "broken.example");
            assert!(!p.usable());
            assert_eq!(
                p.check(true, Some(&connection(&p, &[]))),
                Err(Refusal::Unusable)
            );
        }
        let bad_crl = ClientAuth {
            ca_pem: ca_a.pem.clone(),
            crl_pem: vec!["-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n".into()],
            required: true,
        };
        assert!(
            !ClientPolicy::new(&bad_crl, "x").usable(),
            "a CRL that does not parse"
        );
        for r in [
            Refusal::Unusable,
            Refusal::NotTls,
            Refusal::Misdirected,
            Refusal::Missing,
            Refusal::Invalid,
        ] {
            assert!(r.label().starts_with("client_cert_"));
            assert!(r.detail().len() > 40);
        }
        assert_eq!(Refusal::Misdirected.status().as_u16(), 421);
        assert_eq!(Refusal::Missing.status().as_u16(), 403);
    }

    #[test]
    fn hosts_find_their_policy_as_the_router_finds_them() {
        let ca = ca("A");
        let auth = |required| {
            Some(ClientAuth {
                ca_pem: ca.pem.clone(),
                crl_pem: Vec::new(),
                required,
            })
        };
        let vh = |domain: &str, client_auth| VirtualHost {
            domain: domain.to_string(),
            tls: None,
            client_auth,
            routes: Vec::new(),
        };
        let hosts = vec![
            vh("api.example", auth(true)),
            vh("open.example", None),
            vh("*.b.example", None),
            vh("*.example", auth(true)),
            vh("other.example", auth(false)),
            vh("*", None),
        ];
        let mut made = Made::default();
        let ps = ClientPolicies::of(&hosts, &mut made).unwrap();
        let found = |name: &str| ps.lookup(name).map(|p| p.required());
        assert_eq!(found("api.example"), Some(true));
        assert_eq!(found("open.example"), None, "an exact host asking nothing");
        assert_eq!(
            found("x.b.example"),
            None,
            "the most specific wildcard decides"
        );
        assert_eq!(found("x.y.example"), Some(true));
        assert_eq!(found("other.example"), Some(false));
        assert_eq!(found("example"), None, "`*` asks nothing");
        assert_eq!(found(""), None);
        assert!(
            Arc::ptr_eq(
                ps.lookup("api.example").unwrap(),
                ps.lookup("a.example").unwrap()
            ),
            "hosts asking alike share one policy"
        );
        assert!(
            ClientPolicies::of(&[vh("a.example", None)], &mut made).is_none(),
            "nothing to look up when no host asks"
        );
    }

    #[test]
    fn sessions_of_one_class_are_not_found_under_another() {
        let ca = ca("A");
        let (require, request) = (
            policy(&ca, Vec::new(), true),
            policy(&ca, Vec::new(), false),
        );
        let inner = rustls::server::ServerSessionMemoryCache::new(16);
        let view = |class| ClassSessions {
            inner: inner.clone(),
            class,
        };
        let (a, b, plain) = (view(require.class), view(request.class), view(super::PLAIN));
        assert!(a.put(b"ticket".to_vec(), b"session".to_vec()));
        assert_eq!(a.get(b"ticket"), Some(b"session".to_vec()));
        assert_eq!(b.get(b"ticket"), None);
        assert_eq!(plain.get(b"ticket"), None);
        // A client naming the whole key in another class finds nothing either.
        let mut whole = require.class.to_vec();
        whole.extend_from_slice(b"ticket");
        assert_eq!(plain.take(&whole), None);
        assert_eq!(a.take(b"ticket"), Some(b"session".to_vec()));
    }

    #[test]
    fn subjects_escape_what_rfc_4514_and_headers_need() {
        let ca = ca("A");
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CountryName, "DE");
        params
            .distinguished_name
            .push(DnType::CommonName, " #a+b;\"c\" Zoë\u{1}");
        let leaf = params
            .signed_by(&KeyPair::generate().unwrap(), &ca.issuer)
            .unwrap();
        let v = super::xfcc(leaf.der());
        let s = v.to_str().unwrap();
        assert!(
            s.ends_with(";Subject=\"CN=\\ #a\\+b\\;\\\"c\\\" Zo\\C3\\AB\\01,C=DE\""),
            "{s}"
        );
    }
}
