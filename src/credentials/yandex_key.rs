//! IAM tokens minted from a Yandex Cloud service-account authorized key: a PS256 JWT
//! signed with the key (ring), exchanged at the IAM endpoint.
//!
//! Two layouts of the key are read. The file `yc iam key create` writes:
//! `{"id", "service_account_id", "created_at", "key_algorithm", "public_key", "private_key"}`.
//! And the answer of the IAM REST API `Key.Create` (`POST https://iam.api.cloud.yandex.net/iam/v1/keys`,
//! <https://yandex.cloud/en/docs/iam/api-ref/Key/create>), which Terraform and API users
//! save: `{"key": {"id", "serviceAccountId" (or "userAccountId"), "createdAt",
//! "description", "keyAlgorithm", "publicKey", "lastUsedAt"}, "privateKey"}`.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::Uri;
use jiff::Timestamp;
use ring::rand::SystemRandom;
use ring::signature::{RSA_PSS_SHA256, RsaKeyPair};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::{self, PemObject};
use serde::Serialize;
use serde_json::Value;

use super::http::{Answer, HttpClient};
use super::{
    Credential, CredentialError, IAM_USERNAME, Secret, bad_file, fingerprint_of, one_line,
    read_file,
};

/// The JWT audience of the default endpoint. The audience is the URL of the endpoint the
/// JWT is exchanged at (as configured), so that another IAM installation (another region
/// of Yandex Cloud, a private one) accepts it.
pub const IAM_AUDIENCE: &str = crate::config::DEFAULT_IAM_ENDPOINT;

/// `exp - iat` of the JWTs we sign (the service accepts at most one hour).
pub const JWT_LIFETIME: Duration = Duration::from_secs(3600);

const WHAT: &str = "authorized key file";

/// The parts of an authorized key file that matter, with the key ready to sign.
pub(crate) struct AuthorizedKey {
    /// Key id (`id`), the JWT `kid`.
    pub id: String,
    /// Service account id (`service_account_id`), the JWT `iss`.
    pub service_account_id: String,
    key_pair: RsaKeyPair,
}

#[cfg(test)]
impl AuthorizedKey {
    /// Modulus size in bits.
    pub fn bits(&self) -> usize {
        self.key_pair.public().modulus_len() * 8
    }
}

/// Which layout a key file has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `yc iam key create` output (snake_case fields at the top).
    YcFile,
    /// The IAM REST API `Key.Create` answer (`key` object and `privateKey`).
    RestApi,
}

/// Parse a key file in either layout. The problem text never quotes the file.
pub(crate) fn parse_key_file(bytes: &[u8]) -> Result<AuthorizedKey, String> {
    parse_key_file_with_layout(bytes).map(|(key, _)| key)
}

/// Parse a key file in either layout; also says which one it was.
pub(crate) fn parse_key_file_with_layout(bytes: &[u8]) -> Result<(AuthorizedKey, Layout), String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    let object = value
        .as_object()
        .ok_or_else(|| "not a JSON object".to_string())?;
    let string_field = |object: &serde_json::Map<String, Value>,
                        name: &str,
                        path: &str|
     -> Result<Option<String>, String> {
        match object.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => {
                Err(format!("field {path:?} is empty"))
            }
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("field {path:?} is not a string")),
        }
    };
    let required = |object: &serde_json::Map<String, Value>, name: &str, path: &str| {
        string_field(object, name, path)?.ok_or_else(|| format!("missing field {path:?}"))
    };
    let (layout, id, service_account_id, private_key, algorithm, private_path) = match object
        .get("key")
    {
        // The REST API answer: the key's metadata under "key", the private half next
        // to it.
        Some(key) if object.contains_key("privateKey") || key.is_object() => {
            let key = key.as_object().ok_or_else(|| {
                    "field \"key\" is not an object (a key file in the IAM REST API layout has \"key\": {...} and \"privateKey\")".to_string()
                })?;
            let id = required(key, "id", "key.id")?;
            let service_account_id = match string_field(
                key,
                "serviceAccountId",
                "key.serviceAccountId",
            )? {
                Some(sa) => sa,
                None if string_field(key, "userAccountId", "key.userAccountId")?.is_some() => {
                    return Err("the key belongs to a user account (key.userAccountId), not a service account; IAM tokens are minted from service account keys".into());
                }
                None => return Err("missing field \"key.serviceAccountId\"".into()),
            };
            let private_key = required(object, "privateKey", "privateKey")?;
            let algorithm = string_field(key, "keyAlgorithm", "key.keyAlgorithm")?;
            (
                Layout::RestApi,
                id,
                service_account_id,
                private_key,
                algorithm,
                "privateKey",
            )
        }
        _ => {
            let id = required(object, "id", "id")?;
            let service_account_id = required(object, "service_account_id", "service_account_id")?;
            let private_key = required(object, "private_key", "private_key")?;
            let algorithm = match object.get("key_algorithm") {
                Some(Value::String(a)) => Some(a.clone()),
                _ => None,
            };
            (
                Layout::YcFile,
                id,
                service_account_id,
                private_key,
                algorithm,
                "private_key",
            )
        }
    };
    let key_pair = parse_private_key(&private_key, algorithm.as_deref())
        .map_err(|problem| format!("field {private_path:?}: {problem}"))?;
    Ok((
        AuthorizedKey {
            id,
            service_account_id,
            key_pair,
        },
        layout,
    ))
}

