//! Configuration: one TOML file, environment overrides, validated into [`Config`].
//!
//! Responsible for: reading the file (every key has a default), applying `TOKENGATE_…`
//! environment overrides (read through an injectable source, so tests never touch the
//! process environment), refusing unknown keys, and turning the raw values into real
//! types. Every problem is collected and reported at once, each naming the key and the fix.
//!
//! Not responsible for: acting on the configuration (loading CA files, reading tokens):
//! that happens where the value is used, see `upstream`.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

/// Where the in-cluster credential and CA live (the kubelet mounts them there).
pub const IN_CLUSTER_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The issuer kubeadm and most distributions configure (`--service-account-issuer`).
pub(crate) const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Address the gate listens on. Default `0.0.0.0:8080`.
    pub listen: SocketAddr,
    /// How the gate stops on SIGTERM.
    pub shutdown: Shutdown,
    /// What protects the listener from abusive clients.
    pub limits: Limits,
    /// How to reach the API server.
    pub upstream: Upstream,
    /// What the gate accepts.
    pub policy: Policy,
    /// How long verdicts are kept.
    pub cache: Cache,
    /// Who may call the TokenReview endpoints.
    pub access: Access,
    /// Who `/auth` lets through.
    pub(crate) auth: AuthPolicy,
    /// The revocation watch (`[revocation]`).
    pub revocation: Revocation,
    /// Local signature checks; off when `None` (`verify.jwks = "off"`).
    pub(crate) verify: Option<Verify>,
    /// HTTPS for the listener; plain HTTP when absent.
    pub(crate) tls: Option<Tls>,
    /// Things that work but deserve an operator's attention (logged at start).
    pub(crate) warnings: Vec<String>,
}

/// Who the ingress hook (`/auth`) lets through once the token is valid (`[auth]`).
/// All empty (the default): every authenticated token.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct AuthPolicy {
    /// Usernames allowed.
    pub(crate) users: BTreeSet<String>,
    /// Groups allowed.
    pub(crate) groups: BTreeSet<String>,
    /// Namespaces whose service accounts are allowed.
    pub(crate) namespaces: BTreeSet<String>,
}

/// The revocation watch (`[revocation]`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Revocation {
    /// Watch pods, service accounts and Secrets and evict the verdicts that depend on a
    /// deleted one; while the watch is healthy, verdicts live until the token's `exp`.
    /// Default false: it needs `list`/`watch` on those resources (see deploy/).
    pub watch: bool,
    /// Also watch Secrets (`revocation.secrets`), for legacy tokens, whose validity is
    /// their Secret. Default false: RBAC cannot grant `list` on Secrets without their
    /// contents, and legacy verdicts live only `policy.legacy_ttl` anyway.
    pub secrets: bool,
}

/// Local signature checks (`[verify]`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Verify {
    /// Where the issuer's public keys come from. Default: OIDC discovery.
    pub(crate) source: KeySource,
    /// What to do with a token whose `kid` is not published, after a refresh.
    /// Default: reject.
    pub(crate) unknown_kid: UnknownKid,
}

/// Where the keys come from (`[verify]`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum KeySource {
    /// `jwks = "discovery"`: the API server's OIDC discovery document and its JWKS,
    /// fetched with the reviewer credential.
    Discovery,
    /// `jwks_file`: a JWKS document on disk.
    JwksFile(PathBuf),
    /// `key_files`: PEM public keys, as the API server's `--service-account-key-file`.
    PemFiles(Vec<PathBuf>),
}

/// `verify.unknown_kid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnknownKid {
    /// `"reject"`: a token signed by no published key is forged, as far as the gate can tell.
    Reject,
    /// `"forward"`: let the API server decide (for API servers with an external signer
    /// whose keys are not all published).
    Forward,
}

/// `policy.on_upstream_unavailable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnUnavailable {
    /// `"fail-closed"`: a token the cache does not know gets 503.
    FailClosed,
    /// `"verify-offline"`: a token whose signature, issuer, times and audience verify
    /// locally is answered from its claims, marked as decided offline.
    VerifyOffline,
}

