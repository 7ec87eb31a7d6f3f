//! The middleware every request passes: a span per request, then admission (a bound on
//! requests in progress, and a time budget for each).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};

use super::MAX_CONCURRENT_REQUESTS;
use super::error::ApiError;
use crate::metrics::Metrics;

/// `routes` under the gate's middleware stack: a span per request, then [`Admission`]:
/// past [`MAX_CONCURRENT_REQUESTS`] in progress a request is refused, and one that takes
/// longer than `budget` is given up; both answered 503 and counted as shed in `metrics`.
/// Public for the benchmarks, which measure the stack around a handler that does nothing.
pub fn with_middleware(routes: Router, budget: Duration, metrics: Arc<Metrics>) -> Router {
    with_limits(routes, MAX_CONCURRENT_REQUESTS, budget, metrics)
}

fn with_limits(routes: Router, max: usize, budget: Duration, metrics: Arc<Metrics>) -> Router {
    let admission = Admission(Arc::new(AdmissionState {
        in_progress: AtomicUsize::new(0),
        max,
        budget,
        metrics,
    }));
    // One layer, not one each: axum boxes every route again for each, and clones the
    // box on every request. Outermost first: the span covers refused requests too.
    routes.layer(
        tower::ServiceBuilder::new()
            .layer(TraceRequests)
            .layer(admission),
    )
}

/// Refuses, rather than queues, a request past `max` in progress, and gives up one that
/// takes longer than `budget` (no request outlives the upstream budget by much, whatever
/// happens below): both answered 503, as a Kubernetes `Status` that says which.
///
/// In place of tower's `load_shed`, `concurrency_limit` and `timeout` under axum's
/// `HandleErrorLayer`, which for every request boxed a future, allocated the semaphore's
/// reusable future, locked its waiter list on release and read the clock. Under load that
/// stack cost about a twentieth of a cached review's CPU (`cargo bench --bench load`, with
/// and without it). Here: one atomic counter, and a timer started only when a request
/// has to wait for something, so the budget counts from its first wait, microseconds
/// after it arrived.
#[derive(Clone)]
struct Admission(Arc<AdmissionState>);

struct AdmissionState {
    in_progress: AtomicUsize,
    max: usize,
    budget: Duration,
    metrics: Arc<Metrics>,
}

impl AdmissionState {
    fn shed(&self, why: String) -> Response {
        self.metrics.shed();
        tracing::warn!(reason = %why, "request shed");
        ApiError::Overloaded(why).into_response()
    }
}

impl<S> tower::Layer<S> for Admission {
    type Service = Admitted<S>;

    fn layer(&self, inner: S) -> Admitted<S> {
        Admitted {
            inner,
            admission: self.clone(),
        }
    }
}

/// A service whose requests [`Admission`] admits.
#[derive(Clone)]
struct Admitted<S> {
    inner: S,
    admission: Admission,
}

/// A request in progress; counted until dropped.
struct InProgress(Arc<AdmissionState>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.in_progress.fetch_sub(1, Ordering::Release);
    }
}

impl<S> tower::Service<Request> for Admitted<S>
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = AdmittedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let state = &self.admission.0;
        if state.in_progress.fetch_add(1, Ordering::Acquire) >= state.max {
            state.in_progress.fetch_sub(1, Ordering::Release);
            let why = format!("more than {} requests in progress", state.max);
            return AdmittedFuture::Refused {
                response: Some(state.shed(why)),
            };
        }
        AdmittedFuture::Admitted {
            inner: self.inner.call(request),
            deadline: None,
            in_progress: InProgress(Arc::clone(state)),
        }
    }
}

pin_project_lite::pin_project! {
    /// An admitted request's answer, or the refusal of one that was not.
    #[project = AdmittedProjection]
    enum AdmittedFuture<F> {
        Admitted {
            #[pin]
            inner: F,
            #[pin]
            deadline: Option<tokio::time::Sleep>,
            in_progress: InProgress,
        },
        Refused {
            response: Option<Response>,
        },
    }
}

impl<F> Future for AdmittedFuture<F>
where
    F: Future<Output = Result<Response, std::convert::Infallible>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.project() {
            AdmittedProjection::Refused { response } => {
                Poll::Ready(Ok(response.take().expect("polled after it completed")))
            }
            AdmittedProjection::Admitted {
                inner,
                mut deadline,
                in_progress,
            } => {
                if let Poll::Ready(answer) = inner.poll(cx) {
                    return Poll::Ready(answer);
                }
                let state = &in_progress.0;
                if deadline.is_none() {
                    deadline.set(Some(tokio::time::sleep(state.budget)));
                }
                let expired = deadline.as_pin_mut().expect("set above").poll(cx);
                std::task::ready!(expired);
                let why = format!("no answer within {:?}", state.budget);
                Poll::Ready(Ok(state.shed(why)))
            }
        }
    }
}

/// Gives each request a span: method, path (never the query or headers: tokens travel
/// in headers), then the status, and the decision's source and the token's fingerprint
/// once known; and one line at debug when the answer is ready, with the time it took.
///
/// In place of tower-http's `TraceLayer`, which reads the clock six times a request and
/// wraps every response body: that cost a tenth of a cached review's time in-process
/// (`cargo bench --bench micro -- router`). Here the clock is read only when the debug
/// line is written.
#[derive(Clone, Copy)]
struct TraceRequests;

