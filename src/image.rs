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
//! It accepts exactly the references kubelet accepts and names them as kubelet does; the
//! differential test `tests/kubelet_oracle.rs` holds it to that against kubelet's own code.

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
/// Follows distribution/reference v0.6.0's `ParseNormalizedNamed`, which kubelet runs every
/// image through before it looks up credentials, and accepts exactly the references it
/// accepts (`tests/kubelet_oracle.rs` checks this against kubelet's own code):
///
/// * The text before the first `/` is the registry when it contains `.` or `:`, is
///   `localhost`, or contains an uppercase letter; otherwise the image is on `docker.io`.
///   A reference without `/` is always on `docker.io` (so `localhost:5000` is
///   `docker.io/library/localhost` with tag `5000`, as in distribution).
/// * `index.docker.io` is written as `docker.io`; a single-component Docker Hub path gets
///   `library/`.
/// * Registry: DNS-like labels `[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?` separated by `.`, or an
///   IPv6 address in brackets (hex digits and `:`), then an optional `:port` (digits). A first
///   component taken for a registry that fails this but is a valid path component
///   (`foo_bar.com/app`) makes the whole name a path with no domain in distribution; kubelet
///   still looks up credentials for the host `foo_bar.com`, and so is it read here.
/// * Path components: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, separated by `/`.
/// * Tag: `[\w][\w.-]{0,127}`. Digest: `sha256`, `sha384` or `sha512` with exactly 64, 96 or
///   128 lowercase hex digits: go-digest calls any other algorithm unsupported, even where the
///   grammar allows it, and kubelet then refuses the image. A tag and a digest may both be
///   present.
/// * The normalised repository path (including an implied `library/`) is at most 255
///   characters; for a name with no domain (`foo_bar.com/app`) that is the whole name. The
///   registry host does not count: distribution/reference v0.6.0 made that change; older
///   docker/distribution counted it.
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
        // `bare`: the first component failed the domain grammar but is a valid path component
        // (`foo_bar.com/app`). distribution then parses the whole name as a path with no
        // domain; kubelet still looks up credentials for the host `foo_bar.com`.
        let (registry, host, port, bare) = match written_domain {
            None | Some(LEGACY_DEFAULT_REGISTRY) => {
                (DEFAULT_REGISTRY, DEFAULT_REGISTRY, None, false)
            }
            Some(domain) => match split_domain(domain) {
                Ok((host, port)) => (domain, host, port, false),
                Err(_) if check_path_component(domain.as_bytes(), 0) == Ok(domain.len()) => {
                    (domain, domain, None, true)
                }
                Err(reason) => {
                    return Err(ImageError::InvalidDomain {
                        image: excerpt(s),
                        domain: excerpt(domain),
                        reason,
                    });
                }
            },
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
        let len = match (official, bare) {
            (true, _) => OFFICIAL_PREFIX.len() + path.len(),
            (false, true) => registry.len() + 1 + path.len(),
            (false, false) => path.len(),
        };
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

    /// Whether kubelet would fall back to Docker Hub credentials (an `index.docker.io` key) for
    /// this image when no other key matches it: `isDefaultRegistryMatch` of
    /// `pkg/credentialprovider`, which holds for Docker Hub images and for every registry
    /// without `.` or `:` (`localhost/app`, `Registry/app`).
    pub fn docker_hub_fallback_applies(&self) -> bool {
        self.registry == DEFAULT_REGISTRY || !self.registry.contains(['.', ':'])
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

/// `algorithm:hex` as go-digest validates it in a binary that links the SHA-2 hashes, as
/// kubelet does: `sha256`, `sha384` or `sha512` with exactly 64, 96 or 128 lowercase hex
/// digits. Any other algorithm, even one the grammar allows, is "unsupported".
fn check_digest(digest: &str) -> Result<(), &'static str> {
    let Some((algorithm, hex)) = split_at_byte(digest, b':') else {
        return Err("a digest is 'algorithm:hex'");
    };
    let (len, why) = match algorithm {
        "sha256" => (64, "sha256 needs exactly 64 lowercase hex digits"),
        "sha384" => (96, "sha384 needs exactly 96 lowercase hex digits"),
        "sha512" => (128, "sha512 needs exactly 128 lowercase hex digits"),
        _ => return Err("the digest algorithm is not sha256, sha384 or sha512"),
    };
    if hex.len() != len || !hex.bytes().all(is_lower_hex) {
        return Err(why);
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
mod tests;
