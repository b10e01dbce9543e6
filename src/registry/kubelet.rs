//! How kubelet reads an `auths` key, step by step as `pkg/credentialprovider/keyring.go` does
//! it, with the parts of Go's standard library it relies on ported as they behave in Go 1.26
//! (the toolchain kubelet v1.37 is built with).
//!
//! `BasicDockerKeyring.Add` prefixes `https://` unless the key starts with `https://` or
//! `http://`, parses the result with `net/url` (a key that does not parse is ignored), drops
//! a leading `/v1` or `/v2` of the path, and stores `Host` + path (the path only when it is
//! neither empty nor `/`). `Lookup` parses that stored key again with an `https://` prefix and
//! compares it with the image (`URLsMatch`): `net.SplitHostPort` on the host (the whole host
//! and no port when it fails), the same port, the same number of `.`-separated labels, each
//! label a `path/filepath.Match` glob, and the key's path a string prefix of the image's.
//!
//! Only what decides those results is ported: URL parsing of absolute `http`/`https` URLs
//! (control bytes, `#fragment`, `?query`, user info, bracketed IPv6 hosts with zones, the
//! strict single-colon port of Go 1.26, and `%`-escapes with the rules of each URL part),
//! `netip.ParseAddr` for the IPv6 check, and `net.SplitHostPort`. Inputs are bytes: escapes
//! may decode to bytes that are not UTF-8, and Go keeps them.

/// What kubelet makes of one `auths` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reading {
    /// `Add` ignores the key: Go's URL parser refuses it (the reason, in Go's words).
    Ignored(String),
    /// `Add` keeps the key as `key`, but `Lookup` cannot parse that back, so it never matches.
    Unparsable {
        /// The stored key.
        key: Vec<u8>,
        /// Why the second parse fails.
        error: String,
    },
    /// `Add` keeps the key as `key`, and `Lookup` compares images with `glob`.
    Glob {
        /// The stored key.
        key: Vec<u8>,
        /// What images are compared with.
        glob: Glob,
    },
}

/// The parts of a stored key that `URLsMatch` compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Glob {
    /// The host after `net.SplitHostPort` (without IPv6 brackets when there is a port;
    /// the whole host, brackets and all, when the split fails).
    pub host: Vec<u8>,
    /// The port, empty when there is none.
    pub port: Vec<u8>,
    /// The URL path: empty or starting with `/`.
    pub path: Vec<u8>,
}

/// Reads `raw` as `BasicDockerKeyring.Add` and then `Lookup` do.
pub(crate) fn read(raw: &str) -> Reading {
    let url = if raw.starts_with("https://") || raw.starts_with("http://") {
        raw.as_bytes().to_vec()
    } else {
        [b"https://", raw.as_bytes()].concat()
    };
    let parsed = match parse_url(&url) {
        Ok(u) => u,
        Err(e) => return Reading::Ignored(e),
    };
    let mut path = parsed.path.as_slice();
    if path.starts_with(b"/v2/") || path.starts_with(b"/v1/") {
        path = &path[3..];
    }
    let mut key = parsed.host;
    if !path.is_empty() && path != b"/" {
        key.extend_from_slice(path);
    }
    match parse_url(&[b"https://", key.as_slice()].concat()) {
        Err(error) => Reading::Unparsable { key, error },
        Ok(url) => {
            let (host, port) = match split_host_port(&url.host) {
                Some((host, port)) => (host.to_vec(), port.to_vec()),
                None => (url.host, Vec::new()),
            };
            Reading::Glob {
                key,
                glob: Glob {
                    host,
                    port,
                    path: url.path,
                },
            }
        }
    }
}

/// The parts of a parsed URL that kubelet uses.
#[derive(Debug)]
struct Url {
    host: Vec<u8>,
    path: Vec<u8>,
}

