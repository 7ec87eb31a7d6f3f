//! The command line: `serve` (the default), `dev`, `sim`, `inspect`, `check-config`.
//!
//! Responsible for: parsing arguments, turning each command into calls of the library,
//! and what each prints for a person. Errors come back as `anyhow` with context; `main`
//! maps them to exit codes.

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use base64::Engine as _;
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{self, Config};
use crate::keys::{KeySet, Verification};
use crate::reload::Stamp;
use crate::token::{self, Classified};
#[cfg(feature = "sim")]
use tokengate_sim::{MintRequest, Sim, SimOptions};

/// tokengate: answers "is this service-account token valid for this audience, and whose
/// is it?" in front of the Kubernetes API server, with a cache no longer than the token lives.
#[derive(Debug, Parser)]
#[command(name = "tokengate", version, about)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
    /// Config file for `serve` when no command is given.
    #[arg(long, short, env = "TOKENGATE_CONFIG", global = true)]
    pub(crate) config: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "TOKENGATE_LOG_FORMAT", global = true)]
    pub log_format: LogFormat,
}

/// How logs are written (to stderr).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// For people.
    Text,
    /// One JSON object a line, for log pipelines.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the gate with a config file (`--config`, or `TOKENGATE_CONFIG`).
    Serve,
    /// Run a simulated API server and a gate in front of it, and print how to try them.
    #[cfg(feature = "sim")]
    Dev {
        /// Where the gate listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where the simulated API server listens (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        sim_listen: SocketAddr,
    },
    /// Run the simulated API server alone (for tests, benches, demos).
    #[cfg(feature = "sim")]
    Sim {
        /// Where it listens.
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: SocketAddr,
        /// Directory to write ca.crt, reviewer.token and kubeconfig into.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Serve plain http instead of https.
        #[arg(long)]
        plain_http: bool,
    },
    /// Decode a token offline and say what the local checks make of it. Sends it nowhere.
    Inspect {
        /// The token; `-` or nothing reads it from stdin.
        token: Option<String>,
        /// Audience to check against (repeatable); default: the token's own.
        #[arg(long = "audience")]
        audiences: Vec<String>,
        /// Accepted issuer (repeatable); default: any.
        #[arg(long = "issuer")]
        issuers: Vec<String>,
        /// Check the signature against this JWKS: a file, or an http(s) URL such as the
        /// API server's `/openid/v1/jwks` (only the key set is fetched; the token is sent nowhere).
        #[arg(long)]
        jwks: Option<String>,
        /// CA bundle (PEM) to trust when `--jwks` is an https URL.
        #[arg(long)]
        cacert: Option<PathBuf>,
    },
    /// Load and validate a config file, print what is wrong, and exit.
    CheckConfig,
}

/// What the process should exit with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// All went well.
    Ok,
    /// The command ran and its answer is "no" (e.g. `inspect` of a token that fails).
    No,
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<Exit> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.config.as_deref()).await,
        Command::CheckConfig => check_config(cli.config.as_deref()),
        #[cfg(feature = "sim")]
        Command::Dev { listen, sim_listen } => dev(listen, sim_listen).await,
        #[cfg(feature = "sim")]
        Command::Sim {
            listen,
            out,
            plain_http,
        } => sim(listen, out, !plain_http).await,
        Command::Inspect {
            token,
            audiences,
            issuers,
            jwks,
            cacert,
        } => inspect(token, &audiences, &issuers, jwks, cacert).await,
    }
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    let path = path.context(
        "no config file: pass --config FILE or set TOKENGATE_CONFIG (examples in config/)",
    )?;
    Ok(config::load(Some(path), std::env::vars())?)
}

fn check_config(path: Option<&Path>) -> anyhow::Result<Exit> {
    let config = load_config(path)?;
    for warning in &config.warnings {
        println!("warning: {warning}");
    }
    println!("config OK");
    Ok(Exit::Ok)
}

