//! deploy/: every manifest parses into its Kubernetes type with no unknown field, the
//! manifests agree with each other and with the config they carry (which the gate's own
//! validation accepts), the pod is hardened, and `kubectl kustomize` builds the set.
//!
//! k8s-openapi's types ignore fields they do not know, as the API server's lenient
//! decoding would (it drops them with a warning). So a misspelt field is caught by a
//! round trip instead: YAML → type → JSON must give back the YAML's JSON, and a field
//! that went missing was one the type does not have.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, Pod, PodSpec, SecurityContext, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokengate::config::{self, Config, UpstreamSource};

/// The namespace every namespaced object of deploy/ lives in.
const NAMESPACE: &str = "tokengate";

/// What a pod sees of the API server: the kubelet sets these in every container.
const IN_CLUSTER_ENV: [(&str, &str); 2] = [
    ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
    ("KUBERNETES_SERVICE_PORT", "443"),
];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// One parsed manifest, by kind.
#[allow(
    clippy::large_enum_variant,
    reason = "one per YAML document, moved once into its place: size does not matter"
)]
enum Manifest {
    Namespace(Namespace),
    ServiceAccount(ServiceAccount),
    ClusterRoleBinding(ClusterRoleBinding),
    ClusterRole(ClusterRole),
    ConfigMap(ConfigMap),
    Deployment(Deployment),
    Service(Service),
    PodDisruptionBudget(PodDisruptionBudget),
    NetworkPolicy(NetworkPolicy),
    Pod(Pod),
    /// A CRD (Prometheus Operator) that k8s-openapi has no type for: checked as YAML.
    ServiceMonitor(Value),
}

/// Parses `doc` into `T`, failing on a field `T` does not have, with the path to it.
fn strict<T: DeserializeOwned + Serialize>(origin: &str, doc: &Value) -> T {
    let parsed: T = serde_path_to_error::deserialize(doc.clone())
        .unwrap_or_else(|e| panic!("{origin}: `{}`: {}", e.path(), e.inner()));
    let back = serde_json::to_value(&parsed).unwrap();
    let mut unknown = Vec::new();
    lost_fields(doc, &back, "", &mut unknown);
    assert!(
        unknown.is_empty(),
        "{origin}: {} not a field of {} (misspelt, or in the wrong place?)",
        unknown.join(", "),
        doc["kind"]
    );
    // Nothing was dropped; nothing may have changed either (a value of the wrong shape
    // that the type coerced).
    assert_eq!(&back, doc, "{origin}: does not round-trip");
    parsed
}

