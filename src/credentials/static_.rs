//! Static credentials read from files: `yandexJsonKey`, `basic`, `dockerConfig`.
//! They never expire; the sync task re-reads them at its refresh interval (and earlier
//! when their fingerprint changes) to follow rotation.

use std::path::Path;

use jiff::Timestamp;

use crate::dockerconfig;
use crate::registry::{HostPattern, check_auths_keys};

use super::{
    Credential, CredentialError, JSON_KEY_USERNAME, Secret, bad_file, fingerprint_of, read_file,
    yandex_key,
};

/// `json_key` + the authorized key file verbatim (validated, sent unmodified).
pub(crate) async fn json_key(file: &Path) -> Result<Credential, CredentialError> {
    const WHAT: &str = "json key file";
    let bytes = read_file(WHAT, file).await?;
    let fingerprint = fingerprint_of(file, &bytes);
    let (_, layout) = yandex_key::parse_key_file_with_layout(&bytes)
        .map_err(|problem| bad_file(WHAT, file, problem))?;
    if layout == yandex_key::Layout::RestApi {
        // The file is sent as the password; json_key logins are documented with the file
        // `yc iam key create` writes, so the other layout is not sent on a guess.
        return Err(bad_file(
            WHAT,
            file,
            "a key in the IAM REST API layout (\"key\", \"privateKey\"); json_key logins take the file `yc iam key create` writes: create one with yc, or use yandexAuthorizedKey, which reads both layouts",
        ));
    }
    let text = String::from_utf8(bytes).map_err(|_| bad_file(WHAT, file, "not UTF-8 text"))?;
    Ok(Credential::login(
        JSON_KEY_USERNAME,
        Secret::from(text),
        Timestamp::now(),
        None,
    )?
    .with_fingerprint(fingerprint))
}

/// The configured username + the password file without one trailing newline.
pub(crate) async fn basic(username: &str, file: &Path) -> Result<Credential, CredentialError> {
    const WHAT: &str = "password file";
    let bytes = read_file(WHAT, file).await?;
    let fingerprint = fingerprint_of(file, &bytes);
    let mut text = String::from_utf8(bytes).map_err(|_| bad_file(WHAT, file, "not UTF-8 text"))?;
    strip_one_newline(&mut text);
    if text.is_empty() {
        return Err(bad_file(WHAT, file, "is empty"));
    }
    Ok(
        Credential::login(username, Secret::from(text), Timestamp::now(), None)?
            .with_fingerprint(fingerprint),
    )
}

/// A whole `.dockerconfigjson`, used as is once it parses as one with `auths` and, when the
/// registry's `hosts` are given, its keys are those hosts as kubelet reads them.
pub(crate) async fn docker_config(
    file: &Path,
    hosts: Option<&[HostPattern]>,
) -> Result<Credential, CredentialError> {
    const WHAT: &str = "docker config file";
    let bytes = read_file(WHAT, file).await?;
    let fingerprint = fingerprint_of(file, &bytes);
    if let Some(hosts) = hosts
        && let Ok(config) = dockerconfig::parse(&bytes)
    {
        check_auths_keys(hosts, config.auths.keys().map(String::as_str))
            .map_err(|e| bad_file(WHAT, file, e.to_string()))?;
    }
    Ok(Credential::docker_config(bytes, Timestamp::now())
        .map_err(|e| bad_file(WHAT, file, e.to_string()))?
        .with_fingerprint(fingerprint))
}

/// Remove one trailing `\n` or `\r\n` (what `echo` and editors add), nothing more.
fn strip_one_newline(text: &mut String) {
    if text.ends_with("\r\n") {
        text.truncate(text.len() - 2);
    } else if text.ends_with('\n') {
        text.truncate(text.len() - 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_trailing_newline_is_stripped() {
        for (input, want) in [
            ("pw", "pw"),
            ("pw\n", "pw"),
            ("pw\r\n", "pw"),
            ("pw\n\n", "pw\n"),
            ("pw\r", "pw\r"),
            (" pw \n", " pw "),
            ("\n", ""),
            ("", ""),
        ] {
            let mut s = input.to_string();
            strip_one_newline(&mut s);
            assert_eq!(s, want, "{input:?}");
        }
    }
}
