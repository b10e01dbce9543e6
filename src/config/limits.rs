//! Connection and body limits of the two servers (`webhook.*` and `admin.*` fields). Every
//! field is optional; the defaults live in [`crate::server::Limits`] and
//! [`crate::server::BodyLimits`], so that the code and the config cannot disagree.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::server::{BodyLimits, DECODE_OVERHEAD, Limits};

use super::{AdminConfig, FieldError, WebhookConfig};

type Errors<'a> = &'a mut Vec<FieldError>;

fn err(errors: Errors<'_>, path: &str, message: String) {
    errors.push(FieldError {
        path: path.to_string(),
        message,
    });
}

fn positive(
    errors: Errors<'_>,
    path: &str,
    value: Option<Duration>,
    default: Duration,
) -> Duration {
    match value {
        Some(d) if d.is_zero() => {
            err(errors, path, "must be longer than 0s".into());
            default
        }
        Some(d) => d,
        None => default,
    }
}

fn connections(errors: Errors<'_>, path: &str, value: Option<usize>, default: usize) -> usize {
    match value {
        Some(0) => {
            err(errors, path, "must be at least 1".into());
            default
        }
        Some(n) => n,
        None => default,
    }
}

/// The webhook's limits from its config fields; problems go to `errors`.
pub(super) fn webhook(c: &WebhookConfig, errors: Errors<'_>) -> (Limits, BodyLimits) {
    let d = Limits::webhook();
    let limits = Limits {
        max_connections: connections(
            errors,
            "webhook.maxConnections",
            c.max_connections,
            d.max_connections,
        ),
        handshake_timeout: positive(
            errors,
            "webhook.handshakeTimeout",
            c.handshake_timeout,
            d.handshake_timeout,
        ),
        header_read_timeout: positive(
            errors,
            "webhook.headerReadTimeout",
            c.header_read_timeout,
            d.header_read_timeout,
        ),
        request_timeout: positive(
            errors,
            "webhook.requestTimeout",
            c.request_timeout,
            d.request_timeout,
        ),
        idle_timeout: positive(
            errors,
            "webhook.idleTimeout",
            c.idle_timeout,
            d.idle_timeout,
        ),
        http2_keep_alive_interval: match c.http2_keep_alive_interval {
            Some(i) if i.is_zero() => None,
            Some(i) => Some(i),
            None => d.http2_keep_alive_interval,
        },
        http2_keep_alive_timeout: positive(
            errors,
            "webhook.http2KeepAliveTimeout",
            c.http2_keep_alive_timeout,
            d.http2_keep_alive_timeout,
        ),
        drain_timeout: d.drain_timeout,
    };
    let b = BodyLimits::default();
    let max_body_bytes = match c.max_request_body_bytes {
        Some(0) => {
            err(
                errors,
                "webhook.maxRequestBodyBytes",
                "must be at least 1".into(),
            );
            b.max_body_bytes
        }
        Some(n) => n,
        None => b.max_body_bytes,
    };
    let max_buffered_bytes = c.max_buffered_body_bytes.unwrap_or(b.max_buffered_bytes);
    let factor = 1 + DECODE_OVERHEAD;
    if max_buffered_bytes / factor < max_body_bytes {
        err(
            errors,
            "webhook.maxBufferedBodyBytes",
            format!(
                "{max_buffered_bytes} is less than {factor} x webhook.maxRequestBodyBytes ({max_body_bytes}): a body is charged at least {factor} times its size (the buffer and decoding it), so the largest body would never fit"
            ),
        );
    }
    (
        limits,
        BodyLimits {
            max_body_bytes,
            max_buffered_bytes,
            wait: b.wait,
        },
    )
}

/// The admin port's limits from its config fields; problems go to `errors`.
pub(super) fn admin(c: &AdminConfig, errors: Errors<'_>) -> Limits {
    let d = Limits::admin();
    Limits {
        max_connections: connections(
            errors,
            "admin.maxConnections",
            c.max_connections,
            d.max_connections,
        ),
        header_read_timeout: positive(
            errors,
            "admin.headerReadTimeout",
            c.header_read_timeout,
            d.header_read_timeout,
        ),
        request_timeout: positive(
            errors,
            "admin.requestTimeout",
            c.request_timeout,
            d.request_timeout,
        ),
        idle_timeout: positive(errors, "admin.idleTimeout", c.idle_timeout, d.idle_timeout),
        ..d
    }
}

pub(super) mod opt_duration {
    use super::*;
    use serde::Serializer;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::super::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::super::duration::deserialize(d).map(Some)
    }
}

/// A byte size: a number of bytes, or a string with a binary (`Ki`, `Mi`, `Gi`) or decimal
/// (`k`, `M`, `G`) suffix, as in Kubernetes quantities (`8Mi`).
pub(crate) fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let multiplier: u64 = match unit {
        "" => 1,
        "k" | "K" => 1000,
        "M" => 1000 * 1000,
        "G" => 1000 * 1000 * 1000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => {
            return Err(format!(
                "{text:?} is not a size (a number of bytes, or with a suffix Ki, Mi, Gi, k, M, G: \"8Mi\")"
            ));
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| format!("{text:?} is not a size (a number of bytes, or with a suffix Ki, Mi, Gi, k, M, G: \"8Mi\")"))
}

