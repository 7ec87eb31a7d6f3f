use super::raw::SECTIONS;
use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn in_cluster() -> Vec<(String, String)> {
    env(&[
        ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
        ("KUBERNETES_SERVICE_PORT", "443"),
    ])
}

fn problems(text: &str, vars: Vec<(String, String)>) -> Vec<String> {
    match from_str(text, vars) {
        Err(ConfigError::Invalid(p)) => p,
        other => panic!("expected problems, got {other:?}"),
    }
}

const DIRECT: &str = r#"
    [upstream]
    url = "https://127.0.0.1:6443"
    ca_file = "/tmp/ca.crt"
    token_file = "/tmp/token"
"#;

#[test]
fn an_empty_file_in_a_pod_gives_the_documented_defaults() {
    let c = from_str("", in_cluster()).unwrap();
    assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(c.shutdown.delay, Duration::from_secs(5));
    assert_eq!(c.shutdown.grace, Duration::from_secs(20));
    assert_eq!(
        c.upstream.source,
        UpstreamSource::Direct {
            url: Url::parse("https://10.96.0.1:443").unwrap(),
            ca_file: Some(PathBuf::from(
                "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
            )),
            token_file: Some(PathBuf::from(
                "/var/run/secrets/kubernetes.io/serviceaccount/token"
            )),
        }
    );
    assert_eq!(c.upstream.timeout, Duration::from_secs(5));
    assert_eq!(c.upstream.max_in_flight, 64);
    assert_eq!(c.policy.audiences, vec!["tokengate".to_string()]);
    assert_eq!(c.policy.issuers, vec![DEFAULT_ISSUER.to_string()]);
    assert_eq!(c.policy.api_audiences, c.policy.issuers);
    assert!(!c.policy.allow_legacy_tokens);
    assert_eq!(c.cache.max_entries, 1_000_000);
    assert_eq!(c.cache.negative_ttl, Duration::from_secs(10));
    assert_eq!(c.cache.max_ttl, Duration::from_secs(120));
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("review_callers is empty"))
    );
}

#[test]
fn ipv6_service_address_is_bracketed() {
    let vars = env(&[
        ("KUBERNETES_SERVICE_HOST", "fd00::1"),
        ("KUBERNETES_SERVICE_PORT", "443"),
    ]);
    let c = from_str("", vars).unwrap();
    let UpstreamSource::Direct { url, .. } = c.upstream.source else {
        panic!()
    };
    assert_eq!(url.as_str(), "https://[fd00::1]/"); // 443 is https's default port
}

#[test]
fn outside_a_cluster_the_upstream_must_be_named() {
    let p = problems("", Vec::new());
    assert!(p[0].contains("KUBERNETES_SERVICE_HOST is not set"), "{p:?}");
}

#[test]
fn every_unknown_key_is_reported_at_once() {
    let p = problems(
        "lisen = \"x\"\n[policy]\naudience = [\"v\"]\n[cache]\nmax_tll = \"1m\"\n[tls2]\n",
        in_cluster(),
    );
    for key in ["`lisen`", "`policy.audience`", "`cache.max_tll`", "`tls2`"] {
        assert!(
            p.iter().any(|m| m.contains(key)),
            "{key} missing from {p:?}"
        );
    }
}

#[test]
fn every_bad_value_is_reported_at_once_with_its_fix() {
    let p = problems(
        r#"
        listen = "8080"
        [upstream]
        url = "ftp://x"
        timeout = "5 parsecs"
        max_in_flight = 0
        [policy]
        audiences = []
        [cache]
        max_entries = -1
        max_ttl = "forever"
        [access]
        review_callers = ["group:"]
        "#,
        Vec::new(),
    );
    for needle in [
        "`listen` = \"8080\" is not an address",
        "`upstream.url` = \"ftp://x\"",
        "`upstream.timeout` = \"5 parsecs\" is not a duration",
        "`upstream.max_in_flight` = 0 must be a positive",
        "`policy.audiences` is empty",
        "`cache.max_entries` = -1",
        "`cache.max_ttl` = \"forever\"",
        "\"group:\" with no group name",
    ] {
        assert!(
            p.iter().any(|m| m.contains(needle)),
            "{needle} missing from {p:#?}"
        );
    }
    let shown = ConfigError::Invalid(p).to_string();
    assert!(
        shown.starts_with("8 problems in the configuration:\n  - "),
        "{shown}"
    );
}

