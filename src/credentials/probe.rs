//! Proving a credential against the registry itself, with the registry's own auth flow
//! (what `docker login` does): `GET https://HOST/v2/` without credentials, read the `401`
//! challenge, then either repeat the request with Basic auth, or fetch a token from the
//! `Bearer` challenge's `realm` (with `service` and `scope`, the credential as Basic auth)
//! and repeat the request with that token.
//!
//! The answer is one of four [`ProbeResult`]s. Only `refused` says something about the
//! credential: the registry (or its token endpoint) answered and said no. `unreachable`
//! (no answer: DNS, connect, TLS, timeout) and `error` (an answer outside the protocol:
//! 5xx, a redirect, a challenge that cannot be followed) say something about the path to
//! the registry, and never stop a credential from being written.
//!
//! Requests go through the shared [`HttpClient`] (https with the system trust roots and
//! `SSL_CERT_FILE`, the same bounded timeouts as the IAM client). A token endpoint must pass
//! [`check_endpoint`] (https, or http to a loopback address) before the credential is sent
//! to it. Messages carry the registry's own words (the `errors[].message` of distribution,
//! `details` of token servers, or a short snippet) and never the credential: any
//! occurrence of the password or a token in them is replaced by `[redacted]`.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use futures::future::join_all;
use http::header::{AUTHORIZATION, LOCATION, USER_AGENT, WWW_AUTHENTICATE};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;

use super::http::{Answer, HttpClient};
use super::{CredentialError, one_line, user_agent};
use crate::config::check_endpoint;
use crate::dockerconfig::{self, AuthEntry};
use crate::registry::HostPattern;

/// Bound on one host's whole probe (up to three requests for the Bearer flow).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// Where Docker Hub's registry API answers: kubelet's `docker.io` and `index.docker.io`
/// keys are names for it, not hosts that serve `/v2/`.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// What the registry said about a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeResult {
    /// `/v2/` answered 2xx with the credential (or without asking for one).
    Accepted,
    /// The registry or its token endpoint answered 401/403 to the credential.
    Refused,
    /// No answer: DNS, connect, TLS or timeout.
    Unreachable,
    /// An answer outside the protocol (5xx, a redirect, no usable challenge...).
    Error,
}

impl ProbeResult {
    /// Every result, in label order.
    pub const ALL: [ProbeResult; 4] = [
        Self::Accepted,
        Self::Refused,
        Self::Unreachable,
        Self::Error,
    ];

    /// The metric label value and the word in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Refused => "refused",
            Self::Unreachable => "unreachable",
            Self::Error => "error",
        }
    }
}

impl fmt::Display for ProbeResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of probing one host: the result and what the registry said, in one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The verdict.
    pub result: ProbeResult,
    /// The answer in words (status, the registry's message); never holds the credential.
    pub answer: String,
}

/// One host's probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostProbe {
    /// `host[:port]` of the `auths` key (the metric's `host` label).
    pub host: String,
    /// What it said.
    pub probe: Probe,
}

/// A host that can be probed: its label and its `/v2/` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host[:port]` as the `auths` key writes it.
    pub host: String,
    /// `https://HOST/v2/` (Docker Hub's API host for its kubelet names).
    pub url: String,
}

/// The probe target of a host pattern, or `None` when the host is a glob (`*.example.com`
/// names no host to ask).
pub fn target(pattern: &HostPattern) -> Option<Target> {
    let key = pattern.kubelet_key();
    let host = key.split('/').next().unwrap_or(key);
    let literal_ipv6 = host.starts_with('[');
    if host.is_empty() || (!literal_ipv6 && host.contains(['*', '?', '[', '\\'])) {
        return None;
    }
    let api = match host {
        "docker.io" | "index.docker.io" => DOCKER_HUB_API,
        other => other,
    };
    Some(Target {
        host: host.to_string(),
        url: format!("https://{api}/v2/"),
    })
}

