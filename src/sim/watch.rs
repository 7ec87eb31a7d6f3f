//! List and watch of pods, service accounts and secrets, as the API server serves them to
//! informers and to `kube::runtime::watcher`.
//!
//! Responsible for: the list/watch query parameters (`watch`, `resourceVersion`,
//! `resourceVersionMatch`, `limit`, `continue`, `timeoutSeconds`, `allowWatchBookmarks`,
//! `sendInitialEvents`), the RBAC check (`list`/`watch`), content negotiation between
//! whole objects and metadata only (`Accept: application/json;as=PartialObjectMetadataList;
//! g=meta.k8s.io;v=v1` for lists, `…as=PartialObjectMetadata…` for watches: then Secret
//! contents never leave the sim), and the watch stream: newline-delimited JSON events in
//! resourceVersion order, replayed from the change log then followed live, `BOOKMARK`s on
//! a timer, an `ERROR` event with `410 Expired` when the log no longer reaches back, and
//! the end of the stream after `timeoutSeconds`.
//!
//! A list answers the current state in one page (the sim never hands out `continue`
//! tokens, whatever `limit` says). Label and field selectors are refused rather than
//! ignored, since the sim does not implement them.
//!
//! Not responsible for: the change log itself (see `events`), storage (see `store`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta;
use k8s_openapi::{List, ListableResource};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::time::{Instant, Interval};

use super::api::{Shared, caller, json_response};
use super::cluster::Cluster;
use super::events::{Event, Expired, Signal};
use super::server::KillSwitch;
use super::status::ApiError;
use super::store::Stored;

/// How long a watch lasts without `timeoutSeconds` (the API server picks 30 to 60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// The group and version of the metadata-only shapes.
const META_API_VERSION: &str = "meta.k8s.io/v1";

/// The annotation on the bookmark that ends a streaming list's initial events.
const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";

/// A resource that can be listed and watched.
pub(crate) trait Watchable: Stored + ListableResource {}
impl<T: Stored + ListableResource> Watchable for T {}

/// `GET /api/v1/{resource}`: a list or (with `watch=true`) a watch across namespaces.
pub(crate) async fn all_namespaces<T: Watchable>(
    State(cluster): Shared,
    RawQuery(query): RawQuery,
    kill: Option<Extension<KillSwitch>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let kill = kill.map(|Extension(k)| k);
    serve::<T>(cluster, None, query.as_deref(), &headers, kill)
}

/// `GET /api/v1/namespaces/{ns}/{resource}`: a list or a watch in one namespace.
pub(crate) async fn in_namespace<T: Watchable>(
    State(cluster): Shared,
    Path(ns): Path<String>,
    RawQuery(query): RawQuery,
    kill: Option<Extension<KillSwitch>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let kill = kill.map(|Extension(k)| k);
    serve::<T>(cluster, Some(ns), query.as_deref(), &headers, kill)
}

fn serve<T: Watchable>(
    cluster: Arc<Cluster>,
    namespace: Option<String>,
    query: Option<&str>,
    headers: &HeaderMap,
    kill: Option<KillSwitch>,
) -> Result<Response, ApiError> {
    let user = caller(&cluster, headers)?;
    let query = Query::parse(query)?;
    let verb = if query.watch { "watch" } else { "list" };
    if !cluster.store().may_watch(user.username()) {
        return Err(ApiError::forbidden_in(
            user.username(),
            verb,
            T::URL_PATH_SEGMENT,
            T::GROUP,
            namespace.as_deref(),
        ));
    }
    query.validate()?;
    let shape = Shape::negotiate(headers, query.watch)?;
    let scope = Scope {
        resource: T::URL_PATH_SEGMENT,
        namespace,
    };
    if query.watch {
        watch::<T>(cluster, scope, &query, shape, kill)
    } else {
        list::<T>(&cluster, &scope, &query, shape)
    }
}

// ---------------------------------------------------------------------------------------
// Query parameters

/// The list/watch query parameters the sim reads; others are ignored, as the API server
/// ignores parameters it does not know.
#[derive(Debug, Default)]
struct Query {
    watch: bool,
    resource_version: Option<String>,
    resource_version_match: Option<String>,
    continue_token: Option<String>,
    label_selector: Option<String>,
    field_selector: Option<String>,
    timeout_seconds: Option<u64>,
    allow_watch_bookmarks: bool,
    send_initial_events: Option<bool>,
}