#[test]
fn a_value_of_the_wrong_type_names_its_key() {
    let err = from_str("[cache]\nmax_entries = \"many\"\n", in_cluster()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("`cache.max_entries`: invalid type"),
        "{err}"
    );
    let err = from_str("listen = [", in_cluster()).unwrap_err();
    assert!(matches!(err, ConfigError::Syntax(_)));
}

#[test]
fn environment_overrides_the_file() {
    let vars = env(&[
        ("TOKENGATE_LISTEN", "127.0.0.1:9090"),
        ("TOKENGATE_CACHE_MAX_TTL", "5m"),
        ("TOKENGATE_UPSTREAM_MAX_IN_FLIGHT", "8"),
        ("TOKENGATE_POLICY_AUDIENCES", "vault, api"),
        ("TOKENGATE_POLICY_ALLOW_LEGACY_TOKENS", "true"),
        ("TOKENGATE_ACCESS_REVIEW_CALLERS", r#"["u1", "group:g1"]"#),
        ("PATH", "/usr/bin"),
    ]);
    let c = from_str(&format!("{DIRECT}\n[cache]\nmax_ttl = \"1m\"\n"), vars).unwrap();
    assert_eq!(c.listen, "127.0.0.1:9090".parse().unwrap());
    assert_eq!(c.cache.max_ttl, Duration::from_secs(300));
    assert_eq!(c.upstream.max_in_flight, 8);
    assert_eq!(
        c.policy.audiences,
        vec!["vault".to_string(), "api".to_string()]
    );
    assert!(c.policy.allow_legacy_tokens);
    assert!(c.access.allows("u1", [].into_iter()));
    assert!(c.access.allows("someone", ["g1"].into_iter()));
    assert!(!c.access.allows("someone", ["g2"].into_iter()));
}

#[test]
fn command_line_variables_and_kubernetes_service_links_are_not_overrides() {
    let vars = env(&[
        ("TOKENGATE_CONFIG", "/etc/tokengate/tokengate.toml"),
        ("TOKENGATE_LOG_FORMAT", "json"),
        ("TOKENGATE_SERVICE_HOST", "10.96.12.7"),
        ("TOKENGATE_SERVICE_PORT", "8080"),
        ("TOKENGATE_SERVICE_PORT_HTTP", "8080"),
        ("TOKENGATE_PORT", "tcp://10.96.12.7:8080"),
        ("TOKENGATE_PORT_8080_TCP_ADDR", "10.96.12.7"),
    ]);
    assert!(from_str(DIRECT, vars).is_ok());
}

#[test]
fn unknown_environment_overrides_are_refused_by_name() {
    let p = problems(
        DIRECT,
        env(&[("TOKENGATE_CACHE_MAXTTL", "5m"), ("TOKENGATE_", "x")]),
    );
    assert!(
        p.iter()
            .any(|m| m.contains("TOKENGATE_CACHE_MAXTTL sets unknown key `cache.maxttl`")),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|m| m.contains("TOKENGATE_ names no configuration key")),
        "{p:?}"
    );
}

#[test]
fn https_upstream_needs_a_ca_and_url_excludes_kubeconfig() {
    let p = problems("[upstream]\nurl = \"https://10.0.0.1:6443\"\n", Vec::new());
    assert!(p[0].contains("`upstream.ca_file` is required"), "{p:?}");
    let p = problems(
        "[upstream]\nurl = \"https://10.0.0.1:6443\"\nkubeconfig = \"/k\"\n",
        Vec::new(),
    );
    assert!(p[0].contains("both set"), "{p:?}");
}

#[test]
fn plain_http_upstream_and_api_audience_overlap_are_warned_about() {
    let c = from_str(
        "[upstream]\nurl = \"http://127.0.0.1:8001\"\ntoken_file = \"/t\"\n[policy]\naudiences = [\"https://kubernetes.default.svc.cluster.local\"]\n",
        Vec::new(),
    )
    .unwrap();
    assert!(c.warnings.iter().any(|w| w.contains("plain http")));
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("API server's own audiences"))
    );
}

