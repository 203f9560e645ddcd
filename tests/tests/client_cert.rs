//! Client certificates (mutual TLS) per host, through the real data plane in standalone
//! mode: the handshake asks each host's CA, requests are checked again under their own host
//! (resumed sessions and revocation lists changed since included), and the backend learns
//! the verified certificate from `x-forwarded-client-cert`, never from the client.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use parapet_tests::{
    admin, backend::Backend, client::Client, dataplane::Dataplane, pki::Pki, pool_yaml, standalone,
    wait_for,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair,
    RevokedCertParams, SanType, SerialNumber,
};
use rustls::{
    ClientConfig, HandshakeKind,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName},
};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A client-certificate CA that can also revoke.
struct ClientCa {
    pem: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A client certificate and its key.
#[derive(Clone)]
struct ClientCert {
    der: CertificateDer<'static>,
    key: Arc<Vec<u8>>,
}

impl ClientCa {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self {
            pem: issuer.pem(),
            issuer,
        }
    }

    /// `CN=cn,O=Bank`, with serial `serial`, DNS name `cn.clients.example` and URI
    /// `spiffe://bank.example/cn`.
    fn client(&self, cn: &str, serial: u64) -> ClientCert {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Bank");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = vec![
            SanType::DnsName(format!("{cn}.clients.example").try_into().unwrap()),
            SanType::URI(format!("spiffe://bank.example/{cn}").try_into().unwrap()),
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(SerialNumber::from(serial));
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        ClientCert {
            der: cert.der().clone(),
            key: Arc::new(key.serialize_der()),
        }
    }

    /// A CRL revoking the certificates with these serials.
    fn crl(&self, revoked: &[u64]) -> String {
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
        .signed_by(&self.issuer)
        .unwrap()
        .pem()
        .unwrap()
    }
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}

fn secret(name: &str, keys: &[(&str, &str)]) -> String {
    let mut out =
        format!("---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\nstringData:\n");
    for (k, v) in keys {
        out.push_str(&format!("  {k}: |\n{}", indent(v)));
    }
    out
}

fn route(name: &str, host: &str, tls: &str) -> String {
    format!(
        "---\napiVersion: parapet.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{name: {name}}}\nspec:\n  hosts: [{host}]\n  tls: {tls}\n  rules:\n    - backends: [{{pool: p}}]\n"
    )
}

/// The server's side of every test: one certificate for the hosts, issued by `server`.
struct Server {
    pki: Pki,
    cert: (String, String),
}

impl Server {
    fn new() -> Self {
        let pki = Pki::new("server ca");
        let cert = pki.leaf(&[
            "mtls.example",
            "opt.example",
            "plain.example",
            "broken.example",
        ]);
        Self { pki, cert }
    }

    /// The configuration: `mtls.example` requires certificates of `ca` (revoking `crl`),
    /// `opt.example` requests them, `plain.example` asks none, and `broken.example` names a
    /// CA Secret that does not exist.
    fn config(&self, backend: u16, ca: &ClientCa, crl: Option<&str>) -> String {
        let mut ca_keys = vec![("ca.crt", ca.pem.as_str())];
        if let Some(crl) = crl {
            ca_keys.push(("ca.crl", crl));
        }
        format!(
            "{}{}{}{}{}{}{}",
            pool_yaml("p", &[backend], ""),
            secret(
                "server-cert",
                &[("tls.crt", &self.cert.0), ("tls.key", &self.cert.1)]
            ),
            secret("client-ca", &ca_keys),
            route(
                "mtls",
                "mtls.example",
                "{secretName: server-cert, clientCertificate: {caSecretRef: {name: client-ca}}}"
            ),
            route(
                "opt",
                "opt.example",
                "{secretName: server-cert, clientCertificate: {caSecretRef: {name: client-ca}, mode: Request}}"
            ),
            route("plain", "plain.example", "{secretName: server-cert}"),
            route(
                "broken",
                "broken.example",
                "{secretName: server-cert, clientCertificate: {caSecretRef: {name: ghost-ca}}}"
            ),
        )
    }