async fn serve(path: Option<&Path>) -> anyhow::Result<Exit> {
    let config = load_config(path)?;
    let listener = bind(config.listen).await?;
    start_gate(&config, listener, path.map(Path::to_path_buf)).await?;
    Ok(Exit::Ok)
}

async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// Runs the gate until SIGTERM/SIGINT; with a config file, reloads it on SIGHUP or
/// when the file changes (a ConfigMap update swaps the file).
async fn start_gate(
    config: &Config,
    listener: tokio::net::TcpListener,
    config_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let gate = crate::build(config).await?;
    let scheme = if gate.tls.is_some() { "https" } else { "http" };
    tracing::info!(listen = %listener.local_addr()?, scheme, "tokengate serving");
    let reloader =
        config_file.map(|path| tokio::spawn(reload_on_change(path, Arc::clone(&gate.state))));
    crate::run(listener, gate, shutdown_signal()).await?;
    if let Some(task) = reloader {
        task.abort();
    }
    tracing::info!("tokengate stopped");
    Ok(())
}

/// How often the config file is checked for a change.
const CONFIG_POLL: Duration = Duration::from_secs(5);

/// Reloads the config file on SIGHUP and when its stamp changes. A config that fails
/// to load or validate is refused with an error in the log; the old one keeps serving.
async fn reload_on_change(path: PathBuf, state: Arc<crate::AppState>) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; config reloads only on file change");
            None
        }
    };
    let mut last = Stamp::of(&path).ok();
    let mut poll = tokio::time::interval(CONFIG_POLL);
    loop {
        let by_signal = tokio::select! {
            Some(()) = async { match &mut hangup { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            _ = poll.tick() => false,
        };
        let stamp = Stamp::of(&path).ok();
        if !by_signal && stamp == last {
            continue;
        }
        last = stamp;
        match config::load(Some(&path), std::env::vars()) {
            Ok(new) => {
                let notes = state.reconfigure(new);
                tracing::info!(file = %path.display(), changes = %notes.join("; "), "configuration reloaded");
            }
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "new configuration refused; the previous one keeps serving")
            }
        }
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!("shutting down: draining in-flight requests");
}

