//! One real control plane for the whole tier: etcd and kube-apiserver built from their Go
//! modules (`scripts/kube-apiserver`), on loopback ports, with PKI made here.
//!
//! Started by the first test that asks for it and shared by the rest: a start costs
//! seconds, and every test works in namespaces and names of its own. Both servers run
//! under `scripts/kube-apiserver run`, whose standard input is a pipe from this process:
//! when the test binary exits, however it exits, the pipe closes and the script stops both
//! by PID and removes their files.
//!
//! It needs nothing of the test crate but `eventually.rs`, so that `benches/real.rs`
//! includes both by path and runs the same control plane.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::eventually::eventually_or_log;

/// The issuer and the API audience the API server runs with (`--service-account-issuer`,
/// `--api-audiences`), as a cluster made by kubeadm has them.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The service-account signing key the API server runs with (a test-only key), so that
/// tests can mint tokens the API server itself would have signed.
pub const SIGNING_KEY: &str = include_str!("../../fixtures/rsa-test-key.pem");

/// The running control plane.
pub struct ControlPlane {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The directory with the PKI, an admin kubeconfig and the servers' logs.
    pub dir: PathBuf,
    /// The CA that signed the serving certificate and the client certificates.
    pub ca_pem: String,
    /// The directory of the built binaries (kube-apiserver, kubectl, etcd).
    pub bin: PathBuf,
    /// Whether `deploy/`'s RBAC has been applied (see `real::deploy_rbac`).
    pub rbac: OnceCell<()>,
    /// The script holding both servers; its standard input is their lifeline.
    _lifeline: Mutex<Child>,
}

static CONTROL_PLANE: OnceCell<ControlPlane> = OnceCell::const_new();

/// A loopback port nothing listens on right now, for a server to bind a moment later.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The shared control plane, started on first use.
pub async fn control_plane() -> &'static ControlPlane {
    CONTROL_PLANE.get_or_init(|| start(&[])).await
}

/// A control plane of its own, with `flags` added to kube-apiserver's, for a test that
/// needs the API server otherwise than the others do. It runs until the test binary exits.
pub async fn own_control_plane(flags: &[&str]) -> &'static ControlPlane {
    Box::leak(Box::new(start(flags).await))
}

/// Where the binaries are: `TEST_KUBE_BIN` (set by `scripts/test`), or what
/// `scripts/kube-apiserver` builds or finds in its cache.
fn binaries() -> PathBuf {
    if let Some(dir) = std::env::var_os("TEST_KUBE_BIN") {
        return PathBuf::from(dir);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kube-apiserver");
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "scripts/kube-apiserver could not build the real API server (its error is above)"
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

async fn start(flags: &[&str]) -> ControlPlane {
    let bin = binaries();
    let dir = tempfile::Builder::new()
        .prefix("tokengate-kube-")
        .tempdir()
        .unwrap()
        .keep();
    let ca_pem = write_pki(&dir);
    let api_port = free_port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kube-apiserver");
    let lifeline = Command::new(&script)
        .arg("run")
        .arg(&dir)
        .args([free_port(), free_port(), api_port].map(|p| p.to_string()))
        .env("TEST_KUBE_BIN", &bin)
        .env("KUBE_APISERVER_FLAGS", flags.join(" "))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let plane = ControlPlane {
        url: format!("https://127.0.0.1:{api_port}"),
        dir,
        ca_pem,
        bin,
        rbac: OnceCell::new(),
        _lifeline: Mutex::new(lifeline),
    };
    plane.write_kubeconfig();
    plane.await_ready().await;
    plane
}

/// CA, serving certificate for 127.0.0.1, an admin client certificate in
/// `system:masters`, and the service-account key pair; returns the CA's PEM.
fn write_pki(dir: &Path) -> String {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "tokengate-test-ca");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca_params, &ca_key);

    let serving_key = KeyPair::generate().unwrap();
    let serving = CertificateParams::new(vec![
        "127.0.0.1".to_string(),
        "localhost".to_string(),
        "kubernetes.default.svc".to_string(),
    ])
    .unwrap()
    .signed_by(&serving_key, &issuer)
    .unwrap();

    let admin_key = KeyPair::generate().unwrap();
    let mut admin = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "tokengate-test-admin");
    name.push(DnType::OrganizationName, "system:masters");
    admin.distinguished_name = name;
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin = admin.signed_by(&admin_key, &issuer).unwrap();

    let files = [
        ("ca.crt", ca.pem()),
        ("apiserver.crt", serving.pem()),
        ("apiserver.key", serving_key.serialize_pem()),
        ("admin.crt", admin.pem()),
        ("admin.key", admin_key.serialize_pem()),
        ("sa.key", SIGNING_KEY.to_string()),
        (
            "sa.pub",
            include_str!("../../fixtures/rsa-test-key.pub.pem").to_string(),
        ),
    ];
    for (name, pem) in files {
        std::fs::write(dir.join(name), pem).unwrap();
    }
    ca.pem()
}