/// PKCS#8 (or PKCS#1) PEM, possibly after the `PLEASE DO NOT REMOVE THIS LINE!` line.
fn parse_private_key(text: &str, algorithm: Option<&str>) -> Result<RsaKeyPair, String> {
    let start = text
        .find("-----BEGIN")
        .ok_or_else(|| "no PEM block (no \"-----BEGIN\" line)".to_string())?;
    let der = PrivateKeyDer::from_pem_slice(&text.as_bytes()[start..]).map_err(|e| match e {
        pem::Error::NoItemsFound => "no private key PEM block".to_string(),
        pem::Error::MissingSectionEnd { .. } => "PEM block has no matching END line".to_string(),
        pem::Error::IllegalSectionStart { .. } => "malformed PEM BEGIN line".to_string(),
        pem::Error::Base64Decode(_) => "PEM body is not valid base64".to_string(),
        pem::Error::SectionTooLarge => "PEM block too large".to_string(),
        _ => "malformed PEM".to_string(),
    })?;
    let algorithm = algorithm
        .map(|a| format!(" (key_algorithm {a:?})"))
        .unwrap_or_default();
    let rejected = |e: ring::error::KeyRejected| match e.to_string().as_str() {
        "TooSmall" => "RSA key smaller than 2048 bits; supported: 2048 to 4096 bits".to_string(),
        "TooLarge" => "RSA key larger than 4096 bits; supported: 2048 to 4096 bits".to_string(),
        "WrongAlgorithm" => format!("not an RSA key{algorithm}; only RSA keys are supported"),
        other => format!("not a usable RSA private key{algorithm}: {other}"),
    };
    let key_pair = match &der {
        PrivateKeyDer::Pkcs8(k) => {
            RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()).map_err(rejected)?
        }
        PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()).map_err(rejected)?,
        PrivateKeyDer::Sec1(_) => {
            return Err(format!("an EC key{algorithm}; only RSA keys are supported"));
        }
        _ => {
            return Err(format!(
                "unsupported key type{algorithm}; only RSA keys are supported"
            ));
        }
    };
    let bits = key_pair.public().modulus_len() * 8;
    if !(2048..=4096).contains(&bits) {
        return Err(format!(
            "RSA key of {bits} bits; supported: 2048 to 4096 bits"
        ));
    }
    Ok(key_pair)
}

#[derive(Serialize)]
struct Header<'a> {
    typ: &'static str,
    alg: &'static str,
    kid: &'a str,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

