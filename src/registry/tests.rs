use super::*;
use proptest::prelude::*;

fn pattern(s: &str) -> HostPattern {
    HostPattern::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

fn image(s: &str) -> ImageRef<'_> {
    ImageRef::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

/// (behaviour, pattern, image, matches)
const MATCH_CASES: &[(&str, &str, &str, bool)] = &[
    (
        "exact_host_matches",
        "cr.yandex",
        "cr.yandex/crp1/app:1",
        true,
    ),
    (
        "exact_host_matches_digest_image",
        "cr.yandex",
        "cr.yandex/crp1/app@sha256:7cc4b5aefd1d0cadf8d97d4350462ba51c694ebca145b08d7d41b41acc8db5aa",
        true,
    ),
    (
        "other_host_does_not_match",
        "cr.yandex",
        "registry.yandexcloud.net/r/app",
        false,
    ),
    (
        "cloud_registry_host_matches",
        "registry.yandexcloud.net",
        "registry.yandexcloud.net/reg1/app:2",
        true,
    ),
    (
        "subdomain_is_not_the_host",
        "cr.yandex",
        "eu.cr.yandex/app",
        false,
    ),
    (
        "parent_domain_is_not_the_host",
        "eu.cr.yandex",
        "cr.yandex/app",
        false,
    ),
    (
        "image_port_without_pattern_port_does_not_match",
        "cr.yandex",
        "cr.yandex:443/app",
        false,
    ),
    (
        "pattern_port_without_image_port_does_not_match",
        "cr.yandex:443",
        "cr.yandex/app",
        false,
    ),
    (
        "same_port_matches",
        "cr.yandex:443",
        "cr.yandex:443/app",
        true,
    ),
    (
        "different_port_does_not_match",
        "registry.example.com:5000",
        "registry.example.com:5001/app",
        false,
    ),
    (
        "port_compares_as_text",
        "registry.example.com:5000",
        "registry.example.com:05000/app",
        false,
    ),
    (
        "glob_label_matches_one_label",
        "*.example.com",
        "a.example.com/app",
        true,
    ),
    (
        "glob_label_does_not_match_two_labels",
        "*.example.com",
        "a.b.example.com/app",
        false,
    ),
    (
        "glob_label_does_not_match_zero_labels",
        "*.example.com",
        "example.com/app",
        false,
    ),
    (
        "glob_inside_label_matches",
        "cr-*.example.com",
        "cr-eu1.example.com/app",
        true,
    ),
    (
        "glob_inside_label_needs_the_literal_part",
        "cr-*.example.com",
        "registry.example.com/app",
        false,
    ),
    (
        "glob_with_port_matches_same_port",
        "*.example.com:5000",
        "a.example.com:5000/app",
        true,
    ),
    (
        "glob_does_not_match_port",
        "*.example.com",
        "a.example.com:5000/app",
        false,
    ),
    (
        "two_globs_match_any_two_label_host",
        "*.*",
        "cr.yandex/app",
        true,
    ),
    (
        "path_prefix_matches_below_it",
        "cr.yandex/crp1",
        "cr.yandex/crp1/app",
        true,
    ),
    (
        "path_prefix_is_a_plain_string_prefix",
        "cr.yandex/crp1",
        "cr.yandex/crp12/app",
        true,
    ),
    (
        "trailing_slash_limits_prefix_to_whole_components",
        "cr.yandex/crp1/",
        "cr.yandex/crp12/app",
        false,
    ),
    (
        "trailing_slash_prefix_matches_below_it",
        "cr.yandex/crp1/",
        "cr.yandex/crp1/app",
        true,
    ),
    (
        "path_prefix_does_not_match_other_path",
        "cr.yandex/crp1",
        "cr.yandex/crp2/app",
        false,
    ),
    (
        "path_prefix_longer_than_repository_does_not_match",
        "cr.yandex/crp1/app/sub",
        "cr.yandex/crp1/app",
        false,
    ),
    (
        "path_prefix_with_port",
        "localhost:5000/team",
        "localhost:5000/team/app",
        true,
    ),
    ("docker_io_matches_bare_name", "docker.io", "nginx", true),
    (
        "docker_io_matches_user_repo",
        "docker.io",
        "bitnami/redis:7",
        true,
    ),
    (
        "docker_io_matches_index_docker_io_image",
        "docker.io",
        "index.docker.io/bitnami/redis",
        true,
    ),
    // kubelet never matches an index.docker.io key directly: Docker Hub images are named
    // docker.io/...; the key is the fallback (registries_table).
    (
        "index_docker_io_key_does_not_match_directly",
        "index.docker.io",
        "nginx:1.25",
        false,
    ),
    (
        "index_docker_io_with_port_matches_images_written_with_it",
        "index.docker.io:443",
        "index.docker.io:443/team/app",
        true,
    ),
    (
        "https_scheme_is_ignored",
        "https://cr.yandex",
        "cr.yandex/crp1/app",
        true,
    ),
    (
        "http_scheme_and_v2_prefix_are_ignored",
        "http://cr.yandex/v2/crp1",
        "cr.yandex/crp1/app",
        true,
    ),
    (
        "v1_prefix_is_ignored",
        "cr.yandex/v1/crp1/",
        "cr.yandex/crp12/app",
        false,
    ),
    (
        "trailing_slash_alone_is_the_host",
        "cr.yandex/",
        "cr.yandex/crp1/app",
        true,
    ),
    (
        "empty_port_is_no_port",
        "cr.yandex:",
        "cr.yandex/crp1/app",
        true,
    ),
    (
        "underscore_host_matches_the_image_written_with_it",
        "foo_bar.com",
        "foo_bar.com/app",
        true,
    ),
    (
        "glob_matches_underscore_host",
        "*.com",
        "foo_bar.com/app",
        true,
    ),
    (
        "glob_matches_underscore_label_with_digest",
        "*.example.com",
        "a_b.example.com/app@sha256:7cc4b5aefd1d0cadf8d97d4350462ba51c694ebca145b08d7d41b41acc8db5aa",
        true,
    ),
    (
        "single_glob_matches_ipv6_without_port_brackets_and_all",
        "*",
        "[::1]/app",
        true,
    ),
    (
        "ipv6_host_is_compared_as_text",
        "[::1]:5000",
        "[0:0::1]:5000/app",
        false,
    ),
    (
        "nothing_matches_a_bracketed_host_go_does_not_parse",
        "*:5000",
        "[1]:5000/app",
        false,
    ),
    (
        "docker_io_path_matches_implied_library",
        "docker.io/library",
        "nginx",
        true,
    ),
    (
        "docker_io_path_prefix_inside_library",
        "docker.io/library/ng",
        "nginx",
        true,
    ),
    (
        "docker_io_path_does_not_match_other_user",
        "docker.io/bitnami",
        "nginx",
        false,
    ),
    (
        "glob_subdomain_of_docker_io_does_not_match_docker_hub",
        "*.docker.io",
        "nginx",
        false,
    ),
    (
        "docker_io_does_not_match_other_registry",
        "docker.io",
        "quay.io/app",
        false,
    ),
    (
        "localhost_matches_localhost",
        "localhost",
        "localhost/app",
        true,
    ),
    (
        "localhost_with_port_matches",
        "localhost:5000",
        "localhost:5000/app",
        true,
    ),
    (
        "localhost_without_port_does_not_match_port",
        "localhost",
        "localhost:5000/app",
        false,
    ),
    (
        "ipv6_with_port_matches",
        "[::1]:5000",
        "[::1]:5000/app",
        true,
    ),
    (
        "ipv6_different_port_does_not_match",
        "[::1]:5000",
        "[::1]:5001/app",
        false,
    ),
    (
        "ipv6_other_address_does_not_match",
        "[::1]:5000",
        "[::2]:5000/app",
        false,
    ),
    (
        "ipv6_pattern_does_not_match_image_without_port",
        "[::1]:5000",
        "[::1]/app",
        false,
    ),
    (
        "single_glob_with_port_matches_ipv6_as_kubelet_does",
        "*:5000",
        "[::1]:5000/app",
        true,
    ),
    ("ipv4_matches", "10.0.0.1:5000", "10.0.0.1:5000/app", true),
    (
        "ipv4_glob_label",
        "10.0.0.*:5000",
        "10.0.0.7:5000/app",
        true,
    ),
    (
        "host_case_is_significant",
        "CR.yandex",
        "cr.yandex/app",
        false,
    ),
    (
        "host_case_matches_as_written",
        "CR.Yandex",
        "CR.Yandex/app",
        true,
    ),
    (
        "uppercase_single_label_registry_matches",
        "Registry",
        "Registry/app",
        true,
    ),
];

#[test]
fn match_table() {
    assert!(MATCH_CASES.len() >= 30);
    for &(name, pat, img, want) in MATCH_CASES {
        let p = pattern(pat);
        let i = image(img);
        assert_eq!(p.matches(&i), want, "{name}: {pat:?} vs {img:?}");
    }
}

/// (behaviour, pattern, expected variant, text the message must contain)
const PARSE_ERROR_CASES: &[(&str, &str, &str, &str)] = &[
    (
        "empty_pattern_is_refused",
        "",
        "Empty",
        "empty host pattern",
    ),
    (
        "space_in_host_is_ignored_by_kubelet",
        " cr.yandex",
        "Ignored",
        "invalid character \" \" in host name",
    ),
    (
        "control_character_is_ignored_by_kubelet",
        "cr.\tyandex",
        "Ignored",
        "invalid control character in URL",
    ),
    (
        "character_class_is_ignored_by_kubelet",
        "cr[0-9].example.com",
        "Ignored",
        "invalid IP-literal",
    ),
    (
        "named_port_is_ignored_by_kubelet",
        "cr.yandex:https",
        "Ignored",
        "invalid port \":https\" after host",
    ),
    (
        "second_colon_is_ignored_by_kubelet",
        "cr.yandex:443:1",
        "Ignored",
        "invalid port \":443:1\" after host",
    ),
    (
        "unclosed_bracket_is_ignored_by_kubelet",
        "[::1:5000",
        "Ignored",
        "missing ']' in host",
    ),
    (
        "bracketed_non_ipv6_is_ignored_by_kubelet",
        "[abc]:5000",
        "Ignored",
        "write \"abc:5000\"",
    ),
    (
        "bracketed_glob_is_ignored_by_kubelet",
        "[*]:5000",
        "Ignored",
        "for the host \"*\" write \"*:5000\"",
    ),
    (
        "bad_escape_is_ignored_by_kubelet",
        "cr.yandex/a%zz",
        "Ignored",
        "invalid URL escape \"%zz\"",
    ),
    (
        "empty_label_never_matches",
        "cr..yandex",
        "NeverMatches",
        "empty label",
    ),
    (
        "trailing_dot_never_matches",
        "cr.yandex.",
        "NeverMatches",
        "empty label",
    ),
    (
        "label_ending_in_dash_never_matches",
        "cr-.yandex",
        "NeverMatches",
        "starts or ends with '-'",
    ),
    (
        "question_mark_starts_a_query",
        "cr?.example.com",
        "NeverMatches",
        "cr/app is docker.io/cr/app",
    ),
    (
        "unicode_label_never_matches",
        "реестр.example.com",
        "NeverMatches",
        "contains 'р'",
    ),
    (
        "double_slash_path_never_matches",
        "cr.yandex//crp1",
        "NeverMatches",
        "path components are non-empty",
    ),
    (
        "inner_double_slash_path_never_matches",
        "cr.yandex/a//b",
        "NeverMatches",
        "\"/a//b\"",
    ),
    (
        "uppercase_path_never_matches",
        "cr.yandex/CRP1",
        "NeverMatches",
        "has 'C'",
    ),
    (
        "glob_in_path_never_matches",
        "cr.yandex/crp*",
        "NeverMatches",
        "has '*'",
    ),
    (
        "legacy_docker_hub_with_path_never_matches",
        "index.docker.io/library",
        "NeverMatches",
        "write \"docker.io/library\"",
    ),
    (
        "other_scheme_never_matches",
        "ftp://cr.yandex",
        "NeverMatches",
        "remove \"ftp://\"",
    ),
    (
        "single_lowercase_label_is_a_docker_hub_name",
        "registry",
        "NeverMatches",
        "registry/app is docker.io/registry/app",
    ),
    (
        "ipv6_zone_never_matches",
        "[fe80::1%25eth0]:5000",
        "NeverMatches",
        "cannot parse that back",
    ),
    (
        "ipv6_without_port_is_a_character_class",
        "[::1]",
        "CharacterClass",
        "add the port ([::1]:443)",
    ),
    (
        "user_info_is_dropped",
        "robot@cr.yandex",
        "ReadAs",
        "as \"cr.yandex\"",
    ),
    (
        "query_is_dropped",
        "cr.yandex/crp1?tag=1",
        "ReadAs",
        "write \"cr.yandex/crp1\"",
    ),
    (
        "fragment_is_dropped",
        "cr.yandex#x y",
        "ReadAs",
        "ignores everything from '#'",
    ),
    (
        "escapes_are_decoded",
        "cr.yandex/cr%70",
        "ReadAs",
        "as \"cr.yandex/crp\"",
    ),
];

fn variant(e: &PatternError) -> &'static str {
    match e {
        PatternError::Empty => "Empty",
        PatternError::Ignored { .. } => "Ignored",
        PatternError::NeverMatches { .. } => "NeverMatches",
        PatternError::CharacterClass { .. } => "CharacterClass",
        PatternError::ReadAs { .. } => "ReadAs",
    }
}

