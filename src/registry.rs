//! Host patterns and the image -> registry entries lookup, with kubelet's matching rules.
//!
//! A pull secret helps only if kubelet uses it. kubelet picks credentials by matching each
//! `auths` key of a Pod's pull secrets against the image's normalised name
//! (`pkg/credentialprovider/keyring.go`, `URLsMatch`): same port (both absent or the same
//! digits), same number of host labels with each label a `filepath.Match` glob, and the
//! key's path a plain string prefix of the repository path. The webhook matches the same
//! way, and the pattern's text is the `auths` key the sync task writes, so a Pod gets a
//! secret exactly when kubelet would use that secret for one of its images.
//!
//! Consequences worth knowing (each has a test):
//!
//! * The path prefix is a string prefix, not a path-component prefix: `cr.yandex/crp1`
//!   matches `cr.yandex/crp12/app`. End the pattern with `/` (`cr.yandex/crp1/`) to match
//!   whole components only; kubelet honours the slash the same way.
//! * Nothing is lowercased. kubelet compares hosts case-sensitively, so `CR.yandex` does not
//!   match `cr.yandex/app`; neither does it here.
//! * `*` in a label matches any run of characters within that label only: `*.example.com`
//!   matches `a.example.com`, not `a.b.example.com` nor `example.com`.
//! * `docker.io` and `index.docker.io` both match Docker Hub images. kubelet matches the
//!   former directly and uses an `index.docker.io` key as the Docker Hub fallback (only when
//!   no other key of the same keyring matched; the webhook cannot know which other secrets
//!   a Pod will end up with, so it always counts it as a match). kubelet also applies that
//!   fallback to single-label hosts such as `localhost/app`; that quirk is not copied, since
//!   Docker Hub credentials cannot help a pull from another host.
//!
//! Config must be unambiguous, so patterns that kubelet would read differently from how they
//! look are refused with an error naming the value, rather than accepted and never matching:
//! URL schemes, `?` and `[...]` globs (a `?` starts a URL query in kubelet's parser, and
//! brackets break its port split), a path starting with `v1/` or `v2/` (kubelet strips it),
//! `index.docker.io` with a port or path (kubelet's fallback ignores such keys), and a
//! bracketed IPv6 host without a port (kubelet then compares the brackets as a glob
//! character class, which never matches).
//!
//! Both this and [`crate::image`] are pure and allocation-free per lookup: an image is parsed
//! once into borrowed slices, then tested against every pattern of every entry.

use std::fmt;
use std::iter::FusedIterator;
use std::str::FromStr;

use crate::image::{DEFAULT_REGISTRY, ImageError, ImageRef, LEGACY_DEFAULT_REGISTRY};

/// Why a host pattern from the config was refused. Every message quotes the pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The pattern is the empty string.
    #[error("empty host pattern")]
    Empty,
    /// The pattern contains whitespace.
    #[error("host pattern {pattern:?} contains whitespace")]
    Whitespace {
        /// The refused pattern.
        pattern: String,
    },
    /// The pattern is a URL (`https://cr.yandex`) rather than a host.
    #[error(
        "{pattern:?} is not a host pattern: remove the {scheme:?} scheme and write host[:port][/path]"
    )]
    Scheme {
        /// The refused pattern.
        pattern: String,
        /// The scheme found before `://`.
        scheme: String,
    },
    /// A host label is empty or holds characters other than letters, digits, `-` and `*`.
    #[error("host pattern {pattern:?} has an invalid host label {label:?}: {reason}")]
    InvalidLabel {
        /// The refused pattern.
        pattern: String,
        /// The offending label.
        label: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A bracketed IPv6 host is malformed or lacks the port kubelet needs to match it.
    #[error("host pattern {pattern:?} has an invalid IPv6 host: {reason}")]
    InvalidIpv6 {
        /// The refused pattern.
        pattern: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The port is empty or not digits.
    #[error(
        "host pattern {pattern:?} has an invalid port {port:?}: the port must be one or more digits"
    )]
    InvalidPort {
        /// The refused pattern.
        pattern: String,
        /// The text after the `:`.
        port: String,
    },
    /// The path prefix is malformed or would be read differently by kubelet.
    #[error("host pattern {pattern:?} has an invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The refused pattern.
        pattern: String,
        /// The text after the first `/`.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `index.docker.io` with a port or path, which kubelet never matches.
    #[error(
        "host pattern {pattern:?}: kubelet uses index.docker.io keys only without a port or path; write docker.io instead"
    )]
    LegacyDockerHub {
        /// The refused pattern.
        pattern: String,
    },
}

