//! Raw values into a [`Config`]: one function per section, every problem collected and
//! reported at once, each naming the key and the fix.

use std::net::SocketAddr;
use std::time::Duration;

use url::Url;

use super::raw::{
    InClusterEnv, Raw, RawAccess, RawAuth, RawCache, RawPolicy, RawRevocation, RawTls, RawUpstream,
    RawVerify,
};
use super::*;

/// The configuration `raw` describes, or every problem with it (`problems` are those
/// found while reading it).
pub(super) fn config(
    raw: Raw,
    env: &InClusterEnv,
    problems: Vec<String>,
) -> Result<Config, ConfigError> {
    let mut c = Check { problems };
    let mut warnings = Vec::new();
    let (listen, shutdown, limits) = server(&mut c, &raw);
    let upstream = upstream(&mut c, &mut warnings, env, raw.upstream.unwrap_or_default());
    let policy = policy(&mut c, &mut warnings, raw.policy);
    let cache = cache(&mut c, raw.cache);
    let access = access(&mut c, &mut warnings, raw.access);
    let auth = auth(raw.auth);
    let verify = verify(&mut c, raw.verify);
    if policy.on_upstream_unavailable == OnUnavailable::VerifyOffline && verify.is_none() {
        c.problems.push("`policy.on_upstream_unavailable` = \"verify-offline\" needs signature checks: set [verify] (jwks = \"discovery\", jwks_file or key_files)".into());
    }
    let tls = tls(&mut c, raw.tls);
    if !c.problems.is_empty() {
        return Err(ConfigError::Invalid(c.problems));
    }
    Ok(Config {
        listen,
        shutdown,
        limits,
        upstream,
        policy,
        cache,
        access,
        auth,
        verify,
        revocation: revocation(raw.revocation),
        tls,
        warnings,
    })
}

/// Collects problems while turning raw values into real ones.
struct Check {
    problems: Vec<String>,
}

impl Check {
    fn duration(&mut self, key: &str, value: Option<&str>, default: Duration) -> Duration {
        let Some(v) = value else { return default };
        match humantime::parse_duration(v) {
            Ok(d) => d,
            Err(e) => {
                self.problems.push(format!(
                    "`{key}` = {v:?} is not a duration ({e}); write it like \"90s\", \"5m\" or \"1h\""
                ));
                default
            }
        }
    }

    fn positive(&mut self, key: &str, value: Option<i64>, default: u64) -> u64 {
        match value {
            None => default,
            Some(v) if v > 0 => v.unsigned_abs(),
            Some(v) => {
                self.problems
                    .push(format!("`{key}` = {v} must be a positive whole number"));
                default
            }
        }
    }

    fn audiences(&mut self, key: &str, list: Vec<String>) -> Vec<String> {
        if list.iter().any(|a| a.trim().is_empty()) {
            self.problems
                .push(format!("`{key}` has an empty audience; remove it"));
        }
        list
    }
}

/// The top-level keys: where to listen, how to shut down, the connection limits.
fn server(c: &mut Check, raw: &Raw) -> (SocketAddr, Shutdown, Limits) {
    let listen_text = raw.listen.as_deref().unwrap_or("0.0.0.0:8080");
    let listen = listen_text.parse().unwrap_or_else(|_| {
        c.problems.push(format!(
            "`listen` = {listen_text:?} is not an address; write it like \"0.0.0.0:8080\" or \"[::]:8080\""
        ));
        SocketAddr::from(([0, 0, 0, 0], 8080))
    });
    let shutdown = Shutdown {
        delay: c.duration(
            "shutdown_delay",
            raw.shutdown_delay.as_deref(),
            Duration::from_secs(5),
        ),
        grace: c.duration(
            "shutdown_grace",
            raw.shutdown_grace.as_deref(),
            Duration::from_secs(20),
        ),
    };
    let limits = Limits {
        max_connections: usize::try_from(c.positive(
            "max_connections",
            raw.max_connections,
            10_000,
        ))
        .unwrap_or(usize::MAX),
        header_read_timeout: c.duration(
            "header_read_timeout",
            raw.header_read_timeout.as_deref(),
            Duration::from_secs(10),
        ),
    };
    if limits.header_read_timeout.is_zero() {
        c.problems
            .push("`header_read_timeout` must be longer than 0s; the default is \"10s\"".into());
    }
    (listen, shutdown, limits)
}

/// `[upstream]`.
fn upstream(
    c: &mut Check,
    warnings: &mut Vec<String>,
    env: &InClusterEnv,
    raw: RawUpstream,
) -> Upstream {
    let source = upstream_source(c, warnings, env, &raw);
    let upstream = Upstream {
        source,
        timeout: c.duration(
            "upstream.timeout",
            raw.timeout.as_deref(),
            Duration::from_secs(5),
        ),
        max_in_flight: usize::try_from(c.positive("upstream.max_in_flight", raw.max_in_flight, 64))
            .unwrap_or(usize::MAX),
    };
    if upstream.timeout.is_zero() {
        c.problems
            .push("`upstream.timeout` must be longer than 0s; the default is \"5s\"".into());
    }
    upstream
}

