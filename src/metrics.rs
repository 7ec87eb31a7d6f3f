//! Prometheus metrics: one typed [`Metrics`] registered once, label values from enums only.
//!
//! Responsible for: what operators graph and alert on: requests by endpoint and outcome,
//! decisions by source, local rejections by reason class, the cache (hits, misses,
//! entries, evictions), the API server (call latency, errors by kind, calls in flight),
//! shed requests and reviewer-credential reloads. No label value ever comes from a
//! request (no token, user or audience): every label is one of the enums below, so the
//! series count is fixed.
//!
//! Not responsible for: deciding when to count (the stages count themselves).

use std::sync::OnceLock;
use std::time::Duration;

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// An enum whose variants are label values: `as_str` gives the value, and it encodes as one.
macro_rules! label_enum {
    ($(#[$attr:meta])* pub enum $name:ident { $($(#[$vattr:meta])* $variant:ident = $label:literal,)* }) => {
        $(#[$attr])*
        #[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
        pub(crate) enum $name { $($(#[$vattr])* $variant,)* }

        impl $name {
            /// The label value.
            pub(crate) fn as_str(self) -> &'static str {
                match self { $($name::$variant => $label,)* }
            }

            /// How many variants there are.
            #[allow(dead_code)]
            const COUNT: usize = [$($label,)*].len();
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
                encoder.write_str(self.as_str())
            }
        }
    };
}

label_enum! {
    /// An endpoint, as a label value.
    pub enum Endpoint {
        /// `POST /apis/authentication.k8s.io/{v1,v1beta1}/tokenreviews` and `POST /review`.
        TokenReview = "tokenreview",
        /// `/auth`.
        Auth = "auth",
    }
}

label_enum! {
    /// How a request ended, as a label value.
    pub enum Outcome {
        /// The token was valid.
        Authenticated = "authenticated",
        /// The token was not valid (or, at `/auth`, not allowed).
        Rejected = "rejected",
        /// No decision: a bad request, a refused caller, or the API server could not answer.
        Error = "error",
    }
}

pub(crate) use crate::verdict::Source;

impl EncodeLabelValue for Source {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

label_enum! {
    /// Why the local checks rejected a token, as a label value (see `review`).
    #[allow(missing_docs, reason = "each name says it")]
    pub enum RejectionClass {
        TooLarge = "too_large",
        Malformed = "malformed",
        Expired = "expired",
        NotYetValid = "not_yet_valid",
        IssuedInTheFuture = "issued_in_the_future",
        Audience = "audience",
        SubjectMismatch = "subject_mismatch",
        Legacy = "legacy",
        Foreign = "foreign",
        Signature = "signature",
        UnknownKey = "unknown_key",
    }
}

label_enum! {
    /// What went wrong with an API-server call, as a label value.
    #[allow(missing_docs, reason = "each name says it; see upstream::UpstreamError")]
    pub enum UpstreamErrorKind {
        Saturated = "saturated",
        Timeout = "timeout",
        Connect = "connect",
        Unauthorized = "unauthorized",
        Forbidden = "forbidden",
        Status = "status",
        BadResponse = "bad_response",
    }
}

label_enum! {
    /// Which API-server call, as a label value.
    pub enum Call {
        /// TokenReview.
        TokenReview = "tokenreview",
        /// SubjectAccessReview.
        SubjectAccessReview = "subjectaccessreview",
        /// OIDC discovery and the issuer's keys.
        Keys = "keys",
    }
}

label_enum! {
    /// Which verdict cache, as a label value.
    pub enum CacheKind {
        /// Positive verdicts.
        Positive = "positive",
        /// Negative verdicts.
        Negative = "negative",
    }
}

label_enum! {
    /// Why a verdict left the cache, as a label value.
    pub enum EvictionCause {
        /// Its time was up.
        Expired = "expired",
        /// The cache was full.
        Size = "size",
    }
}

label_enum! {
    /// How a reviewer-credential reload went, as a label value.
    pub enum ReloadResult {
        /// The new token was read.
        Ok = "ok",
        /// The file could not be read; the last good token is kept.
        Error = "error",
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: Endpoint,
    outcome: Outcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: Source,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: RejectionClass,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    call: Call,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    call: Call,
    kind: UpstreamErrorKind,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    cache: CacheKind,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EvictionLabels {
    cache: CacheKind,
    cause: EvictionCause,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: ReloadResult,
}

/// Every metric tokengate exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    decisions: Family<SourceLabels, Counter>,
    /// The counters of `requests` and `decisions` each request adds to, by the index
    /// of their labels, taken from the family once: a lookup there hashes the labels
    /// under a lock shared by every worker.
    request_counters: [OnceLock<Counter>; Endpoint::COUNT * Outcome::COUNT],
    decision_counters: [OnceLock<Counter>; Source::ALL.len()],
    local_rejections: Family<ReasonLabels, Counter>,
    cache_entries: Family<CacheLabels, Gauge>,
    cache_evictions: Family<EvictionLabels, Counter>,
    upstream_duration: Family<CallLabels, Histogram>,
    upstream_errors: Family<ErrorLabels, Counter>,
    upstream_in_flight: Gauge,
    shed: Counter,
    credential_reloads: Family<ReloadLabels, Counter>,
    revocation_evictions: Counter,
    revocation_watch_healthy: Gauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// All metrics, registered under the `tokengate_` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tokengate");
        let requests = Family::default();
        registry.register(
            "requests",
            "Requests by endpoint and outcome",
            requests.clone(),
        );
        let decisions = Family::default();
        registry.register(
            "decisions",
            "Token decisions by where they came from (local rejection, cache, API server)",
            decisions.clone(),
        );
        let local_rejections = Family::default();
        registry.register(
            "local_rejections",
            "Tokens rejected without asking the API server, by reason",
            local_rejections.clone(),
        );
        let cache_entries = Family::default();
        registry.register(
            "cache_entries",
            "Verdicts held in the cache",
            cache_entries.clone(),
        );
        let cache_evictions = Family::default();
        registry.register(
            "cache_evictions",
            "Verdicts removed from the cache, by cause",
            cache_evictions.clone(),
        );
        let upstream_duration = Family::<CallLabels, Histogram>::new_with_constructor(|| {
            // 1 ms .. ~16 s.
            Histogram::new(exponential_buckets(0.001, 2.0, 15))
        });
        registry.register_with_unit(
            "upstream_request_duration",
            "Time of API-server calls, retries included",
            Unit::Seconds,
            upstream_duration.clone(),
        );
        let upstream_errors = Family::default();
        registry.register(
            "upstream_errors",
            "API-server calls that ended without an answer, by kind",
            upstream_errors.clone(),
        );
        let upstream_in_flight = Gauge::default();
        registry.register(
            "upstream_in_flight",
            "API-server calls in flight",
            upstream_in_flight.clone(),
        );
        let shed = Counter::default();
        registry.register(
            "requests_shed",
            "Requests refused because too many were in progress, or that ran out of time",
            shed.clone(),
        );
        let credential_reloads = Family::default();
        registry.register(
            "reviewer_credential_reloads",
            "Re-reads of the reviewer token file",
            credential_reloads.clone(),
        );
        let revocation_evictions = Counter::default();
        registry.register(
            "revocation_evictions",
            "Cached verdicts evicted because the pod, service account or Secret they depend on was deleted",
            revocation_evictions.clone(),
        );
        let revocation_watch_healthy = Gauge::default();
        registry.register(
            "revocation_watch_healthy",
            "1 while the revocation watch is listed and current (verdicts may live until exp), else 0 (capped at max_ttl)",
            revocation_watch_healthy.clone(),
        );
        Metrics {
            registry,
            revocation_evictions,
            revocation_watch_healthy,
            requests,
            decisions,
            request_counters: Default::default(),
            decision_counters: Default::default(),
            local_rejections,
            cache_entries,
            cache_evictions,
            upstream_duration,
            upstream_errors,
            upstream_in_flight,
            shed,
            credential_reloads,
        }
    }

    /// Counts a finished request.
    pub(crate) fn request(&self, endpoint: Endpoint, outcome: Outcome) {
        self.request_counters[endpoint as usize * Outcome::COUNT + outcome as usize]
            .get_or_init(|| {
                self.requests
                    .get_or_create(&RequestLabels { endpoint, outcome })
                    .clone()
            })
            .inc();
    }

    /// Counts a decision.
    pub(crate) fn decision(&self, source: Source) {
        self.decision_counters[source as usize]
            .get_or_init(|| {
                self.decisions
                    .get_or_create(&SourceLabels { source })
                    .clone()
            })
            .inc();
    }

    /// Counts a local rejection.
    pub(crate) fn local_rejection(&self, reason: RejectionClass) {
        self.local_rejections
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Sets the number of verdicts a cache holds (at scrape time).
    pub(crate) fn set_cache_entries(&self, cache: CacheKind, entries: u64) {
        self.cache_entries
            .get_or_create(&CacheLabels { cache })
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    /// Counts a verdict leaving the cache.
    pub(crate) fn cache_eviction(&self, cache: CacheKind, cause: EvictionCause) {
        self.cache_evictions
            .get_or_create(&EvictionLabels { cache, cause })
            .inc();
    }

    /// Records one API-server call's duration, and its error if it had one.
    pub(crate) fn upstream_call(
        &self,
        call: Call,
        took: Duration,
        error: Option<UpstreamErrorKind>,
    ) {
        self.upstream_duration
            .get_or_create(&CallLabels { call })
            .observe(took.as_secs_f64());
        if let Some(kind) = error {
            self.upstream_errors
                .get_or_create(&ErrorLabels { call, kind })
                .inc();
        }
    }

    /// The gauge of API-server calls in flight.
    pub(crate) fn upstream_in_flight(&self) -> &Gauge {
        &self.upstream_in_flight
    }

    /// Counts a request refused by load shedding or the request timeout.
    pub(crate) fn shed(&self) {
        self.shed.inc();
    }

    /// Counts a reviewer-credential reload.
    pub(crate) fn credential_reload(&self, result: ReloadResult) {
        self.credential_reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
    }

    /// Counts verdicts evicted by the revocation watch.
    pub(crate) fn revocation_evictions(&self, evicted: usize) {
        self.revocation_evictions.inc_by(evicted as u64);
    }

    /// Sets whether the revocation watch is healthy.
    pub(crate) fn revocation_watch_healthy(&self, healthy: bool) {
        self.revocation_watch_healthy.set(i64::from(healthy));
    }

    /// The metrics in the OpenMetrics text format (which Prometheus scrapes).
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// The content type of [`Metrics::encode`]'s output.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_prefixed_with_units_in_names_and_labels_from_enums() {
        let m = Metrics::new();
        m.request(Endpoint::TokenReview, Outcome::Authenticated);
        m.decision(Source::Cache);
        m.local_rejection(RejectionClass::Expired);
        m.upstream_call(
            Call::TokenReview,
            Duration::from_millis(3),
            Some(UpstreamErrorKind::Timeout),
        );
        m.cache_eviction(CacheKind::Negative, EvictionCause::Size);
        m.credential_reload(ReloadResult::Ok);
        let text = m.encode();
        for line in [
            r#"tokengate_requests_total{endpoint="tokenreview",outcome="authenticated"} 1"#,
            r#"tokengate_decisions_total{source="cache"} 1"#,
            r#"tokengate_local_rejections_total{reason="expired"} 1"#,
            r#"tokengate_upstream_errors_total{call="tokenreview",kind="timeout"} 1"#,
            r#"tokengate_upstream_request_duration_seconds_count{call="tokenreview"} 1"#,
            r#"tokengate_cache_evictions_total{cache="negative",cause="size"} 1"#,
            r#"tokengate_reviewer_credential_reloads_total{result="ok"} 1"#,
            "# TYPE tokengate_upstream_in_flight gauge",
            "# TYPE tokengate_requests_shed counter",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