/// Probe every host of `hosts` that is not a glob with the login the pull Secret's
/// `.dockerconfigjson` (`data`) gives it, as kubelet reads that file. Hosts are probed
/// concurrently, each within [`PROBE_TIMEOUT`]. A host the data has no login for is
/// reported as `error` (it cannot happen for data this project builds).
pub async fn probe_data(http: &HttpClient, hosts: &[HostPattern], data: &[u8]) -> Vec<HostProbe> {
    let config = dockerconfig::parse(data);
    let config = &config;
    let probes = hosts.iter().filter_map(target).map(|t| async move {
        let login = config.as_ref().ok().and_then(|c| login_for(c, &t.host));
        let probe = match (config, login) {
            (_, Some(login)) => probe_within(http, &t, login, PROBE_TIMEOUT).await,
            (Err(e), None) => Probe {
                result: ProbeResult::Error,
                answer: format!("the pull Secret's data is not a docker config: {e}"),
            },
            (Ok(_), None) => Probe {
                result: ProbeResult::Error,
                answer: "the pull Secret has no login for this host".into(),
            },
        };
        HostProbe {
            host: t.host,
            probe,
        }
    });
    join_all(probes).await
}

/// The login of `host` in `config`: the `auths` entry whose key kubelet reads as that host.
fn login_for<'c>(config: &'c dockerconfig::DockerConfig, host: &str) -> Option<&'c AuthEntry> {
    config.auths.iter().find_map(|(key, entry)| {
        let pattern = HostPattern::parse(key).ok()?;
        let t = target(&pattern)?;
        (t.host == host).then_some(entry)
    })
}

/// [`probe`] within `timeout` (a slow answer is `unreachable`).
pub async fn probe_within(
    http: &HttpClient,
    target: &Target,
    login: &AuthEntry,
    timeout: Duration,
) -> Probe {
    match tokio::time::timeout(timeout, probe(http, target, login)).await {
        Ok(p) => p,
        Err(_) => Probe {
            result: ProbeResult::Unreachable,
            answer: format!(
                "no complete answer from {} within {}",
                target.url,
                humantime::format_duration(timeout)
            ),
        },
    }
}

/// Prove `login` against `target` with the registry's auth flow.
pub async fn probe(http: &HttpClient, target: &Target, login: &AuthEntry) -> Probe {
    let redact = |p: Probe| Probe {
        answer: redact(&p.answer, &[&login.password]),
        ..p
    };
    let (answer, headers) = match get(http, &target.url, None).await {
        Ok(a) => a,
        Err(e) => return redact(unreachable(&e)),
    };
    if answer.status.is_success() {
        return Probe {
            result: ProbeResult::Accepted,
            answer: format!(
                "HTTP {} without credentials: the registry does not ask for any at /v2/",
                answer.status.as_u16()
            ),
        };
    }
    if answer.status != StatusCode::UNAUTHORIZED {
        return redact(unexpected("", &answer, &headers));
    }
    let challenges = challenges(&headers);
    let basic = Authorization::basic(login);
    let outcome = if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
        bearer_flow(http, target, &basic, bearer).await
    } else if challenges.iter().any(|c| c.scheme == "basic") {
        retry(http, target, &basic, "with Basic auth").await
    } else {
        let offered: Vec<&str> = challenges.iter().map(|c| c.scheme.as_str()).collect();
        Probe {
            result: ProbeResult::Error,
            answer: format!(
                "HTTP 401 without a Basic or Bearer challenge (offered: {})",
                if offered.is_empty() {
                    "none".to_string()
                } else {
                    offered.join(", ")
                }
            ),
        }
    };
    redact(outcome)
}

/// The Bearer flow: a token from the realm with the login, then `/v2/` with the token.
async fn bearer_flow(
    http: &HttpClient,
    target: &Target,
    basic: &Authorization,
    challenge: &Challenge,
) -> Probe {
    let Some(realm) = challenge.param("realm") else {
        return Probe {
            result: ProbeResult::Error,
            answer: "HTTP 401 with a Bearer challenge without a realm".into(),
        };
    };
    if let Err(problem) = check_endpoint(realm, false) {
        return Probe {
            result: ProbeResult::Error,
            answer: format!(
                "the Bearer challenge names token endpoint {problem}; the credential is not sent there"
            ),
        };
    }
    let query = {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for name in ["service", "scope"] {
            if let Some(v) = challenge.param(name) {
                query.append_pair(name, v);
            }
        }
        query.finish()
    };
    let url = match (query.is_empty(), realm.contains('?')) {
        (true, _) => realm.to_string(),
        (false, false) => format!("{realm}?{query}"),
        (false, true) => format!("{realm}&{query}"),
    };
    let (answer, headers) = match get(http, &url, Some(basic)).await {
        Ok(a) => a,
        Err(e) => return unreachable(&e),
    };
    let at = format!("token endpoint {realm}");
    if matches!(
        answer.status,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
    ) {
        return Probe {
            result: ProbeResult::Refused,
            answer: format!(
                "{at} answered HTTP {}: {}",
                answer.status.as_u16(),
                registry_message(&answer.body)
            ),
        };
    }
    if !answer.status.is_success() {
        return unexpected(&format!("{at} "), &answer, &headers);
    }
    let token = serde_json::from_slice::<Value>(&answer.body)
        .ok()
        .and_then(|v| {
            ["token", "access_token"].iter().find_map(|f| {
                v.get(f)
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                    .map(str::to_string)
            })
        });
    let Some(token) = token else {
        return Probe {
            result: ProbeResult::Error,
            answer: format!(
                "{at} answered HTTP {} without a token (JSON \"token\" or \"access_token\")",
                answer.status.as_u16()
            ),
        };
    };
    let how = format!("with a Bearer token from {realm}");
    let p = retry(http, target, &Authorization::bearer(&token), &how).await;
    Probe {
        answer: redact(&p.answer, &[&token]),
        ..p
    }
}

