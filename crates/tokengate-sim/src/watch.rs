//! List and watch of pods, service accounts and secrets, as the API server serves them to
//! informers and to `kube::runtime::watcher`.
//!
//! Responsible for: the RBAC check (`list`/`watch`), the list (whole objects, or metadata
//! only when the client asks: then Secret contents never leave the sim), and the watch
//! stream: newline-delimited JSON events in resourceVersion order, replayed from the
//! change log then followed live, `BOOKMARK`s on a timer, an `ERROR` event with `410
//! Expired` when the log no longer reaches back, and the end of the stream after
//! `timeoutSeconds`.
//!
//! A list answers the current state in one page (the sim never hands out `continue`
//! tokens, whatever `limit` says). Label and field selectors are refused rather than
//! ignored, since the sim does not implement them.
//!
//! Not responsible for: reading the request's parameters and `Accept` (see `query`), the
//! change log itself (see `events`), storage (see `store`).

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
use super::query::{META_API_VERSION, Partial, Query, Shape};
use super::server::KillSwitch;
use super::status::ApiError;
use super::store::Stored;

/// How long a watch lasts without `timeoutSeconds` (the API server picks 30 to 60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

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
