//! Socket-level tests of lists and watches: the requests `kube::runtime::watcher` (kube 5)
//! sends, byte for byte, over TLS to a sim on port 0, and finally the watcher itself.
//!
//! kube 5's default `watcher::Config` (`InitialListStrategy::ListWatch`, page size 500,
//! bookmarks on, no timeout set) sends, for `Api::<K>::all`:
//! - list: `GET /api/v1/pods?&limit=500`;
//! - watch: `GET /api/v1/pods?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=RV`
//!   (with `Accept-Encoding: identity`), RV the list's, then the last event's or bookmark's;
//! - for `Api::<PartialObjectMeta<K>>` (or `metadata_watcher`) the same queries with
//!   `Accept: application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1` on the
//!   list and `Accept: application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1` on
//!   the watch (and `Content-Type: application/json` on both).

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde_json::{Value, json};

use super::tests::{HttpsClient, client};
use super::*;

const LIST_METADATA: &str = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";
const WATCH_METADATA: &str = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";

/// How long a test waits for a watch event before it fails.
const WAIT: Duration = Duration::from_secs(5);

fn list_query() -> &'static str {
    "?&limit=500"
}

fn watch_query(rv: &str) -> String {
    format!("?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion={rv}")
}

async fn get(
    sim: &Sim,
    client: &HttpsClient,
    path_and_query: &str,
    token: &str,
    accept: Option<&str>,
) -> hyper::Response<Incoming> {
    let mut request = Request::builder()
        .method(Method::GET)
        .uri(format!("{}{path_and_query}", sim.url()))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("accept-encoding", "identity");
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let request = request.body(Full::new(Bytes::new())).expect("request");
    client.request(request).await.expect("response")
}

async fn get_json(
    sim: &Sim,
    client: &HttpsClient,
    path_and_query: &str,
    accept: Option<&str>,
) -> (StatusCode, Value) {
    let response = get(sim, client, path_and_query, &sim.reviewer_token(), accept).await;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, serde_json::from_slice(&bytes).expect("json"))
}

/// A watch response, read line by line as it arrives.
struct Lines {
    body: Incoming,
    buf: Vec<u8>,
    /// Every byte received, to check what never crossed the wire.
    raw: Vec<u8>,
}

/// What reading the next line of a watch gave.
#[derive(Debug)]
enum Next {
    Line(Value),
    /// The chunked body ended cleanly.
    End,
    /// The connection broke.
    Broken,
}

