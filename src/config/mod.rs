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

use url::Url;

mod raw;
#[cfg(test)]
mod tests;
mod validate;

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
    let (raw, in_cluster_env, problems) = raw::read(text, env)?;
    validate::config(raw, &in_cluster_env, problems)
}
