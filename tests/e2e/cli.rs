//! The real binary: `check-config`, `inspect`, `serve` and `dev`, as an operator runs them.

use std::process::Stdio;

use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Command;

use crate::support::*;

async fn tokengate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary())
        .args(args)
        .env_remove("TOKENGATE_CONFIG")
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn check_config_reports_every_problem_at_once_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "lisen = \"x\"\n[cache]\nmax_ttl = \"soon\"\n[upstream]\nurl = \"https://10.0.0.1:6443\"\n",
    )
    .unwrap();
    let (code, _, stderr) = tokengate(&["check-config", "--config", path.to_str().unwrap()]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("3 problems in the configuration"),
        "{stderr}"
    );
    assert!(stderr.contains("unknown key `lisen`"), "{stderr}");
    assert!(
        stderr.contains("`cache.max_ttl` = \"soon\" is not a duration"),
        "{stderr}"
    );
    assert!(
        stderr.contains("`upstream.ca_file` is required"),
        "{stderr}"
    );

    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/local.toml");
    let (code, stdout, stderr) = tokengate(&["check-config", "--config", example]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("config OK"));

    let (code, _, stderr) = tokengate(&["check-config"]).await;
    assert_eq!(code, 2);
    assert!(
        stderr.contains("pass --config FILE or set TOKENGATE_CONFIG"),
        "{stderr}"
    );
}

#[tokio::test]
async fn serve_refuses_to_start_on_a_bad_config_or_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gate.toml");
    std::fs::write(
        &path,
        "[upstream]\nurl = \"https://127.0.0.1:6443\"\nca_file = \"/nonexistent/ca.crt\"\n",
    )
    .unwrap();
    let (code, _, stderr) = tokengate(&["serve", "--config", path.to_str().unwrap()]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("cannot read upstream CA file /nonexistent/ca.crt"),
        "{stderr}"
    );
}

#[tokio::test]
async fn inspect_decodes_offline_and_says_what_the_local_checks_make_of_it() {
    let gate = spawn_gate(&[]).await;
    let token = gate.workload_token("apps", "web", &["vault"]);
    let calls = gate.upstream_calls();
    let (code, stdout, _) = tokengate(&["inspect", &token, "--audience", "vault"]).await;
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("\"iss\": \"https://kubernetes.default.svc.cluster.local\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("service account: system:serviceaccount:apps:web"),
        "{stdout}"
    );
    assert!(stdout.contains("bound to pod: web-0"), "{stdout}");
    assert!(
        stdout.contains("exp: ") && (stdout.contains("(in 59m") || stdout.contains("(in 1h)")),
        "{stdout}"
    );
    assert!(stdout.contains("local checks: pass"), "{stdout}");
    let signature = token.rsplit('.').next().unwrap();
    assert!(!stdout.contains(signature), "inspect printed the signature");

    let (code, stdout, _) = tokengate(&["inspect", &token, "--audience", "payments"]).await;
    assert_eq!(code, 1);
    assert!(
        stdout.contains(
            r#"REJECT: token audiences ["vault"] is invalid for the target audiences ["payments"]"#
        ),
        "{stdout}"
    );

    let t = crate::jwt::now();
    let expired = gate.sim.sign_claims(&json!({
        "aud": ["vault"], "iat": t - 7200, "exp": t - 300, "iss": gate.sim.issuer(),
        "sub": "system:serviceaccount:apps:web",
        "kubernetes.io": {"namespace": "apps", "serviceaccount": {"name": "web", "uid": "u"}}
    }));
    let mut child = Command::new(binary())
        .args(["inspect", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt as _;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(expired.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout.contains("REJECT: service account token has expired: it expired at"),
        "{stdout}"
    );
    assert!(stdout.contains("(5m ago)"), "{stdout}");

    assert_eq!(
        gate.upstream_calls(),
        calls,
        "inspect sent nothing anywhere"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_prints_lines_that_work_and_stops_cleanly_on_sigterm() {
    let mut child = Command::new(binary())
        .args(["dev", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut gate, mut token, mut reviewer) = (None, None, None);
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let line = line.trim().to_string();
            if let Some(rest) = line.strip_prefix("gate") {
                gate = Some(rest.trim().to_string());
            } else if let Some(rest) = line.strip_prefix("export TOKEN=") {
                token = Some(rest.to_string());
            } else if let Some(rest) = line.strip_prefix("export REVIEWER=") {
                reviewer = Some(rest.to_string());
            } else if line.starts_with("Ctrl-C stops both") {
                break;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), read)
        .await
        .expect("dev prints its banner");
    let (gate, token, reviewer) = (gate.unwrap(), token.unwrap(), reviewer.unwrap());
    assert!(
        gate.starts_with("http://127.0.0.1:") && !gate.ends_with(":0"),
        "{gate}"
    );

    // The banner is printed before the gate is ready.
    await_ready(&gate).await;
    let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}});
    let out = Command::new("curl")
        .args([
            "-s",
            "-X",
            "POST",
            &format!("{gate}/review"),
            "-H",
            &format!("Authorization: Bearer {reviewer}"),
            "-d",
            &body.to_string(),
        ])
        .output()
        .await
        .expect("curl runs");
    let review: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(review["status"]["authenticated"], true, "{review}");
    assert_eq!(
        review["status"]["user"]["username"],
        "system:serviceaccount:demo:app"
    );

    let pid = child.id().unwrap();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .unwrap();
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
        .await
        .expect("dev stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}
