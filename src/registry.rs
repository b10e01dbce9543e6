//! Host patterns and the image -> registry entries lookup, with kubelet's matching rules.
//!
//! A pull secret helps only if kubelet uses it, and kubelet picks credentials by reading each
//! `auths` key of a Pod's pull Secrets and matching it against the image's normalised name
//! (`pkg/credentialprovider/keyring.go`). A host pattern's text is the `auths` key the sync
//! task writes, so the webhook reads each pattern exactly as kubelet reads that key
//! (`registry/kubelet.rs`, a port of what Go's URL parser does to it) and matches images as
//! kubelet's `Lookup` does. `tests/kubelet_oracle.rs` checks every rule here against kubelet's
//! own code, on more than 100,000 generated cases per run.
//!
//! What kubelet does, and so what a pattern means (each has a test):
//!
//! * A key may carry `https://` or `http://` and a `/v1/` or `/v2/` path prefix; both are
//!   ignored, and so is a trailing `/` (`https://index.docker.io/v1/` is `index.docker.io`).
//! * The port must be equal (`cr.yandex:443` is not `cr.yandex`; `05000` is not `5000`).
//! * The host has the same number of `.`-separated labels, each a glob where `*` matches any
//!   run of characters within the label: `*.example.com` matches `a.example.com`, not
//!   `a.b.example.com` nor `example.com`. Nothing is lowercased: `CR.yandex` only matches
//!   images written `CR.yandex/...`.
//! * A path is a plain string prefix of the repository: `cr.yandex/crp1` also matches
//!   `cr.yandex/crp12/app`; `cr.yandex/crp1/` matches whole components only.
//! * An `index.docker.io` key is kubelet's Docker Hub fallback: it is used for an image only
//!   when no other key of the Pod's pull Secrets matches it, and then for Docker Hub images
//!   and for images on hosts without `.` or `:` (`localhost/app`, `Registry/app`).
//!   [`Registries::matching`] applies that rule across all configured registries.
//!
//! The config refuses a pattern only when kubelet would never use it for any image (it
//! ignores the key, or no image name can match it), when kubelet would use it only for
//! images on one-character hosts (a bracketed IPv6 host without a port), or when kubelet
//! reads it as a simpler key that means the same (a `?query`, `#fragment`, `user@` or
//! `%`-escape it drops or decodes). Every refusal says which, in a message that names the
//! pattern and what to write instead; everything else is honoured exactly as kubelet does.
//!
//! Both this and [`crate::image`] are pure, and a lookup does not allocate: an image is parsed
//! once into borrowed slices, then tested against every pattern of every entry.

use std::fmt;
use std::iter::FusedIterator;
use std::str::FromStr;

use crate::image::{ImageError, ImageRef, LEGACY_DEFAULT_REGISTRY};

mod kubelet;

use kubelet::{Glob, Reading};

/// Why a host pattern from the config was refused. Every message quotes the pattern and
/// says what kubelet would do with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The pattern is the empty string.
    #[error("empty host pattern")]
    Empty,
    /// kubelet ignores the key: Go's URL parser refuses it.
    #[error(
        "{pattern:?} is not an auths key kubelet can use: it ignores the key ({reason}); {hint}"
    )]
    Ignored {
        /// The refused pattern.
        pattern: String,
        /// Why Go's URL parser refuses it.
        reason: String,
        /// What to write instead.
        hint: String,
    },
    /// kubelet keeps the key but no image name can match it.
    #[error("kubelet would never use auths key {pattern:?} for any image: {reason}")]
    NeverMatches {
        /// The refused pattern.
        pattern: String,
        /// Why nothing matches, and what to write instead.
        reason: String,
    },
    /// A bracketed IPv6 host without a port, which kubelet compares as a glob character class.
    #[error(
        "kubelet would use auths key {pattern:?} only for images on a one-character host: without a port it compares the bracketed host as a glob character class, not as an IPv6 address; add the port ({pattern}:443)"
    )]
    CharacterClass {
        /// The refused pattern.
        pattern: String,
    },
    /// kubelet reads the key as a simpler one with the same meaning.
    #[error("kubelet reads auths key {pattern:?} as {reading:?} ({why}); write {reading:?}")]
    ReadAs {
        /// The refused pattern.
        pattern: String,
        /// The key kubelet reads it as, which the config accepts.
        reading: String,
        /// What kubelet drops or decodes.
        why: &'static str,
    },
}