#[test]
fn parse_error_table() {
    for &(name, input, want, fragment) in PARSE_ERROR_CASES {
        let e = HostPattern::parse(input).expect_err(name);
        let message = e.to_string();
        assert_eq!(variant(&e), want, "{name}: {message}");
        assert!(
            message.contains(fragment),
            "{name}: {message:?} lacks {fragment:?}"
        );
        if !input.is_empty() {
            assert!(
                message.contains(&format!("{input:?}")),
                "{name}: {message:?} does not quote the pattern"
            );
        }
        assert!(
            message.starts_with(|c: char| !c.is_ascii_uppercase()),
            "{name}: {message}"
        );
    }
}

#[test]
fn a_refusal_says_what_kubelet_does_with_the_pattern() {
    let use_of = |s: &str| {
        HostPattern::parse(s)
            .expect_err(s)
            .kubelet_use()
            .to_owned_use()
    };
    assert_eq!(use_of("[abc]:5000"), "never");
    assert_eq!(use_of("cr.yandex/CRP1"), "never");
    assert_eq!(use_of("[::1]"), "one-character hosts");
    assert_eq!(use_of("robot@cr.yandex:443/crp1"), "as cr.yandex:443/crp1");
}

trait ToOwnedUse {
    fn to_owned_use(&self) -> String;
}