/// What protects the listener from abusive clients.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Connections open at once (`max_connections`); a connection past it is closed at
    /// once. Default 10,000.
    pub(crate) max_connections: usize,
    /// How long a client may take to send a request's headers (`header_read_timeout`);
    /// a client that dribbles them is disconnected. Default 10s.
    pub(crate) header_read_timeout: Duration,
}

/// How the gate stops on SIGTERM or SIGINT.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shutdown {
    /// How long `/readyz` answers 503 while the gate still serves, before it stops
    /// accepting (`shutdown_delay`). Default 5s: long enough for Kubernetes to take the
    /// pod out of its Service's endpoints, so no new request finds the port closed.
    pub delay: Duration,
    /// How long requests in progress may take to finish after that
    /// (`shutdown_grace`). Default 20s, inside Kubernetes' 30 s termination grace.
    pub grace: Duration,
}

/// The listener's certificate and key (`[tls]`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Tls {
    /// PEM certificate chain, leaf first.
    pub(crate) cert_file: PathBuf,
    /// PEM private key.
    pub(crate) key_file: PathBuf,
}

/// How to reach the API server.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// Where the address and credential come from.
    pub source: UpstreamSource,
    /// The whole time budget of one review, retries included. Default 5s.
    pub(crate) timeout: Duration,
    /// TokenReviews in flight at once; past it a review is answered 503 at once. Default 64.
    pub(crate) max_in_flight: usize,
}

/// Where the API server's address and the reviewer credential come from.
#[derive(Debug, Clone, PartialEq)]
pub enum UpstreamSource {
    /// An explicit URL, CA file and token file (`upstream.url`); the in-cluster defaults
    /// when there is no `[upstream]` section.
    Direct {
        /// The API server's base URL.
        url: Url,
        /// PEM bundle of CAs to trust; required for https.
        ca_file: Option<PathBuf>,
        /// File holding the reviewer's bearer token, re-read when it changes.
        token_file: Option<PathBuf>,
    },
    /// A kubeconfig file (`upstream.kubeconfig`).
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// The context to use; default the file's current context.
        context: Option<String>,
    },
}

/// What the gate accepts.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Audiences a review asks for when its `spec.audiences` is empty. Default `["tokengate"]`:
    /// a gate guards its own audience, never the API server's.
    pub audiences: Vec<String>,
    /// The API server's `--api-audiences`: the only audiences a token that is not a
    /// service-account JWT (or a legacy token) can be valid for. Default: the issuers.
    pub(crate) api_audiences: Vec<String>,
    /// Service-account issuers (`--service-account-issuer`); empty = any. Default: [`DEFAULT_ISSUER`].
    pub(crate) issuers: Vec<String>,
    /// Whether legacy (Secret-based) tokens are forwarded. Default false: they never
    /// expire and are readable by anyone who can read the Secret.
    pub(crate) allow_legacy_tokens: bool,
    /// How long a legacy token's verdict is kept (it has no `exp`). Default 30s.
    pub(crate) legacy_ttl: Duration,
    /// What to answer when the API server cannot be reached. Default fail-closed.
    pub(crate) on_upstream_unavailable: OnUnavailable,
    /// How long an offline verdict is kept. Default 10s: an offline verdict cannot see
    /// that a pod was deleted, so it is asked again soon.
    pub(crate) offline_ttl: Duration,
}

/// How long verdicts are kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Cache {
    /// Positive verdicts kept at most. Default 1,000,000.
    pub max_entries: u64,
    /// Negative verdicts kept at most, in a cache of their own so that a flood of bad
    /// tokens cannot evict good verdicts. Default 100,000.
    pub negative_max_entries: u64,
    /// How long a definitive "no" from the API server is kept. Default 10s.
    pub negative_ttl: Duration,
    /// Cap on a positive verdict's life under the token's `exp`. Default 2m, the API
    /// server's own webhook-cache default: it bounds how long a deleted pod's token
    /// stays valid here.
    pub max_ttl: Duration,
}

/// Who may call the TokenReview endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct Access {
    /// How callers are authorized. Default: the allow-list.
    pub(crate) mode: AccessMode,
    /// Usernames allowed (`system:serviceaccount:vault:vault-auth`).
    pub users: BTreeSet<String>,
    /// Groups allowed (written `group:NAME` in the file).
    pub groups: BTreeSet<String>,
    /// How long a SubjectAccessReview's answer is kept. Default 1m: RBAC changes reach
    /// the gate within a minute, while a busy caller costs one SAR a minute.
    pub(crate) sar_ttl: Duration,
}

