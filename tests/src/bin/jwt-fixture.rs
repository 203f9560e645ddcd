//! Keys and a token for `bench/jwt.sh`: `jwt-fixture <ES256|RS256|EdDSA>` prints two lines,
//! a JWKS document holding one public key (kid `bench`, one line of JSON) and a token signed
//! with its private half (`iss` https://idp.bench, `sub` bench, `exp` 24 hours from now).
//!
//! ES256 and EdDSA keys are made afresh on each call; RS256 uses the 2048-bit test key
//! checked in for the data plane's JWT tests (`dataplane/src/jwt/testdata`, PKCS#1 DER, its
//! modulus in base64url beside it).

use anyhow::bail;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parapet_tests::idp::{SigningKey, jwks, now};
use serde_json::{Value, json};

const USAGE: &str = "usage: jwt-fixture <ES256|RS256|EdDSA>";
const KID: &str = "bench";
const RSA_DER: &[u8] = include_bytes!("../../../dataplane/src/jwt/testdata/rsa-2048.der");
const RSA_N: &str = include_str!("../../../dataplane/src/jwt/testdata/rsa-2048.n");

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [alg] = args.as_slice() else {
        bail!("{USAGE}");
    };
    let claims = json!({"iss": "https://idp.bench", "sub": "bench", "exp": now() + 24 * 3600});
    let (doc, token): (Value, String) = match alg.as_str() {
        "ES256" | "EdDSA" => {
            let key = if alg == "ES256" {
                SigningKey::es256(KID)
            } else {
                SigningKey::ed25519(KID)
            };
            (jwks(&[&key]), key.sign(&claims))
        }
        "RS256" => {
            let mut header = Header::new(Algorithm::RS256);
            header.kid = Some(KID.to_string());
            let token =
                jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_der(RSA_DER))?;
            let jwk = json!({"kty": "RSA", "kid": KID, "use": "sig", "alg": "RS256",
                             "n": RSA_N.trim(), "e": "AQAB"});
            (json!({"keys": [jwk]}), token)
        }
        other => bail!("unknown algorithm '{other}'; {USAGE}"),
    };
    println!("{doc}");
    println!("{token}");
    Ok(())
}