/// Pushes the path of every field of `yaml` that `typed` lacks.
fn lost_fields(yaml: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (yaml, typed) {
        (Value::Object(y), Value::Object(t)) => {
            for (key, value) in y {
                let here = format!("{path}.{key}");
                match t.get(key) {
                    Some(tv) => lost_fields(value, tv, &here, out),
                    None => out.push(format!("`{here}`")),
                }
            }
        }
        (Value::Array(y), Value::Array(t)) => {
            for (i, (yv, tv)) in y.iter().zip(t).enumerate() {
                lost_fields(yv, tv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn parse(origin: &str, doc: &Value) -> Manifest {
    match doc["kind"].as_str() {
        Some("Namespace") => Manifest::Namespace(strict(origin, doc)),
        Some("ServiceAccount") => Manifest::ServiceAccount(strict(origin, doc)),
        Some("ClusterRoleBinding") => Manifest::ClusterRoleBinding(strict(origin, doc)),
        Some("ClusterRole") => Manifest::ClusterRole(strict(origin, doc)),
        Some("ConfigMap") => Manifest::ConfigMap(strict(origin, doc)),
        Some("Deployment") => Manifest::Deployment(strict(origin, doc)),
        Some("Service") => Manifest::Service(strict(origin, doc)),
        Some("PodDisruptionBudget") => Manifest::PodDisruptionBudget(strict(origin, doc)),
        Some("NetworkPolicy") => Manifest::NetworkPolicy(strict(origin, doc)),
        Some("Pod") => Manifest::Pod(strict(origin, doc)),
        Some("ServiceMonitor") => Manifest::ServiceMonitor(doc.clone()),
        other => panic!("{origin}: kind {other:?} has no check in tests/e2e/deploy.rs"),
    }
}

/// Every YAML document of `text`, as JSON values (empty documents skipped).
fn yaml_documents(origin: &str, text: &str) -> Vec<Value> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).unwrap_or_else(|e| panic!("{origin}: not YAML: {e}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// Every manifest file under deploy/ (not kustomization.yaml), recursively, sorted.
fn manifest_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml")
                && path.file_name().is_some_and(|n| n != "kustomization.yaml")
            {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&deploy_dir(), &mut files);
    files.sort();
    files
}

/// deploy/ parsed, one object of each kind (the examples apart).
struct Deploy {
    namespace: Namespace,
    service_account: ServiceAccount,
    binding: ClusterRoleBinding,
    /// The revocation watch's role and its binding.
    revocation_role: ClusterRole,
    revocation_binding: ClusterRoleBinding,
    config_map: ConfigMap,
    deployment: Deployment,
    service: Service,
    pdb: PodDisruptionBudget,
    network_policy: NetworkPolicy,
    service_monitor: Value,
    /// deploy/examples/: the workload pods and the service accounts they name.
    example_pods: Vec<Pod>,
    example_service_accounts: Vec<ServiceAccount>,
}

fn load() -> Deploy {
    let mut namespaces = Vec::new();
    let mut service_accounts = Vec::new();
    let mut bindings = Vec::new();
    let mut roles = Vec::new();
    let mut config_maps = Vec::new();
    let mut deployments = Vec::new();
    let mut services = Vec::new();
    let mut pdbs = Vec::new();
    let mut network_policies = Vec::new();
    let mut service_monitors = Vec::new();
    let mut example_pods = Vec::new();
    let mut example_service_accounts = Vec::new();
    let examples = deploy_dir().join("examples");
    for file in manifest_files() {
        let origin = file.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap();
        let origin = origin.display().to_string();
        let text = std::fs::read_to_string(&file).unwrap();
        let in_examples = file.starts_with(&examples);
        for doc in yaml_documents(&origin, &text) {
            match (parse(&origin, &doc), in_examples) {
                (Manifest::Pod(p), true) => example_pods.push(p),
                (Manifest::ServiceAccount(sa), true) => example_service_accounts.push(sa),
                (_, true) => panic!("{origin}: examples hold pods and their service accounts"),
                (Manifest::Namespace(x), false) => namespaces.push(x),
                (Manifest::ServiceAccount(x), false) => service_accounts.push(x),
                (Manifest::ClusterRoleBinding(x), false) => bindings.push(x),
                (Manifest::ClusterRole(x), false) => roles.push(x),
                (Manifest::ConfigMap(x), false) => config_maps.push(x),
                (Manifest::Deployment(x), false) => deployments.push(x),
                (Manifest::Service(x), false) => services.push(x),
                (Manifest::PodDisruptionBudget(x), false) => pdbs.push(x),
                (Manifest::NetworkPolicy(x), false) => network_policies.push(x),
                (Manifest::ServiceMonitor(x), false) => service_monitors.push(x),
                (Manifest::Pod(_), false) => panic!("{origin}: a bare Pod belongs in examples/"),
            }
        }
    }
    fn one<T>(kind: &str, mut v: Vec<T>) -> T {
        assert_eq!(v.len(), 1, "deploy/ should hold exactly one {kind}");
        v.pop().unwrap()
    }
    let (delegator, revocation): (Vec<_>, Vec<_>) = bindings
        .into_iter()
        .partition(|b| b.role_ref.name == "system:auth-delegator");
    Deploy {
        namespace: one("Namespace", namespaces),
        service_account: one("ServiceAccount", service_accounts),
        binding: one("ClusterRoleBinding to system:auth-delegator", delegator),
        revocation_role: one("ClusterRole", roles),
        revocation_binding: one("ClusterRoleBinding to the revocation role", revocation),
        config_map: one("ConfigMap", config_maps),
        deployment: one("Deployment", deployments),
        service: one("Service", services),
        pdb: one("PodDisruptionBudget", pdbs),
        network_policy: one("NetworkPolicy", network_policies),
        service_monitor: one("ServiceMonitor", service_monitors),
        example_pods,
        example_service_accounts,
    }
}

impl Deploy {
    fn pod_spec(&self) -> &PodSpec {
        self.deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("the Deployment has a pod template")
    }

    fn pod_labels(&self) -> &BTreeMap<String, String> {
        self.deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.labels.as_ref())
            .expect("the pod template has labels")
    }

    fn container(&self) -> &Container {
        let containers = &self.pod_spec().containers;
        assert_eq!(containers.len(), 1, "one container: the gate");
        &containers[0]
    }

    /// The config file the container reads, as the ConfigMap holds it.
    fn config_text(&self) -> &str {
        let args = self.container().args.as_deref().unwrap_or_default();
        let at = args
            .iter()
            .position(|a| a == "--config")
            .expect("the container passes --config");
        let path = Path::new(&args[at + 1]);
        let mount = self
            .container()
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| path.parent() == Some(Path::new(&m.mount_path)))
            .unwrap_or_else(|| panic!("no volume is mounted where {} lives", path.display()));
        assert!(
            mount.sub_path.is_none(),
            "a subPath mount never sees the ConfigMap change"
        );
        let volume = self
            .pod_spec()
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .expect("the mounted volume exists");
        let source = volume
            .config_map
            .as_ref()
            .expect("the volume is a ConfigMap");
        assert_eq!(Some(&source.name), self.config_map.metadata.name.as_ref());
        let key = path.file_name().unwrap().to_str().unwrap();
        self.config_map
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .unwrap_or_else(|| panic!("the ConfigMap has no key {key}, which --config reads"))
    }

    /// The config as the gate validates it inside a pod.
    fn config(&self) -> Config {
        config::from_str(self.config_text(), in_cluster_env(&[]))
            .unwrap_or_else(|e| panic!("the ConfigMap's config is refused: {e}"))
    }

    /// The container port a probe, Service or policy names, by name or number.
    fn container_port(&self, port: &IntOrString) -> i32 {
        let ports = self.container().ports.as_deref().unwrap_or_default();
        match port {
            IntOrString::Int(n) => {
                assert!(
                    ports.iter().any(|p| p.container_port == *n),
                    "port {n} is not a container port"
                );
                *n
            }
            IntOrString::String(name) => {
                ports
                    .iter()
                    .find(|p| p.name.as_deref() == Some(name))
                    .unwrap_or_else(|| panic!("no container port is named {name}"))
                    .container_port
            }
        }
    }
}

fn in_cluster_env(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    IN_CLUSTER_ENV
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The security context in force for the container: its own fields, else the pod's.
fn effective(pod: &PodSpec, c: &Container) -> SecurityContext {
    let pod_ctx = pod.security_context.clone().unwrap_or_default();
    let mut ctx = c.security_context.clone().unwrap_or_default();
    ctx.run_as_non_root = ctx.run_as_non_root.or(pod_ctx.run_as_non_root);
    ctx.run_as_user = ctx.run_as_user.or(pod_ctx.run_as_user);
    ctx.seccomp_profile = ctx.seccomp_profile.or(pod_ctx.seccomp_profile);
    ctx
}

#[test]
fn every_manifest_parses_into_its_kubernetes_type_with_no_unknown_field() {
    let d = load();
    assert!(
        !d.example_pods.is_empty(),
        "deploy/examples/ holds a workload pod"
    );
    // A misspelt field must fail here, not vanish: check the check.
    let typo = serde_json::json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 80, "tragetPort": "http"}]}
    });
    let caught = std::panic::catch_unwind(|| strict::<Service>("typo", &typo));
    assert!(caught.is_err(), "a misspelt field went unnoticed");
}

