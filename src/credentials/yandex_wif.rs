//! IAM tokens through a Yandex Cloud workload identity federation: the injector's own
//! projected ServiceAccount token, a JWT the cluster signs, is exchanged for the IAM token
//! of the Yandex service account linked to it (OAuth 2.0 token exchange, RFC 8693).
//!
//! No key exists anywhere. The federation trusts the cluster's OIDC issuer: it checks the
//! token's signature with the cluster's JWKS, its audience, and that its subject
//! (`system:serviceaccount:NAMESPACE:NAME`) is linked to the service account asked for
//! (`audience` in the request). kubelet rewrites the token file well before the token
//! expires, so the file is read for every exchange. The wire facts and their sources are in
//! `docs/PROTOCOLS.md`.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::Uri;
use jiff::Timestamp;

use super::http::HttpClient;
use super::{Credential, CredentialError, Secret, bad_file, read_file, yandex_metadata};
use crate::config::YandexWorkloadIdentity;

/// `grant_type` of the exchange.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// `requested_token_type` of the exchange: an IAM token.
pub const REQUESTED_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// `subject_token_type` of the exchange, as the Yandex docs give it (always `id_token`).
pub const SUBJECT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";

const WHAT: &str = "ServiceAccount token file";

/// Read the token file: one JWT (surrounding whitespace ignored) that has not expired.
async fn read_subject_token(file: &Path, now: Timestamp) -> Result<Secret, CredentialError> {
    let bytes = read_file(WHAT, file).await?;
    let text = String::from_utf8(bytes).map_err(|_| bad_file(WHAT, file, "not UTF-8 text"))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(bad_file(WHAT, file, "is empty"));
    }
    check_jwt(token, now).map_err(|problem| bad_file(WHAT, file, problem))?;
    Ok(Secret::new(token))
}

/// What can be told about a subject token without its issuer's keys: it is a JWT (three
/// base64url parts, the middle one a JSON object) and its `exp`, if any, is in the future.
/// The problem text never quotes the token.
fn check_jwt(token: &str, now: Timestamp) -> Result<(), String> {
    let parts: Vec<&str> = token.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return Err(format!(
            "not a JWT ({} parts separated by '.', expected 3)",
            parts.len()
        ));
    };
    if header.is_empty() || signature.is_empty() {
        return Err("not a JWT (empty header or signature)".into());
    }
    let claims = URL_SAFE_NO_PAD
        .decode(claims)
        .map_err(|_| "not a JWT (the claims are not base64url)".to_string())?;
    let claims: serde_json::Value = serde_json::from_slice(&claims)
        .ok()
        .filter(serde_json::Value::is_object)
        .ok_or_else(|| "not a JWT (the claims are not a JSON object)".to_string())?;
    if let Some(exp) = claims.get("exp").and_then(serde_json::Value::as_i64)
        && exp <= now.as_second()
    {
        let at = Timestamp::from_second(exp)
            .map(|t| t.to_string())
            .unwrap_or_else(|_| exp.to_string());
        return Err(format!(
            "the token expired at {at}; kubelet renews a projected ServiceAccount token long before that, so this file is not one (mount a serviceAccountToken projection with the federation's audience)"
        ));
    }
    Ok(())
}

/// Read and check the token file as [`fetch`] does, without sending anything.
pub(crate) async fn validate(file: &Path) -> Result<(), CredentialError> {
    read_subject_token(file, Timestamp::now()).await.map(drop)
}

/// The form body of the exchange.
fn exchange_form(service_account_id: &str, subject_token: &Secret) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", GRANT_TYPE)
        .append_pair("requested_token_type", REQUESTED_TOKEN_TYPE)
        .append_pair("audience", service_account_id)
        .append_pair("subject_token", subject_token.expose())
        .append_pair("subject_token_type", SUBJECT_TOKEN_TYPE)
        .finish()
}

/// Read the token file and exchange it for the service account's IAM token.
pub(crate) async fn fetch(
    http: &HttpClient,
    source: &YandexWorkloadIdentity,
    uri: &Uri,
) -> Result<Credential, CredentialError> {
    let endpoint = source.endpoint.as_str();
    let issued_at = Timestamp::now();
    let token = read_subject_token(&source.token_file, issued_at).await?;
    let body = exchange_form(&source.service_account_id, &token);
    drop(token);
    let request = super::token_post(endpoint, uri, "application/x-www-form-urlencoded", body)?;
    let answer = http.send(endpoint, request).await?;
    yandex_metadata::iam_login(endpoint, &answer, issued_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: serde_json::Value) -> String {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"k"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    fn now() -> Timestamp {
        "2026-03-01T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn form_has_exactly_the_documented_fields_in_order_and_encodes_the_token() {
        let form = exchange_form("ajeq2v3pl6bu8jqnvvaa", &Secret::new("a.b+c/d=.e"));
        assert_eq!(
            form,
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange\
             &requested_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token\
             &audience=ajeq2v3pl6bu8jqnvvaa\
             &subject_token=a.b%2Bc%2Fd%3D.e\
             &subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aid_token"
        );
        let parsed: Vec<(String, String)> = form_urlencoded::parse(form.as_bytes())
            .into_owned()
            .collect();
        assert_eq!(parsed[3], ("subject_token".into(), "a.b+c/d=.e".into()));
    }

    #[test]
    fn a_jwt_that_has_not_expired_passes() {
        let exp = now().as_second() + 600;
        assert_eq!(
            check_jwt(
                &jwt(serde_json::json!({"sub": "system:serviceaccount:a:b", "exp": exp})),
                now()
            ),
            Ok(())
        );
        assert_eq!(check_jwt(&jwt(serde_json::json!({})), now()), Ok(()));
    }

    #[test]
    fn what_is_not_a_usable_jwt_is_named_without_quoting_it() {
        let expired = jwt(serde_json::json!({"exp": now().as_second() - 1}));
        for (token, want) in [
            ("secret-value", "not a JWT (1 parts"),
            ("a.b", "not a JWT (2 parts"),
            ("a.b.c.d", "not a JWT (4 parts"),
            (".eyJ9.x", "not a JWT (empty header"),
            ("a.!!!.c", "the claims are not base64url"),
            ("a.WzFd.c", "the claims are not a JSON object"),
            (
                expired.as_str(),
                "the token expired at 2026-03-01T09:59:59Z",
            ),
        ] {
            let e = check_jwt(token, now()).unwrap_err();
            assert!(e.contains(want), "{token}: {e}");
            if token.len() > 8 {
                assert!(!e.contains(token), "{e}");
            }
        }
    }

    #[tokio::test]
    async fn token_file_problems_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let e = validate(&missing).await.unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("reading {WHAT} {}", missing.display())),
            "{e}"
        );
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let e = validate(&empty).await.unwrap_err().to_string();
        assert_eq!(e, format!("{WHAT} {}: is empty", empty.display()));
        let good = dir.path().join("token");
        std::fs::write(&good, format!("{}\n", jwt(serde_json::json!({})))).unwrap();
        validate(&good)
            .await
            .expect("a JWT with a trailing newline");
    }
}