/// What kubelet does with a refused pattern, as its [`PatternError`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KubeletUse<'a> {
    /// kubelet never uses the key for any image.
    Never,
    /// kubelet uses the key only for images whose registry host is one character long.
    OneCharacterHosts,
    /// kubelet uses the key exactly as it would use this (accepted) pattern.
    SameAs(&'a str),
}

impl PatternError {
    /// What kubelet would do with the refused pattern.
    pub fn kubelet_use(&self) -> KubeletUse<'_> {
        match self {
            Self::Empty | Self::Ignored { .. } | Self::NeverMatches { .. } => KubeletUse::Never,
            Self::CharacterClass { .. } => KubeletUse::OneCharacterHosts,
            Self::ReadAs { reading, .. } => KubeletUse::SameAs(reading),
        }
    }
}

/// A registry host pattern from the config: an `auths` key as kubelet reads it,
/// `[https://]host[:port][/path]` with `*` globs in host labels (`*.example.com`,
/// `cr-*.example.com`).
///
/// Its text, unchanged, is the `auths` key to write in a `.dockerconfigjson`
/// ([`auth_key`](Self::auth_key), also [`Display`](fmt::Display)). Deserialises from and
/// serialises to that string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPattern {
    /// The pattern as written; also the `auths` key.
    raw: String,
    /// The key kubelet stores it under (host as parsed, plus the path without `/v1`, `/v2`).
    key: String,
    /// The host as kubelet compares it: without IPv6 brackets, without the port.
    host: String,
    /// Number of `.`-separated labels in `host`.
    labels: usize,
    /// The port; `None` also for an empty one (`cr.yandex:`), as kubelet compares them.
    port: Option<String>,
    /// The repository path prefix (the key's path after its leading `/`).
    path: Option<String>,
    /// The key is `index.docker.io`: kubelet's Docker Hub fallback key.
    docker_hub_fallback: bool,
}

impl HostPattern {
    /// Parses a config host pattern: reads it as kubelet reads the `auths` key and refuses
    /// it when kubelet would never use it, would use it only for one-character hosts, or
    /// reads it as a simpler key (see the module docs).
    pub fn parse(s: &str) -> Result<HostPattern, PatternError> {
        if s.is_empty() {
            return Err(PatternError::Empty);
        }
        let pattern = || s.to_owned();
        let (key, glob) = match kubelet::read(s) {
            Reading::Ignored(reason) => {
                return Err(PatternError::Ignored {
                    pattern: pattern(),
                    hint: ignored_hint(s),
                    reason,
                });
            }
            Reading::Unparsable { key, error } => {
                return Err(PatternError::NeverMatches {
                    pattern: pattern(),
                    reason: format!(
                        "it stores the key as {} and cannot parse that back ({error})",
                        kubelet::quote(&key)
                    ),
                });
            }
            Reading::Glob { key, glob } => (key, glob),
        };
        let docker_hub_fallback = key == LEGACY_DEFAULT_REGISTRY.as_bytes();
        if glob.host.first() == Some(&b'[') {
            if glob.host.contains(&b'.') {
                return Err(PatternError::NeverMatches {
                    pattern: pattern(),
                    reason: "without a port kubelet compares the bracketed host as a glob, and an IPv6 address with dots is a malformed one; add the port".into(),
                });
            }
            return Err(PatternError::CharacterClass { pattern: pattern() });
        }
        if !docker_hub_fallback && let Some(reason) = never_matches(s, &glob) {
            return Err(PatternError::NeverMatches {
                pattern: pattern(),
                reason,
            });
        }
        if let Some((reading, why)) = simpler_reading(s, &key) {
            return Err(PatternError::ReadAs {
                pattern: pattern(),
                reading,
                why,
            });
        }
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        let path = glob.path.split_first().map(|(_slash, rest)| text(rest));
        Ok(HostPattern {
            raw: s.to_owned(),
            key: text(&key),
            labels: glob.host.iter().filter(|&&b| b == b'.').count() + 1,
            host: text(&glob.host),
            port: (!glob.port.is_empty()).then(|| text(&glob.port)),
            path,
            docker_hub_fallback,
        })
    }

    /// The key to use for this pattern in a `.dockerconfigjson`'s `auths`: the pattern as
    /// written, which kubelet reads back with the same meaning.
    pub fn auth_key(&self) -> &str {
        &self.raw
    }