/// A registry host pattern from the config, `host[:port][/path/prefix]`, with `*` globs
/// allowed in host labels (`*.example.com`, `cr-*.example.com`).
///
/// Its text, unchanged, is the `auths` key to write in a `.dockerconfigjson`
/// ([`auth_key`](Self::auth_key), also [`Display`](fmt::Display)). Deserialises from and
/// serialises to that string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPattern {
    /// The pattern as written; also the `auths` key.
    raw: String,
    /// The host as kubelet compares it: IPv6 without brackets (a port is always present then).
    host: String,
    /// Number of `.`-separated labels in `host`.
    labels: usize,
    port: Option<String>,
    path: Option<String>,
    /// `index.docker.io` alone: kubelet's Docker Hub fallback key.
    docker_hub_fallback: bool,
}

impl HostPattern {
    /// Parses a config host pattern; see the module docs for what is refused and why.
    pub fn parse(s: &str) -> Result<HostPattern, PatternError> {
        let pattern = || s.to_owned();
        if s.is_empty() {
            return Err(PatternError::Empty);
        }
        if s.chars().any(char::is_whitespace) {
            return Err(PatternError::Whitespace { pattern: pattern() });
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(PatternError::Scheme {
                pattern: pattern(),
                scheme: scheme.to_owned(),
            });
        }

        let (authority, path) = match s.split_once('/') {
            Some((authority, path)) => (authority, Some(path)),
            None => (s, None),
        };

        let (host, port) = if let Some(inner_and_rest) = authority.strip_prefix('[') {
            let ipv6 = |reason| PatternError::InvalidIpv6 {
                pattern: pattern(),
                reason,
            };
            let Some((inner, rest)) = inner_and_rest.split_once(']') else {
                return Err(ipv6("'[' without a closing ']'"));
            };
            if inner.is_empty() || !inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
                return Err(ipv6(
                    "an IPv6 address in brackets may hold only hex digits and ':'",
                ));
            }
            let Some(port) = rest.strip_prefix(':') else {
                return Err(ipv6(if rest.is_empty() {
                    "kubelet never matches a bracketed IPv6 host without a port; add the port"
                } else {
                    "only ':port' may follow an IPv6 address"
                }));
            };
            (inner, Some(port))
        } else {
            let (host, port) = match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            for label in host.split('.') {
                check_label(label).map_err(|reason| PatternError::InvalidLabel {
                    pattern: pattern(),
                    label: label.to_owned(),
                    reason,
                })?;
            }
            (host, port)
        };

        if let Some(port) = port
            && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(PatternError::InvalidPort {
                pattern: pattern(),
                port: port.to_owned(),
            });
        }
        if let Some(path) = path {
            check_path(path).map_err(|reason| PatternError::InvalidPath {
                pattern: pattern(),
                path: path.to_owned(),
                reason,
            })?;
        }

        let docker_hub_fallback = host == LEGACY_DEFAULT_REGISTRY;
        if docker_hub_fallback && (port.is_some() || path.is_some()) {
            return Err(PatternError::LegacyDockerHub { pattern: pattern() });
        }

        Ok(HostPattern {
            raw: s.to_owned(),
            host: host.to_owned(),
            labels: host.split('.').count(),
            port: port.map(str::to_owned),
            path: path.map(str::to_owned),
            docker_hub_fallback,
        })
    }

    /// The key to use for this pattern in a `.dockerconfigjson`'s `auths`: the pattern as
    /// written, which kubelet reads back with the same meaning.
    pub fn auth_key(&self) -> &str {
        &self.raw
    }

    /// The port, if the pattern has one; an image matches only with the same port.
    pub fn port(&self) -> Option<&str> {
        self.port.as_deref()
    }

    /// The repository path prefix (text after the first `/`), if any.
    pub fn path_prefix(&self) -> Option<&str> {
        self.path.as_deref()
    }

    /// Whether kubelet would use credentials stored under this pattern for `image`.
    pub fn matches(&self, image: &ImageRef<'_>) -> bool {
        if self.docker_hub_fallback {
            return image.registry() == DEFAULT_REGISTRY;
        }
        if self.port.as_deref() != image.port() {
            return false;
        }
        if let Some(path) = &self.path
            && !image.repository_starts_with(path)
        {
            return false;
        }
        let host = kubelet_host(image).as_bytes();
        if host.iter().filter(|&&b| b == b'.').count() + 1 != self.labels {
            return false;
        }
        let globs = self.host.as_bytes().split(|&b| b == b'.');
        let labels = host.split(|&b| b == b'.');
        globs
            .zip(labels)
            .all(|(glob, label)| glob_match(glob, label))
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl FromStr for HostPattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HostPattern::parse(s)
    }
}

impl TryFrom<String> for HostPattern {
    type Error = PatternError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        HostPattern::parse(&s)
    }
}

impl<'de> serde::Deserialize<'de> for HostPattern {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        HostPattern::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for HostPattern {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.raw)
    }
}

/// The image's host as kubelet's `SplitURL` sees it: Go's `net.SplitHostPort` strips IPv6
/// brackets when there is a port; without one the brackets stay.
fn kubelet_host<'a>(image: &ImageRef<'a>) -> &'a str {
    let host = image.host();
    if image.port().is_some()
        && let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'))
    {
        return inner;
    }
    host
}