impl Lines {
    async fn open(
        sim: &Sim,
        client: &HttpsClient,
        path_and_query: &str,
        accept: Option<&str>,
    ) -> Lines {
        let response = get(sim, client, path_and_query, &sim.reviewer_token(), accept).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"],
            accept.unwrap_or("application/json")
        );
        Lines {
            body: response.into_body(),
            buf: Vec::new(),
            raw: Vec::new(),
        }
    }

    async fn next(&mut self) -> Next {
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return Next::Line(serde_json::from_slice(&line).expect("a JSON line"));
            }
            let frame = tokio::time::timeout(WAIT, self.body.frame())
                .await
                .expect("no watch event in time");
            match frame {
                None => return Next::End,
                Some(Err(_)) => return Next::Broken,
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                        self.raw.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    async fn event(&mut self) -> Value {
        match self.next().await {
            Next::Line(line) => line,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// The next event that is not a bookmark.
    async fn change(&mut self) -> Value {
        loop {
            let event = self.event().await;
            if event["type"] != "BOOKMARK" {
                return event;
            }
        }
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_watch_from_the_lists_version_sees_every_pod_deletion_with_its_uid() {
    let sim = Sim::start(SimOptions::default()).await.expect("sim");
    let client = client(&sim.ca_pem());
    sim.create_service_account("apps", "web");
    let first = sim.create_pod("apps", "web-0", "web");
    let second = sim.create_pod("apps", "web-1", "web");

    let (code, list) = get_json(
        &sim,
        &client,
        &format!("/api/v1/pods{}", list_query()),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        (list["kind"].as_str(), list["apiVersion"].as_str()),
        (Some("PodList"), Some("v1"))
    );
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_owned();
    assert_eq!(rv, sim.resource_version().to_string());
    assert!(list["metadata"].get("continue").is_none());
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    assert!(
        items
            .iter()
            .all(|i| i["metadata"]["resourceVersion"].is_string())
    );

    // Deleted between the list and the watch: replayed from the log, not lost.
    assert!(sim.delete_pod("apps", "web-0"));
    let mut watch = Lines::open(
        &sim,
        &client,
        &format!("/api/v1/pods{}", watch_query(&rv)),
        None,
    )
    .await;
    let event = watch.change().await;
    assert_eq!(event["type"], "DELETED");
    assert_eq!(event["object"]["kind"], "Pod");
    assert_eq!(event["object"]["metadata"]["uid"], first);
    // Deleted while watching: live.
    assert!(sim.delete_pod("apps", "web-1"));
    let event = watch.change().await;
    assert_eq!(event["type"], "DELETED");
    assert_eq!(event["object"]["metadata"]["uid"], second);
    assert_eq!(
        event["object"]["metadata"]["resourceVersion"],
        sim.resource_version().to_string(),
        "a deletion takes a new resourceVersion"
    );
    // Other resources and namespaces are not this watch's business.
    let pod = sim.create_pod("other", "x", "default");
    let event = watch.change().await;
    assert_eq!(
        (
            event["type"].as_str(),
            event["object"]["metadata"]["uid"].as_str()
        ),
        (Some("ADDED"), Some(pod.as_str()))
    );
    sim.create_service_account("apps", "more");
    let mut namespaced = Lines::open(
        &sim,
        &client,
        &format!("/api/v1/namespaces/apps/pods{}", watch_query(&rv)),
        None,
    )
    .await;
    let uids: Vec<Value> = [namespaced.change().await, namespaced.change().await]
        .iter()
        .map(|e| e["object"]["metadata"]["uid"].clone())
        .collect();
    assert_eq!(uids, [json!(first), json!(second)]);
}

#[tokio::test]
async fn bookmarks_arrive_with_the_current_version_and_timeout_ends_the_watch() {
    let sim = Sim::start(SimOptions::default()).await.expect("sim");
    let client = client(&sim.ca_pem());
    sim.set_bookmark_interval(Duration::from_millis(50));
    let rv = sim.resource_version().to_string();
    let mut watch = Lines::open(
        &sim,
        &client,
        &format!("/api/v1/serviceaccounts{}", watch_query(&rv)),
        None,
    )
    .await;
    // A pod is not a service account, but its version moves the bookmark.
    sim.create_service_account("apps", "web");
    sim.create_pod("apps", "web-0", "web");
    let current = sim.resource_version().to_string();
    let mut seen = Vec::new();
    let bookmark = loop {
        let event = watch.event().await;
        seen.push(event["type"].clone());
        if event["type"] == "BOOKMARK" && event["object"]["metadata"]["resourceVersion"] == current
        {
            break event;
        }
    };
    assert_eq!(
        bookmark["object"],
        json!({"kind": "ServiceAccount", "apiVersion": "v1", "metadata": {"resourceVersion": current}})
    );
    assert_eq!(seen.iter().filter(|t| *t == "ADDED").count(), 1);

    let mut short = Lines::open(
        &sim,
        &client,
        &format!("/api/v1/pods?watch=1&timeoutSeconds=1&resourceVersion={current}"),
        None,
    )
    .await;
    assert!(
        matches!(short.next().await, Next::End),
        "no bookmarks unless allowed, then the end"
    );
}

#[tokio::test]
async fn a_watch_from_a_forgotten_version_gets_410_inside_the_stream() {
    let sim = Sim::start(SimOptions::default()).await.expect("sim");
    let client = client(&sim.ca_pem());
    sim.create_pod("apps", "web-0", "default");
    sim.expire_watches();
    let current = sim.resource_version();
    let mut watch = Lines::open(
        &sim,
        &client,
        &format!("/api/v1/pods{}", watch_query("1")),
        None,
    )
    .await;
    assert_eq!(
        watch.event().await,
        json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
               "status": "Failure", "message": format!("too old resource version: 1 ({current})"),
               "reason": "Expired", "code": 410}})
    );
    assert!(matches!(watch.next().await, Next::End));
    // From the current version it is fine; from the future it is the API server's 504.
    Lines::open(
        &sim,
        &client,
        &format!("/api/v1/pods{}", watch_query(&current.to_string())),
        None,
    )
    .await;
    let (code, status) = get_json(
        &sim,
        &client,
        &format!("/api/v1/pods{}", watch_query(&(current + 5).to_string())),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(status["reason"], "Timeout");
    assert_eq!(
        status["message"],
        format!(
            "Too large resource version: {}, current: {current}",
            current + 5
        )
    );
}

#[tokio::test]
async fn expire_watches_ends_open_watches_with_410_and_they_must_relist() {
    let sim = Sim::start(SimOptions::default()).await.expect("sim");
    let client = client(&sim.ca_pem());
    sim.set_bookmark_interval(Duration::ZERO);
    let rv = sim.resource_version().to_string();
    let mut pods = Lines::open(
        &sim,
        &client,
        &format!("/api/v1/pods{}", watch_query(&rv)),
        None,
    )
    .await;
    let mut secrets = Lines::open(
        &sim,
        &client,
        &format!("/api/v1/secrets{}", watch_query(&rv)),
        Some(WATCH_METADATA),
    )
    .await;
    wait_until("two watches open", || sim.watches_open() == 2).await;
    sim.expire_watches();
    for watch in [&mut pods, &mut secrets] {
        let event = watch.event().await;
        assert_eq!(event["type"], "ERROR");
        assert_eq!(
            (
                event["object"]["code"].as_i64(),
                event["object"]["reason"].as_str()
            ),
            (Some(410), Some("Expired"))
        );
        assert!(matches!(watch.next().await, Next::End));
    }
    wait_until("watches closed", || sim.watches_open() == 0).await;
    // Over HTTP too.
    let _watch = Lines::open(
        &sim,
        &client,
        &format!("/api/v1/pods{}", watch_query(&rv)),
        None,
    )
    .await;
    let response = client
        .request(
            Request::post(format!("{}/sim/expire-watches", sim.url()))
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("knob");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_cut_watch_breaks_and_resuming_from_its_last_version_misses_nothing() {
    let sim = Sim::start(SimOptions::default()).await.expect("sim");
    let client = client(&sim.ca_pem());
    sim.create_service_account("apps", "web");
    let uid = sim.create_pod("apps", "web-0", "web");
    let rv = sim.resource_version().to_string();
    let mut watch = Lines::open(
        &sim,
        &client,
        &format!("/api/v1/pods{}", watch_query(&rv)),
        None,
    )
    .await;
    wait_until("watch open", || sim.watches_open() == 1).await;
    sim.cut_watches();
    assert!(matches!(watch.next().await, Next::Broken), "no clean end");
    wait_until("watch closed", || sim.watches_open() == 0).await;
    // Deleted while nobody watched.
    assert!(sim.delete_pod("apps", "web-0"));
    let mut resumed = Lines::open(
        &sim,
        &client,
        &format!("/api/v1/pods{}", watch_query(&rv)),
        None,
    )
    .await;
    let event = resumed.change().await;
    assert_eq!(
        (
            event["type"].as_str(),
            event["object"]["metadata"]["uid"].as_str()
        ),
        (Some("DELETED"), Some(uid.as_str()))
    );
}

#[tokio::test]
async fn metadata_only_lists_and_watches_never_carry_secret_contents() {
    let sim = Sim::start(SimOptions::default()).await.expect("sim");
    let client = client(&sim.ca_pem());
    let token = sim.legacy_token("apps", "legacy");
    let (code, list) = get_json(
        &sim,
        &client,
        &format!("/api/v1/secrets{}", list_query()),
        Some(LIST_METADATA),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        (list["kind"].as_str(), list["apiVersion"].as_str()),
        (Some("PartialObjectMetadataList"), Some("meta.k8s.io/v1"))
    );
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_owned();
    let item = &list["items"][0];
    assert_eq!(item["kind"], "PartialObjectMetadata");
    assert_eq!(item["apiVersion"], "meta.k8s.io/v1");
    assert!(
        item["metadata"]["name"]
            .as_str()
            .expect("name")
            .starts_with("legacy-token-")
    );
    let keys: Vec<&String> = item.as_object().expect("object").keys().collect();
    assert_eq!(keys, ["apiVersion", "kind", "metadata"], "no data, no type");
    assert!(!list.to_string().contains(&token));

    let mut watch = Lines::open(
        &sim,
        &client,
        &format!("/api/v1/secrets{}", watch_query(&rv)),
        Some(WATCH_METADATA),
    )
    .await;
    // Deleting the account deletes its token Secret, as the token controller does.
    assert!(sim.delete_service_account("apps", "legacy"));
    let event = watch.change().await;
    assert_eq!(event["type"], "DELETED");
    assert_eq!(event["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(
        event["object"]["metadata"]["name"],
        item["metadata"]["name"]
    );
    assert_eq!(event["object"]["metadata"]["uid"], item["metadata"]["uid"]);
    assert!(!String::from_utf8_lossy(&watch.raw).contains("\"data\""));

    // The whole objects are there for a client that asks for them.
    let (_, full) = get_json(&sim, &client, "/api/v1/namespaces/apps/secrets", None).await;
    assert_eq!(full["kind"], "SecretList");
    // A metadata request for the wrong shape is the API server's 406.
    let (code, status) = get_json(&sim, &client, "/api/v1/secrets", Some(WATCH_METADATA)).await;
    assert_eq!(
        (code, status["reason"].as_str()),
        (StatusCode::NOT_ACCEPTABLE, Some("NotAcceptable"))
    );
}

#[tokio::test]
async fn without_the_permission_lists_and_watches_get_the_api_servers_403() {
    let sim = Sim::start(SimOptions::default()).await.expect("sim");
    let client = client(&sim.ca_pem());
    sim.deny_watch(true);
    let user = "system:serviceaccount:tokengate:tokengate-reviewer";
    let (code, status) = get_json(
        &sim,
        &client,
        &format!("/api/v1/pods{}", watch_query("1")),
        Some(WATCH_METADATA),
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert_eq!(status["reason"], "Forbidden");
    assert_eq!(
        status["message"],
        format!(
            "pods is forbidden: User \"{user}\" cannot watch resource \"pods\" in API group \"\" at the cluster scope"
        )
    );
    let (code, status) = get_json(
        &sim,
        &client,
        "/api/v1/namespaces/apps/serviceaccounts?limit=500",
        None,
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert_eq!(
        status["message"],
        format!(
            "serviceaccounts is forbidden: User \"{user}\" cannot list resource \"serviceaccounts\" in API group \"\" in the namespace \"apps\""
        )
    );
    // Nobody else may either; unauthenticated callers get 401.
    sim.create_service_account("apps", "nosy");
    let other = sim
        .mint(&MintRequest {
            namespace: "apps".into(),
            service_account: "nosy".into(),
            ..MintRequest::default()
        })
        .expect("mint");
    let response = get(&sim, &client, "/api/v1/secrets", &other, None).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let response = get(&sim, &client, "/api/v1/secrets", "nope", None).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    sim.deny_watch(false);
    let (code, _) = get_json(&sim, &client, "/api/v1/secrets", None).await;
    assert_eq!(code, StatusCode::OK);
}

#[tokio::test]
async fn a_streaming_list_sends_the_state_then_a_marked_bookmark() {
    let sim = Sim::start(SimOptions::default()).await.expect("sim");
    let client = client(&sim.ca_pem());
    sim.set_bookmark_interval(Duration::ZERO);
    let uid = sim.create_pod("apps", "web-0", "default");
    // kube's `watcher::Config::default().streaming_lists()`.
    let query = "?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&resourceVersion=0";
    let mut watch = Lines::open(
        &sim,
        &client,
        &format!("/api/v1/pods{query}"),
        Some(WATCH_METADATA),
    )
    .await;
    let added = watch.event().await;
    assert_eq!(
        (
            added["type"].as_str(),
            added["object"]["metadata"]["uid"].as_str()
        ),
        (Some("ADDED"), Some(uid.as_str()))
    );
    let end = watch.event().await;
    assert_eq!(end["type"], "BOOKMARK");
    assert_eq!(end["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(
        end["object"]["metadata"]["annotations"],
        json!({"k8s.io/initial-events-end": "true"})
    );
    assert_eq!(
        end["object"]["metadata"]["resourceVersion"],
        sim.resource_version().to_string()
    );
}

/// A kube client for the sim, as the reviewer.
fn kube_client(sim: &Sim) -> kube::Client {
    let mut config = kube::Config::new(sim.url().parse().expect("url"));
    let ders = rustls_pemfile::certs(&mut sim.ca_pem().as_bytes())
        .map(|c| c.expect("pem").to_vec())
        .collect();
    config.root_cert = Some(ders);
    config.auth_info.token = Some(sim.reviewer_token().into());
    kube::Client::try_from(config).expect("client")
}

#[tokio::test]
async fn kubes_metadata_watcher_lists_follows_and_relists_after_410() {
    use kube::runtime::watcher::{self, Event as Watched};

    let sim = Sim::start(SimOptions::default()).await.expect("sim");
    sim.set_bookmark_interval(Duration::from_millis(100));
    let uid = sim.create_pod("apps", "web-0", "default");
    // As the gate watches: metadata only, kube's default configuration.
    let api = kube::Api::<kube::api::PartialObjectMeta<Pod>>::all(kube_client(&sim));
    let stream = watcher::watcher(api, watcher::Config::default());
    futures::pin_mut!(stream);
    let mut next = async || {
        tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("an event in time")
            .expect("endless")
    };
    assert!(matches!(next().await, Ok(Watched::Init)));
    match next().await {
        Ok(Watched::InitApply(pod)) => assert_eq!(pod.metadata.uid.as_deref(), Some(uid.as_str())),
        other => panic!("{other:?}"),
    }
    assert!(matches!(next().await, Ok(Watched::InitDone)));
    assert!(sim.delete_pod("apps", "web-0"));
    match next().await {
        Ok(Watched::Delete(pod)) => assert_eq!(pod.metadata.uid.as_deref(), Some(uid.as_str())),
        other => panic!("{other:?}"),
    }
    sim.expire_watches();
    match next().await {
        Err(watcher::Error::WatchError(status)) => assert_eq!(status.code, 410),
        other => panic!("{other:?}"),
    }
    assert!(matches!(next().await, Ok(Watched::Init)), "re-lists");
    assert!(matches!(next().await, Ok(Watched::InitDone)));
    // Cut: the watcher resumes from its last version and sees what happened meanwhile.
    let again = sim.create_pod("apps", "web-1", "default");
    match next().await {
        Ok(Watched::Apply(pod)) => assert_eq!(pod.metadata.uid.as_deref(), Some(again.as_str())),
        other => panic!("{other:?}"),
    }
    sim.cut_watches();
    wait_until("cut", || sim.watches_open() == 0).await;
    assert!(sim.delete_pod("apps", "web-1"));
    loop {
        match next().await {
            Ok(Watched::Delete(pod)) => {
                assert_eq!(pod.metadata.uid.as_deref(), Some(again.as_str()));
                break;
            }
            // The broken connection may surface as an error before the resumed watch.
            Err(watcher::Error::WatchFailed(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}
