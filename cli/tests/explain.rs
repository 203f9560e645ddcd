//! `parapet dump` and `parapet explain-route` through the binaries: the table comes from
//! a real data plane's admin port (token required), and the explanation agrees with where
//! the data plane sends the same requests.

use std::process::Command;

use parapet_tests::{
    admin::push, backend::Backend, client::Client, dataplane::Dataplane, pool_yaml, route_yaml,
    snapshot,
};
use serde_json::Value;

const TOKEN: &str = "cli-test-token-0123456789";

fn parapet(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_parapet"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("parapet runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explanations_agree_with_where_the_data_plane_sends_requests() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let token = token_file.to_str().unwrap();
    let dp = Dataplane::start(&["--snapshot-token-file", token]);
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let yaml = format!(
        "{}{}{}",
        pool_yaml("a", &[a.port()], ""),
        pool_yaml("b", &[b.port()], ""),
        route_yaml(
            "shop",
            "[shop.example]",
            "    - matches: [{path: {value: /admin}, headers: [{name: X-Role, value: admin}]}]\n      backends: [{pool: b}]\n    - backends: [{pool: a, weight: 3}, {pool: b, weight: 1}]",
        )
    );
    let snap = snapshot(&yaml, 4);
    let c = Client::new();
    assert_eq!(push(&c, dp.admin, Some(TOKEN), &snap).await.status, 200);
    let admin = format!("http://{}", dp.admin);

    // The dump: the table in force; refused without the token.
    let out = dir.path().join("dump.json");
    let (code, _, err) = parapet(&[
        "dump",
        "--admin",
        &admin,
        "--token-file",
        token,
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let d: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(d["version"], 4);
    assert_eq!(d["hash"], snap.hash);
    assert_eq!(d["configHash"], snap.table.config_hash());
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-token-0123456789").unwrap();
    let (code, _, err) = parapet(&[
        "dump",
        "--admin",
        &admin,
        "--token-file",
        wrong.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("refused the token"), "{err}");

    // The admin rule, with its header; the data plane agrees.
    let (code, text, err) = parapet(&[
        "explain-route",
        "shop.example",
        "/admin/users",
        "-H",
        "x-role=admin",
        "--admin",
        &admin,
        "--token-file",
        token,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains("route    default/shop/0 (ApiRoute default/shop, rule 0)"),
        "{text}"
    );
    assert!(
        text.contains(&format!("-> 127.0.0.1:{} weight 1", b.port())),
        "{text}"
    );
    let r = c
        .send(
            dp.proxy,
            http::Method::GET,
            "shop.example",
            "/admin/users",
            &[("x-role", "admin")],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.backend(), Some("b"));

    // Without the header: the split rule, 75% / 25%, from the dump file this time.
    let (code, json, err) = parapet(&[
        "explain-route",
        "shop.example",
        "/admin/users",
        "--table",
        out.to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let e: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(e["route"], "default/shop/1");
    assert_eq!(e["backends"][0]["pool"], "default/a");
    assert_eq!(e["backends"][0]["share"], 75.0);
    assert_eq!(e["backends"][1]["share"], 25.0);
    let mut to_a = 0;
    for _ in 0..400 {
        let r = c
            .get(dp.proxy, "shop.example", "/admin/users")
            .await
            .unwrap();
        to_a += usize::from(r.backend() == Some("a"));
    }
    // Binomial(400, 0.75): mean 300, sd ~8.7; ±6 sd.
    assert!(
        (248..=352).contains(&to_a),
        "the data plane sent {to_a} of 400 to pool a, not about 75%"
    );

    // No route: said why, exit status 2; the data plane answers 404.
    let (code, text, _) = parapet(&[
        "explain-route",
        "bank.example",
        "/",
        "--table",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(
        text.contains("no virtual host serves bank.example"),
        "{text}"
    );
    assert_eq!(
        c.get(dp.proxy, "bank.example", "/").await.unwrap().status,
        404
    );

    // From resources compiled here (no data plane): the same answer.
    let yaml_file = dir.path().join("shop.yaml");
    std::fs::write(&yaml_file, &yaml).unwrap();
    let (code, text, err) = parapet(&[
        "explain-route",
        "shop.example",
        "/",
        "--file",
        yaml_file.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains("default/shop/1") && text.contains("75%"),
        "{text}"
    );

    // Bad input reads as a sentence.
    let (code, _, err) = parapet(&[
        "explain-route",
        "shop.example",
        "/",
        "-H",
        "no-equals",
        "--table",
        out.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("is not NAME=VALUE"), "{err}");
    let (code, _, err) = parapet(&["explain-route", "shop.example", "/"]);
    assert_ne!(code, 0);
    assert!(err.contains("say where the table comes from"), "{err}");
}