impl ToOwnedUse for KubeletUse<'_> {
    fn to_owned_use(&self) -> String {
        match self {
            KubeletUse::Never => "never".into(),
            KubeletUse::OneCharacterHosts => "one-character hosts".into(),
            KubeletUse::SameAs(p) => format!("as {p}"),
        }
    }
}

#[test]
fn valid_patterns_keep_their_text_as_the_auth_key() {
    for s in [
        "cr.yandex",
        "registry.yandexcloud.net",
        "cr.yandex:443",
        "*.example.com",
        "cr.yandex/crp1",
        "cr.yandex/crp1/",
        "localhost:5000/team/app",
        "[::1]:5000",
        "[2001:db8::1]:443/x",
        "index.docker.io",
        "docker.io/library",
        "cr.yandex/v2",
        "*",
        "https://cr.yandex",
        "http://cr.yandex/v2/crp1",
        "cr.yandex/",
        "cr.yandex:",
        "https://index.docker.io/v1/",
        "index.docker.io:443",
        "foo_bar.com",
        "CR.yandex",
    ] {
        let p = pattern(s);
        assert_eq!(p.auth_key(), s);
        assert_eq!(p.to_string(), s);
        assert_eq!(s.parse::<HostPattern>().as_ref(), Ok(&p));
    }
}