/// `[policy]`.
fn policy(c: &mut Check, warnings: &mut Vec<String>, p: RawPolicy) -> Policy {
    let issuers = p.issuers.unwrap_or_else(|| vec![DEFAULT_ISSUER.into()]);
    let audiences = c.audiences(
        "policy.audiences",
        p.audiences.unwrap_or_else(|| vec!["tokengate".into()]),
    );
    if audiences.is_empty() {
        c.problems.push(
            "`policy.audiences` is empty; name the audience(s) this gate guards, e.g. [\"vault\"]"
                .into(),
        );
    }
    let api_audiences = c.audiences(
        "policy.api_audiences",
        p.api_audiences.unwrap_or_else(|| issuers.clone()),
    );
    if api_audiences.is_empty() {
        c.problems.push("`policy.api_audiences` is empty (and `policy.issuers` gives no default): name the API server's --api-audiences, which callers' own tokens are checked against".into());
    }
    if let Some(a) = audiences.iter().find(|a| api_audiences.contains(a)) {
        warnings.push(format!(
            "policy.audiences includes {a:?}, one of the API server's own audiences: tokens meant for the API server will be accepted here"
        ));
    }
    Policy {
        audiences,
        api_audiences,
        issuers,
        allow_legacy_tokens: p.allow_legacy_tokens.unwrap_or(false),
        legacy_ttl: c.duration(
            "policy.legacy_ttl",
            p.legacy_ttl.as_deref(),
            Duration::from_secs(30),
        ),
        on_upstream_unavailable: match p.on_upstream_unavailable.as_deref() {
            None | Some("fail-closed") => OnUnavailable::FailClosed,
            Some("verify-offline") => OnUnavailable::VerifyOffline,
            Some(other) => {
                c.problems.push(format!("`policy.on_upstream_unavailable` = {other:?} is not a choice; use \"fail-closed\" or \"verify-offline\""));
                OnUnavailable::FailClosed
            }
        },
        offline_ttl: c.duration(
            "policy.offline_ttl",
            p.offline_ttl.as_deref(),
            Duration::from_secs(10),
        ),
    }
}

/// `[cache]`.
fn cache(c: &mut Check, k: RawCache) -> Cache {
    Cache {
        max_entries: c.positive("cache.max_entries", k.max_entries, 1_000_000),
        negative_max_entries: c.positive(
            "cache.negative_max_entries",
            k.negative_max_entries,
            100_000,
        ),
        negative_ttl: c.duration(
            "cache.negative_ttl",
            k.negative_ttl.as_deref(),
            Duration::from_secs(10),
        ),
        max_ttl: c.duration(
            "cache.max_ttl",
            k.max_ttl.as_deref(),
            Duration::from_secs(120),
        ),
    }
}

/// `[access]`.
fn access(c: &mut Check, warnings: &mut Vec<String>, raw: RawAccess) -> Access {
    let mut access = Access::default();
    access.mode = match raw.mode.as_deref() {
        None | Some("allowlist") => AccessMode::AllowList,
        Some("subjectaccessreview") => AccessMode::SubjectAccessReview,
        Some(other) => {
            c.problems.push(format!(
                "`access.mode` = {other:?} is not a mode; use \"allowlist\" or \"subjectaccessreview\""
            ));
            AccessMode::AllowList
        }
    };
    access.sar_ttl = c.duration("access.sar_ttl", raw.sar_ttl.as_deref(), access.sar_ttl);
    for entry in raw.review_callers.unwrap_or_default() {
        match entry.strip_prefix("group:") {
            Some("") => c
                .problems
                .push("`access.review_callers` has \"group:\" with no group name".into()),
            Some(g) => {
                access.groups.insert(g.to_string());
            }
            None if entry.trim().is_empty() => c
                .problems
                .push("`access.review_callers` has an empty entry".into()),
            None => {
                access.users.insert(entry);
            }
        }
    }
    if access.mode == AccessMode::AllowList && access.users.is_empty() && access.groups.is_empty() {
        warnings.push("access.review_callers is empty: every call to the TokenReview endpoints will be refused (403); list the callers, e.g. [\"system:serviceaccount:vault:vault-auth\"]".into());
    }
    access
}

/// `[auth]`.
fn auth(a: RawAuth) -> AuthPolicy {
    AuthPolicy {
        users: a.users.unwrap_or_default().into_iter().collect(),
        groups: a.groups.unwrap_or_default().into_iter().collect(),
        namespaces: a.namespaces.unwrap_or_default().into_iter().collect(),
    }
}

/// `[tls]`.
fn tls(c: &mut Check, raw: Option<RawTls>) -> Option<Tls> {
    match raw.map(|t| (t.cert_file, t.key_file)) {
        None => None,
        Some((Some(cert_file), Some(key_file))) => Some(Tls {
            cert_file,
            key_file,
        }),
        Some(_) => {
            c.problems.push("`[tls]` needs both `cert_file` and `key_file` (PEM files); remove the section to serve plain HTTP".into());
            None
        }
    }
}