/// How callers of the TokenReview endpoints are authorized (`access.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AccessMode {
    /// `"allowlist"`: the users and groups of `access.review_callers`.
    AllowList,
    /// `"subjectaccessreview"`: ask the API server whether the caller may `create`
    /// `tokenreviews` in `authentication.k8s.io`, as the API server itself does.
    SubjectAccessReview,
}

impl Default for Access {
    fn default() -> Access {
        Access {
            mode: AccessMode::AllowList,
            users: BTreeSet::new(),
            groups: BTreeSet::new(),
            sar_ttl: Duration::from_secs(60),
        }
    }
}

impl Access {
    /// Whether a caller with this username and these groups may review tokens.
    pub(crate) fn allows<'a>(
        &self,
        username: &str,
        mut groups: impl Iterator<Item = &'a str>,
    ) -> bool {
        self.users.contains(username) || groups.any(|g| self.groups.contains(g))
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a value has the wrong type.
    #[error("{0}")]
    Syntax(String),
    /// One or more values are wrong; each line names the key and the fix.
    #[error("{}", Problems(.0))]
    Invalid(Vec<String>),
}

struct Problems<'a>(&'a [String]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "{n} problem{} in the configuration:",
            if n == 1 { "" } else { "s" }
        )?;
        for p in self.0 {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

/// Loads `path` (or only defaults and environment when `None`), applying overrides from `env`.
pub(crate) fn load(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let text = match path {
        Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
            path: p.to_path_buf(),
            source,
        })?,
        None => String::new(),
    };
    from_str(&text, env)
}

/// Parses configuration text, applying overrides from `env`.
pub fn from_str(
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let mut table: toml::Table =
        toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
    let mut problems = Vec::new();
    let mut env_keys = Vec::new();
    let mut in_cluster_env = InClusterEnv::default();
    for (name, value) in env {
        match name.as_str() {
            "KUBERNETES_SERVICE_HOST" => in_cluster_env.host = Some(value),
            "KUBERNETES_SERVICE_PORT" => in_cluster_env.port = Some(value),
            _ if not_a_config_override(&name) => {}
            _ => {
                if let Some(rest) = name.strip_prefix("TOKENGATE_") {
                    match apply_env(&mut table, rest, &value) {
                        Some(path) => env_keys.push((path, name)),
                        None => problems.push(format!(
                            "environment variable {name} names no configuration key; use TOKENGATE_<SECTION>_<KEY>, e.g. TOKENGATE_CACHE_MAX_TTL"
                        )),
                    }
                }
            }
        }
    }

    let mut unknown = Vec::new();
    let mut on_unknown = |path: serde_ignored::Path| unknown.push(path.to_string());
    let raw: Raw = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(
        toml::Value::Table(table),
        &mut on_unknown,
    ))
    .map_err(|e| ConfigError::Syntax(format!("`{}`: {}", e.path(), e.inner())))?;
    for key in unknown {
        match env_keys.iter().find(|(path, _)| *path == key) {
            Some((_, var)) => problems.push(format!(
                "environment variable {var} sets unknown key `{key}`"
            )),
            None => problems.push(format!(
                "unknown key `{key}`: check its spelling and section against docs/configuration.md"
            )),
        }
    }
    raw.validate(&in_cluster_env, problems)
}

/// `TOKENGATE_…` variables that are not configuration: the command line's own
/// (`TOKENGATE_CONFIG`, `TOKENGATE_LOG_FORMAT`), and the service links the kubelet sets
/// in every pod of a namespace with a Service named `tokengate`
/// (`TOKENGATE_SERVICE_HOST`, `TOKENGATE_SERVICE_PORT[_NAME]`, `TOKENGATE_PORT[_…]`).
fn not_a_config_override(name: &str) -> bool {
    matches!(
        name,
        "TOKENGATE_CONFIG" | "TOKENGATE_LOG_FORMAT" | "TOKENGATE_PORT"
    ) || name.starts_with("TOKENGATE_SERVICE_")
        || name.starts_with("TOKENGATE_PORT_")
}

