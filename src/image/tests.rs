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
            "sha384_digest",
            format!("example.com/app@sha384:{}", "ab".repeat(48)),
            ok_digest(
                "example.com",
                "app",
                None,
                &format!("sha384:{}", "ab".repeat(48)),
            ),
        ),
        (
            "algorithm_go_digest_does_not_know_is_rejected_as_kubelet_does",
            format!(
                "example.com/app@multihash+base58:{}",
                "ABCDEF0123456789".repeat(2)
            ),
            Want::Err("InvalidDigest"),
        ),
        (
            "uppercase_sha256_algorithm_is_rejected",
            format!("nginx@SHA256:{}", &SHA256[7..]),
            Want::Err("InvalidDigest"),
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
            "underscore_host_is_a_name_without_domain_read_as_kubelet_does",
            "foo_bar.com/app".into(),
            ok("foo_bar.com", "app", None),
        ),
        (
            "underscore_host_with_digest",
            format!("a_b.example.com/team/app@{SHA256}"),
            ok_digest("a_b.example.com", "team/app", None, SHA256),
        ),
        (
            "underscore_host_with_port_is_rejected",
            "foo_bar.com:5000/app".into(),
            Want::Err("InvalidDomain"),
        ),
        (
            "uppercase_underscore_host_is_rejected",
            "Foo_bar.com/app".into(),
            Want::Err("InvalidDomain"),
        ),
        (
            "name_without_domain_counts_the_host_in_its_length",
            format!("foo_bar.com/{}", "a".repeat(244)),
            Want::Err("PathTooLong"),
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
        "sha384:[0-9a-f]{96}",
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