/// `url.Parse` for an absolute URL (callers always pass `http://...` or `https://...`).
fn parse_url(raw: &[u8]) -> Result<Url, String> {
    let (u, fragment) = match raw.iter().position(|&b| b == b'#') {
        Some(i) => (&raw[..i], &raw[i + 1..]),
        None => (raw, &raw[raw.len()..]),
    };
    if u.iter().any(|&b| b < b' ' || b == 0x7f) {
        return Err("invalid control character in URL".into());
    }
    let (scheme, rest) = get_scheme(u)?;
    let rest = if rest.ends_with(b"?") && rest.iter().filter(|&&b| b == b'?').count() == 1 {
        &rest[..rest.len() - 1]
    } else {
        match rest.iter().position(|&b| b == b'?') {
            Some(i) => &rest[..i],
            None => rest,
        }
    };
    let mut url = Url {
        host: Vec::new(),
        path: Vec::new(),
    };
    if !rest.starts_with(b"/") {
        // An opaque URL ("https:x"): no host, no path. Callers never build one.
        return Ok(url);
    }
    let mut path = rest;
    if let Some(after) = rest.strip_prefix(b"//") {
        let end = after.iter().position(|&b| b == b'/').unwrap_or(after.len());
        url.host = parse_authority(&scheme, &after[..end])?;
        path = &after[end..];
    }
    url.path = unescape(path, Mode::Path)?;
    if !fragment.is_empty() {
        unescape(fragment, Mode::Fragment)?;
    }
    Ok(url)
}

/// `getScheme`: the lowercased scheme and what follows its `:`.
fn get_scheme(u: &[u8]) -> Result<(String, &[u8]), String> {
    for (i, &c) in u.iter().enumerate() {
        match c {
            b'a'..=b'z' | b'A'..=b'Z' => {}
            b'0'..=b'9' | b'+' | b'-' | b'.' if i > 0 => {}
            b':' if i > 0 => {
                return Ok((String::from_utf8_lossy(&u[..i]).to_lowercase(), &u[i + 1..]));
            }
            b':' => return Err("missing protocol scheme".into()),
            _ => return Ok((String::new(), u)),
        }
    }
    Ok((String::new(), u))
}

/// `parseAuthority`: the host of `[userinfo@]host[:port]`, after checking the user info.
fn parse_authority(scheme: &str, authority: &[u8]) -> Result<Vec<u8>, String> {
    let at = authority.iter().rposition(|&b| b == b'@');
    let host = parse_host(scheme, &authority[at.map_or(0, |i| i + 1)..])?;
    if let Some(at) = at {
        let userinfo = &authority[..at];
        if !userinfo.iter().all(|&b| valid_userinfo_byte(b)) {
            return Err("invalid userinfo".into());
        }
        for part in userinfo.splitn(2, |&b| b == b':') {
            unescape(part, Mode::UserPassword)?;
        }
    }
    Ok(host)
}

/// `validUserinfo`, byte by byte (any non-ASCII rune is refused there too).
fn valid_userinfo_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._:~!$&'()*+,;=%@".contains(&b)
}

/// `parseHost` with Go 1.26's defaults (`urlstrictcolons=1`).
fn parse_host(scheme: &str, host: &[u8]) -> Result<Vec<u8>, String> {
    match host.iter().rposition(|&b| b == b'[') {
        Some(0) => {
            let Some(close) = host.iter().rposition(|&b| b == b']') else {
                return Err("missing ']' in host".into());
            };
            let colon_port = &host[close + 1..];
            if !valid_optional_port(colon_port) {
                return Err(format!("invalid port {} after host", quote(colon_port)));
            }
            let colon_port = unescape(colon_port, Mode::Host)?;
            let hostname = &host[1..close];
            let unescaped = match find(hostname, b"%25") {
                Some(z) => {
                    let mut h = unescape(&hostname[..z], Mode::Host)?;
                    h.extend(unescape(&hostname[z..], Mode::Zone)?);
                    h
                }
                None => unescape(hostname, Mode::Host)?,
            };
            match parse_addr(&unescaped) {
                Err(e) => return Err(format!("invalid host: {e}")),
                Ok(Family::V4) => return Err("invalid IP-literal".into()),
                Ok(Family::V6) => {}
            }
            return Ok([b"[", unescaped.as_slice(), b"]", colon_port.as_slice()].concat());
        }
        Some(_) => return Err("invalid IP-literal".into()),
        None => {}
    }
    if let Some(first) = host.iter().position(|&b| b == b':') {
        let last = host.iter().rposition(|&b| b == b':').unwrap_or(first);
        // Go 1.26 takes the port after the first colon for http and https (so a second
        // colon is an error), and after the last one for other schemes.
        let i = if scheme == "http" || scheme == "https" {
            first
        } else {
            last
        };
        if !valid_optional_port(&host[i..]) {
            return Err(format!("invalid port {} after host", quote(&host[i..])));
        }
    }
    unescape(host, Mode::Host)
}