impl Query {
    fn parse(raw: Option<&str>) -> Result<Query, ApiError> {
        let mut query = Query::default();
        // `form_urlencoded` skips empty pairs, as in kube's `…/pods?&watch=true`.
        for (key, value) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
            let text = || Some(value.to_string()).filter(|v| !v.is_empty());
            match &*key {
                "watch" => query.watch = parse_bool(&key, &value)?,
                "resourceVersion" => query.resource_version = text(),
                "resourceVersionMatch" => query.resource_version_match = text(),
                "continue" => query.continue_token = text(),
                "labelSelector" => query.label_selector = text(),
                "fieldSelector" => query.field_selector = text(),
                "allowWatchBookmarks" => query.allow_watch_bookmarks = parse_bool(&key, &value)?,
                "sendInitialEvents" => {
                    query.send_initial_events = Some(parse_bool(&key, &value)?);
                }
                "timeoutSeconds" => {
                    query.timeout_seconds = Some(value.parse().map_err(|_| {
                        ApiError::bad_request(format!(
                            "invalid value {value:?} for timeoutSeconds: not a whole number of seconds"
                        ))
                    })?);
                }
                // `limit` is honoured by answering everything in one page.
                _ => {}
            }
        }
        Ok(query)
    }

    /// The API server's `ListOptions` validation, as far as the sim serves it.
    fn validate(&self) -> Result<(), ApiError> {
        for (name, selector) in [
            ("labelSelector", &self.label_selector),
            ("fieldSelector", &self.field_selector),
        ] {
            if let Some(selector) = selector {
                return Err(ApiError::bad_request(format!(
                    "{name} {selector:?} is not supported by the simulated API server"
                )));
            }
        }
        if self.continue_token.is_some() {
            return Err(ApiError::bad_request(
                "continue key is not valid: the simulated API server answers every list in one page",
            ));
        }
        let invalid = |field: &str, detail: &str| {
            ApiError::invalid("ListOptions.meta.k8s.io", "", field, detail)
        };
        let rv_match = self.resource_version_match.as_deref();
        if self.watch {
            match (self.send_initial_events, rv_match) {
                (None, Some(_)) => Err(invalid(
                    "resourceVersionMatch",
                    "Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
                )),
                (Some(_), m) if m != Some("NotOlderThan") => Err(invalid(
                    "resourceVersionMatch",
                    &format!(
                        "Unsupported value: {:?}: supported values: \"NotOlderThan\"",
                        m.unwrap_or_default()
                    ),
                )),
                (Some(true), _) if !self.allow_watch_bookmarks => Err(invalid(
                    "allowWatchBookmarks",
                    "Required value: allowWatchBookmarks must be set to true when sendInitialEvents is true",
                )),
                _ => Ok(()),
            }
        } else if self.send_initial_events.is_some() {
            Err(invalid(
                "sendInitialEvents",
                "Forbidden: sendInitialEvents is forbidden for list",
            ))
        } else {
            match (rv_match, self.resource_version.as_deref()) {
                (None, _) | (Some("NotOlderThan"), Some(_)) => Ok(()),
                (Some("Exact"), Some("0")) => Err(invalid(
                    "resourceVersionMatch",
                    "Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                )),
                (Some(_), None) => Err(invalid(
                    "resourceVersionMatch",
                    "Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
                )),
                (Some("Exact"), Some(_)) => Ok(()),
                (Some(other), Some(_)) => Err(invalid(
                    "resourceVersionMatch",
                    &format!(
                        "Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
                    ),
                )),
            }
        }
    }

    /// `resourceVersion` as a number; `None` when unset or `"0"` ("any").
    fn resource_version(&self) -> Result<Option<u64>, ApiError> {
        match self.resource_version.as_deref() {
            None | Some("0") => Ok(None),
            Some(rv) => rv
                .parse()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}"))),
        }
    }
}

/// A boolean query parameter, read as Go's `strconv.ParseBool` reads it.
fn parse_bool(key: &str, value: &str) -> Result<bool, ApiError> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "" | "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(ApiError::bad_request(format!(
            "invalid value {value:?} for {key}: strconv.ParseBool: parsing {value:?}: invalid syntax"
        ))),
    }
}