    /// The key kubelet stores this pattern under once it has read it: without a scheme, a
    /// `/v1` or `/v2` path prefix or a trailing `/`. Two patterns with the same stored key
    /// match the same images.
    pub fn kubelet_key(&self) -> &str {
        &self.key
    }

    /// The port, if the pattern has one; an image matches only with the same port.
    pub fn port(&self) -> Option<&str> {
        self.port.as_deref()
    }

    /// The repository path prefix (text after the host's `/`), if any.
    pub fn path_prefix(&self) -> Option<&str> {
        self.path.as_deref()
    }

    /// Whether this is kubelet's Docker Hub fallback key (`index.docker.io`, possibly with a
    /// scheme and `/v1/`): used for an image only when no other key of the Pod's Secrets
    /// matches it (see [`ImageRef::docker_hub_fallback_applies`]).
    pub fn is_docker_hub_fallback(&self) -> bool {
        self.docker_hub_fallback
    }

    /// Whether kubelet matches this key to `image` directly, as `URLsMatch` does (the
    /// Docker Hub fallback, which depends on the other keys, is [`Registries::matching`]'s).
    pub fn matches(&self, image: &ImageRef<'_>) -> bool {
        Target::of(image).is_some_and(|t| self.matches_target(&t, image))
    }

    fn matches_target(&self, target: &Target<'_>, image: &ImageRef<'_>) -> bool {
        if self.port.as_deref() != target.port || self.labels != target.labels {
            return false;
        }
        if let Some(path) = &self.path
            && !image.repository_starts_with(path)
        {
            return false;
        }
        let globs = self.host.as_bytes().split(|&b| b == b'.');
        let labels = target.host.as_bytes().split(|&b| b == b'.');
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

/// What to write instead of a key kubelet ignores.
fn ignored_hint(raw: &str) -> String {
    let authority = raw
        .strip_prefix("https://")
        .or_else(|| raw.strip_prefix("http://"))
        .unwrap_or(raw);
    if let Some(inner) = authority.strip_prefix('[')
        && let Some((inside, rest)) = inner.split_once(']')
    {
        return format!(
            "brackets are for IPv6 addresses only; for the host {inside:?} write {:?}",
            [inside, rest].concat()
        );
    }
    "write host[:port][/path], with '*' for any run of characters within one host label".into()
}

/// Why no image name can ever match `glob` (read from `raw`), if that is so.
///
/// Every reason rests on what image names kubelet looks up can hold (the grammar in
/// [`crate::image`]): hosts are DNS-like labels, IPv6 literals or, for names with no domain,
/// lowercase path components; repository paths are lowercase components.
fn never_matches(raw: &str, glob: &Glob) -> Option<String> {
    let host = String::from_utf8_lossy(&glob.host);
    let path = String::from_utf8_lossy(&glob.path);
    let rest = raw
        .strip_prefix("https://")
        .or_else(|| raw.strip_prefix("http://"))
        .unwrap_or(raw);
    if let Some((scheme, _)) = rest.split_once("://")
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return Some(format!(
            "kubelet understands only the https:// and http:// schemes and reads it as the host {host:?} with the path {path:?}; remove {:?}",
            format!("{scheme}://")
        ));
    }
    for label in glob.host.split(|&b| b == b'.') {
        let label_text = String::from_utf8_lossy(label);
        if label.is_empty() {
            return Some(format!(
                "its host {host:?} has an empty label, and image hosts have none"
            ));
        }
        if let Some(c) = label_text
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | ']' | '-' | '*')))
        {
            return Some(format!(
                "no image's registry host contains {c:?}; write letters, digits, '-' and '*' globs"
            ));
        }
        if !label.contains(&b'*') && (label.starts_with(b"-") || label.ends_with(b"-")) {
            return Some(format!(
                "the host label {label_text:?} starts or ends with '-', which no image's host label does"
            ));
        }
    }
    if let Some(rest) = glob.path.strip_prefix(b"/") {
        if let Some(c) = String::from_utf8_lossy(rest).chars().find(|&c| {
            !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '/'))
        }) {
            return Some(format!(
                "repository paths hold only lowercase letters, digits, '.', '_', '-' and '/', and its path {path:?} has {c:?}"
            ));
        }
        // A prefix of a repository path: whole components, then the start of one; every
        // component is non-empty and starts with a letter or digit.
        let parts: Vec<&[u8]> = rest.split(|&b| b == b'/').collect();
        let bad = parts.iter().enumerate().any(|(i, part)| {
            (part.is_empty() && i + 1 < parts.len())
                || part.first().is_some_and(|b| !b.is_ascii_alphanumeric())
        });
        if bad {
            return Some(format!(
                "repository path components are non-empty and start with a letter or digit, and its path {path:?} has one that does not"
            ));
        }
    } else if !glob.path.is_empty() {
        return Some(format!("its path {path:?} does not start with '/'"));
    }
    if glob.host == LEGACY_DEFAULT_REGISTRY.as_bytes() && glob.port.is_empty() {
        return Some(format!(
            "images on Docker Hub are named docker.io/..., and kubelet's Docker Hub fallback needs the key to be exactly index.docker.io; write \"docker.io{path}\""
        ));
    }
    if glob.port.is_empty()
        && !glob.host.contains(&b'.')
        && !glob.host.contains(&b'*')
        && !glob.host.iter().any(u8::is_ascii_uppercase)
        && glob.host != b"localhost"
    {
        return Some(format!(
            "an image whose first component has no '.' or ':' and is not localhost is a Docker Hub image ({host}/app is docker.io/{host}/app); add the port or the domain"
        ));
    }
    None
}