    /// A client trusting the server's CA and presenting `cert` when asked; resumption on
    /// (rustls' default), so connections made with one config resume its sessions.
    fn client(&self, cert: Option<&ClientCert>) -> Arc<ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile_certs(&self.pki.ca_pem) {
            roots.add(c).unwrap();
        }
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots);
        let mut cfg = match cert {
            Some(c) => builder
                .with_client_auth_cert(
                    vec![c.der.clone()],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.key.to_vec())),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    }
}

/// The certificates of a PEM bundle (the tests crate has no PEM parser of its own).
fn rustls_pemfile_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap())
        .collect()
}

/// A TLS connection to `to` with server name `sni`.
async fn connect(
    to: SocketAddr,
    cfg: &Arc<ClientConfig>,
    sni: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(to).await?;
    tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
}

/// One HTTP/1.1 request with `Host: host` on `tls`: the status and headers, or why no
/// answer came (with TLS 1.3 a refused client certificate ends the connection only after
/// the client's side of the handshake is done, so it shows here).
async fn get(
    tls: TlsStream<TcpStream>,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, HeaderMap, String), String> {
    let io = hyper_util::rt::TokioIo::new(tls);
    let (mut send, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let driven = tokio::spawn(conn);
    let mut req = Request::get(path).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let result: Result<_, String> = async {
        let resp = send
            .send_request(req.body(Empty::<Bytes>::new()).unwrap())
            .await
            .map_err(|e| format!("{e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| format!("{e:?}"))?;
        Ok((
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        ))
    }
    .await;
    // The connection's own error says why (a TLS alert), when the request saw only a close.
    match result {
        Ok(r) => Ok(r),
        Err(e) => {
            drop(send);
            let why = match tokio::time::timeout(Duration::from_secs(5), driven).await {
                Ok(Ok(Err(conn_err))) => format!("{conn_err:?}"),
                _ => String::new(),
            };
            Err(format!("{e} / {why}"))
        }
    }
}

/// Connects and sends one request; any failure as text.
async fn request(
    to: SocketAddr,
    cfg: &Arc<ClientConfig>,
    sni: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, HeaderMap, String), String> {
    let tls = connect(to, cfg, sni).await.map_err(|e| format!("{e:?}"))?;
    get(tls, host, path, headers).await
}

fn sha256_hex(der: &[u8]) -> String {
    // The ring provider's SHA-256, through rustls (the tests crate has no hash crate).
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
    let hash = suite.tls13().unwrap().common.hash_provider.hash(der);
    hash.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

async fn start(yaml: &str) -> (Dataplane, tempfile::TempDir, std::path::PathBuf) {
    let (dp, dir) = standalone(yaml, &["--tls", "--reload-interval", "100ms"]).await;
    let path = dir.path().join("config.yaml");
    (dp, dir, path)
}

async fn rejected(dp: &Dataplane, reason: &str) -> f64 {
    admin::metric_sum(
        &Client::new(),
        dp.admin,
        "parapet_rejected_requests_total",
        &[&format!("reason=\"{reason}\"")],
    )
    .await
}

/// Rewrites the configuration and waits until the data plane has installed it.
async fn reload(dp: &Dataplane, path: &Path, yaml: &str) {
    let c = Client::new();
    let before = admin::metric(&c, dp.admin, "parapet_snapshot_version ").await;
    std::fs::write(path, yaml).unwrap();
    wait_for("the new table", Duration::from_secs(10), || {
        let c = c.clone();
        async move {
            (admin::metric(&c, dp.admin, "parapet_snapshot_version ").await > before).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_mode_verifies_the_certificate_and_tells_the_backend() {
    let b = Backend::start("b").await;
    let server = Server::new();
    let (ca, other_ca) = (ClientCa::new("clients"), ClientCa::new("strangers"));
    let (good, revoked) = (ca.client("teller", 10), ca.client("gone", 11));
    let (dp, _dir, _) = start(&server.config(b.port(), &ca, Some(&ca.crl(&[11])))).await;
    let to = dp.proxy;

    // A valid certificate: 200, and the backend learns who, whatever the client claimed.
    let (status, _, _) = request(
        to,
        &server.client(Some(&good)),
        "mtls.example",
        "mtls.example",
        "/valid",
        &[(
            "x-forwarded-client-cert",
            "Hash=forged;Subject=\"CN=admin\"",
        )],
    )
    .await
    .expect("a valid certificate is served");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(b.last_uri().as_deref(), Some("/valid"));
    let seen = b.last_headers().unwrap();
    let xfcc: Vec<_> = seen.get_all("x-forwarded-client-cert").iter().collect();
    assert_eq!(xfcc.len(), 1, "{xfcc:?}");
    assert_eq!(
        xfcc[0].to_str().unwrap(),
        format!(
            "Hash={};Subject=\"CN=teller,O=Bank\";URI=spiffe://bank.example/teller;DNS=teller.clients.example",
            sha256_hex(&good.der)
        )
    );

    // No certificate: the handshake asks for one and ends with an alert, before any HTTP.
    let err = request(
        to,
        &server.client(None),
        "mtls.example",
        "mtls.example",
        "/none",
        &[],
    )
    .await
    .expect_err("no certificate, no answer");
    assert!(err.contains("CertificateRequired"), "{err}");
    // Another CA's certificate, and a revoked one: refused at the handshake too.
    let stranger = other_ca.client("teller", 10);
    let err = request(
        to,
        &server.client(Some(&stranger)),
        "mtls.example",
        "mtls.example",
        "/",
        &[],
    )
    .await
    .expect_err("another CA's certificate is refused");
    assert!(err.contains("UnknownCA"), "{err}");
    let err = request(
        to,
        &server.client(Some(&revoked)),
        "mtls.example",
        "mtls.example",
        "/",
        &[],
    )
    .await
    .expect_err("a revoked certificate is refused");
    assert!(err.contains("CertificateRevoked"), "{err}");
    assert_eq!(
        b.last_uri().as_deref(),
        Some("/valid"),
        "none reached the backend"
    );

    // A host asking for nothing: a forged header never reaches the backend either.
    let (status, _, _) = request(
        to,
        &server.client(Some(&good)),
        "plain.example",
        "plain.example",
        "/plain",
        &[("x-forwarded-client-cert", "Hash=forged")],
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(b.last_uri().as_deref(), Some("/plain"));
    assert!(
        b.last_headers()
            .unwrap()
            .get("x-forwarded-client-cert")
            .is_none()
    );

    // A connection made for the plain host cannot carry requests for the mTLS host.
    let (status, _, body) = request(
        to,
        &server.client(Some(&good)),
        "plain.example",
        "mtls.example",
        "/misdirected",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{body}");
    assert!(body.contains("new connection"), "{body}");
    // The same host written as a fully qualified name (one trailing dot) is the same host:
    // routed there, and checked as it.
    let (status, _, body) = request(
        to,
        &server.client(Some(&good)),
        "plain.example",
        "mtls.example.",
        "/misdirected",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{body}");
    assert_eq!(rejected(&dp, "client_cert_misdirected").await, 2.0);
    assert_eq!(b.last_uri().as_deref(), Some("/plain"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_mode_serves_clients_without_a_certificate_and_checks_those_with_one() {
    let b = Backend::start("b").await;
    let server = Server::new();
    let ca = ClientCa::new("clients");
    let good = ca.client("teller", 10);
    let (dp, _dir, _) = start(&server.config(b.port(), &ca, None)).await;

    let (status, _, _) = request(
        dp.proxy,
        &server.client(None),
        "opt.example",
        "opt.example",
        "/anonymous",
        &[("x-forwarded-client-cert", "Hash=forged")],
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(b.last_uri().as_deref(), Some("/anonymous"));
    assert!(
        b.last_headers()
            .unwrap()
            .get("x-forwarded-client-cert")
            .is_none(),
        "no certificate, no header, and never the client's"
    );

    let (status, _, _) = request(
        dp.proxy,
        &server.client(Some(&good)),
        "opt.example",
        "opt.example",
        "/known",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    let xfcc = b.last_headers().unwrap()["x-forwarded-client-cert"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        xfcc.starts_with(&format!("Hash={};", sha256_hex(&good.der))),
        "{xfcc}"
    );

    // A connection for the Request host asked another mode than the Require host's: it
    // cannot carry that host's requests.
    let (status, _, _) = request(
        dp.proxy,
        &server.client(Some(&good)),
        "opt.example",
        "mtls.example",
        "/",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_ca_secret_is_missing_refuses_every_client() {
    let b = Backend::start("b").await;
    let server = Server::new();
    let ca = ClientCa::new("clients");
    let good = ca.client("teller", 10);
    let (dp, _dir, _) = start(&server.config(b.port(), &ca, None)).await;

    for cert in [None, Some(&good)] {
        let err = request(
            dp.proxy,
            &server.client(cert),
            "broken.example",
            "broken.example",
            "/",
            &[],
        )
        .await
        .expect_err("no handshake succeeds");
        assert!(
            err.contains("CertificateRequired") || err.contains("AccessDenied"),
            "{err}"
        );
    }
    // Nor does a request reaching it over another host's connection.
    let (status, _, body) = request(
        dp.proxy,
        &server.client(Some(&good)),
        "plain.example",
        "broken.example",
        "/",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(rejected(&dp, "client_cert_invalid").await, 1.0);
    assert_eq!(b.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_is_checked_against_the_revocation_list_in_force() {
    let b = Backend::start("b").await;
    let server = Server::new();
    let ca = ClientCa::new("clients");
    let good = ca.client("teller", 10);
    let (dp, _dir, path) = start(&server.config(b.port(), &ca, Some(&ca.crl(&[99])))).await;
    // One client configuration: its session cache carries the session to the next
    // connection.
    let cfg = server.client(Some(&good));

    let tls = connect(dp.proxy, &cfg, "mtls.example").await.unwrap();
    assert_eq!(tls.get_ref().1.handshake_kind(), Some(HandshakeKind::Full));
    let (status, _, _) = get(tls, "mtls.example", "/before", &[]).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    // Resumption works while nothing changed…
    let tls = connect(dp.proxy, &cfg, "mtls.example").await.unwrap();
    assert_eq!(
        tls.get_ref().1.handshake_kind(),
        Some(HandshakeKind::Resumed)
    );
    let (status, _, _) = get(tls, "mtls.example", "/resumed", &[]).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(
        b.last_headers()
            .unwrap()
            .get("x-forwarded-client-cert")
            .is_some(),
        "a resumed session's certificate goes upstream too"
    );

    // …and after a table that revokes the certificate, the session still resumes (same CA,
    // same mode) but its requests are refused: the certificate rustls restored from the
    // session is verified again under the lists in force.
    reload(
        &dp,
        &path,
        &server.config(b.port(), &ca, Some(&ca.crl(&[10]))),
    )
    .await;
    let tls = connect(dp.proxy, &cfg, "mtls.example").await.unwrap();
    assert_eq!(
        tls.get_ref().1.handshake_kind(),
        Some(HandshakeKind::Resumed)
    );
    let (status, _, body) = get(tls, "mtls.example", "/after", &[]).await.unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("revoked"), "{body}");
    assert_eq!(rejected(&dp, "client_cert_invalid").await, 1.0);
    assert_eq!(b.last_uri().as_deref(), Some("/resumed"));
    // A new session is refused at its handshake.
    let err = request(
        dp.proxy,
        &server.client(Some(&good)),
        "mtls.example",
        "mtls.example",
        "/",
        &[],
    )
    .await
    .expect_err("a revoked certificate gets no new session");
    assert!(err.contains("CertificateRevoked"), "{err}");
}