#[test]
fn access_mode_is_allowlist_or_subjectaccessreview() {
    let c = from_str(
        "[access]\nmode = \"subjectaccessreview\"\nsar_ttl = \"30s\"\n",
        in_cluster(),
    )
    .unwrap();
    assert_eq!(c.access.mode, AccessMode::SubjectAccessReview);
    assert_eq!(c.access.sar_ttl, Duration::from_secs(30));
    assert!(
        !c.warnings
            .iter()
            .any(|w| w.contains("review_callers is empty"))
    );
    let p = problems("[access]\nmode = \"rbac\"\n", in_cluster());
    assert!(p[0].contains("`access.mode` = \"rbac\""), "{p:?}");
}

#[test]
fn signature_checks_default_to_discovery_and_take_one_source() {
    let c = from_str("", in_cluster()).unwrap();
    assert_eq!(
        c.verify,
        Some(Verify {
            source: KeySource::Discovery,
            unknown_kid: UnknownKid::Reject
        })
    );
    let c = from_str(
        "[verify]\nkey_files = [\"/sa.pub\"]\nunknown_kid = \"forward\"\n",
        in_cluster(),
    )
    .unwrap();
    assert_eq!(
        c.verify,
        Some(Verify {
            source: KeySource::PemFiles(vec!["/sa.pub".into()]),
            unknown_kid: UnknownKid::Forward
        })
    );
    assert_eq!(
        from_str("[verify]\njwks = \"off\"\n", in_cluster())
            .unwrap()
            .verify,
        None
    );
    let p = problems(
        "[verify]\njwks = \"off\"\n[policy]\non_upstream_unavailable = \"verify-offline\"\n",
        in_cluster(),
    );
    assert!(p[0].contains("needs signature checks"), "{p:?}");
    let p = problems(
        "[verify]\njwks_file = \"/j\"\nkey_files = [\"/k\"]\n",
        in_cluster(),
    );
    assert!(p[0].contains("keep one"), "{p:?}");
}

#[test]
fn every_section_can_be_overridden_from_the_environment() {
    let vars = env(&[
        ("TOKENGATE_REVOCATION_WATCH", "true"),
        ("TOKENGATE_VERIFY_UNKNOWN_KID", "forward"),
        ("TOKENGATE_AUTH_NAMESPACES", "apps"),
        ("TOKENGATE_TLS_CERT_FILE", "/c.pem"),
        ("TOKENGATE_TLS_KEY_FILE", "/k.pem"),
    ]);
    let c = from_str(DIRECT, vars).unwrap();
    assert!(c.revocation.watch && !c.revocation.secrets);
    assert_eq!(c.verify.unwrap().unknown_kid, UnknownKid::Forward);
    assert!(c.auth.namespaces.contains("apps"));
    assert!(c.tls.is_some());
    for section in SECTIONS {
        assert!(DIRECT.contains(section) || !section.is_empty());
    }
}

#[test]
fn tls_needs_both_files() {
    let c = from_str(
        "[tls]\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\n",
        in_cluster(),
    )
    .unwrap();
    assert_eq!(
        c.tls,
        Some(Tls {
            cert_file: "/c.pem".into(),
            key_file: "/k.pem".into()
        })
    );
    let p = problems("[tls]\ncert_file = \"/c.pem\"\n", in_cluster());
    assert!(p[0].contains("needs both"), "{p:?}");
}

#[test]
fn kubeconfig_source_is_taken_with_its_context() {
    let c = from_str(
        "[upstream]\nkubeconfig = \"/home/me/.kube/config\"\ncontext = \"prod\"\n",
        Vec::new(),
    )
    .unwrap();
    assert_eq!(
        c.upstream.source,
        UpstreamSource::Kubeconfig {
            path: "/home/me/.kube/config".into(),
            context: Some("prod".into())
        }
    );
}

#[test]
fn example_configs_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            load(Some(&path), in_cluster()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(
        seen >= 2,
        "expected the example configs in {}",
        dir.display()
    );
}

#[test]
fn a_missing_file_is_named() {
    let err = load(Some(Path::new("/nonexistent/tokengate.toml")), Vec::new()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot read config file /nonexistent/tokengate.toml"
    );
}