#[test]
fn kustomization_lists_every_manifest_but_the_optional_service_monitor() {
    let text = std::fs::read_to_string(deploy_dir().join("kustomization.yaml")).unwrap();
    let k: Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(k["kind"], "Kustomization");
    let listed: BTreeSet<&str> = k["resources"]
        .as_array()
        .expect("kustomization.yaml lists resources")
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let top_level: BTreeSet<String> = manifest_files()
        .iter()
        .filter(|f| f.parent() == Some(deploy_dir().as_path()))
        .map(|f| f.file_name().unwrap().to_str().unwrap().to_string())
        .filter(|n| n != "servicemonitor.yaml")
        .collect();
    let top_level: BTreeSet<&str> = top_level.iter().map(String::as_str).collect();
    assert_eq!(listed, top_level);
}

#[test]
fn kubectl_kustomize_builds_deploy_into_the_same_valid_objects() {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(deploy_dir())
        .output()
        .expect("kubectl is installed (scripts/test installs it)");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/ failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = yaml_documents("kubectl kustomize deploy/", &stdout);
    let mut kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ClusterRoleBinding",
            "ConfigMap",
            "Deployment",
            "Namespace",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Service",
            "ServiceAccount",
        ]
    );
    for doc in &docs {
        parse("kubectl kustomize deploy/", doc);
    }
}

