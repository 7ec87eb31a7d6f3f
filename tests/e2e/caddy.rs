//! Caddy's `forward_auth` in front of a backend, with tokengate's `/auth` as the hook: the
//! real Caddy (Debian's `caddy`, installed by `scripts/test`) with the configuration
//! docs/ingress.md shows, one per test on a free loopback port.
//!
//! What Caddy does with the hook's answer, as these tests pin it down: a 2xx lets the
//! request through, with the headers `copy_headers` names copied onto it (repeated ones
//! joined with ","); any other answer is passed to the client as the hook gave it (the
//! 401 with its challenge, the 503); no hook at all is Caddy's own 502. Caddy
//! orders directives itself, and a site-level `request_header` runs after
//! `forward_auth` (it would remove the gate's identity too): inside `route` they run in
//! the order written.

use std::time::Duration;

use http::{HeaderMap, StatusCode};
use tokio::process::{Child, Command};

use crate::support::*;

/// `{gate}` is the hook's `host:port`, `{backend}` the echo backend's.
const CADDYFILE: &str = r#"
# The test's own: no admin endpoint, no certificates, nothing outside its directory.
{
    admin off
    auto_https off
    storage file_system {dir}/data
}

# --- as in docs/ingress.md ---
http://127.0.0.1:{port} {
    route {
        # Every X-Remote-* header the client sent goes first: a backend must see the
        # gate's identity and nothing else.
        request_header -X-Remote-*
        forward_auth {gate} {
            uri /auth?audience=api
            copy_headers X-Remote-User X-Remote-Uid X-Remote-Group
        }
        reverse_proxy {backend}
    }
}
# --- end ---
"#;

/// A Caddy process, killed when dropped.
struct Caddy {
    url: String,
    dir: tempfile::TempDir,
    _child: Child,
}

impl Caddy {
    /// Starts Caddy with `forward_auth` to the hook at `gate` (`host:port`) and waits,
    /// bounded, until it answers.
    async fn start(gate: &str) -> Caddy {
        let (dir, port, path) = proxy_config(CADDYFILE, "Caddyfile", gate).await;
        let child = Command::new("caddy")
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&path)
            .env("HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("caddy.log")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "caddy could not be started ({e}); scripts/test installs it (Debian's caddy)"
                )
            });
        let caddy = Caddy {
            url: format!("http://127.0.0.1:{port}"),
            dir,
            _child: child,
        };
        eventually(Duration::from_secs(10), "caddy answers", async || {
            try_get(&caddy.url).await.is_some()
        })
        .await;
        caddy
    }

    /// A GET through Caddy with an optional bearer token and extra headers.
    async fn get(
        &self,
        path: &str,
        bearer: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, String) {
        get_through(&format!("{}{path}", self.url), bearer, headers).await
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("caddy.log")).unwrap_or_default()
    }
}

/// The gate's `host:port`.
fn authority(gate: &TestGate) -> String {
    gate.url.trim_start_matches("http://").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_lets_a_valid_token_through_with_the_gates_identity_and_no_forged_header() {
    let gate = spawn_gate(&[("TOKENGATE_UPSTREAM_TIMEOUT", "1s")]).await;
    let caddy = Caddy::start(&authority(&gate)).await;
    let token = gate.workload_token("apps", "web", &["api"]);
    let uid = gate.sim.create_service_account("apps", "web");

    let (status, _, body) = caddy.get("/orders/42?x=1", Some(&token), &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", caddy.log());
    // Caddy joins the gate's repeated X-Remote-Group headers into one.
    let identity = format!(
        "x-remote-group: system:serviceaccounts,system:serviceaccounts:apps,system:authenticated\n\
         x-remote-uid: {uid}\nx-remote-user: system:serviceaccount:apps:web\n"
    );
    assert_eq!(body, format!("backend uri=/orders/42?x=1\n{identity}"));

    let forged = [
        ("x-remote-user", "system:admin"),
        ("x-remote-uid", "0"),
        ("x-remote-group", "system:masters"),
        ("X-Remote-Extra-Scopes", "everything"),
        (
            "x-remote-extra-authentication.kubernetes.io%2Fpod-name",
            "other",
        ),
    ];
    let (status, _, body) = caddy.get("/", Some(&token), &forged).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, format!("backend uri=/\n{identity}"));

    // Without a valid token the gate's answer is the client's, and the backend sees
    // nothing.
    let (status, headers, body) = caddy.get("/", None, &forged).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(headers["www-authenticate"], r#"Bearer realm="tokengate""#);
    let (status, headers, body) = caddy.get("/", Some("not-a-jwt"), &forged).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains(r#"error="invalid_token""#)
    );
    assert!(!body.contains("backend"), "{body}");

    // The backend's own failure passes through as it is.
    let (status, _, body) = caddy.get("/fails", Some(&token), &[]).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, "backend failed\n")
    );

    // The gate cannot decide: its 503 is the client's.
    gate.sim.fail_next(100, tokengate_sim::Failure::Hang);
    let fresh = gate.mint("apps", "web", &["api"], Some("web-0"));
    let (status, _, body) = caddy.get("/", Some(&fresh), &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(!body.contains("backend"), "{body}");

    // The gate is gone: Caddy's own 502, never the backend.
    let url = gate.url.clone();
    drop(gate);
    eventually(
        Duration::from_secs(10),
        "the gate stops listening",
        async || try_get(&format!("{url}/healthz")).await.is_none(),
    )
    .await;
    let (status, _, body) = caddy.get("/", Some(&token), &[]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(!body.contains("backend"), "{body}");
}
