//! Container image references, parsed and normalised the way kubelet does it.
//!
//! The webhook must decide whether an image comes from a configured registry exactly as
//! kubelet will when it looks up pull credentials. kubelet runs the image string through
//! distribution/reference's `ParseNormalizedNamed` and matches the resulting `Name()`
//! (`docker.io/library/nginx`, never the string as written). So this module follows that
//! grammar and its normalisation rule by rule (the `docker.io` default, the implied
//! `library/`, `index.docker.io` -> `docker.io`, and how the first path component is told
//! apart from a registry host) instead of approximating it with a split on `/`.
//!
//! It is hand-written, with no regex engine, because it runs for every container of every
//! admitted Pod. [`ImageRef`] borrows slices of the input and parsing never allocates unless
//! it fails. It never panics, whatever the input: non-ASCII input is rejected before any
//! byte-level work, and the input is only ever sliced at ASCII delimiters.
//!
//! Where this parser differs from distribution/reference is listed on [`parse`]; every
//! difference is one where the outcome for the webhook (inject a secret or not) is the same.

use std::borrow::Cow;
use std::fmt;

/// The registry images without a registry host come from (Docker Hub).
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// The legacy Docker Hub host, normalised to [`DEFAULT_REGISTRY`] when written in an image.
pub const LEGACY_DEFAULT_REGISTRY: &str = "index.docker.io";

/// The namespace that single-component Docker Hub names live in (`nginx` is `library/nginx`).
const OFFICIAL_PREFIX: &str = "library/";

/// Longest repository path (without the registry host) distribution/reference accepts.
pub const MAX_PATH_LEN: usize = 255;

/// Longest tag the grammar allows (`[\w][\w.-]{0,127}`).
pub const MAX_TAG_LEN: usize = 128;

/// How much of a rejected input an error message quotes.
const ERROR_EXCERPT_LEN: usize = 512;

/// Why an image reference could not be parsed.
///
/// Every variant that has an input quotes it (up to 512 bytes), so that a debug log line says
/// which image of which Pod was skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// The reference is the empty string.
    #[error("empty image reference")]
    Empty,
    /// The reference contains whitespace (the API server rejects leading/trailing whitespace
    /// in container images, but image volumes and old objects may still carry it).
    #[error("image reference {image:?} contains whitespace")]
    Whitespace {
        /// The rejected reference.
        image: String,
    },
    /// The reference contains characters outside ASCII, which the grammar never allows.
    #[error("image reference {image:?} contains non-ASCII characters")]
    NonAscii {
        /// The rejected reference.
        image: String,
    },
    /// The reference is a bare 64-hex-digit identifier, which distribution refuses as a name.
    #[error("image reference {image:?} is a 64-character hex identifier, not a repository name")]
    HexIdentifier {
        /// The rejected reference.
        image: String,
    },
    /// The first path component was taken to be a registry host but is not a valid one.
    #[error("image reference {image:?} has an invalid registry host {domain:?}: {reason}")]
    InvalidDomain {
        /// The rejected reference.
        image: String,
        /// The part taken to be the registry host.
        domain: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Nothing is left for the repository name (`docker.io/`, `:tag`, `@sha256:...`).
    #[error("image reference {image:?} has no repository name")]
    MissingRepository {
        /// The rejected reference.
        image: String,
    },
    /// The repository path contains uppercase letters.
    #[error(
        "image reference {image:?} has repository path {path:?} with uppercase letters; it must be lowercase"
    )]
    UppercasePath {
        /// The rejected reference.
        image: String,
        /// The repository path as written.
        path: String,
    },
    /// The repository path does not follow the path-component grammar.
    #[error("image reference {image:?} has an invalid repository path {path:?}: {reason}")]
    InvalidPath {
        /// The rejected reference.
        image: String,
        /// The repository path as written.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The normalised repository path (with any implied `library/`) is over 255 characters.
    #[error(
        "image reference {image:?} has a repository path of {len} characters; at most 255 are allowed"
    )]
    PathTooLong {
        /// The rejected reference.
        image: String,
        /// Length of the normalised repository path.
        len: usize,
    },
    /// The tag does not follow `[\w][\w.-]{0,127}`.
    #[error("image reference {image:?} has an invalid tag {tag:?}: {reason}")]
    InvalidTag {
        /// The rejected reference.
        image: String,
        /// The tag as written (after the `:`).
        tag: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The digest does not follow `algorithm:hex`.
    #[error("image reference {image:?} has an invalid digest {digest:?}: {reason}")]
    InvalidDigest {
        /// The rejected reference.
        image: String,
        /// The digest as written (after the `@`).
        digest: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A parsed, normalised image reference that borrows from the string it was parsed from.
///
/// The parts are exposed normalised as kubelet sees them: `nginx` has registry `docker.io`
/// and repository `library/nginx`. No tag is invented: `nginx` has neither tag nor digest.
/// [`Display`](fmt::Display) prints the fully-qualified form
/// `registry/repository[:tag][@digest]`, and `to_string()` is the owned normalised form.
///
/// Equality is on the normalised parts, so `nginx` equals `docker.io/library/nginx`.
#[derive(Debug, Clone, Copy)]
pub struct ImageRef<'a> {
    /// `host[:port]` as written, or `docker.io`.
    registry: &'a str,
    /// The host part of `registry` (IPv6 keeps its brackets).
    host: &'a str,
    /// The port part of `registry`, without the `:`.
    port: Option<&'a str>,
    /// True when the repository is `library/` + `path` (a single component on Docker Hub).
    official: bool,
    /// The repository path as written, without an implied `library/`.
    path: &'a str,
    tag: Option<&'a str>,
    digest: Option<&'a str>,
}

/// Parses an image reference (what a Pod's `image` field holds).
///
/// Follows distribution/reference's `ParseNormalizedNamed`, which kubelet uses:
///
/// * The text before the first `/` is the registry when it contains `.` or `:`, is
///   `localhost`, or contains an uppercase letter; otherwise the image is on `docker.io`.
///   A reference without `/` is always on `docker.io` (so `localhost:5000` is
///   `docker.io/library/localhost` with tag `5000`, as in distribution).
/// * `index.docker.io` is written as `docker.io`; a single-component Docker Hub path gets
///   `library/`.
/// * Registry: DNS-like labels `[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?` separated by `.`, or an
///   IPv6 address in brackets, then an optional `:port` (digits).
/// * Path components: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, separated by `/`.
/// * Tag: `[\w][\w.-]{0,127}`. Digest: `algorithm:hex`, algorithm
///   `[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*`; `sha256`, `sha384` and `sha512`
///   need exactly 64, 96 and 128 lowercase hex digits (as go-digest checks), any other
///   algorithm at least 32 hex digits (as the grammar says). A tag and a digest may both be
///   present.
/// * The normalised repository path (including an implied `library/`) is at most 255
///   characters. The registry host does not count: distribution/reference v0.6.0 made that
///   change; older docker/distribution counted it. Accepting the longer names is the safe
///   side, since refusing a name kubelet accepts would withhold a secret the pull needs.
///
/// Differences from distribution/reference, none of which changes whether a secret is used:
///
/// * A first component that is taken to be a registry but is not a valid host (for example
///   `foo_bar.com/app`) is an error here. distribution then re-reads it as a path with an
///   empty domain; kubelet would look up credentials for the host `foo_bar.com`, which no
///   host pattern can name.
/// * Digests with algorithms go-digest does not know are accepted when they fit the grammar;
///   kubelet refuses them, so such a pull fails whatever secrets the Pod has.
pub fn parse(s: &str) -> Result<ImageRef<'_>, ImageError> {
    ImageRef::parse(s)
}