/// A host label: letters, digits, `-` and `*`; a label without `*` must also be a valid
/// domain label, and no label may start or end with `-` (it could never match).
fn check_label(label: &str) -> Result<(), &'static str> {
    if label.is_empty() {
        return Err("empty label (a leading, trailing or doubled '.')");
    }
    if label.contains(['?', '[', ']']) {
        return Err(
            "only '*' globs are supported: kubelet reads '?' as the start of a URL query and '[' breaks its port split",
        );
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*')
    {
        return Err("labels hold only letters, digits, '-' and '*'");
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err("a label cannot start or end with '-'");
    }
    Ok(())
}

/// A repository path prefix: lowercase letters, digits, `.`, `_`, `-` in non-empty
/// components, with at most a single trailing `/`.
fn check_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("empty path after '/'; write the host alone");
    }
    if path.starts_with("v1/") || path.starts_with("v2/") {
        return Err(
            "kubelet strips a leading v1/ or v2/ from auths keys, so this path would mean something else",
        );
    }
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("repository paths are lowercase, so this would never match");
    }
    if !path.bytes().all(|b| {
        b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-' | b'/')
    }) {
        return Err("a path holds only lowercase letters, digits, '.', '_', '-' and '/'");
    }
    let body = path.strip_suffix('/').unwrap_or(path);
    if body.split('/').any(str::is_empty) {
        return Err("empty path component (a leading or doubled '/')");
    }
    Ok(())
}

/// Go's `filepath.Match` for patterns whose only metacharacter is `*` (any run of bytes,
/// including none). Iterative, with one backtrack point: linear in practice, no recursion.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                backtrack = Some((p, t));
                p += 1;
            }
            Some(&c) if c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match backtrack {
                Some((star, start)) => {
                    p = star + 1;
                    t = start + 1;
                    backtrack = Some((star, start + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// One configured registry: the Secret that holds its credentials and the host patterns its
/// images are recognised by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryEntry {
    name: String,
    secret_name: String,
    hosts: Vec<HostPattern>,
}

impl RegistryEntry {
    /// An entry named `name` whose pull Secret is `secret_name`, matching images on any of
    /// `hosts`.
    pub fn new(
        name: impl Into<String>,
        secret_name: impl Into<String>,
        hosts: Vec<HostPattern>,
    ) -> Self {
        RegistryEntry {
            name: name.into(),
            secret_name: secret_name.into(),
            hosts,
        }
    }

    /// The registry's name in the config.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name of the pull Secret to inject for this registry's images.
    pub fn secret_name(&self) -> &str {
        &self.secret_name
    }

    /// The host patterns, in config order.
    pub fn hosts(&self) -> &[HostPattern] {
        &self.hosts
    }

    /// Whether any of the entry's patterns matches `image`.
    pub fn matches(&self, image: &ImageRef<'_>) -> bool {
        self.hosts.iter().any(|h| h.matches(image))
    }
}

/// The configured registries, in config order: answers which entries an image belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registries {
    entries: Vec<RegistryEntry>,
}

impl Registries {
    /// A set of entries, kept in the given order.
    pub fn new(entries: Vec<RegistryEntry>) -> Self {
        Registries { entries }
    }

    /// All entries, in config order.
    pub fn entries(&self) -> &[RegistryEntry] {
        &self.entries
    }

    /// Every entry that matches the already-parsed `image`, in config order.
    pub fn matching<'r, 'i>(&'r self, image: ImageRef<'i>) -> Matches<'r, 'i> {
        Matches {
            entries: self.entries.iter(),
            image,
        }
    }

    /// Parses `image` once and returns every entry that matches it, in config order. An image
    /// that does not parse matches nothing; the error says why, for the caller to count and
    /// log at debug.
    pub fn match_image<'r, 'i>(&'r self, image: &'i str) -> Result<Matches<'r, 'i>, ImageError> {
        Ok(self.matching(ImageRef::parse(image)?))
    }
}

/// Iterator over the entries matching one image, from [`Registries::match_image`] or
/// [`Registries::matching`]. Lazy and allocation-free.
#[derive(Debug, Clone)]
pub struct Matches<'r, 'i> {
    entries: std::slice::Iter<'r, RegistryEntry>,
    image: ImageRef<'i>,
}

impl<'i> Matches<'_, 'i> {
    /// The parsed image the entries are matched against.
    pub fn image(&self) -> &ImageRef<'i> {
        &self.image
    }
}

impl<'r> Iterator for Matches<'r, '_> {
    type Item = &'r RegistryEntry;

    fn next(&mut self) -> Option<Self::Item> {
        let image = &self.image;
        self.entries.find(|e| e.matches(image))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, self.entries.size_hint().1)
    }
}

impl FusedIterator for Matches<'_, '_> {}

#[cfg(test)]
mod tests;