/// The signed JWT: header `{"typ":"JWT","alg":"PS256","kid":id}`, claims
/// `iss`, `aud` = `audience` (the endpoint's URL), `iat` = `now`,
/// `exp` = `now` + [`JWT_LIFETIME`].
pub(crate) fn sign_jwt(
    key: &AuthorizedKey,
    audience: &str,
    now: Timestamp,
) -> Result<String, String> {
    let header = Header {
        typ: "JWT",
        alg: "PS256",
        kid: &key.id,
    };
    let iat = now.as_second();
    let claims = Claims {
        iss: &key.service_account_id,
        aud: audience,
        iat,
        exp: iat.saturating_add(JWT_LIFETIME.as_secs() as i64),
    };
    let header = serde_json::to_vec(&header).map_err(|e| format!("encoding the JWT: {e}"))?;
    let claims = serde_json::to_vec(&claims).map_err(|e| format!("encoding the JWT: {e}"))?;
    let mut jwt = URL_SAFE_NO_PAD.encode(header);
    jwt.push('.');
    jwt.push_str(&URL_SAFE_NO_PAD.encode(claims));
    let mut signature = vec![0u8; key.key_pair.public().modulus_len()];
    key.key_pair
        .sign(
            &RSA_PSS_SHA256,
            &SystemRandom::new(),
            jwt.as_bytes(),
            &mut signature,
        )
        .map_err(|_| "RSA-PSS signing failed".to_string())?;
    jwt.push('.');
    jwt.push_str(&URL_SAFE_NO_PAD.encode(signature));
    Ok(jwt)
}

/// Read and parse the key file as [`fetch`] does, without signing or sending anything.
pub(crate) async fn validate(file: &Path) -> Result<(), CredentialError> {
    let bytes = read_file(WHAT, file).await?;
    parse_key_file(&bytes)
        .map(drop)
        .map_err(|problem| bad_file(WHAT, file, problem))
}

/// Read the key file, sign a JWT and exchange it for an IAM token.
pub(crate) async fn fetch(
    http: &HttpClient,
    file: &Path,
    endpoint: &str,
    uri: &Uri,
) -> Result<Credential, CredentialError> {
    let bytes = read_file(WHAT, file).await?;
    let fingerprint = fingerprint_of(file, &bytes);
    let key = parse_key_file(&bytes).map_err(|problem| bad_file(WHAT, file, problem))?;
    drop(bytes);
    let issued_at = Timestamp::now();
    // The audience is the endpoint as configured: the real service checks it against its
    // own URL, https://iam.api.cloud.yandex.net/iam/v1/tokens by default.
    let jwt = sign_jwt(&key, endpoint, issued_at).map_err(|problem| CredentialError::Sign {
        path: file.to_path_buf(),
        problem,
    })?;
    let body = serde_json::json!({ "jwt": jwt }).to_string();
    let request = super::token_post(endpoint, uri, "application/json", body)?;
    let answer = http.send(endpoint, request).await?;
    let (token, expires_at) = parse_token_answer(endpoint, &answer)?;
    if expires_at <= issued_at {
        return Err(CredentialError::BadAnswer {
            endpoint: endpoint.to_string(),
            status: answer.status,
            problem: format!(
                "the token expires at {expires_at}, not after the request time {issued_at} (check the clock)"
            ),
        });
    }
    Ok(
        Credential::login(IAM_USERNAME, token, issued_at, Some(expires_at))?
            .with_fingerprint(fingerprint),
    )
}