pub(super) mod opt_size {
    use super::*;
    use serde::Serializer;

    pub fn serialize<S: Serializer>(n: &Option<usize>, s: S) -> Result<S::Ok, S::Error> {
        match n {
            Some(n) => s.serialize_u64(*n as u64),
            None => s.serialize_none(),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Number(u64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
        match Size::deserialize(d)? {
            Size::Number(n) => usize::try_from(n)
                .map(Some)
                .map_err(|_| serde::de::Error::custom(format!("{n} is too large"))),
            Size::Text(t) => parse_size(&t).map(Some).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigError, Settings};
    use std::path::Path;

    const REGISTRIES: &str = "registries:\n  - name: a\n    hosts: [cr.yandex]\n    secretName: a\n    credentials:\n      basic: { username: u, passwordFile: /p }\n";

    fn load(head: &str) -> Result<Settings, ConfigError> {
        Settings::from_yaml(&format!("{head}{REGISTRIES}"), Path::new("c.yaml"))
    }

    #[test]
    fn absent_limit_fields_get_the_server_defaults() {
        let s = load("").unwrap();
        let (w, a, b) = (Limits::webhook(), Limits::admin(), BodyLimits::default());
        assert_eq!(s.webhook_limits.max_connections, w.max_connections);
        assert_eq!(s.webhook_limits.idle_timeout, w.idle_timeout);
        assert_eq!(
            s.webhook_limits.http2_keep_alive_interval,
            Some(Duration::from_secs(30))
        );
        assert_eq!(s.admin_limits.max_connections, a.max_connections);
        assert_eq!(s.admin_limits.header_read_timeout, a.header_read_timeout);
        assert_eq!(s.body_limits.max_body_bytes, 8 << 20);
        assert_eq!(s.body_limits.max_buffered_bytes, b.max_buffered_bytes);
        // The API server keeps idle connections 90 s: ours must outlast that.
        assert!(w.idle_timeout > Duration::from_secs(90));
    }

    #[test]
    fn every_limit_field_is_read() {
        let s = load(
            "webhook:\n  maxConnections: 10\n  handshakeTimeout: 1s\n  headerReadTimeout: 2s\n  requestTimeout: 3s\n  idleTimeout: 4s\n  http2KeepAliveInterval: 5s\n  http2KeepAliveTimeout: 6s\n  maxRequestBodyBytes: 1Mi\n  maxBufferedBodyBytes: 3145728\nadmin:\n  maxConnections: 7\n  headerReadTimeout: 8s\n  requestTimeout: 9s\n  idleTimeout: 11s\n",
        )
        .unwrap();
        let w = &s.webhook_limits;
        assert_eq!(
            (
                w.max_connections,
                w.handshake_timeout,
                w.header_read_timeout,
                w.request_timeout,
                w.idle_timeout,
                w.http2_keep_alive_interval,
                w.http2_keep_alive_timeout
            ),
            (
                10,
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_secs(3),
                Duration::from_secs(4),
                Some(Duration::from_secs(5)),
                Duration::from_secs(6)
            )
        );
        assert_eq!(s.body_limits.max_body_bytes, 1 << 20);
        assert_eq!(s.body_limits.max_buffered_bytes, 3 << 20);
        let a = &s.admin_limits;
        assert_eq!(
            (
                a.max_connections,
                a.header_read_timeout,
                a.request_timeout,
                a.idle_timeout
            ),
            (
                7,
                Duration::from_secs(8),
                Duration::from_secs(9),
                Duration::from_secs(11)
            )
        );
        let off = load("webhook:\n  http2KeepAliveInterval: 0s\n").unwrap();
        assert_eq!(off.webhook_limits.http2_keep_alive_interval, None);
    }

    #[test]
    fn bad_limits_name_the_field() {
        let e = load(
            "webhook:\n  maxConnections: 0\n  idleTimeout: 0s\n  maxRequestBodyBytes: 8Mi\n  maxBufferedBodyBytes: 23Mi\nadmin:\n  headerReadTimeout: 0s\n",
        )
        .unwrap_err()
        .to_string();
        for want in [
            "webhook.maxConnections: must be at least 1",
            "webhook.idleTimeout: must be longer than 0s",
            "webhook.maxBufferedBodyBytes: 24117248 is less than 3 x webhook.maxRequestBodyBytes (8388608)",
            "admin.headerReadTimeout: must be longer than 0s",
        ] {
            assert!(e.contains(want), "{want:?} not in {e}");
        }
        let e = load("webhook:\n  maxRequestBodyBytes: 8MB\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"8MB\" is not a size"), "{e}");
        let e = load("admin:\n  handshakeTimeout: 1s\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `handshakeTimeout`"), "{e}");
    }

    #[test]
    fn sizes_parse_with_binary_and_decimal_suffixes() {
        for (text, want) in [
            ("0", 0),
            ("1024", 1024),
            ("8Mi", 8 << 20),
            ("32Mi", 32 << 20),
            ("1Gi", 1 << 30),
            ("64Ki", 64 << 10),
            ("3M", 3_000_000),
            ("5k", 5000),
        ] {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
        for bad in [
            "",
            "Mi",
            "8 MiB",
            "8mb",
            "-1",
            "1.5Mi",
            "99999999999999999999Gi",
        ] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains("is not a size"), "{bad}: {e}");
        }
    }
}