// ---------------------------------------------------------------------------------------
// Content negotiation

/// What the client asked to receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Whole objects (`application/json`).
    Full,
    /// `PartialObjectMetadata(List)` in `meta.k8s.io/v1`: metadata only.
    Metadata,
}

impl Shape {
    /// Picks the first media range of `Accept` the sim can serve, as the API server
    /// does: JSON, whole or (with `as=PartialObjectMetadata` for a watch,
    /// `as=PartialObjectMetadataList` for a list, `g=meta.k8s.io`, `v=v1`) metadata only.
    /// Other `as=` transformations (`Table`) and other media types are skipped.
    fn negotiate(headers: &HeaderMap, watch: bool) -> Result<Shape, ApiError> {
        let ranges: Vec<&str> = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .collect();
        if ranges.is_empty() {
            return Ok(Shape::Full);
        }
        let wanted = if watch {
            "PartialObjectMetadata"
        } else {
            "PartialObjectMetadataList"
        };
        for range in ranges {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default();
            if !matches!(media, "application/json" | "application/*" | "*/*") {
                continue;
            }
            let (mut as_kind, mut group, mut version) = (None, None, None);
            for param in parts {
                if let Some((key, value)) = param.split_once('=') {
                    let value = value.trim().trim_matches('"');
                    match key.trim() {
                        "as" => as_kind = Some(value),
                        "g" => group = Some(value),
                        "v" => version = Some(value),
                        _ => {}
                    }
                }
            }
            match as_kind {
                None => return Ok(Shape::Full),
                Some(kind)
                    if kind == wanted && group == Some("meta.k8s.io") && version == Some("v1") =>
                {
                    return Ok(Shape::Metadata);
                }
                // The API server negotiates these, then fails the transformation.
                Some(kind @ ("PartialObjectMetadata" | "PartialObjectMetadataList")) => {
                    let actual = if watch { "is not a list" } else { "is a list" };
                    return Err(ApiError::not_acceptable(format!(
                        "you requested {kind}, but the requested object {actual}"
                    )));
                }
                Some(_) => {}
            }
        }
        Err(ApiError::not_acceptable(
            "only the following media types are accepted: application/json, \
             application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1 (lists), \
             application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1 (watches)",
        ))
    }

    /// The `Content-Type` of a list in this shape.
    fn list_content_type(self) -> &'static str {
        match self {
            Shape::Full => "application/json",
            Shape::Metadata => "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
        }
    }

    /// The `Content-Type` of a watch in this shape.
    fn watch_content_type(self) -> &'static str {
        match self {
            Shape::Full => "application/json",
            Shape::Metadata => "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1",
        }
    }
}

/// An object's metadata as `PartialObjectMetadata`.
#[derive(Serialize)]
struct Partial<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    metadata: &'a Value,
}