#[test]
fn config_map_holds_a_config_the_gate_accepts_inside_a_pod() {
    let d = load();
    let c = d.config();
    assert_eq!(c.policy.audiences, ["vault"]);
    assert!(
        !c.access.users.is_empty() || !c.access.groups.is_empty(),
        "access.review_callers names Vault's reviewer, else every caller is refused"
    );
    // No [upstream]: the API server and reviewer credential come from the pod.
    match &c.upstream.source {
        UpstreamSource::Direct {
            url, token_file, ..
        } => {
            assert_eq!(url.as_str(), "https://10.96.0.1/");
            assert_eq!(
                token_file.as_deref(),
                Some(Path::new(config::IN_CLUSTER_DIR).join("token").as_path())
            );
        }
        other => panic!("expected the in-cluster upstream, got {other:?}"),
    }
}

#[test]
fn probes_service_and_network_policy_reach_the_port_the_config_listens_on() {
    let d = load();
    let port = i32::from(d.config().listen.port());
    let c = d.container();

    let live = c.liveness_probe.as_ref().and_then(|p| p.http_get.as_ref());
    let live = live.expect("an HTTP liveness probe");
    assert_eq!(live.path.as_deref(), Some("/healthz"));
    assert_eq!(
        d.container_port(&live.port),
        port,
        "liveness probe vs. listen"
    );
    let ready = c.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref());
    let ready = ready.expect("an HTTP readiness probe");
    assert_eq!(ready.path.as_deref(), Some("/readyz"));
    assert_eq!(
        d.container_port(&ready.port),
        port,
        "readiness probe vs. listen"
    );

    let spec = d.service.spec.as_ref().unwrap();
    assert_eq!(
        spec.selector.as_ref(),
        Some(d.pod_labels()),
        "Service selector"
    );
    let ports = spec.ports.as_deref().unwrap_or_default();
    assert_eq!(ports.len(), 1);
    assert_eq!(
        ports[0].port, 8080,
        "the port README and Vault's kubernetes_host use"
    );
    let target = ports[0].target_port.as_ref().expect("a targetPort");
    assert_eq!(
        d.container_port(target),
        port,
        "Service targetPort vs. listen"
    );

    let np = d.network_policy.spec.as_ref().unwrap();
    assert_eq!(
        np.pod_selector
            .as_ref()
            .and_then(|s| s.match_labels.as_ref()),
        Some(d.pod_labels())
    );
    for rule in np.ingress.iter().flatten() {
        for p in rule.ports.iter().flatten() {
            let p = p.port.as_ref().expect("ingress names the port");
            assert_eq!(d.container_port(p), port, "NetworkPolicy port vs. listen");
        }
    }
    let types = np.policy_types.as_deref().unwrap_or_default();
    assert!(types.iter().any(|t| t == "Ingress") && types.iter().any(|t| t == "Egress"));
}