/// The simpler key kubelet reads `raw` as, when `raw` holds a `#fragment`, `?query`, user
/// info or `%`-escape that kubelet drops or decodes and that key means the same.
fn simpler_reading(raw: &str, key: &[u8]) -> Option<(String, &'static str)> {
    let why = if raw.contains('#') {
        "it ignores everything from '#'"
    } else if raw.contains('?') {
        "it ignores everything from '?'"
    } else if raw.contains('@') {
        "it ignores the user info before '@'"
    } else if raw.contains('%') {
        "it decodes %-escapes"
    } else {
        return None;
    };
    let reading = String::from_utf8(key.to_vec()).ok()?;
    if reading.contains(['#', '?', '@', '%']) || reading.chars().any(char::is_whitespace) {
        return None;
    }
    let same = HostPattern::parse(&reading).is_ok_and(|p| p.key == reading);
    same.then_some((reading, why))
}

/// The image's name as kubelet's `URLsMatch` sees it. `None` when Go's URL parser refuses
/// the name (a bracketed host that is not an IPv6 address): then no key matches it.
#[derive(Debug, Clone, Copy)]
struct Target<'i> {
    /// The host after `net.SplitHostPort`: IPv6 brackets go only when there is a port.
    host: &'i str,
    port: Option<&'i str>,
    labels: usize,
}

impl<'i> Target<'i> {
    fn of(image: &ImageRef<'i>) -> Option<Self> {
        let mut host = image.host();
        if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            kubelet::parse_ipv6(inner.as_bytes()).ok()?;
            if image.port().is_some() {
                host = inner;
            }
        }
        Some(Target {
            host,
            port: image.port(),
            labels: host.bytes().filter(|&b| b == b'.').count() + 1,
        })
    }
}

/// Go's `filepath.Match` for the patterns the config accepts, whose only metacharacter is
/// `*` (any run of bytes, including none); labels never hold the `/` it stops at. Iterative,
/// with one backtrack point: linear in practice, no recursion.
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

/// Why a docker config file's `auths` keys do not fit the registry's `hosts`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "its auths keys must be the registry's hosts as kubelet reads them, since kubelet uses the Secret for the images its keys match and the webhook injects it for the images the hosts match: {}",
    problems.join("; ")
)]
pub struct AuthsKeysError {
    /// Each key or host that does not fit, with what to do about it.
    pub problems: Vec<String>,
}

