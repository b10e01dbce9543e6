//! Label selectors in kubectl syntax and Kubernetes name validation.
//!
//! The opt-in `namespaceSelector` is written once, in the config, and used in three places:
//! the sync task's watch (sent to the API server as a string), the MutatingWebhookConfiguration
//! (as a structured `LabelSelector`), and local matching in tests and `explain`. Parsing it
//! here, with the API server's rules, means a typo fails at start-up instead of silently
//! selecting nothing.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value` or `key==value`.
    Equals(String, String),
    /// `key!=value` (also matches when the key is absent).
    NotEquals(String, String),
    /// `key in (a,b)`.
    In(String, Vec<String>),
    /// `key notin (a,b)` (also matches when the key is absent).
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
}

/// A parsed label selector: all requirements must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

/// Why a selector or name is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LabelError(String);

impl LabelSelector {
    /// Parse kubectl selector syntax (`a=b,c!=d,e in (f,g),!h`).
    pub fn parse(s: &str) -> Result<Self, LabelError> {
        let mut requirements = Vec::new();
        for part in split_top_level(s)? {
            let part = part.trim();
            if part.is_empty() {
                return Err(LabelError("empty requirement".into()));
            }
            requirements.push(parse_requirement(part)?);
        }
        if requirements.is_empty() {
            return Err(LabelError(
                "empty selector would match every namespace".into(),
            ));
        }
        Ok(Self { requirements })
    }

    /// The requirements, in order.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether a label set satisfies every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }

    /// The structured form used in webhook configurations.
    pub fn to_k8s(&self) -> metav1::LabelSelector {
        let mut match_labels = BTreeMap::new();
        let mut exprs = Vec::new();
        let expr =
            |key: &str, op: &str, values: Option<Vec<String>>| metav1::LabelSelectorRequirement {
                key: key.to_string(),
                operator: op.to_string(),
                values,
            };
        for r in &self.requirements {
            match r {
                Requirement::Equals(k, v) => {
                    match_labels.insert(k.clone(), v.clone());
                }
                Requirement::NotEquals(k, v) => exprs.push(expr(k, "NotIn", Some(vec![v.clone()]))),
                Requirement::In(k, vs) => exprs.push(expr(k, "In", Some(vs.clone()))),
                Requirement::NotIn(k, vs) => exprs.push(expr(k, "NotIn", Some(vs.clone()))),
                Requirement::Exists(k) => exprs.push(expr(k, "Exists", None)),
                Requirement::DoesNotExist(k) => exprs.push(expr(k, "DoesNotExist", None)),
            }
        }
        metav1::LabelSelector {
            match_labels: (!match_labels.is_empty()).then_some(match_labels),
            match_expressions: (!exprs.is_empty()).then_some(exprs),
        }
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match r {
                Requirement::Equals(k, v) => write!(f, "{k}={v}")?,
                Requirement::NotEquals(k, v) => write!(f, "{k}!={v}")?,
                Requirement::In(k, vs) => write!(f, "{k} in ({})", vs.join(","))?,
                Requirement::NotIn(k, vs) => write!(f, "{k} notin ({})", vs.join(","))?,
                Requirement::Exists(k) => write!(f, "{k}")?,
                Requirement::DoesNotExist(k) => write!(f, "!{k}")?,
            }
        }
        Ok(())
    }
}

/// Split at commas that are not inside parentheses.
fn split_top_level(s: &str) -> Result<Vec<&str>, LabelError> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| LabelError("unbalanced ')'".into()))?
            }
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(LabelError("unbalanced '('".into()));
    }
    if !s.trim().is_empty() {
        parts.push(&s[start..]);
    }
    Ok(parts)
}