#[test]
fn deployment_runs_two_spread_replicas_that_drain_within_their_grace_period() {
    let d = load();
    let spec = d.deployment.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    assert_eq!(
        spec.selector.match_labels.as_ref(),
        Some(d.pod_labels()),
        "the selector picks the template's pods"
    );
    let pod = d.pod_spec();
    let spread = pod
        .topology_spread_constraints
        .as_deref()
        .unwrap_or_default();
    assert!(
        spread
            .iter()
            .any(|t| t.topology_key == "kubernetes.io/hostname"
                && t.when_unsatisfiable == "DoNotSchedule"),
        "replicas must land on different nodes"
    );

    let c = d.config();
    let needed = (c.shutdown.delay + c.shutdown.grace).as_secs();
    let granted = pod.termination_grace_period_seconds.unwrap_or(30);
    assert!(
        u64::try_from(granted).unwrap() > needed,
        "terminationGracePeriodSeconds {granted} leaves no room for a drain of {needed}s"
    );

    let pdb = d.pdb.spec.as_ref().unwrap();
    assert_eq!(pdb.min_available, Some(IntOrString::Int(1)));
    assert_eq!(
        pdb.selector.as_ref().and_then(|s| s.match_labels.as_ref()),
        Some(d.pod_labels())
    );

    let resources = d.container().resources.as_ref().expect("resources");
    let requests = resources.requests.as_ref().expect("resource requests");
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"));
    let limits = resources.limits.as_ref().expect("resource limits");
    assert!(limits.contains_key("memory"));
}

#[test]
fn deployment_runs_as_the_restricted_pod_security_standard_asks() {
    let d = load();
    let ctx = effective(d.pod_spec(), d.container());
    assert_eq!(ctx.run_as_non_root, Some(true));
    let uid = ctx
        .run_as_user
        .expect("a numeric UID, which the kubelet can check");
    assert!(uid > 0, "runAsUser {uid} is root");
    assert_eq!(ctx.read_only_root_filesystem, Some(true));
    assert_eq!(ctx.allow_privilege_escalation, Some(false));
    let caps = ctx.capabilities.clone().unwrap_or_default();
    assert_eq!(caps.drop.unwrap_or_default(), ["ALL"]);
    assert!(
        caps.add.unwrap_or_default().is_empty(),
        "no capability added back"
    );
    assert_eq!(
        ctx.seccomp_profile.map(|s| s.type_),
        Some("RuntimeDefault".to_string())
    );
    assert_eq!(ctx.privileged, None);

    // The namespace enforces the same, so nothing weaker runs beside the gate.
    let labels = d.namespace.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("restricted")
    );
}

#[test]
fn service_link_variables_do_not_stop_the_gate_even_with_links_on() {
    let d = load();
    assert_eq!(d.pod_spec().enable_service_links, Some(false));
    // What the kubelet injects for the `tokengate` Service when links are on; the gate
    // must start all the same (a namespace may turn links back on).
    let service_links = [
        ("TOKENGATE_SERVICE_HOST", "10.96.12.34"),
        ("TOKENGATE_SERVICE_PORT", "8080"),
        ("TOKENGATE_SERVICE_PORT_HTTP", "8080"),
        ("TOKENGATE_PORT", "tcp://10.96.12.34:8080"),
        ("TOKENGATE_PORT_8080_TCP", "tcp://10.96.12.34:8080"),
        ("TOKENGATE_PORT_8080_TCP_PROTO", "tcp"),
        ("TOKENGATE_PORT_8080_TCP_PORT", "8080"),
        ("TOKENGATE_PORT_8080_TCP_ADDR", "10.96.12.34"),
    ];
    if let Err(e) = config::from_str(d.config_text(), in_cluster_env(&service_links)) {
        panic!("service-link variables stop the gate: {e}");
    }
}

#[test]
fn the_gate_reviews_with_its_own_service_account_bound_to_auth_delegator() {
    let d = load();
    let pod = d.pod_spec();
    assert_eq!(
        pod.service_account_name.as_ref(),
        d.service_account.metadata.name.as_ref()
    );
    assert_ne!(
        pod.automount_service_account_token,
        Some(false),
        "the mounted token is the reviewer credential"
    );
    assert_ne!(
        d.service_account.automount_service_account_token,
        Some(false)
    );

    let role = &d.binding.role_ref;
    assert_eq!(
        (role.kind.as_str(), role.name.as_str()),
        ("ClusterRole", "system:auth-delegator")
    );
    let subjects = d.binding.subjects.as_deref().unwrap_or_default();
    assert!(subjects.iter().any(|s| s.kind == "ServiceAccount"
        && Some(&s.name) == d.service_account.metadata.name.as_ref()
        && s.namespace.as_deref() == Some(NAMESPACE)));

    assert_eq!(d.namespace.metadata.name.as_deref(), Some(NAMESPACE));
    for (kind, ns) in [
        ("ServiceAccount", &d.service_account.metadata.namespace),
        ("ConfigMap", &d.config_map.metadata.namespace),
        ("Deployment", &d.deployment.metadata.namespace),
        ("Service", &d.service.metadata.namespace),
        ("PodDisruptionBudget", &d.pdb.metadata.namespace),
        ("NetworkPolicy", &d.network_policy.metadata.namespace),
    ] {
        assert_eq!(ns.as_deref(), Some(NAMESPACE), "{kind}'s namespace");
    }
}