impl<'a> ImageRef<'a> {
    /// Parses an image reference; see [`parse`] for the grammar.
    pub fn parse(s: &'a str) -> Result<Self, ImageError> {
        if s.is_empty() {
            return Err(ImageError::Empty);
        }
        if s.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(ImageError::Whitespace { image: excerpt(s) });
        }
        if !s.is_ascii() {
            return Err(ImageError::NonAscii { image: excerpt(s) });
        }
        if s.len() == 64 && s.bytes().all(is_lower_hex) {
            return Err(ImageError::HexIdentifier { image: excerpt(s) });
        }

        // splitDockerDomain: only the text before the first '/' can be a registry.
        let (written_domain, remainder) = match split_at_byte(s, b'/') {
            Some((first, rest)) if looks_like_domain(first) => (Some(first), rest),
            _ => (None, s),
        };
        let (registry, host, port) = match written_domain {
            None | Some(LEGACY_DEFAULT_REGISTRY) => (DEFAULT_REGISTRY, DEFAULT_REGISTRY, None),
            Some(domain) => {
                let (host, port) =
                    split_domain(domain).map_err(|reason| ImageError::InvalidDomain {
                        image: excerpt(s),
                        domain: excerpt(domain),
                        reason,
                    })?;
                (domain, host, port)
            }
        };

        // Neither the path nor a tag may contain '@' or ':', so the first of each splits.
        let (name_and_tag, digest) = match split_at_byte(remainder, b'@') {
            Some((name, digest)) => (name, Some(digest)),
            None => (remainder, None),
        };
        let (path, tag) = match split_at_byte(name_and_tag, b':') {
            Some((path, tag)) => (path, Some(tag)),
            None => (name_and_tag, None),
        };