/// GETs a JWKS document (the token is not part of the request).
async fn fetch_jwks(url: &str, cacert: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = cacert {
        let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        for cert in rustls_pemfile::certs(&mut &pem[..]).filter_map(Result::ok) {
            roots.add(cert)?;
        }
    } else if url.starts_with("https://") {
        anyhow::bail!(
            "--jwks {url} is https: pass --cacert with the CA that signed its certificate"
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()?;
    let response = client
        .get(url)
        .send()
        .await
        .with_context(|| format!("cannot fetch {url}"))?;
    anyhow::ensure!(
        response.status().is_success(),
        "{url} answered {}",
        response.status()
    );
    Ok(response.bytes().await?.to_vec())
}

#[cfg(feature = "sim")]
async fn sim(listen: SocketAddr, out: Option<PathBuf>, tls: bool) -> anyhow::Result<Exit> {
    let sim = Sim::start(SimOptions {
        listen,
        tls,
        out_dir: out.clone(),
        ..SimOptions::default()
    })
    .await
    .context("cannot start the simulated API server")?;
    println!("simulated API server at {}", sim.url());
    println!("issuer: {}", sim.issuer());
    if let Some(out) = &out {
        println!(
            "wrote {0}/ca.crt, {0}/reviewer.token, {0}/kubeconfig",
            out.display()
        );
    }
    shutdown_signal().await;
    sim.shutdown().await;
    Ok(Exit::Ok)
}

#[cfg(feature = "sim")]
async fn dev(listen: SocketAddr, sim_listen: SocketAddr) -> anyhow::Result<Exit> {
    let dir = std::env::temp_dir().join(format!("tokengate-dev-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let sim = Sim::start(SimOptions {
        listen: sim_listen,
        out_dir: Some(dir.clone()),
        ..SimOptions::default()
    })
    .await
    .context("cannot start the simulated API server")?;
    sim.create_service_account("demo", "app");
    sim.create_pod("demo", "app-0", "app");
    let sample = sim
        .mint(&MintRequest {
            namespace: "demo".into(),
            service_account: "app".into(),
            audiences: vec!["vault".into()],
            expiration_seconds: Some(3600),
            pod: Some("app-0".into()),
        })
        .context("cannot mint the sample token")?;
    let reviewer = sim.reviewer_token();
    let listener = bind(listen).await?;
    let listen = listener.local_addr()?;
    let text = dev_config(listen, &sim.url(), &dir, sim.issuer());
    let config = config::from_str(&text, std::iter::empty())?;
    std::fs::write(dir.join("tokengate.toml"), &text)?;

    let gate = format!("http://{listen}");
    println!(
        r#"tokengate dev: a simulated API server and a gate in front of it.

  gate                  {gate}
  simulated API server  {sim_url}   (CA, reviewer token, kubeconfig and the gate's config in {dir})

A sample token (namespace demo, service account app, pod app-0, audience vault, 1h):
  export TOKEN={sample}
The reviewer's credential (the caller allowed to ask for reviews):
  export REVIEWER={reviewer}

Try:
  curl -s {gate}/healthz
  curl -s {gate}/readyz
  curl -s -X POST {gate}/review -H "Authorization: Bearer $REVIEWER" \
       -d '{{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{{"token":"'$TOKEN'"}}}}'
  curl -s -X POST {gate}/apis/authentication.k8s.io/v1/tokenreviews -H "Authorization: Bearer $REVIEWER" \
       -d '{{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview","spec":{{"token":"'$TOKEN'","audiences":["other"]}}}}'
  tokengate inspect $TOKEN
  curl -s -X POST {sim_url}/sim/fail --cacert {dir}/ca.crt -H "Authorization: Bearer $REVIEWER" -d '{{"count":3,"kind":"500"}}'

Ctrl-C stops both."#,
        sim_url = sim.url(),
        dir = dir.display(),
    );
    start_gate(&config, listener, None).await?;
    sim.shutdown().await;
    Ok(Exit::Ok)
}

/// The gate's configuration in front of a sim whose files are in `dir`.
pub fn dev_config(listen: SocketAddr, sim_url: &str, dir: &Path, issuer: &str) -> String {
    format!(
        r#"listen = "{listen}"
shutdown_delay = "0s"

[upstream]
url = "{sim_url}"
ca_file = "{ca}"
token_file = "{token}"

[policy]
audiences = ["vault"]
issuers = ["{issuer}"]

[access]
review_callers = ["system:serviceaccount:tokengate:tokengate-reviewer"]
"#,
        ca = dir.join("ca.crt").display(),
        token = dir.join("reviewer.token").display(),
    )
}

async fn inspect(
    token: Option<String>,
    audiences: &[String],
    issuers: &[String],
    jwks: Option<String>,
    cacert: Option<PathBuf>,
) -> anyhow::Result<Exit> {
    let keys = match jwks {
        None => None,
        Some(source) => {
            let bytes = if source.starts_with("http://") || source.starts_with("https://") {
                fetch_jwks(&source, cacert.as_deref()).await?
            } else {
                std::fs::read(&source).with_context(|| format!("cannot read {source}"))?
            };
            Some(KeySet::from_jwks(&bytes)?)
        }
    };
    let raw = match token.as_deref() {
        None | Some("-") => {
            let mut s = String::new();
            std::io::stdin()
                .take(token::MAX_TOKEN_BYTES as u64 + 1)
                .read_to_string(&mut s)
                .context("cannot read the token from stdin")?;
            s.trim().to_string()
        }
        Some(t) => t.trim().to_string(),
    };
    let (report, ok) = inspect_report(&raw, audiences, issuers, keys.as_ref(), SystemTime::now());
    print!("{report}");
    Ok(if ok { Exit::Ok } else { Exit::No })
}

/// What `inspect` prints, and whether the local checks pass. Never prints the signature.
pub(crate) fn inspect_report(
    raw: &str,
    audiences: &[String],
    issuers: &[String],
    keys: Option<&KeySet>,
    now: SystemTime,
) -> (String, bool) {
    use std::fmt::Write as _;
    let mut out = String::new();
    let segments: Vec<&str> = raw.split('.').collect();
    let decode = |s: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    };
    if segments.len() == 3 {
        for (name, segment) in [("header", segments[0]), ("claims", segments[1])] {
            match decode(segment) {
                Some(v) => {
                    let pretty = serde_json::to_string_pretty(&v).unwrap_or_default();
                    let _ = writeln!(out, "{name}:\n{pretty}");
                }
                None => {
                    let _ = writeln!(out, "{name}: (not base64url JSON)");
                }
            }
        }
        if let Some(claims) = decode(segments[1]) {
            let now_s = token::unix_seconds(now);
            for key in ["iat", "nbf", "exp"] {
                if let Some(t) = claims.get(key).and_then(serde_json::Value::as_i64) {
                    let delta = t.saturating_sub(now_s);
                    let human =
                        humantime::format_duration(Duration::from_secs(delta.unsigned_abs()));
                    let when = if delta >= 0 {
                        format!("in {human}")
                    } else {
                        format!("{human} ago")
                    };
                    let _ = writeln!(out, "{key}: {} ({when})", token::rfc3339(t));
                }
            }
        }
    } else {
        let _ = writeln!(out, "not a JWT ({} segments)", segments.len());
    }

    let verdict = match token::classify(raw, issuers) {
        Err(rejection) => Err(rejection.to_string()),
        Ok(Classified::Foreign(why)) => Err(format!(
            "{why}; the API server's other authenticators could still know it"
        )),
        Ok(Classified::ServiceAccount(t)) => {
            let requested = if audiences.is_empty() {
                t.claims.audiences.clone()
            } else {
                audiences.to_vec()
            };
            let kind = match t.kind {
                token::Kind::Projected => "projected",
                token::Kind::Legacy => "legacy (Secret-based: no expiry, no audience)",
            };
            let _ = writeln!(
                out,
                "service account: {} (uid {}), {kind} token",
                t.username(),
                t.claims.service_account.uid
            );
            if let Some(pod) = &t.claims.pod {
                let _ = writeln!(out, "bound to pod: {} (uid {})", pod.name, pod.uid);
            }
            // Legacy tokens stand for the API server's audiences, which inspect does not know.
            let api_audiences = if requested.is_empty() {
                issuers.to_vec()
            } else {
                requested.clone()
            };
            let signature = match keys.map(|k| k.verify(raw, &t.header)) {
                None => Ok("signature not checked (pass --jwks FILE|URL)"),
                Some(Verification::Valid) => Ok("signature valid"),
                Some(Verification::Unverifiable(why)) => {
                    let _ = writeln!(out, "signature: not checked here: {why}");
                    Ok("signature not checked")
                }
                Some(Verification::Invalid(why) | Verification::UnknownKey(why)) => Err(why),
            };
            token::check(&t, &requested, &api_audiences, now)
                .map_err(|r| r.to_string())
                .and_then(|valid| {
                    signature.map(|sig| {
                        format!(
                            "valid for audiences {valid:?} as far as local checks can tell, {sig}"
                        )
                    })
                })
        }
    };
    let ok = verdict.is_ok();
    match verdict {
        Ok(msg) => {
            let _ = writeln!(
                out,
                "local checks: pass: {msg}; the API server still decides (signature, service account and pod still existing)"
            );
        }
        Err(msg) => {
            let _ = writeln!(out, "local checks: REJECT: {msg}");
        }
    }
    (out, ok)
}