#[test]
fn example_pod_projects_a_vault_token_as_the_kubernetes_docs_show() {
    let d = load();
    let audiences = d.config().policy.audiences;
    for pod in &d.example_pods {
        let spec = pod.spec.as_ref().unwrap();
        let sa = spec
            .service_account_name
            .as_ref()
            .expect("a service account");
        assert!(
            d.example_service_accounts
                .iter()
                .any(|s| s.metadata.name.as_ref() == Some(sa)),
            "the example creates the service account {sa} it runs as"
        );
        let projected: Vec<_> = spec
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| v.projected.as_ref())
            .flat_map(|p| p.sources.iter().flatten())
            .filter_map(|s| s.service_account_token.as_ref())
            .collect();
        assert_eq!(projected.len(), 1, "one projected token");
        let token = projected[0];
        assert_eq!(token.audience.as_deref(), Some("vault"));
        assert!(audiences.iter().any(|a| a == "vault"), "the gate checks it");
        assert_eq!(token.expiration_seconds, Some(7200));
        assert_eq!(token.path, "vault-token");
    }
}

#[test]
fn service_monitor_scrapes_metrics_on_the_services_named_port() {
    let d = load();
    let m = &d.service_monitor;
    assert_eq!(m["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(m["metadata"]["namespace"], NAMESPACE);
    let labels = d.service.metadata.labels.clone().unwrap_or_default();
    let selector = m["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("selector.matchLabels");
    for (k, v) in selector {
        assert_eq!(
            labels.get(k).map(String::as_str),
            v.as_str(),
            "the Service lacks label {k}"
        );
    }
    assert_eq!(m["spec"]["namespaceSelector"]["matchNames"][0], NAMESPACE);
    let endpoints = m["spec"]["endpoints"].as_array().expect("endpoints");
    assert_eq!(endpoints.len(), 1);
    let port_name = d.service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0]
        .name
        .clone();
    assert_eq!(endpoints[0]["port"].as_str(), port_name.as_deref());
    assert_eq!(endpoints[0]["path"], "/metrics");
}

#[test]
fn the_revocation_watch_may_list_and_watch_pods_and_service_accounts_but_no_secrets() {
    let d = load();
    let config = config::from_str(d.config_text(), in_cluster_env(&[])).unwrap();
    assert!(config.revocation.watch, "the ConfigMap turns the watch on");
    assert!(!config.revocation.secrets);
    let rules = d.revocation_role.rules.as_deref().unwrap_or_default();
    let mut granted = BTreeSet::new();
    for rule in rules {
        assert_eq!(
            rule.api_groups.as_deref(),
            Some(&[String::new()][..]),
            "core group only"
        );
        for resource in rule.resources.iter().flatten() {
            for verb in &rule.verbs {
                granted.insert(format!("{verb} {resource}"));
            }
        }
    }
    let expected: BTreeSet<String> = [
        "list pods",
        "watch pods",
        "list serviceaccounts",
        "watch serviceaccounts",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(granted, expected, "exactly what the metadata watch needs");
    assert_eq!(
        Some(&d.revocation_binding.role_ref.name),
        d.revocation_role.metadata.name.as_ref()
    );
    let subjects = d.revocation_binding.subjects.as_deref().unwrap_or_default();
    assert!(subjects.iter().any(|s| s.kind == "ServiceAccount"
        && Some(&s.name) == d.service_account.metadata.name.as_ref()
        && s.namespace.as_deref() == Some(NAMESPACE)));
}
