//! mTLS on the snapshot channel: the admin port over TLS (`--admin-tls-cert`), client
//! certificates required for the snapshot API (`--admin-client-ca`), the bearer token still
//! required, and probes reachable without a certificate. The client is the operator's own
//! (`parapet_operator::tls`).

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use parapet_operator::tls::{PushTls, client_config, push_client};
use parapet_tests::pki::Pki;
use parapet_tests::{dataplane::Dataplane, pool_yaml, route_yaml, snapshot};
use rustls::pki_types::ServerName;

const TOKEN: &str = "t0ken";

/// What one request over the operator's client got: a status, or a transport error
/// (handshake refused).
async fn call(
    tls: &PushTls,
    admin: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Bytes,
) -> Result<StatusCode, String> {
    let client = push_client(Some(tls));
    let mut req = Request::builder()
        .method(method)
        .uri(format!("https://{admin}{path}"))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = client
        .request(req.body(Full::new(body)).unwrap())
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    Ok(status)
}

fn tls(server_ca: &str, client: Option<&(String, String)>, name: Option<&str>) -> PushTls {
    PushTls {
        config: Arc::new(
            client_config(
                server_ca.as_bytes(),
                client.map(|(c, k)| (c.as_bytes(), k.as_bytes())),
            )
            .unwrap(),
        ),
        server_name: name.map(|n| ServerName::try_from(n.to_string()).unwrap()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_channel_over_mtls() {
    let server_pki = Pki::new("parapet admin");
    let client_pki = Pki::new("parapet operator");
    let rogue_pki = Pki::new("someone else");
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.to_str().unwrap().to_string()
    };
    let (cert, key) = server_pki.leaf(&["127.0.0.1", "dataplane.parapet.internal"]);
    let (cert_p, key_p) = (write("tls.crt", &cert), write("tls.key", &key));
    let client_ca_p = write("client-ca.pem", &client_pki.ca_pem);
    let token_p = write("token", TOKEN);
    let dp = Dataplane::start(&[
        "--snapshot-token-file",
        &token_p,
        "--admin-tls-cert",
        &cert_p,
        "--admin-tls-key",
        &key_p,
        "--admin-client-ca",
        &client_ca_p,
    ]);
    let body = Bytes::from(
        serde_json::to_vec(&snapshot(
            &format!(
                "{}{}",
                pool_yaml("p", &[9], ""),
                route_yaml("r", "['*']", "    - backends: [{pool: p}]")
            ),
            1,
        ))
        .unwrap(),
    );

    let operator = client_pki.leaf(&["parapet-operator"]);
    let good = tls(&server_pki.ca_pem, Some(&operator), None);
    let put = |t: &PushTls, token: Option<&'static str>| {
        let body = body.clone();
        let t = t.clone();
        async move { call(&t, dp.admin, Method::PUT, "/v1/snapshot", token, body).await }
    };

    // A verified client certificate and the token: applied.
    assert_eq!(put(&good, Some(TOKEN)).await, Ok(StatusCode::OK));
    // The token stays required with a client certificate.
    assert_eq!(put(&good, None).await, Ok(StatusCode::UNAUTHORIZED));
    assert_eq!(
        put(&good, Some("wrong")).await,
        Ok(StatusCode::UNAUTHORIZED)
    );
    assert_eq!(
        call(
            &good,
            dp.admin,
            Method::GET,
            "/v1/snapshot/status",
            None,
            Bytes::new()
        )
        .await,
        Ok(StatusCode::OK)
    );

    // No client certificate: the handshake is allowed (probes), the snapshot API is not.
    let anonymous = tls(&server_pki.ca_pem, None, None);
    assert_eq!(
        put(&anonymous, Some(TOKEN)).await,
        Ok(StatusCode::UNAUTHORIZED)
    );
    for path in ["/v1/snapshot/status", "/v1/cache/purge"] {
        let m = if path.ends_with("purge") {
            Method::POST
        } else {
            Method::GET
        };
        assert_eq!(
            call(
                &anonymous,
                dp.admin,
                m,
                path,
                Some(TOKEN),
                Bytes::from("{\"all\":true}")
            )
            .await,
            Ok(StatusCode::UNAUTHORIZED),
            "{path}"
        );
    }
    // Probes answer without a client certificate.
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            call(&anonymous, dp.admin, Method::GET, path, None, Bytes::new()).await,
            Ok(StatusCode::OK),
            "{path}"
        );
    }

    // A certificate from another CA: the handshake is refused.
    let rogue = tls(
        &server_pki.ca_pem,
        Some(&rogue_pki.leaf(&["parapet-operator"])),
        None,
    );
    let refused = put(&rogue, Some(TOKEN)).await;
    assert!(
        refused.is_err(),
        "a foreign client certificate got {refused:?}"
    );

    // The operator refuses a data plane whose certificate another CA signed.
    let wrong_server_ca = tls(&rogue_pki.ca_pem, Some(&operator), None);
    assert!(put(&wrong_server_ca, Some(TOKEN)).await.is_err());

    // A fixed server name (--dataplane-server-name) for certificates not issued to the IP.
    let named = tls(
        &server_pki.ca_pem,
        Some(&operator),
        Some("dataplane.parapet.internal"),
    );
    assert_eq!(
        call(
            &named,
            dp.admin,
            Method::GET,
            "/v1/snapshot/status",
            None,
            Bytes::new()
        )
        .await,
        Ok(StatusCode::OK)
    );
    let misnamed = tls(
        &server_pki.ca_pem,
        Some(&operator),
        Some("other.parapet.internal"),
    );
    assert!(
        call(
            &misnamed,
            dp.admin,
            Method::GET,
            "/v1/snapshot/status",
            None,
            Bytes::new()
        )
        .await
        .is_err()
    );

    // Plain HTTP to the TLS admin port gets nothing useful.
    let plain = parapet_tests::client::Client::new();
    assert!(
        plain
            .get(dp.admin, "admin", "/healthz")
            .await
            .map_or(true, |r| r.status != StatusCode::OK)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_tls_without_client_ca_needs_only_the_token() {
    let server_pki = Pki::new("parapet admin");
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.to_str().unwrap().to_string()
    };
    let (cert, key) = server_pki.leaf(&["127.0.0.1"]);
    let (cert_p, key_p) = (write("tls.crt", &cert), write("tls.key", &key));
    let token_p = write("token", TOKEN);
    let dp = Dataplane::start(&[
        "--snapshot-token-file",
        &token_p,
        "--admin-tls-cert",
        &cert_p,
        "--admin-tls-key",
        &key_p,
    ]);
    let body = Bytes::from(
        serde_json::to_vec(&snapshot(
            &format!(
                "{}{}",
                pool_yaml("p", &[9], ""),
                route_yaml("r", "['*']", "    - backends: [{pool: p}]")
            ),
            1,
        ))
        .unwrap(),
    );
    let anonymous = tls(&server_pki.ca_pem, None, None);
    assert_eq!(
        call(
            &anonymous,
            dp.admin,
            Method::PUT,
            "/v1/snapshot",
            None,
            body.clone()
        )
        .await,
        Ok(StatusCode::UNAUTHORIZED)
    );
    assert_eq!(
        call(
            &anonymous,
            dp.admin,
            Method::PUT,
            "/v1/snapshot",
            Some(TOKEN),
            body
        )
        .await,
        Ok(StatusCode::OK)
    );
    assert_eq!(
        call(
            &anonymous,
            dp.admin,
            Method::GET,
            "/readyz",
            None,
            Bytes::new()
        )
        .await,
        Ok(StatusCode::OK)
    );
}