        if path.is_empty() {
            return Err(ImageError::MissingRepository { image: excerpt(s) });
        }
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ImageError::UppercasePath {
                image: excerpt(s),
                path: excerpt(path),
            });
        }
        let multi_component = check_path(path).map_err(|reason| ImageError::InvalidPath {
            image: excerpt(s),
            path: excerpt(path),
            reason,
        })?;
        let official = !multi_component && registry == DEFAULT_REGISTRY;
        let len = path.len() + if official { OFFICIAL_PREFIX.len() } else { 0 };
        if len > MAX_PATH_LEN {
            return Err(ImageError::PathTooLong {
                image: excerpt(s),
                len,
            });
        }
        if let Some(tag) = tag {
            check_tag(tag).map_err(|reason| ImageError::InvalidTag {
                image: excerpt(s),
                tag: excerpt(tag),
                reason,
            })?;
        }
        if let Some(digest) = digest {
            check_digest(digest).map_err(|reason| ImageError::InvalidDigest {
                image: excerpt(s),
                digest: excerpt(digest),
                reason,
            })?;
        }

        Ok(ImageRef {
            registry,
            host,
            port,
            official,
            path,
            tag,
            digest,
        })
    }

    /// The registry, `host[:port]` as written, or `docker.io` for Docker Hub images
    /// (including those written with `index.docker.io`).
    pub fn registry(&self) -> &'a str {
        self.registry
    }

    /// The host part of [`registry`](Self::registry), without the port; an IPv6 address keeps
    /// its brackets (`[::1]`).
    pub fn host(&self) -> &'a str {
        self.host
    }

    /// The port of the registry (digits, as written), if one was given.
    pub fn port(&self) -> Option<&'a str> {
        self.port
    }

    /// The repository path without the registry, normalised: `nginx` gives `library/nginx`.
    ///
    /// Borrowed from the input except for single-component Docker Hub names, which need the
    /// implied `library/` prepended; use [`repository_starts_with`](Self::repository_starts_with)
    /// to test a prefix without that allocation.
    pub fn repository(&self) -> Cow<'a, str> {
        if self.official {
            Cow::Owned([OFFICIAL_PREFIX, self.path].concat())
        } else {
            Cow::Borrowed(self.path)
        }
    }

    /// Whether the normalised [`repository`](Self::repository) starts with `prefix`, as a plain
    /// string prefix (so `crp1` is a prefix of `crp12/app`). Never allocates.
    pub fn repository_starts_with(&self, prefix: &str) -> bool {
        if !self.official {
            return self.path.starts_with(prefix);
        }
        match prefix.strip_prefix(OFFICIAL_PREFIX) {
            Some(rest) => self.path.starts_with(rest),
            None => OFFICIAL_PREFIX.starts_with(prefix),
        }
    }

    /// The tag, if one was written. No `latest` is invented.
    pub fn tag(&self) -> Option<&'a str> {
        self.tag
    }

    /// The digest (`algorithm:hex`), if one was written.
    pub fn digest(&self) -> Option<&'a str> {
        self.digest
    }

    /// The normalised repository as two borrowed parts whose concatenation is it.
    fn repository_parts(&self) -> (&'static str, &'a str) {
        if self.official {
            (OFFICIAL_PREFIX, self.path)
        } else {
            ("", self.path)
        }
    }
}

impl PartialEq for ImageRef<'_> {
    fn eq(&self, other: &Self) -> bool {
        let (a0, a1) = self.repository_parts();
        let (b0, b1) = other.repository_parts();
        self.registry == other.registry
            && self.tag == other.tag
            && self.digest == other.digest
            && a0.len() + a1.len() == b0.len() + b1.len()
            && a0
                .bytes()
                .chain(a1.bytes())
                .eq(b0.bytes().chain(b1.bytes()))
    }
}

impl Eq for ImageRef<'_> {}

impl fmt::Display for ImageRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (prefix, path) = self.repository_parts();
        f.write_str(self.registry)?;
        f.write_str("/")?;
        f.write_str(prefix)?;
        f.write_str(path)?;
        if let Some(tag) = self.tag {
            f.write_str(":")?;
            f.write_str(tag)?;
        }
        if let Some(digest) = self.digest {
            f.write_str("@")?;
            f.write_str(digest)?;
        }
        Ok(())
    }
}

/// distribution's `splitDockerDomain` rule for the text before the first `/`.
fn looks_like_domain(first: &str) -> bool {
    first == "localhost"
        || first == LEGACY_DEFAULT_REGISTRY
        || first
            .bytes()
            .any(|b| b == b'.' || b == b':' || b.is_ascii_uppercase())
}

/// Splits and validates `host[:port]`; the host keeps IPv6 brackets.
fn split_domain(domain: &str) -> Result<(&str, Option<&str>), &'static str> {
    let (host, port) = if let Some(inner_and_rest) = domain.strip_prefix('[') {
        let Some((inner, rest)) = split_at_byte(inner_and_rest, b']') else {
            return Err("'[' without a closing ']'");
        };
        if inner.is_empty() || !inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return Err("an IPv6 address in brackets may hold only hex digits and ':'");
        }
        let host = &domain[..inner.len() + 2];
        match rest {
            "" => (host, None),
            _ => match rest.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err("only ':port' may follow an IPv6 address"),
            },
        }
    } else {
        let (host, port) = match split_at_byte(domain, b':') {
            Some((host, port)) => (host, Some(port)),
            None => (domain, None),
        };
        if !is_domain_name(host.as_bytes()) {
            return Err("host labels are letters, digits and inner '-', separated by single '.'");
        }
        (host, port)
    };
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("the port must be one or more digits");
    }
    Ok((host, port))
}

/// Labels `[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?` separated by single `.`.
fn is_domain_name(host: &[u8]) -> bool {
    let mut label_start = true;
    let mut last = b'.';
    for &b in host {
        if b == b'.' {
            if label_start || last == b'-' {
                return false;
            }
            label_start = true;
        } else if b.is_ascii_alphanumeric() || (b == b'-' && !label_start) {
            label_start = false;
        } else {
            return false;
        }
        last = b;
    }
    !label_start && last != b'-'
}

/// Path components `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` separated by single `/`.
/// Returns whether there is more than one component.
fn check_path(path: &str) -> Result<bool, &'static str> {
    let bytes = path.as_bytes();
    let mut i = check_path_component(bytes, 0)?;
    let multi_component = i < bytes.len();
    while i < bytes.len() {
        // bytes[i] is the '/' that ended the previous component.
        i = check_path_component(bytes, i + 1)?;
    }
    Ok(multi_component)
}

