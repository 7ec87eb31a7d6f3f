//! The configuration as written: the TOML file with the `TOKENGATE_…` environment laid
//! over it, read into raw values (every key optional) with each unknown key noted.

use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;

/// Reads `text` with the overrides of `env` laid over it: the raw values, what the
/// environment tells of the cluster tokengate runs in, and the problems found so far.
pub(super) fn read(
    text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(Raw, InClusterEnv, Vec<String>), ConfigError> {
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
    Ok((raw, in_cluster_env, problems))
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
pub(super) struct InClusterEnv {
    pub(super) host: Option<String>,
    pub(super) port: Option<String>,
}

/// Sections of the file; an environment variable's name is `TOKENGATE_` + section + key.
pub(super) const SECTIONS: [&str; 8] = [
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
pub(super) struct Raw {
    pub(super) listen: Option<String>,
    pub(super) shutdown_delay: Option<String>,
    pub(super) shutdown_grace: Option<String>,
    pub(super) max_connections: Option<i64>,
    pub(super) header_read_timeout: Option<String>,
    pub(super) upstream: Option<RawUpstream>,
    pub(super) policy: RawPolicy,
    pub(super) cache: RawCache,
    pub(super) access: RawAccess,
    pub(super) auth: RawAuth,
    pub(super) tls: Option<RawTls>,
    pub(super) verify: RawVerify,
    pub(super) revocation: RawRevocation,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawRevocation {
    pub(super) watch: Option<bool>,
    pub(super) secrets: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawVerify {
    pub(super) jwks: Option<String>,
    pub(super) jwks_file: Option<PathBuf>,
    pub(super) key_files: Option<Vec<PathBuf>>,
    pub(super) unknown_kid: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawAuth {
    #[serde(deserialize_with = "list")]
    pub(super) users: Option<Vec<String>>,
    #[serde(deserialize_with = "list")]
    pub(super) groups: Option<Vec<String>>,
    #[serde(deserialize_with = "list")]
    pub(super) namespaces: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawTls {
    pub(super) cert_file: Option<PathBuf>,
    pub(super) key_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawUpstream {
    pub(super) url: Option<String>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) token_file: Option<PathBuf>,
    pub(super) kubeconfig: Option<PathBuf>,
    pub(super) context: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) max_in_flight: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawPolicy {
    #[serde(deserialize_with = "list")]
    pub(super) audiences: Option<Vec<String>>,
    #[serde(deserialize_with = "list")]
    pub(super) api_audiences: Option<Vec<String>>,
    #[serde(deserialize_with = "list")]
    pub(super) issuers: Option<Vec<String>>,
    pub(super) allow_legacy_tokens: Option<bool>,
    pub(super) legacy_ttl: Option<String>,
    pub(super) on_upstream_unavailable: Option<String>,
    pub(super) offline_ttl: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawCache {
    pub(super) max_entries: Option<i64>,
    pub(super) negative_max_entries: Option<i64>,
    pub(super) negative_ttl: Option<String>,
    pub(super) max_ttl: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawAccess {
    pub(super) mode: Option<String>,
    #[serde(deserialize_with = "list")]
    pub(super) review_callers: Option<Vec<String>>,
    pub(super) sar_ttl: Option<String>,
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