#[test]
fn pattern_parts_are_exposed() {
    let p = pattern("registry.example.com:5000/team/");
    assert_eq!(p.port(), Some("5000"));
    assert_eq!(p.path_prefix(), Some("team/"));
    let p = pattern("cr.yandex");
    assert_eq!((p.port(), p.path_prefix()), (None, None));
}

#[test]
fn kubelet_key_drops_scheme_version_prefix_and_trailing_slash() {
    for (raw, key, fallback) in [
        ("cr.yandex", "cr.yandex", false),
        ("https://cr.yandex/", "cr.yandex", false),
        ("cr.yandex/v2/crp1", "cr.yandex/crp1", false),
        ("cr.yandex/v2crp1", "cr.yandex/v2crp1", false),
        ("https://index.docker.io/v1/", "index.docker.io", true),
        ("index.docker.io/v2/", "index.docker.io", true),
        ("index.docker.io:443", "index.docker.io:443", false),
        ("[::1]:5000", "[::1]:5000", false),
    ] {
        let p = pattern(raw);
        assert_eq!(p.kubelet_key(), key, "{raw}");
        assert_eq!(p.is_docker_hub_fallback(), fallback, "{raw}");
        assert_eq!(p.auth_key(), raw);
    }
    assert_eq!(pattern("cr.yandex:").port(), None);
    assert_eq!(pattern("cr.yandex/v2/crp1/").path_prefix(), Some("crp1/"));
}