/// Checks the component starting at `start`; returns the index of the `/` that ends it, or
/// the length of `bytes`.
fn check_path_component(bytes: &[u8], start: usize) -> Result<usize, &'static str> {
    let at_end = |i: usize| i == bytes.len() || bytes[i] == b'/';
    if at_end(start) {
        return Err("empty path component (a leading, trailing or doubled '/')");
    }
    let mut i = start;
    loop {
        let run_start = i;
        while i < bytes.len() && is_lower_alnum(bytes[i]) {
            i += 1;
        }
        if i == run_start {
            return Err(
                "path components start and end with a lowercase letter or digit, \
                 with only '.', '_', '__' or dashes between them",
            );
        }
        if at_end(i) {
            return Ok(i);
        }
        let sep_start = i;
        while i < bytes.len() && matches!(bytes[i], b'.' | b'_' | b'-') {
            i += 1;
        }
        let separator = &bytes[sep_start..i];
        if separator.is_empty() {
            return Err("path components hold only lowercase letters, digits, '.', '_' and '-'");
        }
        let valid =
            matches!(separator, b"." | b"_" | b"__") || separator.iter().all(|&b| b == b'-');
        if !valid {
            return Err("separators inside a path component are '.', '_', '__' or dashes");
        }
        if at_end(i) {
            return Err("a path component cannot end with a separator");
        }
    }
}

/// `[\w][\w.-]{0,127}`
fn check_tag(tag: &str) -> Result<(), &'static str> {
    let bytes = tag.as_bytes();
    let Some(&first) = bytes.first() else {
        return Err("':' without a tag");
    };
    if bytes.len() > MAX_TAG_LEN {
        return Err("a tag is at most 128 characters");
    }
    if !is_word(first) {
        return Err("a tag starts with a letter, digit or '_'");
    }
    if !bytes.iter().all(|&b| is_word(b) || b == b'.' || b == b'-') {
        return Err("a tag holds only letters, digits, '_', '.' and '-'");
    }
    Ok(())
}

/// `algorithm:hex`, with go-digest's exact lengths for the algorithms it knows.
fn check_digest(digest: &str) -> Result<(), &'static str> {
    let Some((algorithm, hex)) = split_at_byte(digest, b':') else {
        return Err("a digest is 'algorithm:hex'");
    };
    check_digest_algorithm(algorithm)?;
    let exact = match algorithm {
        "sha256" => Some((64, "sha256 needs exactly 64 lowercase hex digits")),
        "sha384" => Some((96, "sha384 needs exactly 96 lowercase hex digits")),
        "sha512" => Some((128, "sha512 needs exactly 128 lowercase hex digits")),
        _ => None,
    };
    let valid = match exact {
        Some((len, _)) => hex.len() == len && hex.bytes().all(is_lower_hex),
        None => hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
    };
    if !valid {
        return Err(exact.map_or("a digest needs at least 32 hex digits", |(_, why)| why));
    }
    Ok(())
}

/// `[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*`
fn check_digest_algorithm(algorithm: &str) -> Result<(), &'static str> {
    if algorithm.is_empty() {
        return Err("empty digest algorithm");
    }
    let mut part_start = true;
    for &b in algorithm.as_bytes() {
        let ok = if matches!(b, b'-' | b'_' | b'+' | b'.') {
            let ok = !part_start;
            part_start = true;
            ok
        } else if part_start {
            part_start = false;
            b.is_ascii_alphabetic()
        } else {
            b.is_ascii_alphanumeric()
        };
        if !ok {
            return Err(
                "a digest algorithm is letters and digits, starting with a letter, \
                        in parts joined by single '-', '_', '+' or '.'",
            );
        }
    }
    if part_start {
        return Err("a digest algorithm cannot end with a separator");
    }
    Ok(())
}

/// Splits at the first `delimiter` (ASCII, so both halves stay on character boundaries);
/// a plain byte scan, which beats the generic `str` searcher on these short strings.
fn split_at_byte(s: &str, delimiter: u8) -> Option<(&str, &str)> {
    let i = s.bytes().position(|b| b == delimiter)?;
    Some((&s[..i], &s[i + 1..]))
}

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

