//! Micro-benchmarks of the hot path's parts: token parse + local checks, cache key
//! derivation, cache hit lookup, TokenReview response serialisation.
//!
//! Run: `cargo bench --bench micro`. The tokens are real: minted by the sim, pod-bound,
//! for audience `vault`. Signature verification is not benchmarked: the gate does not
//! verify signatures yet (the API server does, on a miss).

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokengate::cache::{Fetched, Purpose, Verdict, VerdictCache};
use tokengate::config;
use tokengate::sim::{Sim, SimOptions};
use tokengate::token::{self, Classified};

use common::{AUDIENCE, Workloads};

struct Fixture {
    issuers: Vec<String>,
    valid: String,
    expired: String,
}

fn fixture() -> Fixture {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        let sim = Sim::start(SimOptions {
            tls: false,
            ..SimOptions::default()
        })
        .await
        .expect("the sim starts");
        let workloads = Workloads::create(&sim, 1);
        let valid = workloads.mint(&sim, 1).remove(0);
        let expired = common::expired_copy(&sim, &valid);
        let issuers = vec![sim.issuer().to_owned()];
        sim.shutdown().await;
        Fixture {
            issuers,
            valid,
            expired,
        }
    })
}

fn cache_config() -> config::Cache {
    config::Cache {
        max_entries: 1_000_000,
        negative_max_entries: 100_000,
        negative_ttl: Duration::from_secs(10),
        max_ttl: Duration::from_secs(120),
    }
}

/// The pipeline's local step for a token: classify (bounded strict parse), then the API
/// server's checks; a rejection is turned into its message, as `Verdict::denied` does.
fn local_checks(raw: &str, issuers: &[String], audiences: &[String], now: SystemTime) -> bool {
    match token::classify(raw, issuers) {
        Ok(Classified::ServiceAccount(t)) => match token::check(&t, audiences, issuers, now) {
            Ok(valid) => !valid.is_empty(),
            Err(rejection) => black_box(rejection.to_string()).is_empty(),
        },
        Ok(Classified::Foreign(why)) => black_box(why).is_empty(),
        Err(rejection) => black_box(rejection.to_string()).is_empty(),
    }
}

fn token_benches(c: &mut Criterion) {
    let f = fixture();
    let audiences = vec![AUDIENCE.to_owned()];
    let now = SystemTime::now();
    assert!(local_checks(&f.valid, &f.issuers, &audiences, now));
    assert!(!local_checks(&f.expired, &f.issuers, &audiences, now));
    let mut group = c.benchmark_group("token");
    group.bench_function("classify+check (valid, pod-bound)", |b| {
        b.iter(|| local_checks(black_box(&f.valid), &f.issuers, &audiences, now))
    });
    group.bench_function("classify+check+message (expired)", |b| {
        b.iter(|| local_checks(black_box(&f.expired), &f.issuers, &audiences, now))
    });
    group.finish();
}

fn cache_benches(c: &mut Criterion) {
    let f = fixture();
    let audiences = vec![AUDIENCE.to_owned()];
    let cache = VerdictCache::new(&cache_config());
    let now = SystemTime::now();
    // A cache with some content, so the lookup is not into a near-empty table.
    for i in 0..10_000 {
        let key = cache.key(&format!("token-{i}"), &audiences, Purpose::Review);
        cache.insert(key, &fetched(common::realistic_verdict(i), now));
    }
    let key = cache.key(&f.valid, &audiences, Purpose::Review);
    cache.insert(key, &fetched(common::realistic_verdict(10_000), now));

    let mut group = c.benchmark_group("cache");
    group.bench_function("key (HMAC-SHA256 of a pod-bound token)", |b| {
        b.iter(|| cache.key(black_box(&f.valid), &audiences, Purpose::Review))
    });
    group.bench_function("get (hit)", |b| {
        b.iter(|| cache.get(black_box(&key), now).expect("a hit"))
    });
    group.bench_function("key + get (hit)", |b| {
        b.iter(|| {
            let key = cache.key(black_box(&f.valid), &audiences, Purpose::Review);
            cache.get(&key, now).expect("a hit")
        })
    });
    group.finish();
    println!("token length: {} bytes", f.valid.len());
}

fn fetched(verdict: Arc<Verdict>, now: SystemTime) -> Fetched {
    let ttl = Duration::from_secs(600);
    Fetched::new(verdict, now + ttl, ttl)
}

fn response_benches(c: &mut Criterion) {
    let f = fixture();
    let verdict = common::realistic_verdict(1);
    let spec = TokenReviewSpec {
        token: Some(f.valid.clone()),
        audiences: Some(vec![AUDIENCE.to_owned()]),
    };
    // As `http::review_response` builds it: the spec echoed, the user cloned out of the
    // shared verdict.
    let build = |spec: TokenReviewSpec, v: &Verdict| TokenReview {
        metadata: ObjectMeta::default(),
        spec,
        status: Some(TokenReviewStatus {
            authenticated: Some(v.authenticated),
            user: Some(v.user.clone().unwrap_or_default()),
            audiences: (!v.audiences.is_empty()).then(|| v.audiences.clone()),
            error: (!v.error.is_empty()).then(|| v.error.clone()),
        }),
    };
    let review = build(spec.clone(), &verdict);
    let bytes = serde_json::to_vec(&review).expect("a TokenReview serialises");
    println!("TokenReview response: {} bytes", bytes.len());

    let mut group = c.benchmark_group("response");
    group.bench_function("TokenReview to JSON bytes", |b| {
        b.iter(|| serde_json::to_vec(black_box(&review)).expect("serialises"))
    });
    group.bench_function("build (clone user) + TokenReview to JSON bytes", |b| {
        b.iter(|| {
            let review = build(black_box(spec.clone()), &verdict);
            serde_json::to_vec(&review).expect("serialises")
        })
    });
    group.finish();
}

criterion_group! {
    name = micro;
    // Short runs: the machine has 2 shared cores and others build on it.
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    targets = token_benches, cache_benches, response_benches
}
criterion_main!(micro);
