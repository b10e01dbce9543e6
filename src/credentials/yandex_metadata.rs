//! IAM tokens from the VM metadata service (GCE-compatible token endpoint).

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::Full;
use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

use super::http::{Answer, HttpClient};
use super::{Credential, CredentialError, IAM_USERNAME, Secret};

/// Longest lifetime believed from `expires_in` (IAM tokens live at most 12 hours).
const MAX_EXPIRES_IN_SECS: f64 = 24.0 * 3600.0;

/// GET the token with `Metadata-Flavor: Google`.
pub(crate) async fn fetch(
    http: &HttpClient,
    endpoint: &str,
    uri: &Uri,
) -> Result<Credential, CredentialError> {
    let request = Request::get(uri.clone())
        .header("Metadata-Flavor", "Google")
        .header(header::ACCEPT, "application/json")
        .header(header::USER_AGENT, super::user_agent())
        .body(Full::new(Bytes::new()))
        .map_err(|e| CredentialError::Request {
            endpoint: endpoint.to_string(),
            problem: format!("building the request: {e}"),
        })?;
    let issued_at = Timestamp::now();
    let answer = http.send(endpoint, request).await?;
    iam_login(endpoint, &answer, issued_at)
}

/// The `iam` login from a bearer token answer to a request sent at `issued_at`: the
/// metadata service and the workload identity token exchange answer the same way.
pub(crate) fn iam_login(
    endpoint: &str,
    answer: &Answer,
    issued_at: Timestamp,
) -> Result<Credential, CredentialError> {
    let (token, expires_in) = parse_token_answer(endpoint, answer)?;
    let expires_at = issued_at
        .checked_add(expires_in)
        .map_err(|e| CredentialError::BadAnswer {
            endpoint: endpoint.to_string(),
            status: answer.status,
            problem: format!("field \"expires_in\" is out of range: {e}"),
        })?;
    Credential::login(IAM_USERNAME, token, issued_at, Some(expires_at))
}

/// `{"access_token","expires_in","token_type":"Bearer"}` on 2xx; the error otherwise.
pub(crate) fn parse_token_answer(
    endpoint: &str,
    answer: &Answer,
) -> Result<(Secret, SignedDuration), CredentialError> {
    let (value, token) = super::json_token_answer(endpoint, answer, "access_token")?;
    let bad = |problem: String| super::bad_answer(endpoint, answer, problem);
    let expires_in = match value.get("expires_in") {
        Some(v) => v
            .as_f64()
            .filter(|s| s.is_finite() && *s > 0.0 && *s <= MAX_EXPIRES_IN_SECS)
            .ok_or_else(|| {
                bad(format!(
                    "field \"expires_in\" is not a number of seconds between 0 and {MAX_EXPIRES_IN_SECS}"
                ))
            })?,
        None => return Err(bad("missing field \"expires_in\"".into())),
    };
    match value.get("token_type") {
        None => {}
        Some(Value::String(t)) if t.eq_ignore_ascii_case("bearer") => {}
        Some(Value::String(t)) => {
            return Err(bad(format!(
                "field \"token_type\" is {:?}, expected \"Bearer\"",
                super::one_line(t, 32)
            )));
        }
        Some(_) => return Err(bad("field \"token_type\" is not a string".into())),
    }
    Ok((token, SignedDuration::from_secs_f64(expires_in)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            body: Bytes::from(body.to_string()),
        }
    }

    #[test]
    fn token_answer_gives_token_and_lifetime() {
        let (t, d) = parse_token_answer(
            "e",
            &answer(
                200,
                r#"{"access_token":"t1.abc","expires_in":42659,"token_type":"Bearer"}"#,
            ),
        )
        .unwrap();
        assert_eq!(t.expose(), "t1.abc");
        assert_eq!(d, SignedDuration::from_secs(42659));
    }

    #[test]
    fn token_type_is_optional_and_case_insensitive() {
        for body in [
            r#"{"access_token":"t","expires_in":10}"#,
            r#"{"access_token":"t","expires_in":10.5,"token_type":"bearer"}"#,
        ] {
            assert!(
                parse_token_answer("e", &answer(200, body)).is_ok(),
                "{body}"
            );
        }
    }

    #[test]
    fn malformed_answers_are_named_without_quoting_the_token() {
        for (body, want) in [
            ("secret-token", "not JSON"),
            (r#"{"expires_in":10}"#, "missing field \"access_token\""),
            (
                r#"{"access_token":"secret-token"}"#,
                "missing field \"expires_in\"",
            ),
            (
                r#"{"access_token":"secret-token","expires_in":"10"}"#,
                "field \"expires_in\" is not a number",
            ),
            (
                r#"{"access_token":"secret-token","expires_in":0}"#,
                "field \"expires_in\" is not a number",
            ),
            (
                r#"{"access_token":"secret-token","expires_in":1e12}"#,
                "field \"expires_in\" is not a number",
            ),
            (
                r#"{"access_token":"secret-token","expires_in":10,"token_type":"MAC"}"#,
                "field \"token_type\" is \"MAC\", expected \"Bearer\"",
            ),
        ] {
            let e = parse_token_answer("http://md/x", &answer(200, body)).unwrap_err();
            let text = e.to_string();
            assert!(text.contains(want), "got {text:?}, want {want:?}");
            assert!(!text.contains("secret-token") && !format!("{e:?}").contains("secret-token"));
        }
    }

    #[test]
    fn plain_text_errors_are_quoted_as_a_short_snippet() {
        let long = format!("Missing Metadata-Flavor:Google header\n{}", "x".repeat(500));
        let e = parse_token_answer("http://md/x", &answer(403, &long))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "http://md/x answered HTTP 403 Forbidden: body: Missing Metadata-Flavor:Google header xxx"
            ),
            "{e}"
        );
        assert!(e.ends_with('…') && e.len() < 300, "{e}");
        let e = parse_token_answer("http://md/x", &answer(404, ""))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "http://md/x answered HTTP 404 Not Found: empty body");
    }
}
