//! nginx's `auth_request` in front of a backend, with tokengate's `/auth` as the auth
//! hook: the real nginx (Debian's `nginx-full`, installed by `scripts/test`) with the
//! configuration docs/ingress.md shows, one per test on a free loopback port.
//!
//! What nginx does with the hook's answer, as these tests pin it down: a 2xx lets the
//! request through (and `auth_request_set` picks the identity headers off it); a 401 or
//! 403 is passed to the client, a 401 with the hook's `WWW-Authenticate`; anything else,
//! a 503 from the gate or no gate at all, becomes nginx's own 500 (which docs/ingress.md's
//! `error_page` turns back into a 503). Never the backend.

use std::path::Path;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use tokengate_sim::Failure;
use tokio::process::{Child, Command};

use crate::support::*;

/// The protected site in front of the echo backend (`{backend}`, see
/// `support::echo_backend`). `{gate}` is the hook's `host:port`.
const NGINX_CONF: &str = r#"
# One process, in the foreground, everything under the test's directory. Debian's
# nginx loads the headers-more module from /etc/nginx/modules-enabled; this config
# stands alone, so it loads it itself.
daemon off;
master_process off;
error_log {dir}/error.log info;
pid {dir}/nginx.pid;
load_module /usr/lib/nginx/modules/ngx_http_headers_more_filter_module.so;
events { worker_connections 64; }

http {
    access_log {dir}/access.log;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    # --- as in docs/ingress.md ---
    server {
        listen 127.0.0.1:{port};

        location / {
            auth_request /_tokengate;
            auth_request_set $tokengate_user $upstream_http_x_remote_user;
            auth_request_set $tokengate_uid $upstream_http_x_remote_uid;
            auth_request_set $tokengate_group $upstream_http_x_remote_group;
            # Every X-Remote-* header the client sent is removed (headers-more), not only
            # the ones set below: a backend must see the gate's identity and nothing else.
            more_clear_input_headers 'X-Remote-*';
            proxy_set_header X-Remote-User $tokengate_user;
            proxy_set_header X-Remote-Uid $tokengate_uid;
            proxy_set_header X-Remote-Group $tokengate_group;
            proxy_pass http://{backend};
            # A failed auth subrequest (the gate's 503, or no gate) is nginx's own 500:
            # say 503, "cannot decide now", as the gate did. The backend's own 5xx
            # answers pass through untouched (proxy_intercept_errors is off).
            error_page 500 = @tokengate_unavailable;
        }

        location @tokengate_unavailable {
            return 503 "authentication unavailable, try again\n";
        }

        location = /_tokengate {
            internal;
            proxy_pass http://{gate}/auth?audience=api;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
            proxy_connect_timeout 2s;
            proxy_read_timeout 10s;
        }
    }
    # --- end ---
}
"#;

/// An nginx process, killed when dropped (one process: `master_process off`).
struct Nginx {
    url: String,
    dir: tempfile::TempDir,
    _child: Child,
}