impl<'a> Partial<'a> {
    fn of(object: &'a Value) -> Partial<'a> {
        Partial {
            api_version: META_API_VERSION,
            kind: "PartialObjectMetadata",
            metadata: &object["metadata"],
        }
    }
}

// ---------------------------------------------------------------------------------------
// List

/// Which objects a request covers.
#[derive(Debug, Clone)]
struct Scope {
    resource: &'static str,
    namespace: Option<String>,
}

impl Scope {
    fn covers(&self, event: &Event) -> bool {
        event.resource == self.resource
            && self
                .namespace
                .as_deref()
                .is_none_or(|ns| ns == event.namespace)
    }
}

fn list<T: Watchable>(
    cluster: &Cluster,
    scope: &Scope,
    query: &Query,
    shape: Shape,
) -> Result<Response, ApiError> {
    let requested = query.resource_version()?;
    let exact = query.resource_version_match.as_deref() == Some("Exact");
    let (items, current) = {
        let store = cluster.store();
        let current = store.resource_version();
        match requested {
            Some(rv) if rv > current => {
                return Err(ApiError::too_large_resource_version(rv, current));
            }
            // The sim keeps no history of whole states: an exact read of the past is
            // as gone as if etcd had compacted it.
            Some(rv) if exact && rv < current => {
                return Err(ApiError::expired(
                    Expired {
                        requested: rv,
                        floor: current,
                    }
                    .message(),
                ));
            }
            _ => {}
        }
        (store.list::<T>(scope.namespace.as_deref()), current)
    };
    let metadata = ListMeta {
        resource_version: Some(current.to_string()),
        ..ListMeta::default()
    };
    let response = match shape {
        Shape::Full => json_response(StatusCode::OK, &List::<T> { items, metadata }),
        Shape::Metadata => {
            let items: Vec<Value> = items
                .iter()
                .map(|item| serde_json::to_value(item).unwrap_or_default())
                .collect();
            let list = serde_json::json!({
                "apiVersion": META_API_VERSION,
                "kind": "PartialObjectMetadataList",
                "metadata": metadata,
                "items": items.iter().map(Partial::of).collect::<Vec<_>>(),
            });
            json_response(StatusCode::OK, &list)
        }
    };
    Ok(with_content_type(response, shape.list_content_type()))
}

fn with_content_type(mut response: Response, content_type: &'static str) -> Response {
    if response.status().is_success() {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    response
}

// ---------------------------------------------------------------------------------------
// Watch

/// One watch event line.
#[derive(Serialize)]
struct Line<'a, O: Serialize> {
    #[serde(rename = "type")]
    type_: &'a str,
    object: O,
}

fn line(type_: &str, object: impl Serialize) -> Bytes {
    let mut bytes = serde_json::to_vec(&Line { type_, object }).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// Starts a watch: under one store lock, the events it must see first (the current state
/// as `ADDED` events, or the log replayed from `resourceVersion`) and a subscription to
/// what comes next, so nothing falls between them.
fn watch<T: Watchable>(
    cluster: Arc<Cluster>,
    scope: Scope,
    query: &Query,
    shape: Shape,
    kill: Option<KillSwitch>,
) -> Result<Response, ApiError> {
    let requested = query.resource_version()?;
    // Without a resourceVersion (or with "0"), a watch begins with the current state, as
    // the API server's "get state and start at most recent"; `sendInitialEvents` says so
    // explicitly and ends that state with a marked bookmark.
    let initial = query.send_initial_events.unwrap_or(requested.is_none());
    let timeout = match query.timeout_seconds {
        None | Some(0) => DEFAULT_WATCH_TIMEOUT,
        Some(seconds) => Duration::from_secs(seconds),
    };
    let interval = cluster.knobs.bookmark_interval();
    let bookmarks = (query.allow_watch_bookmarks && !interval.is_zero()).then(|| {
        let mut timer = tokio::time::interval_at(Instant::now() + interval, interval);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        timer
    });
    let mut stream = WatchStream {
        cluster: Arc::clone(&cluster),
        scope,
        shape,
        kind: T::KIND,
        api_version: T::API_VERSION,
        queue: VecDeque::new(),
        live: None,
        last_rv: 0,
        deadline: Instant::now() + timeout,
        bookmarks,
        kill,
        finished: false,
    };
    {
        let store = cluster.store();
        let current = store.resource_version();
        if let Some(rv) = requested
            && rv > current
        {
            return Err(ApiError::too_large_resource_version(rv, current));
        }
        if initial {
            for item in store.list::<T>(stream.scope.namespace.as_deref()) {
                let object = serde_json::to_value(&item).unwrap_or_default();
                stream.push("ADDED", &object);
            }
            stream.last_rv = current;
            if query.send_initial_events == Some(true) {
                stream.push_bookmark(current, true);
            }
        } else {
            let from = requested.unwrap_or(current);
            match store.events().since(from) {
                Ok(events) => {
                    for event in events {
                        stream.apply_change(&event);
                    }
                    stream.last_rv = current;
                }
                Err(expired) => stream.push_expired(expired),
            }
        }
        stream.live = Some(store.events().subscribe());
    }
    let body = Body::from_stream(futures::stream::unfold(stream, |mut stream| async move {
        stream.next_chunk().await.map(|chunk| (chunk, stream))
    }));
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(shape.watch_content_type()),
    );
    Ok(response)
}

/// An open watch: lines to send, then live signals, bookmarks on a timer, an end.
struct WatchStream {
    cluster: Arc<Cluster>,
    scope: Scope,
    shape: Shape,
    /// `kind` and `apiVersion` of bookmarks in the `Full` shape.
    kind: &'static str,
    api_version: &'static str,
    queue: VecDeque<Bytes>,
    live: Option<broadcast::Receiver<Signal>>,
    /// Every change up to this resourceVersion has been sent (or did not concern us).
    last_rv: u64,
    deadline: Instant,
    bookmarks: Option<Interval>,
    kill: Option<KillSwitch>,
    finished: bool,
}

/// What woke an open watch.
enum Wake {
    Timeout,
    Bookmark,
    Live(Result<Signal, RecvError>),
}

/// The error that aborts a cut watch's body (the connection goes with it).
fn cut_error() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "watch cut by the sim",
    )
}