/// `[revocation]`.
fn revocation(raw: RawRevocation) -> Revocation {
    Revocation {
        watch: raw.watch.unwrap_or(false),
        secrets: raw.secrets.unwrap_or(false),
    }
}

/// `[verify]`.
fn verify(c: &mut Check, raw: RawVerify) -> Option<Verify> {
    let unknown_kid = match raw.unknown_kid.as_deref() {
        None | Some("reject") => UnknownKid::Reject,
        Some("forward") => UnknownKid::Forward,
        Some(other) => {
            c.problems.push(format!(
                "`verify.unknown_kid` = {other:?} is not a choice; use \"reject\" or \"forward\""
            ));
            UnknownKid::Reject
        }
    };
    let source = match (raw.jwks.as_deref(), raw.jwks_file, raw.key_files) {
        (Some("off"), None, None) => return None,
        (None | Some("discovery"), None, None) => KeySource::Discovery,
        (None, Some(file), None) => KeySource::JwksFile(file),
        (None, None, Some(files)) if !files.is_empty() => KeySource::PemFiles(files),
        (None, None, Some(_)) => {
            c.problems
                .push("`verify.key_files` is empty; name the PEM public keys, or remove it".into());
            KeySource::Discovery
        }
        (Some(other), None, None) => {
            c.problems.push(format!(
                "`verify.jwks` = {other:?} is not a choice; use \"discovery\" or \"off\" (or set verify.jwks_file / verify.key_files instead)"
            ));
            KeySource::Discovery
        }
        _ => {
            c.problems.push("`verify.jwks`, `verify.jwks_file` and `verify.key_files` name three ways to get keys: keep one".into());
            KeySource::Discovery
        }
    };
    Some(Verify {
        source,
        unknown_kid,
    })
}

fn upstream_source(
    c: &mut Check,
    warnings: &mut Vec<String>,
    env: &InClusterEnv,
    raw: &RawUpstream,
) -> UpstreamSource {
    let placeholder = || UpstreamSource::Direct {
        url: Url::parse("https://kubernetes.default.svc").expect("a valid literal URL"),
        ca_file: None,
        token_file: None,
    };
    match (&raw.url, &raw.kubeconfig) {
        (Some(_), Some(_)) => {
            c.problems
                .push("`upstream.url` and `upstream.kubeconfig` are both set; keep one".into());
            placeholder()
        }
        (None, Some(path)) => {
            if raw.ca_file.is_some() || raw.token_file.is_some() {
                c.problems.push("`upstream.ca_file` and `upstream.token_file` go with `upstream.url`; a kubeconfig names its own".into());
            }
            UpstreamSource::Kubeconfig {
                path: path.clone(),
                context: raw.context.clone(),
            }
        }
        (Some(text), None) => {
            if raw.context.is_some() {
                c.problems
                    .push("`upstream.context` goes with `upstream.kubeconfig`".into());
            }
            match Url::parse(text) {
                Ok(url) if url.scheme() == "https" || url.scheme() == "http" => {
                    if url.scheme() == "http" {
                        warnings.push(format!("upstream.url {url} is plain http: tokens cross the network unencrypted; use it for local testing only"));
                    } else if raw.ca_file.is_none() {
                        c.problems.push(format!(
                            "`upstream.ca_file` is required for {url}: name the PEM file of the cluster's CA (in a pod: {IN_CLUSTER_DIR}/ca.crt)"
                        ));
                    }
                    if raw.token_file.is_none() {
                        warnings.push("upstream.token_file is not set: tokengate calls the API server without a credential, which a real API server refuses (401)".into());
                    }
                    UpstreamSource::Direct {
                        url,
                        ca_file: raw.ca_file.clone(),
                        token_file: raw.token_file.clone(),
                    }
                }
                _ => {
                    c.problems.push(format!(
                        "`upstream.url` = {text:?} is not an http(s) URL; write it like \"https://10.0.0.1:6443\""
                    ));
                    placeholder()
                }
            }
        }
        (None, None) => {
            let (Some(host), port) = (&env.host, &env.port) else {
                c.problems.push("no `upstream.url` or `upstream.kubeconfig`, and not running in a cluster (KUBERNETES_SERVICE_HOST is not set): tell tokengate where the API server is".into());
                return placeholder();
            };
            let port = port.as_deref().unwrap_or("443");
            // An IPv6 service address needs brackets in a URL.
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host.clone()
            };
            match Url::parse(&format!("https://{host}:{port}")) {
                Ok(url) => UpstreamSource::Direct {
                    url,
                    ca_file: Some(
                        raw.ca_file
                            .clone()
                            .unwrap_or_else(|| Path::new(IN_CLUSTER_DIR).join("ca.crt")),
                    ),
                    token_file: Some(
                        raw.token_file
                            .clone()
                            .unwrap_or_else(|| Path::new(IN_CLUSTER_DIR).join("token")),
                    ),
                },
                Err(e) => {
                    c.problems.push(format!(
                        "KUBERNETES_SERVICE_HOST/PORT ({host}:{port}) do not form a URL: {e}"
                    ));
                    placeholder()
                }
            }
        }
    }
}
