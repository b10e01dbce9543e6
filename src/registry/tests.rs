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
    (
        "index_docker_io_matches_bare_name",
        "index.docker.io",
        "nginx:1.25",
        true,
    ),
    (
        "index_docker_io_matches_explicit_docker_io",
        "index.docker.io",
        "docker.io/bitnami/redis",
        true,
    ),
    (
        "index_docker_io_does_not_match_other_registries",
        "index.docker.io",
        "cr.yandex/app",
        false,
    ),
    (
        "index_docker_io_does_not_match_localhost",
        "index.docker.io",
        "localhost/app",
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
        "https_scheme_is_refused",
        "https://cr.yandex",
        "Scheme",
        "\"https://cr.yandex\" is not a host pattern",
    ),
    (
        "http_scheme_with_path_is_refused",
        "http://cr.yandex/v2/",
        "Scheme",
        "\"http\"",
    ),
    (
        "leading_space_is_refused",
        " cr.yandex",
        "Whitespace",
        "\" cr.yandex\"",
    ),
    (
        "inner_tab_is_refused",
        "cr.\tyandex",
        "Whitespace",
        "\"cr.\\tyandex\"",
    ),
    (
        "empty_label_is_refused",
        "cr..yandex",
        "InvalidLabel",
        "\"cr..yandex\"",
    ),
    (
        "trailing_dot_is_refused",
        "cr.yandex.",
        "InvalidLabel",
        "\"cr.yandex.\"",
    ),
    (
        "leading_dot_is_refused",
        ".cr.yandex",
        "InvalidLabel",
        "\".cr.yandex\"",
    ),
    (
        "underscore_label_is_refused",
        "my_reg.example.com",
        "InvalidLabel",
        "\"my_reg\"",
    ),
    (
        "label_ending_in_dash_is_refused",
        "cr-.yandex",
        "InvalidLabel",
        "\"cr-\"",
    ),
    (
        "question_mark_glob_is_refused",
        "cr?.example.com",
        "InvalidLabel",
        "\"cr?\"",
    ),
    (
        "character_class_glob_is_refused",
        "cr[0-9].example.com",
        "InvalidLabel",
        "\"cr[0-9]\"",
    ),
    (
        "unicode_label_is_refused",
        "реестр.example.com",
        "InvalidLabel",
        "\"реестр\"",
    ),
    (
        "empty_port_is_refused",
        "cr.yandex:",
        "InvalidPort",
        "\"cr.yandex:\"",
    ),
    (
        "named_port_is_refused",
        "cr.yandex:https",
        "InvalidPort",
        "\"https\"",
    ),
    (
        "second_colon_is_refused",
        "cr.yandex:443:1",
        "InvalidPort",
        "\"443:1\"",
    ),
    (
        "ipv6_without_port_is_refused",
        "[::1]",
        "InvalidIpv6",
        "add the port",
    ),
    (
        "unclosed_ipv6_is_refused",
        "[::1:5000",
        "InvalidIpv6",
        "\"[::1:5000\"",
    ),
    (
        "ipv6_glob_is_refused",
        "[*]:5000",
        "InvalidIpv6",
        "\"[*]:5000\"",
    ),
    (
        "empty_path_is_refused",
        "cr.yandex/",
        "InvalidPath",
        "\"cr.yandex/\"",
    ),
    (
        "double_slash_path_is_refused",
        "cr.yandex//crp1",
        "InvalidPath",
        "\"/crp1\"",
    ),
    (
        "inner_double_slash_path_is_refused",
        "cr.yandex/a//b",
        "InvalidPath",
        "\"a//b\"",
    ),
    (
        "uppercase_path_is_refused",
        "cr.yandex/CRP1",
        "InvalidPath",
        "\"CRP1\"",
    ),
    (
        "glob_in_path_is_refused",
        "cr.yandex/crp*",
        "InvalidPath",
        "\"crp*\"",
    ),
    (
        "v2_path_is_refused",
        "cr.yandex/v2/crp1",
        "InvalidPath",
        "\"v2/crp1\"",
    ),
    (
        "v1_root_path_is_refused",
        "index.docker.io/v1/",
        "InvalidPath",
        "\"v1/\"",
    ),
    (
        "legacy_docker_hub_with_path_is_refused",
        "index.docker.io/library",
        "LegacyDockerHub",
        "write docker.io",
    ),
    (
        "legacy_docker_hub_with_port_is_refused",
        "index.docker.io:443",
        "LegacyDockerHub",
        "\"index.docker.io:443\"",
    ),
];

fn variant(e: &PatternError) -> &'static str {
    match e {
        PatternError::Empty => "Empty",
        PatternError::Whitespace { .. } => "Whitespace",
        PatternError::Scheme { .. } => "Scheme",
        PatternError::InvalidLabel { .. } => "InvalidLabel",
        PatternError::InvalidIpv6 { .. } => "InvalidIpv6",
        PatternError::InvalidPort { .. } => "InvalidPort",
        PatternError::InvalidPath { .. } => "InvalidPath",
        PatternError::LegacyDockerHub { .. } => "LegacyDockerHub",
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
fn host_pattern_deserialises_from_a_string_and_reports_bad_ones() {
    let hosts: Vec<HostPattern> =
        serde_json::from_str(r#"["cr.yandex", "*.example.com:5000"]"#).expect("valid");
    assert_eq!(hosts[1].auth_key(), "*.example.com:5000");
    let err = serde_json::from_str::<Vec<HostPattern>>(r#"["https://cr.yandex"]"#)
        .expect_err("scheme");
    assert!(
        err.to_string()
            .contains("\"https://cr.yandex\" is not a host pattern"),
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
            "docker_hub_image_gets_both_docker_hub_entries",
            "nginx",
            &["hub-secret", "hub-legacy-secret"],
        ),
        (
            "ipv6_image_gets_local_secret",
            "[::1]:5000/app",
            &["local-secret"],
        ),
        ("localhost_without_port_gets_nothing", "localhost/app", &[]),
        ("unconfigured_registry_gets_nothing", "quay.io/org/app", &[]),
    ];
    let regs = registries();
    for &(name, img, want) in cases {
        let got = secrets_for(&regs, img).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got, want, "{name}");
    }
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