/// `GET /v2/` again with `auth`: 2xx accepted, 401/403 refused.
async fn retry(http: &HttpClient, target: &Target, auth: &Authorization, how: &str) -> Probe {
    let (answer, headers) = match get(http, &target.url, Some(auth)).await {
        Ok(a) => a,
        Err(e) => return unreachable(&e),
    };
    let status = answer.status;
    if status.is_success() {
        Probe {
            result: ProbeResult::Accepted,
            answer: format!("HTTP {} {how}", status.as_u16()),
        }
    } else if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        Probe {
            result: ProbeResult::Refused,
            answer: format!(
                "HTTP {} {how}: {}",
                status.as_u16(),
                registry_message(&answer.body)
            ),
        }
    } else {
        unexpected(&format!("{how}: "), &answer, &headers)
    }
}

/// The value of an `Authorization` header (kept out of `Debug` output).
struct Authorization(String);

impl Authorization {
    fn basic(login: &AuthEntry) -> Self {
        Self(format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", login.username, login.password))
        ))
    }

    fn bearer(token: &str) -> Self {
        Self(format!("Bearer {token}"))
    }
}

async fn get(
    http: &HttpClient,
    url: &str,
    auth: Option<&Authorization>,
) -> Result<(Answer, HeaderMap), CredentialError> {
    let mut request = Request::get(url).header(USER_AGENT, user_agent());
    if let Some(a) = auth {
        request = request.header(AUTHORIZATION, &a.0);
    }
    let request =
        request
            .body(Full::new(Bytes::new()))
            .map_err(|e| CredentialError::InvalidEndpoint {
                endpoint: url.to_string(),
                problem: format!("{url:?} cannot be requested: {e}"),
            })?;
    http.send_with_headers(url, request).await
}

fn unreachable(e: &CredentialError) -> Probe {
    Probe {
        result: ProbeResult::Unreachable,
        answer: e.to_string(),
    }
}

/// An answer outside the flow: a redirect (with its target), 5xx, 404...
fn unexpected(at: &str, answer: &Answer, headers: &HeaderMap) -> Probe {
    let status = answer.status.as_u16();
    let answer = if answer.status.is_redirection() {
        let to = headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(|l| one_line(l, 200))
            .unwrap_or_else(|| "nowhere".into());
        format!("{at}HTTP {status}: redirects to {to} (not followed)")
    } else {
        format!("{at}HTTP {status}: {}", registry_message(&answer.body))
    };
    Probe {
        result: ProbeResult::Error,
        answer,
    }
}

/// The registry's own words from an error body: distribution's
/// `{"errors":[{"code","message"}]}`, token servers' `{"details"}` or OAuth's
/// `{"error","error_description"}`, `{"message"}`; else a short snippet of the text.
pub(crate) fn registry_message(body: &[u8]) -> String {
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if let Some(errors) = v.get("errors").and_then(Value::as_array) {
            let parts: Vec<String> = errors
                .iter()
                .filter_map(|e| match (text(e, "code"), text(e, "message")) {
                    (Some(c), Some(m)) => Some(format!("{c}: {m}")),
                    (c, m) => c.or(m),
                })
                .collect();
            if !parts.is_empty() {
                return one_line(&parts.join("; "), 300);
            }
        }
        let found = match (text(&v, "error"), text(&v, "error_description")) {
            (Some(e), Some(d)) => Some(format!("{e}: {d}")),
            _ => ["details", "message", "error"]
                .iter()
                .find_map(|k| text(&v, k)),
        };
        if let Some(m) = found {
            return one_line(&m, 300);
        }
    }
    let snippet = one_line(&String::from_utf8_lossy(body), 200);
    if snippet.is_empty() {
        "empty body".into()
    } else {
        format!("body: {snippet}")
    }
}