/// The variables the kubelet sets in every pod, which tell where the API server is.
#[derive(Default)]
struct InClusterEnv {
    host: Option<String>,
    port: Option<String>,
}

/// Sections of the file; an environment variable's name is `TOKENGATE_` + section + key.
const SECTIONS: [&str; 8] = [
    "upstream",
    "policy",
    "cache",
    "access",
    "auth",
    "tls",
    "verify",
    "revocation",
];

/// Writes `TOKENGATE_<SECTION>_<KEY>=value` into the table; returns the dotted key, or
/// `None` when the name fits no section. Values are read as TOML when they parse as a
/// TOML value (numbers, booleans, arrays), else as a string.
fn apply_env(table: &mut toml::Table, rest: &str, value: &str) -> Option<String> {
    let rest = rest.to_ascii_lowercase();
    let value = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    for section in SECTIONS {
        if let Some(key) = rest.strip_prefix(section).and_then(|r| r.strip_prefix('_')) {
            let entry = table
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            entry.as_table_mut()?.insert(key.to_string(), value);
            return Some(format!("{section}.{key}"));
        }
    }
    if rest.is_empty() {
        return None;
    }
    table.insert(rest.clone(), value);
    Some(rest)
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Raw {
    listen: Option<String>,
    shutdown_delay: Option<String>,
    shutdown_grace: Option<String>,
    max_connections: Option<i64>,
    header_read_timeout: Option<String>,
    upstream: Option<RawUpstream>,
    policy: RawPolicy,
    cache: RawCache,
    access: RawAccess,
    auth: RawAuth,
    tls: Option<RawTls>,
    verify: RawVerify,
    revocation: RawRevocation,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawRevocation {
    watch: Option<bool>,
    secrets: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawVerify {
    jwks: Option<String>,
    jwks_file: Option<PathBuf>,
    key_files: Option<Vec<PathBuf>>,
    unknown_kid: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawAuth {
    #[serde(deserialize_with = "list")]
    users: Option<Vec<String>>,
    #[serde(deserialize_with = "list")]
    groups: Option<Vec<String>>,
    #[serde(deserialize_with = "list")]
    namespaces: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawTls {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawUpstream {
    url: Option<String>,
    ca_file: Option<PathBuf>,
    token_file: Option<PathBuf>,
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
    timeout: Option<String>,
    max_in_flight: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawPolicy {
    #[serde(deserialize_with = "list")]
    audiences: Option<Vec<String>>,
    #[serde(deserialize_with = "list")]
    api_audiences: Option<Vec<String>>,
    #[serde(deserialize_with = "list")]
    issuers: Option<Vec<String>>,
    allow_legacy_tokens: Option<bool>,
    legacy_ttl: Option<String>,
    on_upstream_unavailable: Option<String>,
    offline_ttl: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawCache {
    max_entries: Option<i64>,
    negative_max_entries: Option<i64>,
    negative_ttl: Option<String>,
    max_ttl: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawAccess {
    mode: Option<String>,
    #[serde(deserialize_with = "list")]
    review_callers: Option<Vec<String>>,
    sar_ttl: Option<String>,
}

/// A list given as an array, or (from the environment) as a comma-separated string.
fn list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<String>),
        Csv(String),
    }
    Ok(Some(match OneOrMany::deserialize(d)? {
        OneOrMany::Many(v) => v,
        OneOrMany::Csv(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    }))
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

impl Raw {
    fn validate(self, env: &InClusterEnv, problems: Vec<String>) -> Result<Config, ConfigError> {
        let mut c = Check { problems };
        let mut warnings = Vec::new();

        let listen_text = self.listen.as_deref().unwrap_or("0.0.0.0:8080");
        let listen = listen_text.parse().unwrap_or_else(|_| {
            c.problems.push(format!(
                "`listen` = {listen_text:?} is not an address; write it like \"0.0.0.0:8080\" or \"[::]:8080\""
            ));
            SocketAddr::from(([0, 0, 0, 0], 8080))
        });

        let shutdown = Shutdown {
            delay: c.duration(
                "shutdown_delay",
                self.shutdown_delay.as_deref(),
                Duration::from_secs(5),
            ),
            grace: c.duration(
                "shutdown_grace",
                self.shutdown_grace.as_deref(),
                Duration::from_secs(20),
            ),
        };

        let limits = Limits {
            max_connections: usize::try_from(c.positive(
                "max_connections",
                self.max_connections,
                10_000,
            ))
            .unwrap_or(usize::MAX),
            header_read_timeout: c.duration(
                "header_read_timeout",
                self.header_read_timeout.as_deref(),
                Duration::from_secs(10),
            ),
        };
        if limits.header_read_timeout.is_zero() {
            c.problems.push(
                "`header_read_timeout` must be longer than 0s; the default is \"10s\"".into(),
            );
        }

        let upstream = self.upstream.unwrap_or_default();
        let source = upstream_source(&mut c, &mut warnings, env, &upstream);
        let upstream = Upstream {
            source,
            timeout: c.duration(
                "upstream.timeout",
                upstream.timeout.as_deref(),
                Duration::from_secs(5),
            ),
            max_in_flight: usize::try_from(c.positive(
                "upstream.max_in_flight",
                upstream.max_in_flight,
                64,
            ))
            .unwrap_or(usize::MAX),
        };
        if upstream.timeout.is_zero() {
            c.problems
                .push("`upstream.timeout` must be longer than 0s; the default is \"5s\"".into());
        }

        let p = self.policy;
        let issuers = p.issuers.unwrap_or_else(|| vec![DEFAULT_ISSUER.into()]);
        let audiences = c.audiences(
            "policy.audiences",
            p.audiences.unwrap_or_else(|| vec!["tokengate".into()]),
        );
        if audiences.is_empty() {
            c.problems.push("`policy.audiences` is empty; name the audience(s) this gate guards, e.g. [\"vault\"]".into());
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
        let policy = Policy {
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
        };

        let k = self.cache;
        let cache = Cache {
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
        };

        let mut access = Access::default();
        access.mode = match self.access.mode.as_deref() {
            None | Some("allowlist") => AccessMode::AllowList,
            Some("subjectaccessreview") => AccessMode::SubjectAccessReview,
            Some(other) => {
                c.problems.push(format!(
                    "`access.mode` = {other:?} is not a mode; use \"allowlist\" or \"subjectaccessreview\""
                ));
                AccessMode::AllowList
            }
        };
        access.sar_ttl = c.duration(
            "access.sar_ttl",
            self.access.sar_ttl.as_deref(),
            access.sar_ttl,
        );
        for entry in self.access.review_callers.unwrap_or_default() {
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
        if access.mode == AccessMode::AllowList
            && access.users.is_empty()
            && access.groups.is_empty()
        {
            warnings.push("access.review_callers is empty: every call to the TokenReview endpoints will be refused (403); list the callers, e.g. [\"system:serviceaccount:vault:vault-auth\"]".into());
        }

        let a = self.auth;
        let auth = AuthPolicy {
            users: a.users.unwrap_or_default().into_iter().collect(),
            groups: a.groups.unwrap_or_default().into_iter().collect(),
            namespaces: a.namespaces.unwrap_or_default().into_iter().collect(),
        };

        let verify = verify(&mut c, self.verify);
        if policy.on_upstream_unavailable == OnUnavailable::VerifyOffline && verify.is_none() {
            c.problems.push("`policy.on_upstream_unavailable` = \"verify-offline\" needs signature checks: set [verify] (jwks = \"discovery\", jwks_file or key_files)".into());
        }

        let tls = match self.tls.map(|t| (t.cert_file, t.key_file)) {
            None => None,
            Some((Some(cert_file), Some(key_file))) => Some(Tls {
                cert_file,
                key_file,
            }),
            Some(_) => {
                c.problems.push("`[tls]` needs both `cert_file` and `key_file` (PEM files); remove the section to serve plain HTTP".into());
                None
            }
        };

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
            revocation: Revocation {
                watch: self.revocation.watch.unwrap_or(false),
                secrets: self.revocation.secrets.unwrap_or(false),
            },
            tls,
            warnings,
        })
    }
}

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

#[cfg(test)]
mod tests {
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
                load(Some(&path), in_cluster())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
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
}