#[test]
fn host_pattern_deserialises_from_a_string_and_reports_bad_ones() {
    let hosts: Vec<HostPattern> =
        serde_json::from_str(r#"["cr.yandex", "*.example.com:5000"]"#).expect("valid");
    assert_eq!(hosts[1].auth_key(), "*.example.com:5000");
    let err = serde_json::from_str::<Vec<HostPattern>>(r#"["[abc]:5000"]"#).expect_err("not IPv6");
    assert!(
        err.to_string()
            .contains("\"[abc]:5000\" is not an auths key kubelet can use"),
        "{err}"
    );
    assert_eq!(
        serde_json::to_string(&hosts).expect("serialises"),
        r#"["cr.yandex","*.example.com:5000"]"#
    );
}

#[test]
fn glob_match_follows_filepath_match_for_star() {
    let cases = [
        ("*", "", true),
        ("*", "abc", true),
        ("a*", "a", true),
        ("a*c", "abbbc", true),
        ("a*c", "abbbd", false),
        ("*a*b*", "xaxxbx", true),
        ("*a*b*", "xbxxax", false),
        ("a**b", "ab", true),
        ("abc", "abc", true),
        ("abc", "abd", false),
        ("abc", "ab", false),
        ("ab", "abc", false),
        ("*-eu", "cr-eu", true),
        ("*-eu", "cr-us", false),
    ];
    for (p, t, want) in cases {
        assert_eq!(
            glob_match(p.as_bytes(), t.as_bytes()),
            want,
            "{p:?} vs {t:?}"
        );
    }
}

fn registries() -> Registries {
    let entry = |name: &str, secret: &str, hosts: &[&str]| {
        RegistryEntry::new(name, secret, hosts.iter().map(|h| pattern(h)).collect())
    };
    Registries::new(vec![
        entry(
            "yandex",
            "yc-secret",
            &["cr.yandex", "registry.yandexcloud.net"],
        ),
        entry("team", "team-secret", &["cr.yandex/crpteam/"]),
        entry(
            "corp",
            "corp-secret",
            &["*.corp.example.com", "*.corp.example.com:5000"],
        ),
        entry("hub", "hub-secret", &["docker.io"]),
        entry("hub-legacy", "hub-legacy-secret", &["index.docker.io"]),
        entry("local", "local-secret", &["localhost:5000", "[::1]:5000"]),
    ])
}

fn secrets_for(regs: &Registries, image: &str) -> Result<Vec<String>, ImageError> {
    Ok(regs
        .match_image(image)?
        .map(|e| e.secret_name().to_owned())
        .collect())
}

#[test]
fn registries_table() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "image_on_one_registry_gets_its_secret",
            "registry.yandexcloud.net/r1/app:1",
            &["yc-secret"],
        ),
        (
            "image_matching_two_entries_gets_both_in_config_order",
            "cr.yandex/crpteam/app",
            &["yc-secret", "team-secret"],
        ),
        (
            "sibling_path_gets_only_the_host_entry",
            "cr.yandex/crpteam2/app",
            &["yc-secret"],
        ),
        (
            "entry_with_several_patterns_matches_once",
            "a.corp.example.com:5000/app",
            &["corp-secret"],
        ),
        (
            "docker_hub_image_gets_the_docker_io_entry_not_the_fallback",
            "nginx",
            &["hub-secret"],
        ),
        (
            "ipv6_image_gets_local_secret",
            "[::1]:5000/app",
            &["local-secret"],
        ),
        (
            "single_label_host_gets_the_docker_hub_fallback_as_in_kubelet",
            "localhost/app",
            &["hub-legacy-secret"],
        ),
        (
            "uppercase_single_label_host_gets_the_fallback_too",
            "Registry/app",
            &["hub-legacy-secret"],
        ),
        (
            "host_with_a_port_gets_no_fallback",
            "localhost:5001/app",
            &[],
        ),
        ("unconfigured_registry_gets_nothing", "quay.io/org/app", &[]),
    ];
    let regs = registries();
    for &(name, img, want) in cases {
        let got = secrets_for(&regs, img).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn docker_hub_fallback_applies_when_no_other_key_matches() {
    let hub_legacy = || {
        RegistryEntry::new(
            "legacy",
            "legacy",
            vec![pattern("https://index.docker.io/v1/")],
        )
    };
    let only_fallback = Registries::new(vec![hub_legacy()]);
    for (img, want) in [
        ("nginx", true),
        ("docker.io/library/nginx", true),
        ("index.docker.io/team/app", true),
        ("localhost/app", true),
        ("Registry/app", true),
        ("registry-1.docker.io/library/nginx", false),
        ("localhost:5000/app", false),
        ("[::1]/app", false),
        ("foo_bar.com/app", false),
    ] {
        let got = secrets_for(&only_fallback, img).unwrap_or_else(|e| panic!("{img}: {e}"));
        assert_eq!(got == ["legacy"], want, "{img}");
    }
    // Any direct match, of any entry, takes the fallback away.
    let with_glob = Registries::new(vec![
        hub_legacy(),
        RegistryEntry::new("glob", "glob", vec![pattern("*.io")]),
    ]);
    assert_eq!(secrets_for(&with_glob, "nginx").unwrap(), ["glob"]);
    assert_eq!(
        secrets_for(&with_glob, "localhost/app").unwrap(),
        ["legacy"]
    );
    // An entry with both keys matches once.
    let both = Registries::new(vec![RegistryEntry::new(
        "hub",
        "hub",
        vec![pattern("docker.io"), pattern("index.docker.io")],
    )]);
    assert_eq!(secrets_for(&both, "nginx").unwrap(), ["hub"]);
    assert_eq!(secrets_for(&both, "localhost/app").unwrap(), ["hub"]);
}

#[test]
fn docker_config_keys_must_be_the_hosts_as_kubelet_reads_them() {
    let hosts = |list: &[&str]| list.iter().map(|h| pattern(h)).collect::<Vec<_>>();
    let check = |h: &[&str], keys: &[&str]| check_auths_keys(&hosts(h), keys.iter().copied());
    assert_eq!(check(&["ghcr.io"], &["ghcr.io"]), Ok(()));
    assert_eq!(
        check(
            &["index.docker.io", "ghcr.io"],
            &["https://index.docker.io/v1/", "https://ghcr.io"]
        ),
        Ok(())
    );
    // Keys kubelet never uses need not be hosts.
    assert_eq!(
        check(&["ghcr.io"], &["ghcr.io", "[abc]:5000", "cr.yandex/CRP"]),
        Ok(())
    );
    // A key kubelet reads as another one counts as that one.
    assert_eq!(check(&["ghcr.io"], &["robot@ghcr.io"]), Ok(()));

    let e = check(&["ghcr.io/org/"], &["ghcr.io"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("add the key \"ghcr.io\" to hosts"), "{e}");
    assert!(
        e.contains("hosts[0] \"ghcr.io/org/\" is not a key of the file"),
        "{e}"
    );
    let e = check(&["ghcr.io"], &["ghcr.io", "[::1]"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("the key \"[::1]\" cannot be a host: kubelet would use"),
        "{e}"
    );
}

#[test]
fn invalid_image_matches_nothing_and_says_why() {
    let regs = registries();
    for bad in [
        "",
        "cr.yandex/App",
        "cr.yandex//app",
        "nginx:",
        " cr.yandex/app",
    ] {
        let err = regs.match_image(bad).map(|m| m.count()).expect_err(bad);
        if !bad.is_empty() {
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }
}

#[test]
fn matching_takes_an_already_parsed_image() {
    let regs = registries();
    let img = image("cr.yandex/crpteam/app:1");
    let matches = regs.matching(img);
    assert_eq!(matches.image().registry(), "cr.yandex");
    let names: Vec<&str> = matches.map(RegistryEntry::name).collect();
    assert_eq!(names, ["yandex", "team"]);
}

#[test]
fn empty_registries_match_nothing() {
    let regs = Registries::default();
    assert_eq!(
        regs.match_image("cr.yandex/app").map(Iterator::count),
        Ok(0)
    );
}

#[test]
fn entry_accessors_return_what_was_given() {
    let e = RegistryEntry::new("yandex".to_owned(), "yc", vec![pattern("cr.yandex")]);
    assert_eq!(e.name(), "yandex");
    assert_eq!(e.secret_name(), "yc");
    assert_eq!(e.hosts(), &[pattern("cr.yandex")]);
    assert!(e.matches(&image("cr.yandex/a")));
}

proptest! {
    #[test]
    fn parse_never_panics_on_any_string(s in ".*") {
        let _ = HostPattern::parse(&s);
    }

    #[test]
    fn parse_never_panics_on_pattern_like_strings(s in "[a-zA-Z0-9.:/*?\\[\\]_-]{0,30}") {
        if let Ok(p) = HostPattern::parse(&s) {
            prop_assert_eq!(p.auth_key(), s.as_str());
            // And matching never panics either.
            for img in ["nginx", "cr.yandex/a", "[::1]:5000/a", "localhost/a", "a.b.c:1/x/y"] {
                let _ = p.matches(&image(img));
            }
        }
    }

    #[test]
    fn an_images_own_registry_matches_it(
        host in "[a-z0-9]{1,5}(\\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,4}[a-zA-Z0-9])?){1,3}",
        port in prop::option::of("[0-9]{1,5}"),
        path in "[a-z0-9]{1,6}(/[a-z0-9]{1,6}){0,2}",
    ) {
        let registry = match &port {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        let img = format!("{registry}/{path}");
        let img = image(&img);
        prop_assume!(img.registry() != "docker.io");
        prop_assume!(!path.starts_with("v1/") && !path.starts_with("v2/"));
        prop_assert!(pattern(&registry).matches(&img));
        let with_path = format!("{registry}/{path}");
        prop_assert!(pattern(&with_path).matches(&img));
        let glob = format!("*{}", &registry[registry.find('.').unwrap_or(registry.len())..]);
        prop_assert!(pattern(&glob).matches(&img));
    }
}

/// How kubelet's Add and Lookup read keys, through the parts of Go's URL parsing that matter
/// (each case also runs against kubelet's own code in tests/kubelet_oracle.rs).
#[test]
fn keys_are_read_as_go_parses_them() {
    use super::kubelet::{Reading, read};
    let glob = |key: &[u8], host: &[u8], port: &[u8], path: &[u8]| Reading::Glob {
        key: key.to_vec(),
        glob: super::kubelet::Glob {
            host: host.to_vec(),
            port: port.to_vec(),
            path: path.to_vec(),
        },
    };
    let cases: &[(&str, Reading)] = &[
        (
            "https://index.docker.io/v1/",
            glob(b"index.docker.io", b"index.docker.io", b"", b""),
        ),
        ("[::1]:5000", glob(b"[::1]:5000", b"::1", b"5000", b"")),
        ("[::1]", glob(b"[::1]", b"[::1]", b"", b"")),
        (
            "[::ffff:1.2.3.4]:1",
            glob(b"[::ffff:1.2.3.4]:1", b"::ffff:1.2.3.4", b"1", b""),
        ),
        (
            "u:p@cr.yandex/crp?x#y",
            glob(b"cr.yandex/crp", b"cr.yandex", b"", b"/crp"),
        ),
        (
            "cr.yandex/a%2Fb",
            glob(b"cr.yandex/a/b", b"cr.yandex", b"", b"/a/b"),
        ),
        (
            "cr.yandex:/v2/",
            glob(b"cr.yandex:", b"cr.yandex", b"", b""),
        ),
        (
            "c%C3%A9.io",
            glob("cé.io".as_bytes(), "cé.io".as_bytes(), b"", b""),
        ),
        (
            "cr.yandex/v2",
            glob(b"cr.yandex/v2", b"cr.yandex", b"", b"/v2"),
        ),
    ];
    for (key, want) in cases {
        assert_eq!(&read(key), want, "{key}");
    }
    for ignored in [
        "cr.yandex:443:1",
        "[abc]:5000",
        "[1.2.3.4]:1",
        "[::1%25]:1",
        "c%41.io",
        "cr.yandex/%zz",
        "cr yandex",
        "a[b].io",
        "u\\@cr.yandex",
    ] {
        assert!(
            matches!(read(ignored), Reading::Ignored(_)),
            "{ignored}: {:?}",
            read(ignored)
        );
    }
    for unparsable in ["[fe80::1%25eth0]:5000", "cr.yandex/%25zz"] {
        assert!(
            matches!(read(unparsable), Reading::Unparsable { .. }),
            "{unparsable}: {:?}",
            read(unparsable)
        );
    }
}