impl<S> tower::Layer<S> for TraceRequests {
    type Service = Traced<S>;

    fn layer(&self, inner: S) -> Traced<S> {
        Traced(inner)
    }
}

/// A service whose requests [`TraceRequests`] traces.
#[derive(Clone)]
struct Traced<S>(S);

impl<S> tower::Service<Request> for Traced<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = TracedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let span = tracing::info_span!(
            "request",
            method = %request.method(),
            path = request.uri().path(),
            status = tracing::field::Empty,
            source = tracing::field::Empty,
            token = tracing::field::Empty,
        );
        let started = tracing::enabled!(tracing::Level::DEBUG).then(Instant::now);
        let inner = span.in_scope(|| self.0.call(request));
        TracedFuture {
            inner,
            span,
            started,
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's answer, polled inside the request's span.
    struct TracedFuture<F> {
        #[pin]
        inner: F,
        span: tracing::Span,
        started: Option<Instant>,
    }
}

impl<F, E> Future for TracedFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            this.span.record("status", response.status().as_u16());
            if let Some(started) = this.started {
                let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                tracing::debug!(latency_us, "answered");
            }
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::get;
    use tower::ServiceExt as _;

    /// A router whose one route waits until `release` fires, telling `entered` first.
    fn waiting_router(
        max: usize,
        budget: Duration,
        metrics: &Arc<Metrics>,
    ) -> (
        Router,
        tokio::sync::mpsc::UnboundedReceiver<()>,
        Arc<tokio::sync::Notify>,
    ) {
        let (entered, entered_rx) = tokio::sync::mpsc::unbounded_channel();
        let release = Arc::new(tokio::sync::Notify::new());
        let gate = Arc::clone(&release);
        let routes = Router::new().route(
            "/wait",
            get(move || {
                let entered = entered.clone();
                let gate = Arc::clone(&gate);
                async move {
                    // Created before `entered` is told: `notify_waiters` then reaches it.
                    let released = gate.notified();
                    entered.send(()).expect("the test listens");
                    released.await;
                    "done"
                }
            }),
        );
        let router = with_limits(routes, max, budget, Arc::clone(metrics));
        (router, entered_rx, release)
    }

    async fn call(router: &Router) -> (StatusCode, String) {
        let request = Request::get("/wait")
            .body(Body::empty())
            .expect("a request");
        let response = router.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a body");
        (status, String::from_utf8(body.to_vec()).expect("UTF-8"))
    }

    fn spawn_call(router: &Router) -> tokio::task::JoinHandle<(StatusCode, String)> {
        let router = router.clone();
        tokio::spawn(async move { call(&router).await })
    }

    fn shed_count(metrics: &Metrics) -> String {
        metrics
            .encode()
            .lines()
            .find(|l| l.starts_with("tokengate_requests_shed_total "))
            .expect("the shed counter is exported")
            .to_owned()
    }

    #[tokio::test]
    async fn requests_past_the_bound_are_refused_at_once_and_admitted_again_after() {
        let metrics = Arc::new(Metrics::new());
        let (router, mut entered, release) = waiting_router(2, Duration::from_secs(60), &metrics);
        let first = spawn_call(&router);
        let second = spawn_call(&router);
        entered.recv().await.expect("the first is in progress");
        entered.recv().await.expect("the second is in progress");

        let (status, body) = call(&router).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body.contains("tokengate is overloaded or timed out: more than 2 requests in progress"),
            "{body}"
        );
        assert!(body.contains(r#""reason":"ServiceUnavailable""#), "{body}");
        assert_eq!(shed_count(&metrics), "tokengate_requests_shed_total 1");

        release.notify_waiters();
        assert_eq!(
            first.await.expect("joined"),
            (StatusCode::OK, "done".into())
        );
        assert_eq!(
            second.await.expect("joined"),
            (StatusCode::OK, "done".into())
        );
        // Both finished, so both places are free again.
        let third = spawn_call(&router);
        let fourth = spawn_call(&router);
        // Bounded waits: were either refused, its `entered` would never come.
        for which in ["third", "fourth"] {
            let admitted = tokio::time::timeout(Duration::from_secs(10), entered.recv()).await;
            assert!(matches!(admitted, Ok(Some(()))), "the {which} is admitted");
        }
        release.notify_waiters();
        assert_eq!(third.await.expect("joined").0, StatusCode::OK);
        assert_eq!(fourth.await.expect("joined").0, StatusCode::OK);
        assert_eq!(shed_count(&metrics), "tokengate_requests_shed_total 1");
    }

    #[tokio::test]
    async fn a_request_that_outlives_its_budget_is_given_up_with_503() {
        let metrics = Arc::new(Metrics::new());
        let (router, _entered, _release) = waiting_router(4, Duration::from_millis(50), &metrics);
        // Each is given up (the timer is what answers: without it this would hang), and
        // no longer counts as in progress once it is: a leak would refuse the fifth.
        for n in 1..=5 {
            let answer = tokio::time::timeout(Duration::from_secs(10), call(&router)).await;
            let (status, body) = answer.expect("the budget answers, not the test's timeout");
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "request {n}");
            assert!(
                body.contains("tokengate is overloaded or timed out: no answer within 50ms"),
                "request {n}: {body}"
            );
        }
        assert_eq!(shed_count(&metrics), "tokengate_requests_shed_total 5");
    }
}