fn valid_optional_port(port: &[u8]) -> bool {
    match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    }
}

/// The URL part an escape is in; each has its own rules.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Path,
    Host,
    Zone,
    UserPassword,
    Fragment,
}

/// `unescape`: decodes `%XX`, refusing malformed escapes and, in hosts, characters and
/// escapes a host may not hold.
fn unescape(s: &[u8], mode: Mode) -> Result<Vec<u8>, String> {
    let mut i = 0;
    let mut escapes = 0;
    while i < s.len() {
        match s[i] {
            b'%' => {
                escapes += 1;
                if i + 2 >= s.len()
                    || !s[i + 1].is_ascii_hexdigit()
                    || !s[i + 2].is_ascii_hexdigit()
                {
                    return Err(format!(
                        "invalid URL escape {}",
                        quote(&s[i..(i + 3).min(s.len())])
                    ));
                }
                let escape = &s[i..i + 3];
                let value = unhex(s[i + 1]) << 4 | unhex(s[i + 2]);
                // In a host, only non-ASCII bytes may be escaped (and %25 for IPv6 zones).
                if mode == Mode::Host && unhex(s[i + 1]) < 8 && escape != b"%25" {
                    return Err(format!("invalid URL escape {}", quote(escape)));
                }
                if mode == Mode::Zone
                    && escape != b"%25"
                    && value != b' '
                    && !allowed_in_host(value)
                {
                    return Err(format!("invalid URL escape {}", quote(escape)));
                }
                i += 3;
            }
            b if matches!(mode, Mode::Host | Mode::Zone) && b < 0x80 && !allowed_in_host(b) => {
                return Err(format!(
                    "invalid character {} in host name",
                    quote(&s[i..=i])
                ));
            }
            _ => i += 1,
        }
    }
    if escapes == 0 {
        return Ok(s.to_vec());
    }
    let mut out = Vec::with_capacity(s.len() - 2 * escapes);
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            out.push(unhex(s[i + 1]) << 4 | unhex(s[i + 2]));
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn unhex(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => c - b'A' + 10,
    }
}

/// ASCII bytes Go's URL encoding table allows unescaped in a host (and in an IPv6 zone).
pub(crate) fn allowed_in_host(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!\"$&'()*+,-.:;<=>[]_~".contains(&b)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Go's `%q` of bytes, close enough for messages.
pub(crate) fn quote(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(bytes))
}

enum Family {
    V4,
    V6,
}

/// `netip.ParseAddr`: which family the text is an address of, or why it is none.
fn parse_addr(s: &[u8]) -> Result<Family, String> {
    match s.iter().find(|&&b| matches!(b, b'.' | b':' | b'%')) {
        Some(b'.') => parse_ipv4_fields(s).map(|_| Family::V4),
        Some(b':') => parse_ipv6(s).map(|()| Family::V6),
        Some(_) => Err("missing IPv6 address".into()),
        None => Err("unable to parse IP".into()),
    }
}