/// `text` with every occurrence of the (non-empty) secrets replaced.
fn redact(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 3) {
        out = out.replace(*s, "[redacted]");
    }
    out
}

/// One challenge of a `WWW-Authenticate` header: the scheme (lowercase) and its
/// parameters (names lowercase).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Every challenge of every `WWW-Authenticate` header.
fn challenges(headers: &HeaderMap) -> Vec<Challenge> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(parse_challenges)
        .collect()
}

/// Parse a `WWW-Authenticate` value (RFC 9110 11.6.1): challenges separated by commas,
/// each a scheme followed by `name=value` parameters (token or quoted string) or a
/// token68. What does not parse ends the value.
pub(crate) fn parse_challenges(value: &str) -> Vec<Challenge> {
    let mut p = Parser {
        s: value.as_bytes(),
        i: 0,
    };
    let mut out: Vec<Challenge> = Vec::new();
    loop {
        p.skip(|b| b == b' ' || b == b'\t' || b == b',');
        let Some(scheme) = p.token() else { break };
        let mut challenge = Challenge {
            scheme: scheme.to_ascii_lowercase(),
            params: Vec::new(),
        };
        // Set when a comma ended this challenge: the next one starts right after it.
        let mut ended_by_comma = false;
        loop {
            p.skip(|b| b == b' ' || b == b'\t');
            let save = p.i;
            let Some(name) = p.token() else { break };
            p.skip(|b| b == b' ' || b == b'\t');
            if p.peek() != Some(b'=') {
                // The next challenge's scheme (or a token68): not a parameter.
                p.i = save;
                break;
            }
            p.i += 1;
            p.skip(|b| b == b' ' || b == b'\t');
            let value = if p.peek() == Some(b'"') {
                p.quoted()
            } else {
                p.token().map(str::to_string)
            };
            let Some(value) = value else {
                // `token68=`-style padding or garbage: skip to the next comma.
                p.skip(|b| b != b',');
                break;
            };
            challenge.params.push((name.to_ascii_lowercase(), value));
            p.skip(|b| b == b' ' || b == b'\t');
            if p.peek() != Some(b',') {
                break;
            }
            // After a comma: another parameter of this challenge, or the next challenge.
            let comma = p.i;
            p.i += 1;
            p.skip(|b| b == b' ' || b == b'\t' || b == b',');
            let next_is_param = p.token().is_some() && {
                p.skip(|b| b == b' ' || b == b'\t');
                p.peek() == Some(b'=')
            };
            p.i = comma + 1;
            if !next_is_param {
                ended_by_comma = true;
                break;
            }
        }
        out.push(challenge);
        p.skip(|b| b == b' ' || b == b'\t');
        if !ended_by_comma && p.i < p.s.len() && p.peek() != Some(b',') {
            // Neither a parameter nor a comma: skip a token68 or garbage up to the next comma.
            p.skip(|b| b != b',');
        }
        if p.i >= p.s.len() {
            break;
        }
    }
    out
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip(&mut self, f: impl Fn(u8) -> bool) {
        while self.peek().is_some_and(&f) {
            self.i += 1;
        }
    }

    /// An RFC 9110 token.
    fn token(&mut self) -> Option<&'a str> {
        let start = self.i;
        self.skip(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        (self.i > start)
            .then(|| std::str::from_utf8(&self.s[start..self.i]).ok())
            .flatten()
    }

    /// A quoted string (at `"`), unescaped.
    fn quoted(&mut self) -> Option<String> {
        self.i += 1;
        let mut out = Vec::new();
        while let Some(b) = self.peek() {
            self.i += 1;
            match b {
                b'"' => return String::from_utf8(out).ok(),
                b'\\' => {
                    out.push(self.peek()?);
                    self.i += 1;
                }
                _ => out.push(b),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge(scheme: &str, params: &[(&str, &str)]) -> Challenge {
        Challenge {
            scheme: scheme.into(),
            params: params
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn challenges_of_real_registries_parse() {
        let cases: &[(&str, Vec<Challenge>)] = &[
            (
                r#"Basic realm="pullsecret-injector-test""#,
                vec![challenge("basic", &[("realm", "pullsecret-injector-test")])],
            ),
            (
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io""#,
                vec![challenge(
                    "bearer",
                    &[
                        ("realm", "https://auth.docker.io/token"),
                        ("service", "registry.docker.io"),
                    ],
                )],
            ),
            (
                r#"Bearer realm="https://cr.yandex/token", service="cr.yandex", scope="repository:a/b:pull",error="invalid_token""#,
                vec![challenge(
                    "bearer",
                    &[
                        ("realm", "https://cr.yandex/token"),
                        ("service", "cr.yandex"),
                        ("scope", "repository:a/b:pull"),
                        ("error", "invalid_token"),
                    ],
                )],
            ),
            (
                r#"Negotiate, Basic realm="a, b", charset=UTF-8 , Bearer realm=x"#,
                vec![
                    challenge("negotiate", &[]),
                    challenge("basic", &[("realm", "a, b"), ("charset", "UTF-8")]),
                    challenge("bearer", &[("realm", "x")]),
                ],
            ),
            (
                r#"NTLM abc+/def==, BASIC REALM="q\"uote""#,
                vec![
                    challenge("ntlm", &[]),
                    challenge("basic", &[("realm", "q\"uote")]),
                ],
            ),
            ("", vec![]),
            (" , ,", vec![]),
            (
                r#"Bearer realm="unterminated"#,
                vec![challenge("bearer", &[])],
            ),
        ];
        for (text, want) in cases {
            assert_eq!(&parse_challenges(text), want, "{text:?}");
        }
    }

    #[test]
    fn challenge_parsing_never_loops_or_panics_on_garbage() {
        for text in [
            "=", "==", "a=", "a==,", "\"", "a \"b\"", "a b=\"", "a b=c,=d", "\\", "é",
        ] {
            let _ = parse_challenges(text);
        }
    }

    #[test]
    fn probe_targets_are_exact_hosts_and_docker_hub_goes_to_its_api_host() {
        let t = |s: &str| target(&HostPattern::parse(s).unwrap());
        assert_eq!(
            t("cr.yandex"),
            Some(Target {
                host: "cr.yandex".into(),
                url: "https://cr.yandex/v2/".into()
            })
        );
        assert_eq!(
            t("127.0.0.1:5000/crp/").unwrap().url,
            "https://127.0.0.1:5000/v2/"
        );
        assert_eq!(t("https://ghcr.io/").unwrap().host, "ghcr.io");
        assert_eq!(t("[::1]:5000").unwrap().url, "https://[::1]:5000/v2/");
        for hub in [
            "docker.io",
            "index.docker.io",
            "https://index.docker.io/v1/",
        ] {
            let t = t(hub).unwrap();
            assert_eq!(t.url, "https://registry-1.docker.io/v2/", "{hub}");
        }
        assert_eq!(t("*.example.com"), None);
        assert_eq!(t("cr-*.example.com:5000"), None);
    }

    #[test]
    fn registry_messages_are_read_from_every_known_shape() {
        let m = |s: &str| registry_message(s.as_bytes());
        assert_eq!(
            m(
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}"#
            ),
            "UNAUTHORIZED: authentication required"
        );
        assert_eq!(
            m(r#"{"details":"incorrect username or password"}"#),
            "incorrect username or password"
        );
        assert_eq!(
            m(r#"{"error":"invalid_grant","error_description":"bad"}"#),
            "invalid_grant: bad"
        );
        assert_eq!(m(r#"{"message":"no"}"#), "no");
        assert_eq!(m("<html>\n 502 </html>"), "body: <html> 502 </html>");
        assert_eq!(m(""), "empty body");
    }

    #[test]
    fn redaction_removes_every_copy_of_a_secret() {
        assert_eq!(
            redact("token t1.abc echoed: t1.abc", &["t1.abc", ""]),
            "token [redacted] echoed: [redacted]"
        );
    }

    #[tokio::test]
    async fn an_unreachable_registry_is_unreachable_not_refused() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let http = HttpClient::new(super::super::HttpOptions::default()).unwrap();
        let target = Target {
            host: format!("127.0.0.1:{port}"),
            url: format!("https://127.0.0.1:{port}/v2/"),
        };
        let login = AuthEntry {
            username: "iam".into(),
            password: "secret-token".into(),
        };
        let p = probe(&http, &target, &login).await;
        assert_eq!(p.result, ProbeResult::Unreachable, "{p:?}");
        assert!(!p.answer.contains("secret-token"));
    }
}