/// `{"iamToken": "...", "expiresAt": "<RFC 3339>"}` on 2xx; the service's error otherwise.
pub(crate) fn parse_token_answer(
    endpoint: &str,
    answer: &Answer,
) -> Result<(Secret, Timestamp), CredentialError> {
    let (value, token) = super::json_token_answer(endpoint, answer, "iamToken")?;
    let bad = |problem: String| super::bad_answer(endpoint, answer, problem);
    let expires_at = match value.get("expiresAt") {
        Some(Value::String(t)) => t.parse::<Timestamp>().map_err(|e| {
            bad(format!(
                "field \"expiresAt\" {:?} is not an RFC 3339 timestamp: {e}",
                one_line(t, 64)
            ))
        })?,
        Some(_) => return Err(bad("field \"expiresAt\" is not a string".into())),
        None => return Err(bad("missing field \"expiresAt\"".into())),
    };
    Ok((token, expires_at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::test_keys::{TestKey, key_file_json, rest_key_json};
    use bytes::Bytes;
    use http::StatusCode;
    use ring::signature::{RSA_PSS_2048_8192_SHA256, UnparsedPublicKey};

    fn decode_json(part: &str) -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    fn check_jwt(key: &TestKey, prefix: bool) {
        let file = key_file_json(key, "ajekey123", "ajesa456", prefix);
        let parsed = parse_key_file(file.as_bytes()).unwrap();
        assert_eq!(parsed.bits(), key.bits);
        let now: Timestamp = "2025-03-01T10:00:00Z".parse().unwrap();
        let jwt = sign_jwt(&parsed, IAM_AUDIENCE, now).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert!(!jwt.contains('=') && !jwt.contains('+') && !jwt.contains('/'));
        // Exact header bytes, in this order.
        assert_eq!(
            URL_SAFE_NO_PAD.decode(parts[0]).unwrap(),
            br#"{"typ":"JWT","alg":"PS256","kid":"ajekey123"}"#
        );
        let claims = decode_json(parts[1]);
        assert_eq!(claims["iss"], "ajesa456");
        assert_eq!(
            claims["aud"],
            "https://iam.api.cloud.yandex.net/iam/v1/tokens"
        );
        assert_eq!(claims["iat"], now.as_second());
        assert_eq!(claims["exp"], now.as_second() + 3600);
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        assert_eq!(signature.len() * 8, key.bits);
        let signed = format!("{}.{}", parts[0], parts[1]);
        UnparsedPublicKey::new(&RSA_PSS_2048_8192_SHA256, &key.public_pkcs1_der)
            .verify(signed.as_bytes(), &signature)
            .expect("signature verifies with the public key");
        // And not with another key.
        let other = TestKey::rsa(2048);
        assert!(
            UnparsedPublicKey::new(&RSA_PSS_2048_8192_SHA256, &other.public_pkcs1_der)
                .verify(signed.as_bytes(), &signature)
                .is_err()
        );
    }

    #[test]
    fn jwt_for_a_2048_bit_key_has_the_documented_shape_and_verifies() {
        check_jwt(&TestKey::rsa(2048), false);
    }

    #[test]
    fn jwt_for_a_4096_bit_key_with_the_yandex_prefix_line_verifies() {
        check_jwt(&TestKey::rsa(4096), true);
    }

    #[test]
    fn aud_is_the_endpoint_given() {
        let key = TestKey::rsa(2048);
        let file = key_file_json(&key, "k", "s", false);
        let parsed = parse_key_file(file.as_bytes()).unwrap();
        let now: Timestamp = "2025-03-01T10:00:00Z".parse().unwrap();
        for aud in [
            "https://iam.api.cloud.yandex.net/iam/v1/tokens",
            "https://iam.api.yandexcloud.kz/iam/v1/tokens",
            "http://127.0.0.1:8080/iam/v1/tokens",
        ] {
            let jwt = sign_jwt(&parsed, aud, now).unwrap();
            let claims = decode_json(jwt.split('.').nth(1).unwrap());
            assert_eq!(claims["aud"], aud);
        }
    }

    #[test]
    fn rest_api_layout_is_read_like_the_yc_file() {
        let key = TestKey::rsa(2048);
        let yc =
            parse_key_file_with_layout(key_file_json(&key, "ajekey", "ajesa", true).as_bytes())
                .unwrap();
        assert_eq!(yc.1, Layout::YcFile);
        let rest =
            parse_key_file_with_layout(rest_key_json(&key, "ajekey", "ajesa").as_bytes()).unwrap();
        assert_eq!(rest.1, Layout::RestApi);
        for (parsed, _) in [&yc, &rest] {
            assert_eq!(parsed.id, "ajekey");
            assert_eq!(parsed.service_account_id, "ajesa");
        }
        // Both sign JWTs the public half verifies.
        let now: Timestamp = "2025-03-01T10:00:00Z".parse().unwrap();
        let jwt = sign_jwt(&rest.0, IAM_AUDIENCE, now).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        UnparsedPublicKey::new(&RSA_PSS_2048_8192_SHA256, &key.public_pkcs1_der)
            .verify(
                format!("{}.{}", parts[0], parts[1]).as_bytes(),
                &URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
            )
            .unwrap();
    }

    #[test]
    fn rest_api_layout_problems_name_the_field_path() {
        let key = TestKey::rsa(2048);
        let pem = &key.private_pkcs8_pem;
        let obj = |v: Value| v.to_string();
        let cases: Vec<(String, &str)> = vec![
            (
                obj(serde_json::json!({"key": "x", "privateKey": pem})),
                "field \"key\" is not an object",
            ),
            (
                obj(serde_json::json!({"key": {"serviceAccountId": "s"}, "privateKey": pem})),
                "missing field \"key.id\"",
            ),
            (
                obj(serde_json::json!({"key": {"id": "k"}, "privateKey": pem})),
                "missing field \"key.serviceAccountId\"",
            ),
            (
                obj(
                    serde_json::json!({"key": {"id": "k", "userAccountId": "u"}, "privateKey": pem}),
                ),
                "belongs to a user account (key.userAccountId)",
            ),
            (
                obj(serde_json::json!({"key": {"id": "k", "serviceAccountId": "s"}})),
                "missing field \"privateKey\"",
            ),
            (
                obj(
                    serde_json::json!({"key": {"id": "k", "serviceAccountId": 5}, "privateKey": pem}),
                ),
                "field \"key.serviceAccountId\" is not a string",
            ),
            (
                obj(
                    serde_json::json!({"key": {"id": "k", "serviceAccountId": "s", "keyAlgorithm": "EC_P256"},
                    "privateKey": TestKey::ec_pkcs8_pem()}),
                ),
                "field \"privateKey\": not an RSA key (key_algorithm \"EC_P256\")",
            ),
        ];
        for (file, want) in cases {
            let e = key_error(&file);
            assert!(e.contains(want), "got {e:?}, want {want:?}");
            assert!(!e.contains("MII"), "error quotes key material: {e}");
        }
    }

    #[test]
    fn pkcs1_pem_is_accepted_too() {
        let key = TestKey::rsa(2048);
        let file = serde_json::json!({
            "id": "k", "service_account_id": "s", "private_key": key.private_pkcs1_pem,
        })
        .to_string();
        assert_eq!(parse_key_file(file.as_bytes()).unwrap().bits(), 2048);
    }

    fn key_error(file: &str) -> String {
        match parse_key_file(file.as_bytes()) {
            Ok(_) => panic!("accepted: {file}"),
            Err(e) => e,
        }
    }

    #[test]
    fn key_file_problems_are_named() {
        let key = TestKey::rsa(2048);
        let pem = &key.private_pkcs8_pem;
        let obj = |v: Value| v.to_string();
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "not valid JSON"),
            ("{\"id\":".into(), "not valid JSON"),
            ("[]".into(), "not a JSON object"),
            (
                obj(serde_json::json!({"service_account_id":"s","private_key":pem})),
                "missing field \"id\"",
            ),
            (
                obj(serde_json::json!({"id":"k","private_key":pem})),
                "missing field \"service_account_id\"",
            ),
            (
                obj(serde_json::json!({"id":"k","service_account_id":"s"})),
                "missing field \"private_key\"",
            ),
            (
                obj(serde_json::json!({"id":5,"service_account_id":"s","private_key":pem})),
                "field \"id\" is not a string",
            ),
            (
                obj(serde_json::json!({"id":" ","service_account_id":"s","private_key":pem})),
                "field \"id\" is empty",
            ),
            (
                obj(serde_json::json!({"id":"k","service_account_id":"s","private_key":"MIIEv"})),
                "field \"private_key\": no PEM block",
            ),
            (
                obj(serde_json::json!({"id":"k","service_account_id":"s",
                    "private_key":"-----BEGIN PRIVATE KEY-----\n%%%%\n-----END PRIVATE KEY-----\n"})),
                "field \"private_key\": PEM body is not valid base64",
            ),
            (
                obj(serde_json::json!({"id":"k","service_account_id":"s",
                    "private_key": pem.replace("-----END PRIVATE KEY-----", "")})),
                "field \"private_key\": PEM block has no matching END line",
            ),
            (
                obj(serde_json::json!({"id":"k","service_account_id":"s",
                    "private_key": key.public_spki_pem})),
                "field \"private_key\": no private key PEM block",
            ),
            (
                obj(serde_json::json!({"id":"k","service_account_id":"s",
                    "private_key": TestKey::ec_pkcs8_pem(), "key_algorithm": "EC_P256"})),
                "field \"private_key\": not an RSA key (key_algorithm \"EC_P256\")",
            ),
            (
                obj(serde_json::json!({"id":"k","service_account_id":"s",
                    "private_key": TestKey::rsa_pkcs8_pem(1024)})),
                "RSA key smaller than 2048 bits",
            ),
        ];
        for (file, want) in cases {
            let e = key_error(&file);
            assert!(e.contains(want), "got {e:?}, want {want:?}");
            assert!(!e.contains("MII"), "error quotes key material: {e}");
        }
    }

    #[test]
    fn rsa_keys_above_4096_bits_are_refused() {
        let file = serde_json::json!({"id":"k","service_account_id":"s",
            "private_key": TestKey::rsa_pkcs8_pem(4104)})
        .to_string();
        let e = key_error(&file);
        // ring itself refuses private keys above 4096 bits; the size check backs it up.
        assert!(
            e.contains("RSA key larger than 4096 bits; supported: 2048 to 4096 bits"),
            "{e}"
        );
    }

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            body: Bytes::from(body.to_string()),
        }
    }

    #[test]
    fn expires_at_with_and_without_fractional_seconds_parses() {
        for (text, want) in [
            ("2025-03-01T22:00:00Z", "2025-03-01T22:00:00Z"),
            (
                "2025-03-01T22:00:00.123456789Z",
                "2025-03-01T22:00:00.123456789Z",
            ),
            ("2025-03-01T22:00:00.5Z", "2025-03-01T22:00:00.5Z"),
            ("2025-03-02T01:00:00+03:00", "2025-03-01T22:00:00Z"),
        ] {
            let body = format!(r#"{{"iamToken":"t1.x","expiresAt":"{text}"}}"#);
            let (token, at) = parse_token_answer("e", &answer(200, &body)).unwrap();
            assert_eq!(token.expose(), "t1.x");
            assert_eq!(at, want.parse::<Timestamp>().unwrap(), "{text}");
        }
    }

    #[test]
    fn malformed_token_answers_are_named_without_quoting_the_token() {
        for (body, want) in [
            ("t1.secret-token", "not JSON"),
            (
                r#"{"expiresAt":"2025-03-01T22:00:00Z"}"#,
                "missing field \"iamToken\"",
            ),
            (
                r#"{"iamToken":"t1.secret-token"}"#,
                "missing field \"expiresAt\"",
            ),
            (
                r#"{"iamToken":"t1.secret-token","expiresAt":"tomorrow"}"#,
                "field \"expiresAt\" \"tomorrow\" is not an RFC 3339 timestamp",
            ),
            (
                r#"{"iamToken":5,"expiresAt":"2025-03-01T22:00:00Z"}"#,
                "not a string",
            ),
            (
                r#"{"iamToken":"","expiresAt":"2025-03-01T22:00:00Z"}"#,
                "is empty",
            ),
        ] {
            let e = parse_token_answer("https://iam/x", &answer(200, body)).unwrap_err();
            let text = e.to_string();
            assert!(
                text.starts_with("https://iam/x answered HTTP 200 OK with an unusable body: "),
                "{text}"
            );
            assert!(text.contains(want), "got {text:?}, want {want:?}");
            assert!(!text.contains("secret-token") && !format!("{e:?}").contains("secret-token"));
        }
    }

    #[test]
    fn error_answers_carry_status_code_and_message() {
        let e = parse_token_answer(
            "https://iam/x",
            &answer(
                401,
                r#"{"code":16,"message":"The token is invalid","details":[]}"#,
            ),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "https://iam/x answered HTTP 401 Unauthorized: The token is invalid (code 16)"
        );
    }
}