impl WatchStream {
    async fn next_chunk(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        loop {
            if let Some(chunk) = self.queue.pop_front() {
                return Some(Ok(chunk));
            }
            if self.finished {
                return None;
            }
            let live = self.live.as_mut()?;
            let wake = tokio::select! {
                () = tokio::time::sleep_until(self.deadline) => Wake::Timeout,
                () = tick(&mut self.bookmarks) => Wake::Bookmark,
                signal = live.recv() => Wake::Live(signal),
            };
            let outcome = match wake {
                // The API server ends a watch after `timeoutSeconds` with a clean end of
                // the chunked body; the client watches again from its last version.
                Wake::Timeout => return None,
                Wake::Bookmark => self.bookmark(),
                Wake::Live(Ok(signal)) => self.apply(signal),
                Wake::Live(Err(RecvError::Lagged(_))) => {
                    self.catch_up();
                    Ok(())
                }
                Wake::Live(Err(RecvError::Closed)) => return None,
            };
            if let Err(err) = outcome {
                return Some(Err(err));
            }
        }
    }

    /// Handles one live signal; `Err` means the connection must drop now.
    fn apply(&mut self, signal: Signal) -> Result<(), std::io::Error> {
        match signal {
            Signal::Change(event) => self.apply_change(&event),
            Signal::Expire { floor } => self.push_expired(Expired {
                requested: self.last_rv,
                floor,
            }),
            Signal::Cut => {
                if let Some(kill) = &self.kill {
                    kill.reset();
                }
                return Err(cut_error());
            }
        }
        Ok(())
    }

    fn apply_change(&mut self, event: &Event) {
        if self.finished || event.resource_version <= self.last_rv {
            return;
        }
        self.last_rv = event.resource_version;
        if self.scope.covers(event) {
            self.push(event.change.wire(), &event.object);
        }
    }

    fn push(&mut self, type_: &str, object: &Value) {
        let chunk = match self.shape {
            Shape::Full => line(type_, object),
            Shape::Metadata => line(type_, Partial::of(object)),
        };
        self.queue.push_back(chunk);
    }

    fn push_bookmark(&mut self, resource_version: u64, initial_events_end: bool) {
        let (api_version, kind) = match self.shape {
            Shape::Full => (self.api_version, self.kind),
            Shape::Metadata => (META_API_VERSION, "PartialObjectMetadata"),
        };
        let mut metadata = serde_json::json!({"resourceVersion": resource_version.to_string()});
        if initial_events_end {
            metadata["annotations"] = serde_json::json!({INITIAL_EVENTS_END: "true"});
        }
        let object =
            serde_json::json!({"kind": kind, "apiVersion": api_version, "metadata": metadata});
        self.queue.push_back(line("BOOKMARK", object));
    }

    /// The `410 Gone` the API server sends inside a watch, and the end of the watch.
    fn push_expired(&mut self, expired: Expired) {
        let status = ApiError::expired(expired.message()).status();
        self.queue.push_back(line("ERROR", status));
        self.finished = true;
    }