impl ControlPlane {
    /// tokengate's configuration in front of this API server with the README's settings:
    /// its CA, the reviewer token in `token_file`, audience `vault`, the reviewer as the
    /// one allowed caller.
    pub fn gate_config(&self, token_file: &Path, reviewer: &str) -> String {
        format!(
            r#"listen = "127.0.0.1:0"
shutdown_delay = "0s"

[upstream]
url = "{url}"
ca_file = "{ca}"
token_file = "{token}"

[policy]
audiences = ["vault"]
issuers = ["{ISSUER}"]

[access]
review_callers = ["{reviewer}"]
"#,
            url = self.url,
            ca = self.dir.join("ca.crt").display(),
            token = token_file.display(),
        )
    }

    /// The admin kubeconfig (client certificate in `system:masters`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    fn write_kubeconfig(&self) {
        let d = self.dir.display();
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: real\n  cluster:\n    server: {}\n    certificate-authority: {d}/ca.crt\ncontexts:\n- name: real\n  context:\n    cluster: real\n    user: admin\ncurrent-context: real\nusers:\n- name: admin\n  user:\n    client-certificate: {d}/admin.crt\n    client-key: {d}/admin.key\n",
            self.url
        );
        std::fs::write(self.kubeconfig(), text).unwrap();
    }

    /// A kube client with the admin's credentials.
    pub async fn admin(&self) -> Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(self.kubeconfig()).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        Client::try_from(config).unwrap()
    }

    /// Waits, bounded, for `/readyz` to answer 200. Another process's readiness has no
    /// event to await, so this polls.
    async fn await_ready(&self) {
        let client = self.admin().await;
        eventually_or_log(
            Duration::from_secs(90),
            "kube-apiserver becomes ready",
            || {
                format!(
                    "--- kube-apiserver.log (end)\n{}\n--- etcd.log (end)\n{}",
                    self.log_tail("kube-apiserver.log"),
                    self.log_tail("etcd.log"),
                )
            },
            async || {
                let request = http::Request::get("/readyz")
                    .body(kube::client::Body::empty())
                    .unwrap();
                client
                    .send(request)
                    .await
                    .is_ok_and(|response| response.status() == http::StatusCode::OK)
            },
        )
        .await;
    }

    /// The last lines of one of the servers' logs.
    pub fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Runs the built kubectl with the admin kubeconfig; its stdout, or a panic with both
    /// outputs.
    pub async fn kubectl(&self, args: &[&str]) -> String {
        self.kubectl_with(&self.kubeconfig(), args).await
    }

    /// Runs the built kubectl with `kubeconfig`.
    pub async fn kubectl_with(&self, kubeconfig: &Path, args: &[&str]) -> String {
        let out = tokio::process::Command::new(self.bin.join("kubectl"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Creates namespace `ns` (if new) and service account `ns/name`; returns its UID.
    pub async fn service_account(&self, ns: &str, name: &str) -> String {
        let client = self.admin().await;
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        let namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
        match namespaces.create(&PostParams::default(), &namespace).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("creating namespace {ns}: {e}"),
        }
        let accounts: Api<ServiceAccount> = Api::namespaced(client, ns);
        let account = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        let created = accounts
            .create(&PostParams::default(), &account)
            .await
            .unwrap_or_else(|e| panic!("creating serviceaccount {ns}/{name}: {e}"));
        created.metadata.uid.unwrap()
    }

    /// Creates pod `ns/pod` running as service account `account` (it stays Pending: there
    /// is no scheduler); returns its UID.
    pub async fn pod(&self, ns: &str, pod: &str, account: &str) -> String {
        self.pod_on_node(ns, pod, account, None).await
    }

    /// [`ControlPlane::pod`], already scheduled to `node` when given (which need not
    /// exist), so that a graceful delete leaves it terminating.
    pub async fn pod_on_node(
        &self,
        ns: &str,
        pod: &str,
        account: &str,
        node: Option<&str>,
    ) -> String {
        let pods: Api<Pod> = Api::namespaced(self.admin().await, ns);
        let object = serde_json::from_value(json!({
            "metadata": {"name": pod},
            "spec": {"serviceAccountName": account, "automountServiceAccountToken": false,
                     "nodeName": node,
                     "containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
        }))
        .unwrap();
        let created = pods
            .create(&PostParams::default(), &object)
            .await
            .unwrap_or_else(|e| panic!("creating pod {ns}/{pod}: {e}"));
        created.metadata.uid.unwrap()
    }

    /// The resourceVersion of the pods in `ns` now (a list's).
    pub async fn pods_resource_version(&self, ns: &str) -> String {
        let pods: Api<Pod> = Api::namespaced(self.admin().await, ns);
        let list = pods.list_metadata(&Default::default()).await.unwrap();
        list.metadata.resource_version.unwrap()
    }

    /// Whether a watch of the pods in `ns` from `resource_version` is told `410 Gone`:
    /// etcd has compacted that version away.
    pub async fn pods_watch_is_gone(&self, ns: &str, resource_version: &str) -> bool {
        use futures::StreamExt as _;
        let pods: Api<Pod> = Api::namespaced(self.admin().await, ns);
        let params = kube::api::WatchParams::default().timeout(1);
        let Ok(stream) = pods.watch(&params, resource_version).await else {
            return false;
        };
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if let Ok(kube::api::WatchEvent::Error(e)) = event {
                return e.code == 410;
            }
        }
        false
    }

    /// The `deletionTimestamp` of pod `ns/pod` (it must have one).
    pub async fn deletion_timestamp(&self, ns: &str, pod: &str) -> std::time::SystemTime {
        let pods: Api<Pod> = Api::namespaced(self.admin().await, ns);
        let pod = pods.get(pod).await.unwrap();
        let time = pod
            .metadata
            .deletion_timestamp
            .expect("the pod is being deleted");
        std::time::SystemTime::from(time.0)
    }

    /// Deletes pod `ns/pod` at once (grace period 0: there is no kubelet to wait for).
    pub async fn delete_pod(&self, ns: &str, pod: &str) {
        let pods: Api<Pod> = Api::namespaced(self.admin().await, ns);
        pods.delete(pod, &DeleteParams::default().grace_period(0))
            .await
            .unwrap_or_else(|e| panic!("deleting pod {ns}/{pod}: {e}"));
    }

    /// A token from the API server's TokenRequest for `ns/account`, bound to `pod` when
    /// given, for `audiences`, valid `seconds`.
    pub async fn token(
        &self,
        ns: &str,
        account: &str,
        audiences: &[&str],
        pod: Option<(&str, &str)>,
        seconds: i64,
    ) -> String {
        let bound = pod.map(|(name, uid)| ("Pod", name, uid));
        self.token_bound_to(ns, account, audiences, bound, seconds)
            .await
    }

    /// [`ControlPlane::token`], bound to an object of any kind (`Pod`, `Secret`) as
    /// (kind, name, uid).
    pub async fn token_bound_to(
        &self,
        ns: &str,
        account: &str,
        audiences: &[&str],
        bound: Option<(&str, &str, &str)>,
        seconds: i64,
    ) -> String {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.admin().await, ns);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: audiences.iter().map(|a| a.to_string()).collect(),
                expiration_seconds: Some(seconds),
                bound_object_ref: bound.map(|(kind, name, uid)| {
                    serde_json::from_value(
                        json!({"apiVersion": "v1", "kind": kind, "name": name, "uid": uid}),
                    )
                    .unwrap()
                }),
            },
            ..Default::default()
        };
        let answer = accounts
            .create_token_request(account, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("TokenRequest for {ns}/{account}: {e}"));
        answer.status.unwrap().token
    }

    /// POSTs `body` to `path` as the admin; the status and the answer as JSON.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let request = http::Request::post(path)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(body).unwrap())
            .unwrap();
        self.send(request).await
    }

    /// GETs `path` as the admin; the status and the answer as JSON.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(http::Request::get(path).body(Vec::new()).unwrap())
            .await
    }

    async fn send(&self, request: http::Request<Vec<u8>>) -> (u16, Value) {
        let client = self.admin().await;
        let response = client
            .send(request.map(kube::client::Body::from))
            .await
            .unwrap();
        let status = response.status().as_u16();
        let bytes = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// The API server's own answer to a TokenReview of `token` for `audiences`.
    pub async fn review(&self, token: &str, audiences: &[&str]) -> Value {
        let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                          "spec": {"token": token, "audiences": audiences}});
        let (status, answer) = self
            .post("/apis/authentication.k8s.io/v1/tokenreviews", &body)
            .await;
        assert_eq!(status, 201, "the API server reviews: {answer}");
        answer
    }
}