fn parse_requirement(p: &str) -> Result<Requirement, LabelError> {
    if let Some(key) = p.strip_prefix('!') {
        let key = key.trim();
        validate_key(key)?;
        return Ok(Requirement::DoesNotExist(key.to_string()));
    }
    for (op, ctor) in [
        (
            "!=",
            Requirement::NotEquals as fn(String, String) -> Requirement,
        ),
        ("==", Requirement::Equals),
        ("=", Requirement::Equals),
    ] {
        if let Some((k, v)) = p.split_once(op) {
            let (k, v) = (k.trim(), v.trim());
            validate_key(k)?;
            validate_label_value(v)?;
            return Ok(ctor(k.to_string(), v.to_string()));
        }
    }
    let mut words = p.splitn(2, char::is_whitespace);
    let key = words.next().unwrap_or_default().trim();
    let rest = words.next().unwrap_or_default().trim();
    validate_key(key)?;
    if rest.is_empty() {
        return Ok(Requirement::Exists(key.to_string()));
    }
    let (op, list) = if let Some(l) = rest.strip_prefix("notin") {
        ("notin", l)
    } else if let Some(l) = rest.strip_prefix("in") {
        ("in", l)
    } else {
        return Err(LabelError(format!(
            "expected =, ==, !=, in or notin after {key:?}, found {rest:?}"
        )));
    };
    let list = list.trim();
    let inner = list
        .strip_prefix('(')
        .and_then(|l| l.strip_suffix(')'))
        .ok_or_else(|| LabelError(format!("{op} needs a parenthesised list, found {list:?}")))?;
    let values = inner
        .split(',')
        .map(|v| {
            let v = v.trim();
            validate_label_value(v).map(|()| v.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    if inner.trim().is_empty() {
        return Err(LabelError(format!("{op} needs at least one value")));
    }
    Ok(if op == "in" {
        Requirement::In(key.to_string(), values)
    } else {
        Requirement::NotIn(key.to_string(), values)
    })
}

/// A label or annotation key: `[prefix/]name`, prefix a DNS subdomain, name 1-63 chars.
pub fn validate_key(key: &str) -> Result<(), LabelError> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        validate_dns_subdomain(p)
            .map_err(|_| LabelError(format!("key prefix {p:?} is not a DNS subdomain")))?;
    }
    if name.is_empty() || name.len() > 63 || !is_qualified_name(name) {
        return Err(LabelError(format!(
            "key name {name:?} must be 1-63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric"
        )));
    }
    Ok(())
}

/// A label value: empty, or up to 63 chars of alphanumerics, `-`, `_`, `.` starting and
/// ending alphanumeric.
pub fn validate_label_value(v: &str) -> Result<(), LabelError> {
    if v.is_empty() || (v.len() <= 63 && is_qualified_name(v)) {
        Ok(())
    } else {
        Err(LabelError(format!("{v:?} is not a valid label value")))
    }
}

fn is_qualified_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// RFC 1123 subdomain (object names such as Secrets and Leases).
pub fn validate_dns_subdomain(s: &str) -> Result<(), LabelError> {
    if s.is_empty() || s.len() > 253 || s.split('.').any(|l| validate_dns_label(l).is_err()) {
        return Err(LabelError(format!("{s:?} is not a DNS subdomain")));
    }
    Ok(())
}

/// RFC 1123 label (namespace names).
pub fn validate_dns_label(s: &str) -> Result<(), LabelError> {
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
    if ok {
        Ok(())
    } else {
        Err(LabelError(format!("{s:?} is not a DNS label")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors_parse_and_match_like_kubectl() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], bool);
        let cases: &[Case] = &[
            ("a=b", &[("a", "b")], true),
            ("a=b", &[("a", "c")], false),
            ("a==b", &[("a", "b")], true),
            ("a!=b", &[], true),
            ("a!=b", &[("a", "b")], false),
            ("a in (b, c)", &[("a", "c")], true),
            ("a in (b,c)", &[], false),
            ("a notin (b,c)", &[], true),
            ("a notin (b,c)", &[("a", "b")], false),
            ("a", &[("a", "")], true),
            ("!a", &[("a", "")], false),
            ("!a", &[], true),
            (
                "pullsecret-injector.io/inject=enabled,!legacy",
                &[("pullsecret-injector.io/inject", "enabled")],
                true,
            ),
            ("x=1,y in (2)", &[("x", "1"), ("y", "3")], false),
        ];
        for (sel, l, want) in cases {
            let s = LabelSelector::parse(sel).unwrap_or_else(|e| panic!("{sel}: {e}"));
            assert_eq!(s.matches(&labels(l)), *want, "{sel} on {l:?}");
            let again = LabelSelector::parse(&s.to_string()).unwrap();
            assert_eq!(again, s, "round trip of {sel}");
        }
    }

    #[test]
    fn malformed_selectors_are_refused() {
        for bad in [
            "",
            "a=b,",
            "a in b",
            "a in ()",
            "(a",
            "a)",
            "a=b c",
            "Bad Key=x",
            "a=-x",
            "a ~ b",
            "/a=b",
            "a/b/c=d",
        ] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn structured_form_uses_match_labels_and_expressions() {
        let s = LabelSelector::parse("a=b,c notin (d),e,!f").unwrap();
        let k = serde_json::to_value(s.to_k8s()).unwrap();
        assert_eq!(
            k,
            serde_json::json!({
                "matchLabels": {"a": "b"},
                "matchExpressions": [
                    {"key": "c", "operator": "NotIn", "values": ["d"]},
                    {"key": "e", "operator": "Exists"},
                    {"key": "f", "operator": "DoesNotExist"},
                ]
            })
        );
    }

    #[test]
    fn names_follow_kubernetes_rules() {
        assert!(validate_dns_subdomain("yc-registry-secret").is_ok());
        assert!(validate_dns_subdomain("a.b-c").is_ok());
        assert!(validate_dns_subdomain("Bad_Name").is_err());
        assert!(validate_dns_subdomain("").is_err());
        assert!(validate_dns_label("kube-system").is_ok());
        assert!(validate_dns_label("a.b").is_err());
        assert!(validate_key("pullsecret-injector.io/skip").is_ok());
        assert!(validate_key("skip").is_ok());
        assert!(validate_key("-skip").is_err());
        assert!(validate_key("UPPER.io/x").is_err());
        assert!(validate_label_value("").is_ok());
        assert!(validate_label_value(&"a".repeat(64)).is_err());
    }
}