/// `\w` in Go's RE2 syntax: ASCII letters, digits and `_`.
fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// An owned copy of `s` for an error message, cut at a character boundary when too long.
fn excerpt(s: &str) -> String {
    if s.len() <= ERROR_EXCERPT_LEN {
        return s.to_owned();
    }
    let mut end = ERROR_EXCERPT_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SHA256: &str = "sha256:7cc4b5aefd1d0cadf8d97d4350462ba51c694ebca145b08d7d41b41acc8db5aa";

    /// What a table case expects: the four normalised parts, or the error variant's name.
    enum Want {
        Ok {
            registry: String,
            repository: String,
            tag: Option<String>,
            digest: Option<String>,
        },
        Err(&'static str),
    }

    fn ok(registry: &str, repository: &str, tag: Option<&str>) -> Want {
        Want::Ok {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            tag: tag.map(str::to_owned),
            digest: None,
        }
    }

    fn ok_digest(registry: &str, repository: &str, tag: Option<&str>, digest: &str) -> Want {
        Want::Ok {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            tag: tag.map(str::to_owned),
            digest: Some(digest.to_owned()),
        }
    }

    fn variant(e: &ImageError) -> &'static str {
        match e {
            ImageError::Empty => "Empty",
            ImageError::Whitespace { .. } => "Whitespace",
            ImageError::NonAscii { .. } => "NonAscii",
            ImageError::HexIdentifier { .. } => "HexIdentifier",
            ImageError::InvalidDomain { .. } => "InvalidDomain",
            ImageError::MissingRepository { .. } => "MissingRepository",
            ImageError::UppercasePath { .. } => "UppercasePath",
            ImageError::InvalidPath { .. } => "InvalidPath",
            ImageError::PathTooLong { .. } => "PathTooLong",
            ImageError::InvalidTag { .. } => "InvalidTag",
            ImageError::InvalidDigest { .. } => "InvalidDigest",
        }
    }

    fn cases() -> Vec<(&'static str, String, Want)> {
        let sha512 = format!("sha512:{}", "0123456789abcdef".repeat(8));
        let a255 = "a".repeat(255);
        let a256 = "a".repeat(256);
        let long_host = format!("{}.example.com", "r".repeat(60));
        vec![
            // --- Docker Hub normalisation ---
            (
                "bare_name_is_docker_hub_library",
                "nginx".into(),
                ok("docker.io", "library/nginx", None),
            ),
            (
                "bare_name_with_tag_keeps_the_tag",
                "nginx:1.25".into(),
                ok("docker.io", "library/nginx", Some("1.25")),
            ),
            (
                "explicit_library_is_unchanged",
                "library/nginx".into(),
                ok("docker.io", "library/nginx", None),
            ),
            (
                "user_repo_is_docker_hub_without_library",
                "bitnami/redis:7.2".into(),
                ok("docker.io", "bitnami/redis", Some("7.2")),
            ),
            (
                "docker_io_single_component_gets_library",
                "docker.io/nginx".into(),
                ok("docker.io", "library/nginx", None),
            ),
            (
                "docker_io_user_repo_is_kept",
                "docker.io/bitnami/redis".into(),
                ok("docker.io", "bitnami/redis", None),
            ),
            (
                "index_docker_io_normalises_to_docker_io",
                "index.docker.io/bitnami/redis".into(),
                ok("docker.io", "bitnami/redis", None),
            ),
            (
                "index_docker_io_single_component_gets_library",
                "index.docker.io/nginx:latest".into(),
                ok("docker.io", "library/nginx", Some("latest")),
            ),
            (
                "deep_docker_hub_path_is_kept",
                "a/b/c".into(),
                ok("docker.io", "a/b/c", None),
            ),
            (
                "bare_dotted_name_without_slash_is_a_docker_hub_repository",
                "example.com".into(),
                ok("docker.io", "library/example.com", None),
            ),
            (
                "bare_localhost_is_a_docker_hub_repository",
                "localhost".into(),
                ok("docker.io", "library/localhost", None),
            ),
            (
                "bare_host_port_without_slash_is_name_and_tag",
                "localhost:5000".into(),
                ok("docker.io", "library/localhost", Some("5000")),
            ),
            // --- registries ---
            (
                "host_with_port",
                "registry.example.com:5000/team/app:v1".into(),
                ok("registry.example.com:5000", "team/app", Some("v1")),
            ),
            (
                "localhost_is_a_registry",
                "localhost/app".into(),
                ok("localhost", "app", None),
            ),
            (
                "localhost_with_port_is_a_registry",
                "localhost:5000/app:dev".into(),
                ok("localhost:5000", "app", Some("dev")),
            ),
            (
                "single_label_host_with_port_is_a_registry",
                "myregistry:5000/app".into(),
                ok("myregistry:5000", "app", None),
            ),
            (
                "ipv4_host_is_a_registry",
                "10.0.0.1:5000/app".into(),
                ok("10.0.0.1:5000", "app", None),
            ),
            (
                "ipv6_with_port_is_a_registry",
                "[::1]:5000/app:1".into(),
                ok("[::1]:5000", "app", Some("1")),
            ),
            (
                "ipv6_without_port_is_a_registry",
                "[2001:db8::1]/team/app".into(),
                ok("[2001:db8::1]", "team/app", None),
            ),
            (
                "yandex_container_registry",
                "cr.yandex/crp123/app:1".into(),
                ok("cr.yandex", "crp123/app", Some("1")),
            ),
            (
                "yandex_cloud_registry",
                "registry.yandexcloud.net/reg123/team/app:2.0.1".into(),
                ok("registry.yandexcloud.net", "reg123/team/app", Some("2.0.1")),
            ),
            (
                "uppercase_first_component_is_a_registry",
                "Registry/app".into(),
                ok("Registry", "app", None),
            ),
            (
                "uppercase_in_domain_is_kept_as_written",
                "CR.Yandex/crp1/app".into(),
                ok("CR.Yandex", "crp1/app", None),
            ),
            (
                "single_component_on_other_registry_gets_no_library",
                "cr.yandex/app".into(),
                ok("cr.yandex", "app", None),
            ),
            // --- path components ---
            (
                "path_separators_dot_underscore_double_underscore_dashes",
                "example.com/a.b/c_d/e__f/g---h".into(),
                ok("example.com", "a.b/c_d/e__f/g---h", None),
            ),
            // --- tags ---
            (
                "tag_with_dots_dashes_underscores_and_uppercase",
                "nginx:1.25.3-Alpine_slim".into(),
                ok("docker.io", "library/nginx", Some("1.25.3-Alpine_slim")),
            ),
            (
                "tag_starting_with_underscore",
                "nginx:_x".into(),
                ok("docker.io", "library/nginx", Some("_x")),
            ),
            (
                "tag_of_128_characters_is_accepted",
                format!("nginx:{}", "t".repeat(128)),
                ok("docker.io", "library/nginx", Some(&"t".repeat(128))),
            ),
            (
                "tag_of_129_characters_is_rejected",
                format!("nginx:{}", "t".repeat(129)),
                Want::Err("InvalidTag"),
            ),
            (
                "tag_starting_with_dot_is_rejected",
                "nginx:.x".into(),
                Want::Err("InvalidTag"),
            ),
            (
                "colon_without_tag_is_rejected",
                "nginx:".into(),
                Want::Err("InvalidTag"),
            ),
            (
                "second_colon_in_tag_is_rejected",
                "nginx:1:2".into(),
                Want::Err("InvalidTag"),
            ),
            // --- digests ---
            (
                "digest_only",
                format!("cr.yandex/crp1/app@{SHA256}"),
                ok_digest("cr.yandex", "crp1/app", None, SHA256),
            ),
            (
                "tag_and_digest_together",
                format!("nginx:1.25@{SHA256}"),
                ok_digest("docker.io", "library/nginx", Some("1.25"), SHA256),
            ),
            (
                "sha512_digest",
                format!("example.com/app@{sha512}"),
                ok_digest("example.com", "app", None, &sha512),
            ),
            (
                "other_algorithm_with_32_hex_digits_is_accepted",
                format!(
                    "example.com/app@multihash+base58:{}",
                    "ABCDEF0123456789".repeat(2)
                ),
                ok_digest(
                    "example.com",
                    "app",
                    None,
                    &format!("multihash+base58:{}", "ABCDEF0123456789".repeat(2)),
                ),
            ),
            (
                "sha256_digest_of_63_hex_digits_is_rejected",
                format!("nginx@{}", &SHA256[..SHA256.len() - 1]),
                Want::Err("InvalidDigest"),
            ),
            (
                "sha256_digest_of_65_hex_digits_is_rejected",
                format!("nginx@{SHA256}0"),
                Want::Err("InvalidDigest"),
            ),
            (
                "sha256_digest_with_uppercase_hex_is_rejected",
                format!("nginx@sha256:{}", "A".repeat(64)),
                Want::Err("InvalidDigest"),
            ),
            (
                "other_algorithm_with_31_hex_digits_is_rejected",
                format!("nginx@md5x:{}", "a".repeat(31)),
                Want::Err("InvalidDigest"),
            ),
            (
                "digest_without_algorithm_is_rejected",
                format!("nginx@{}", &SHA256[7..]),
                Want::Err("InvalidDigest"),
            ),
            (
                "at_without_digest_is_rejected",
                "nginx@".into(),
                Want::Err("InvalidDigest"),
            ),
            (
                "digest_only_without_name_is_rejected",
                format!("@{SHA256}"),
                Want::Err("MissingRepository"),
            ),
            (
                "digest_before_tag_is_rejected",
                format!("nginx@{SHA256}:1.0"),
                Want::Err("InvalidDigest"),
            ),
            // --- invalid names ---
            ("empty_string_is_rejected", "".into(), Want::Err("Empty")),
            (
                "leading_whitespace_is_rejected",
                " nginx".into(),
                Want::Err("Whitespace"),
            ),
            (
                "trailing_newline_is_rejected",
                "nginx\n".into(),
                Want::Err("Whitespace"),
            ),
            (
                "inner_space_is_rejected",
                "cr.yandex/a b".into(),
                Want::Err("Whitespace"),
            ),
            (
                "unicode_is_rejected",
                "cr.yandex/прил".into(),
                Want::Err("NonAscii"),
            ),
            (
                "unicode_in_first_component_is_rejected",
                "é/app".into(),
                Want::Err("NonAscii"),
            ),
            (
                "uppercase_repository_is_rejected",
                "cr.yandex/crp1/App".into(),
                Want::Err("UppercasePath"),
            ),
            (
                "uppercase_bare_name_is_rejected",
                "Nginx".into(),
                Want::Err("UppercasePath"),
            ),
            (
                "double_slash_is_rejected",
                "cr.yandex//app".into(),
                Want::Err("InvalidPath"),
            ),
            (
                "trailing_slash_is_rejected",
                "cr.yandex/app/".into(),
                Want::Err("InvalidPath"),
            ),
            (
                "leading_slash_is_rejected",
                "/app".into(),
                Want::Err("InvalidPath"),
            ),
            (
                "registry_without_repository_is_rejected",
                "cr.yandex/".into(),
                Want::Err("MissingRepository"),
            ),
            (
                "tag_without_name_is_rejected",
                ":latest".into(),
                Want::Err("MissingRepository"),
            ),
            (
                "triple_underscore_separator_is_rejected",
                "a___b".into(),
                Want::Err("InvalidPath"),
            ),
            (
                "component_ending_in_separator_is_rejected",
                "example.com/app-".into(),
                Want::Err("InvalidPath"),
            ),
            (
                "mixed_separators_are_rejected",
                "example.com/a.-b".into(),
                Want::Err("InvalidPath"),
            ),
            (
                "url_scheme_is_rejected",
                "https://cr.yandex/app".into(),
                Want::Err("InvalidDomain"),
            ),
            (
                "domain_label_with_underscore_is_rejected",
                "foo_bar.com/app".into(),
                Want::Err("InvalidDomain"),
            ),
            (
                "domain_label_starting_with_dash_is_rejected",
                "-cr.yandex/app".into(),
                Want::Err("InvalidDomain"),
            ),
            (
                "empty_domain_label_is_rejected",
                "cr..yandex/app".into(),
                Want::Err("InvalidDomain"),
            ),
            (
                "non_numeric_port_is_rejected",
                "cr.yandex:https/app".into(),
                Want::Err("InvalidDomain"),
            ),
            (
                "empty_port_is_rejected",
                "cr.yandex:/app".into(),
                Want::Err("InvalidDomain"),
            ),
            (
                "unclosed_ipv6_bracket_is_rejected",
                "[::1:5000/app".into(),
                Want::Err("InvalidDomain"),
            ),
            (
                "ipv6_with_non_hex_is_rejected",
                "[::g]:5000/app".into(),
                Want::Err("InvalidDomain"),
            ),
            (
                "bracketed_first_component_without_colon_is_not_a_registry",
                "[0]/app".into(),
                Want::Err("InvalidPath"),
            ),
            (
                "bare_64_hex_identifier_is_rejected",
                SHA256[7..].into(),
                Want::Err("HexIdentifier"),
            ),
            // --- length ---
            (
                "path_of_255_characters_is_accepted",
                format!("example.com/{a255}"),
                ok("example.com", &a255, None),
            ),
            (
                "path_of_256_characters_is_rejected",
                format!("example.com/{a256}"),
                Want::Err("PathTooLong"),
            ),
            (
                "registry_host_does_not_count_towards_the_length",
                format!("{long_host}/{a255}"),
                ok(&long_host, &a255, None),
            ),
            (
                "implied_library_counts_towards_the_length",
                "a".repeat(248),
                Want::Err("PathTooLong"),
            ),
            (
                "implied_library_at_exactly_255_is_accepted",
                "a".repeat(247),
                ok("docker.io", &format!("library/{}", "a".repeat(247)), None),
            ),
        ]
    }

    #[test]
    fn table() {
        let cases = cases();
        assert!(cases.len() >= 40, "only {} cases", cases.len());
        for (name, input, want) in &cases {
            let got = parse(input);
            match (want, got) {
                (
                    Want::Ok {
                        registry,
                        repository,
                        tag,
                        digest,
                    },
                    Ok(r),
                ) => {
                    assert_eq!(r.registry(), registry, "{name}: registry");
                    assert_eq!(r.repository(), repository.as_str(), "{name}: repository");
                    assert_eq!(r.tag(), tag.as_deref(), "{name}: tag");
                    assert_eq!(r.digest(), digest.as_deref(), "{name}: digest");
                    let shown = r.to_string();
                    assert_eq!(parse(&shown), Ok(r), "{name}: display round trip");
                }
                (Want::Err(kind), Err(e)) => {
                    assert_eq!(variant(&e), *kind, "{name}: wrong error {e}");
                    let message = e.to_string();
                    assert!(
                        message.starts_with(|c: char| c.is_ascii_lowercase()),
                        "{name}: message starts in lowercase: {message}"
                    );
                    if !input.is_empty() {
                        let quoted = format!("{input:?}");
                        assert!(
                            message.contains(&quoted),
                            "{name}: {message} lacks {quoted}"
                        );
                    }
                }
                (Want::Ok { .. }, Err(e)) => panic!("{name}: {input:?} failed: {e}"),
                (Want::Err(kind), Ok(r)) => {
                    panic!("{name}: {input:?} parsed as {r}, wanted {kind}")
                }
            }
        }
    }

    #[test]
    fn display_prints_the_fully_qualified_normalised_form_without_inventing_a_tag() {
        let cases = [
            ("nginx", "docker.io/library/nginx"),
            ("nginx:1.25", "docker.io/library/nginx:1.25"),
            ("index.docker.io/user/app", "docker.io/user/app"),
            ("cr.yandex/crp1/app:1", "cr.yandex/crp1/app:1"),
            ("[::1]:5000/app", "[::1]:5000/app"),
        ];
        for (input, want) in cases {
            let r = parse(input).expect("valid reference");
            assert_eq!(r.to_string(), want, "{input}");
        }
        let with_digest = format!("nginx:1@{SHA256}");
        let r = parse(&with_digest).expect("valid reference");
        assert_eq!(r.to_string(), format!("docker.io/library/nginx:1@{SHA256}"));
    }

    #[test]
    fn short_and_long_docker_hub_forms_are_equal() {
        let short = parse("nginx").expect("valid");
        let long = parse("docker.io/library/nginx").expect("valid");
        let legacy = parse("index.docker.io/library/nginx").expect("valid");
        assert_eq!(short, long);
        assert_eq!(long, legacy);
        assert_ne!(short, parse("nginx:latest").expect("valid"));
        assert_ne!(short, parse("example.com/library/nginx").expect("valid"));
    }

    #[test]
    fn repository_is_borrowed_unless_library_is_implied() {
        let r = parse("cr.yandex/crp1/app").expect("valid");
        assert!(matches!(r.repository(), Cow::Borrowed("crp1/app")));
        let r = parse("nginx").expect("valid");
        assert!(matches!(r.repository(), Cow::Owned(_)));
    }

    #[test]
    fn repository_starts_with_handles_the_implied_library_prefix() {
        let r = parse("nginx").expect("valid");
        for prefix in [
            "",
            "l",
            "library",
            "library/",
            "library/ng",
            "library/nginx",
        ] {
            assert!(r.repository_starts_with(prefix), "{prefix:?}");
        }
        for prefix in ["nginx", "library/nginx2", "library/nginx/", "librari", "x"] {
            assert!(!r.repository_starts_with(prefix), "{prefix:?}");
        }
        let r = parse("cr.yandex/crp12/app").expect("valid");
        assert!(r.repository_starts_with("crp1"));
        assert!(!r.repository_starts_with("crp1/"));
    }

    #[test]
    fn host_and_port_split_the_registry() {
        let cases = [
            ("nginx", "docker.io", None),
            ("cr.yandex:443/a", "cr.yandex", Some("443")),
            ("localhost/a", "localhost", None),
            ("[::1]:5000/a", "[::1]", Some("5000")),
            ("[fe80::1]/a", "[fe80::1]", None),
        ];
        for (input, host, port) in cases {
            let r = parse(input).expect("valid");
            assert_eq!((r.host(), r.port()), (host, port), "{input}");
        }
    }

    #[test]
    fn long_rejected_input_is_quoted_only_in_part() {
        let input = format!("{}é", "A".repeat(600));
        let e = parse(&input).expect_err("non-ASCII");
        let ImageError::NonAscii { image } = e else {
            panic!("wrong error {e:?}");
        };
        assert!(image.len() <= ERROR_EXCERPT_LEN + 3);
        assert!(image.ends_with("..."));
    }

    // ---- property tests ----

    fn path_component() -> impl Strategy<Value = String> {
        "[a-z0-9]{1,6}((\\.|_|__|-{1,3})[a-z0-9]{1,6}){0,2}"
    }

    /// A first component that splitDockerDomain does not take for a registry.
    fn docker_hub_first_component() -> impl Strategy<Value = String> {
        "[a-z0-9]{1,6}((_|__|-{1,3})[a-z0-9]{1,6}){0,2}"
    }

    fn domain() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("docker.io".to_owned()),
            Just("index.docker.io".to_owned()),
            Just("localhost".to_owned()),
            "[a-z0-9]{1,5}(\\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,4}[a-zA-Z0-9])?){1,3}",
            "[a-z0-9]{1,5}(\\.[a-z0-9]{1,5}){0,2}:[0-9]{1,5}",
            "localhost:[0-9]{1,5}",
            "[A-Z][a-zA-Z0-9]{0,4}",
            // splitDockerDomain sees a bracketed host only through its ':'.
            "\\[[0-9a-fA-F]{0,4}:[0-9a-fA-F:]{0,10}\\](:[0-9]{1,5})?",
        ]
    }

    fn digest() -> impl Strategy<Value = String> {
        prop_oneof![
            "sha256:[0-9a-f]{64}",
            "sha512:[0-9a-f]{128}",
            "[a-z]{1,4}([+._-][a-z][a-z0-9]{0,3})?:[0-9a-fA-F]{32,40}",
        ]
    }

    fn reference() -> impl Strategy<Value = (Option<String>, String)> {
        let with_domain = (domain(), prop::collection::vec(path_component(), 1..4))
            .prop_map(|(d, p)| (Some(d), p.join("/")));
        let without_domain = (
            docker_hub_first_component(),
            prop::collection::vec(path_component(), 0..3),
        )
            .prop_map(|(first, rest)| {
                let mut parts = vec![first];
                parts.extend(rest);
                (None, parts.join("/"))
            });
        let name = prop_oneof![with_domain, without_domain];
        (
            name,
            prop::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
            prop::option::of(digest()),
        )
            .prop_map(|((domain, path), tag, digest)| {
                let mut s = match &domain {
                    Some(d) => format!("{d}/{path}"),
                    None => path.clone(),
                };
                if let Some(t) = tag {
                    s.push(':');
                    s.push_str(&t);
                }
                if let Some(d) = digest {
                    s.push('@');
                    s.push_str(&d);
                }
                let fully_qualified = match domain.as_deref() {
                    None | Some("index.docker.io") => false,
                    Some("docker.io") => path.contains('/'),
                    Some(_) => true,
                };
                (fully_qualified.then(|| s.clone()), s)
            })
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_any_string(s in ".*") {
            let _ = parse(&s);
        }

        #[test]
        fn parse_never_panics_on_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let s = String::from_utf8_lossy(&bytes);
            let _ = parse(&s);
        }

        #[test]
        fn parse_never_panics_on_reference_like_strings(s in "[a-zA-Z0-9./:@_\\[\\]-]{0,40}") {
            if let Ok(r) = parse(&s) {
                let again = r.to_string();
                prop_assert_eq!(parse(&again), Ok(r));
            }
        }

        #[test]
        fn valid_references_round_trip_through_display((fully_qualified, s) in reference()) {
            let r = parse(&s);
            prop_assert!(r.is_ok(), "{:?} rejected: {:?}", s, r);
            let r = r.unwrap();
            let shown = r.to_string();
            prop_assert_eq!(parse(&shown), Ok(r));
            if let Some(input) = fully_qualified {
                prop_assert_eq!(shown, input);
            }
        }
    }
}