/// Checks that the `auths` keys of a docker config file that is copied into the registry's
/// Secret as is (`dockerConfig` credentials) are, as kubelet reads them, exactly the
/// registry's `hosts`: then the webhook injects the Secret for exactly the images kubelet
/// will use it for. Keys kubelet never uses (it ignores them, or no image can match them)
/// need not be listed.
pub fn check_auths_keys<'k>(
    hosts: &[HostPattern],
    keys: impl IntoIterator<Item = &'k str>,
) -> Result<(), AuthsKeysError> {
    let mut problems = Vec::new();
    let mut used: Vec<String> = Vec::new();
    for key in keys {
        let stored = match HostPattern::parse(key) {
            Ok(p) => p.key,
            Err(e) => match e.kubelet_use() {
                KubeletUse::Never => continue,
                KubeletUse::SameAs(reading) => match HostPattern::parse(reading) {
                    Ok(p) => p.key,
                    Err(e) => {
                        problems.push(format!("the key {key:?} cannot be a host: {e}"));
                        continue;
                    }
                },
                KubeletUse::OneCharacterHosts => {
                    problems.push(format!("the key {key:?} cannot be a host: {e}"));
                    continue;
                }
            },
        };
        if !hosts.iter().any(|h| h.key == stored) {
            problems.push(format!("add the key {key:?} to hosts"));
        }
        used.push(stored);
    }
    for (i, h) in hosts.iter().enumerate() {
        if !used.contains(&h.key) {
            problems.push(format!(
                "hosts[{i}] {:?} is not a key of the file; remove it or add it to the file",
                h.raw
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(AuthsKeysError { problems })
    }
}

/// One configured registry: the Secret that holds its credentials and the host patterns its
/// images are recognised by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryEntry {
    name: String,
    secret_name: String,
    hosts: Vec<HostPattern>,
    /// One of the patterns is kubelet's Docker Hub fallback key.
    docker_hub_fallback: bool,
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
            docker_hub_fallback: hosts.iter().any(HostPattern::is_docker_hub_fallback),
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

    /// Whether one of the entry's patterns matches `image` directly (not counting the Docker
    /// Hub fallback, which depends on the other entries: see [`Registries::matching`]).
    pub fn matches(&self, image: &ImageRef<'_>) -> bool {
        self.hosts.iter().any(|h| h.matches(image))
    }

    fn matches_target(&self, target: &Target<'_>, image: &ImageRef<'_>) -> bool {
        self.hosts.iter().any(|h| h.matches_target(target, image))
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

    /// Every entry whose Secret kubelet would use for the already-parsed `image` if the Pod
    /// had all of them, in config order: the entries one of whose patterns matches it, or,
    /// when none does, the entries with kubelet's Docker Hub fallback key if the fallback
    /// applies to the image.
    pub fn matching<'r, 'i>(&'r self, image: ImageRef<'i>) -> Matches<'r, 'i> {
        Matches {
            entries: &self.entries,
            next: 0,
            phase: Phase::Direct { found: false },
            target: Target::of(&image),
            image,
        }
    }

    /// Parses `image` once and returns every entry that matches it, as
    /// [`matching`](Self::matching) does. An image that does not parse matches nothing; the
    /// error says why, for the caller to count and log at debug.
    pub fn match_image<'r, 'i>(&'r self, image: &'i str) -> Result<Matches<'r, 'i>, ImageError> {
        Ok(self.matching(ImageRef::parse(image)?))
    }
}

/// Iterator over the entries matching one image, from [`Registries::match_image`] or
/// [`Registries::matching`]. Lazy and allocation-free.
#[derive(Debug, Clone)]
pub struct Matches<'r, 'i> {
    entries: &'r [RegistryEntry],
    next: usize,
    phase: Phase,
    target: Option<Target<'i>>,
    image: ImageRef<'i>,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Entries whose patterns match the image; `found` once one did.
    Direct {
        found: bool,
    },
    /// No pattern matched: entries with the Docker Hub fallback key.
    Fallback,
    Done,
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
        loop {
            let entries = self.entries;
            match self.phase {
                Phase::Direct { found } => {
                    if let Some(target) = &self.target {
                        while let Some(e) = entries.get(self.next) {
                            self.next += 1;
                            if e.matches_target(target, &self.image) {
                                self.phase = Phase::Direct { found: true };
                                return Some(e);
                            }
                        }
                    }
                    self.next = 0;
                    self.phase = if !found && self.image.docker_hub_fallback_applies() {
                        Phase::Fallback
                    } else {
                        Phase::Done
                    };
                }
                Phase::Fallback => {
                    while let Some(e) = entries.get(self.next) {
                        self.next += 1;
                        if e.docker_hub_fallback {
                            return Some(e);
                        }
                    }
                    self.phase = Phase::Done;
                }
                Phase::Done => return None,
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.entries.len()))
    }
}

impl FusedIterator for Matches<'_, '_> {}

#[cfg(test)]
mod tests;