impl Nginx {
    /// Starts nginx with `auth_request` to the hook at `gate` (`host:port`) and waits,
    /// bounded, until it answers.
    async fn start(gate: &str) -> Nginx {
        let (dir, port, path) = proxy_config(NGINX_CONF, "nginx.conf", gate).await;
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&path)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("nginx could not be started ({e}); scripts/test installs it (Debian's nginx-full)")
            });
        let nginx = Nginx {
            url: format!("http://127.0.0.1:{port}"),
            dir,
            _child: child,
        };
        // Any answer will do: nginx answers once it has bound its port.
        eventually_or_log(
            Duration::from_secs(10),
            "nginx starts",
            || nginx.error_log(),
            async || try_get(&nginx.url).await.is_some(),
        )
        .await;
        nginx
    }

    /// A GET through nginx with an optional bearer token and extra headers.
    async fn get(
        &self,
        path: &str,
        bearer: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, String) {
        get_through(&format!("{}{path}", self.url), bearer, headers).await
    }

    fn error_log(&self) -> String {
        read(&self.dir.path().join("error.log"))
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The gate's `host:port`.
fn authority(gate: &TestGate) -> String {
    gate.url.trim_start_matches("http://").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_reaches_the_backend_with_the_identity_and_nothing_else_does() {
    let gate = spawn_gate(&[]).await;
    let nginx = Nginx::start(&authority(&gate)).await;
    let token = gate.workload_token("apps", "web", &["api"]);
    let uid = gate.sim.create_service_account("apps", "web");

    let (status, _, body) = nginx.get("/orders/42?x=1", Some(&token), &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", nginx.error_log());
    let identity = format!(
        "x-remote-user: system:serviceaccount:apps:web\nx-remote-uid: {uid}\n\
         x-remote-group: system:serviceaccounts\n"
    );
    assert_eq!(body, format!("backend uri=/orders/42?x=1\n{identity}"));

    // Identity headers a client sends never reach the backend, whether the gate sets
    // them (they are overwritten) or not (they are removed); without a token the
    // request never gets that far.
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
    let (_, _, body) = nginx.get("/", Some(&token), &forged).await;
    assert_eq!(body, format!("backend uri=/\n{identity}"));
    assert_eq!(
        nginx.get("/", None, &forged).await.0,
        StatusCode::UNAUTHORIZED
    );

    // Cached: more requests with the same token ask the API server nothing.
    let before = gate.upstream_calls();
    for _ in 0..5 {
        assert_eq!(nginx.get("/", Some(&token), &[]).await.0, StatusCode::OK);
    }
    assert_eq!(gate.upstream_calls(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_expired_and_wrong_audience_tokens_get_401_with_the_gates_challenge() {
    let gate = spawn_gate(&[]).await;
    let nginx = Nginx::start(&authority(&gate)).await;
    let uid = gate.sim.create_service_account("apps", "web");
    let t = crate::jwt::now();
    let expired = gate.signed_token("apps", "web", &uid, &["api"], t - 7200, t - 3600);
    let wrong_audience = gate.mint("apps", "web", &["vault"], None);

    let (status, h, body) = nginx.get("/", None, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(h["www-authenticate"], r#"Bearer realm="tokengate""#);
    assert!(!body.contains("backend"), "{body}");

    for (case, token, description) in [
        (
            "expired",
            expired.as_str(),
            "service account token has expired",
        ),
        (
            "wrong audience",
            wrong_audience.as_str(),
            "token audiences ['vault'] is invalid for the target audiences ['api']",
        ),
        ("garbage", "not-a-jwt", "invalid bearer token"),
    ] {
        let (status, h, body) = nginx.get("/", Some(token), &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{case}: {body}");
        let challenge = h["www-authenticate"].to_str().unwrap();
        assert!(
            challenge.starts_with(
                r#"Bearer realm="tokengate", error="invalid_token", error_description=""#
            ) && challenge.contains(description),
            "{case}: {challenge}"
        );
        // The body is nginx's own 401 page, not the gate's reason or the backend.
        assert!(
            body.contains("401 Authorization Required"),
            "{case}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecidable_token_or_a_gate_that_is_down_is_a_503_never_the_backend() {
    let gate = spawn_gate(&[("TOKENGATE_UPSTREAM_TIMEOUT", "1s")]).await;
    let nginx = Nginx::start(&authority(&gate)).await;
    let cached = gate.workload_token("apps", "web", &["api"]);
    assert_eq!(nginx.get("/", Some(&cached), &[]).await.0, StatusCode::OK);

    // The API server hangs: the gate answers 503, which auth_request makes a 500, and
    // docs/ingress.md's error_page a 503 again.
    gate.sim.fail_next(100, Failure::Hang);
    let fresh = gate.mint("apps", "web", &["api"], Some("web-0"));
    let (status, h, body) = nginx.get("/", Some(&fresh), &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body, "authentication unavailable, try again\n");
    assert!(h.get("www-authenticate").is_none());
    assert!(
        nginx
            .error_log()
            .contains("auth request unexpected status: 503"),
        "{}",
        nginx.error_log()
    );
    // Meanwhile a token the gate has decided before still gets in, and the backend's
    // own 500 is not mistaken for the gate's.
    assert_eq!(nginx.get("/", Some(&cached), &[]).await.0, StatusCode::OK);
    let (status, _, body) = nginx.get("/fails", Some(&cached), &[]).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, "backend failed\n")
    );

    // The gate is gone: nginx cannot connect (a 502 inside), and answers 503 the same.
    let url = gate.url.clone();
    drop(gate);
    let healthz = format!("{url}/healthz");
    eventually(
        Duration::from_secs(10),
        "the gate stops listening",
        async || try_get(&healthz).await.is_none(),
    )
    .await;
    for token in [&cached, &fresh] {
        let (status, _, body) = nginx.get("/", Some(token), &[]).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(!body.contains("backend"), "{body}");
    }
    assert!(
        nginx.error_log().contains("Connection refused"),
        "{}",
        nginx.error_log()
    );
}