/// `netip.parseIPv6`: an IPv6 address with an optional embedded IPv4 tail and `%zone`.
pub(crate) fn parse_ipv6(input: &[u8]) -> Result<(), String> {
    let mut s = input;
    if let Some(z) = s.iter().position(|&b| b == b'%') {
        if z + 1 == s.len() {
            return Err("zone must be a non-empty string".into());
        }
        s = &s[..z];
    }
    let mut ellipsis: Option<usize> = None;
    if s.starts_with(b"::") {
        ellipsis = Some(0);
        s = &s[2..];
        if s.is_empty() {
            return Ok(());
        }
    }
    let mut i = 0;
    while i < 16 {
        let mut off = 0;
        let mut acc: u32 = 0;
        while off < s.len() {
            let c = s[off];
            if !c.is_ascii_hexdigit() {
                break;
            }
            acc = (acc << 4) + u32::from(unhex(c));
            if off > 3 {
                return Err("each group must have 4 or less digits".into());
            }
            if acc > 0xffff {
                return Err("IPv6 field has value >=2^16".into());
            }
            off += 1;
        }
        if off == 0 {
            return Err("each colon-separated field must have at least one digit".into());
        }
        if off < s.len() && s[off] == b'.' {
            if ellipsis.is_none() && i != 12 {
                return Err(
                    "embedded IPv4 address must replace the final 2 fields of the address".into(),
                );
            }
            if i + 4 > 16 {
                return Err(
                    "too many hex fields to fit an embedded IPv4 at the end of the address".into(),
                );
            }
            parse_ipv4_fields(s)?;
            s = &[];
            i += 4;
            break;
        }
        i += 2;
        s = &s[off..];
        if s.is_empty() {
            break;
        }
        if s[0] != b':' {
            return Err("unexpected character, want colon".into());
        } else if s.len() == 1 {
            return Err("colon must be followed by more characters".into());
        }
        s = &s[1..];
        if s[0] == b':' {
            if ellipsis.is_some() {
                return Err("multiple :: in address".into());
            }
            ellipsis = Some(i);
            s = &s[1..];
            if s.is_empty() {
                break;
            }
        }
    }
    if !s.is_empty() {
        return Err("trailing garbage after address".into());
    }
    if i < 16 {
        if ellipsis.is_none() {
            return Err("address string too short".into());
        }
    } else if ellipsis.is_some() {
        return Err("the :: must expand to at least one field of zeros".into());
    }
    Ok(())
}

/// `netip.parseIPv4Fields`: four decimal octets without leading zeros.
fn parse_ipv4_fields(s: &[u8]) -> Result<(), String> {
    let (mut val, mut pos, mut digits) = (0u32, 0, 0);
    for (i, &c) in s.iter().enumerate() {
        match c {
            b'0'..=b'9' => {
                if digits == 1 && val == 0 {
                    return Err("IPv4 field has octet with leading zero".into());
                }
                val = val * 10 + u32::from(c - b'0');
                digits += 1;
                if val > 255 {
                    return Err("IPv4 field has value >255".into());
                }
            }
            b'.' => {
                if i == 0 || i == s.len() - 1 || s[i - 1] == b'.' {
                    return Err("IPv4 field must have at least one digit".into());
                }
                if pos == 3 {
                    return Err("IPv4 address too long".into());
                }
                pos += 1;
                val = 0;
                digits = 0;
            }
            _ => return Err("unexpected character".into()),
        }
    }
    if pos < 3 {
        return Err("IPv4 address too short".into());
    }
    Ok(())
}

/// `net.SplitHostPort`: `None` where Go returns an error.
pub(crate) fn split_host_port(hostport: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = hostport.iter().rposition(|&b| b == b':')?;
    let (host, j, k);
    if hostport[0] == b'[' {
        let end = hostport.iter().position(|&b| b == b']')?;
        if end + 1 != i {
            return None;
        }
        host = &hostport[1..end];
        (j, k) = (1, end + 1);
    } else {
        host = &hostport[..i];
        if host.contains(&b':') {
            return None;
        }
        (j, k) = (0, 0);
    }
    if hostport[j..].contains(&b'[') || hostport[k..].contains(&b']') {
        return None;
    }
    Some((host, &hostport[i + 1..]))
}