    /// A bookmark at the newest resourceVersion this watch has fully seen. Everything
    /// up to the store's current version was broadcast before the lock was released, so
    /// draining the subscription afterwards delivers it all before the bookmark.
    fn bookmark(&mut self) -> Result<(), std::io::Error> {
        let current = self.cluster.store().resource_version();
        loop {
            let Some(live) = self.live.as_mut() else {
                return Ok(());
            };
            match live.try_recv() {
                Ok(signal) => self.apply(signal)?,
                Err(TryRecvError::Lagged(_)) => self.catch_up(),
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
            if self.finished {
                return Ok(());
            }
        }
        self.last_rv = self.last_rv.max(current);
        self.push_bookmark(self.last_rv, false);
        Ok(())
    }

    /// The watch fell behind the live channel: replay the log from where it was and
    /// subscribe again, under one lock.
    fn catch_up(&mut self) {
        let cluster = Arc::clone(&self.cluster);
        let store = cluster.store();
        match store.events().since(self.last_rv) {
            Ok(events) => {
                for event in events {
                    self.apply_change(&event);
                }
                self.last_rv = self.last_rv.max(store.resource_version());
                self.live = Some(store.events().subscribe());
            }
            Err(expired) => self.push_expired(expired),
        }
    }
}

/// The next bookmark tick; never, without bookmarks.
async fn tick(timer: &mut Option<Interval>) {
    match timer {
        Some(timer) => {
            timer.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_str(value).expect("header"),
        );
        headers
    }

    #[test]
    fn kube_metadata_requests_get_metadata_and_kubectl_gets_json() {
        // What kube 5's `list_metadata` and `watch_metadata` send.
        let list = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";
        let watch = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";
        assert_eq!(
            Shape::negotiate(&accept(list), false).ok(),
            Some(Shape::Metadata)
        );
        assert_eq!(
            Shape::negotiate(&accept(watch), true).ok(),
            Some(Shape::Metadata)
        );
        let fallback = format!("{watch},application/json");
        assert_eq!(
            Shape::negotiate(&accept(&fallback), true).ok(),
            Some(Shape::Metadata)
        );
        // kubectl asks for a Table first.
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
        assert_eq!(
            Shape::negotiate(&accept(kubectl), false).ok(),
            Some(Shape::Full)
        );
        assert_eq!(
            Shape::negotiate(&HeaderMap::new(), true).ok(),
            Some(Shape::Full)
        );
        let err = Shape::negotiate(&accept(watch), false).expect_err("a list");
        assert_eq!(err.code, StatusCode::NOT_ACCEPTABLE);
        let err = Shape::negotiate(&accept("application/vnd.kubernetes.protobuf"), false)
            .expect_err("protobuf");
        assert_eq!(err.code, StatusCode::NOT_ACCEPTABLE);
    }

    #[test]
    fn kube_watcher_queries_parse_and_validate() {
        // kube 5's watcher: the list, then the watch from the list's version.
        let list = Query::parse(Some("&limit=500")).expect("list");
        assert!(!list.watch);
        list.validate().expect("valid");
        let watch = Query::parse(Some(
            "&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=12",
        ))
        .expect("watch");
        assert!(watch.watch && watch.allow_watch_bookmarks);
        assert_eq!(watch.timeout_seconds, Some(290));
        assert_eq!(watch.resource_version().expect("rv"), Some(12));
        watch.validate().expect("valid");
        // Its streaming-list mode.
        let streaming = Query::parse(Some(
            "&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&resourceVersion=0",
        ))
        .expect("streaming");
        streaming.validate().expect("valid");
        assert_eq!(streaming.resource_version().expect("rv"), None);
        // `ListSemantic::Any` without a page size.
        let any = Query::parse(Some("&resourceVersion=0&resourceVersionMatch=NotOlderThan"))
            .expect("any");
        any.validate().expect("valid");
    }

    #[test]
    fn unsupported_or_invalid_queries_are_refused() {
        let refused = |raw: &str| {
            Query::parse(Some(raw))
                .and_then(|q| q.validate().and_then(|()| q.resource_version().map(drop)))
                .expect_err(raw)
                .code
        };
        assert_eq!(refused("labelSelector=app%3Dweb"), StatusCode::BAD_REQUEST);
        assert_eq!(
            refused("fieldSelector=metadata.name%3Dx"),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(refused("continue=abc"), StatusCode::BAD_REQUEST);
        assert_eq!(refused("watch=maybe"), StatusCode::BAD_REQUEST);
        assert_eq!(refused("resourceVersion=abc"), StatusCode::BAD_REQUEST);
        assert_eq!(
            refused("resourceVersionMatch=NotOlderThan"),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            refused("watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "streaming lists need bookmarks"
        );
        assert_eq!(
            refused("watch=1&resourceVersion=3&resourceVersionMatch=NotOlderThan"),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            refused("sendInitialEvents=true"),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        // Empty selectors are no selectors.
        Query::parse(Some("labelSelector=&fieldSelector="))
            .expect("parse")
            .validate()
            .expect("valid");
    }
}
