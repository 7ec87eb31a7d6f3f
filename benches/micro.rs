//! Micro-benchmarks of the hot path's parts: token parse + local checks, signature
//! verification, cache key derivation, cache hit lookup, TokenReview response
//! serialisation; and whole cached requests through the router in-process, against an
//! axum handler answering fixed bytes.
//!
//! Run: `cargo bench --bench micro`. The tokens are real: minted by the sim, pod-bound,
//! for audience `vault`. Signatures: ES256 only, the algorithm the sim signs with (an
//! RSA-keyed cluster's RS256 is not measured here).

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use tokengate::cache::{Fetched, Purpose, VerdictCache};
use tokengate::config;
use tokengate::http;
use tokengate::keys::{KeySet, Verification};
use tokengate::token::{self, Classified};
use tokengate::verdict::Verdict;
use tokengate::wire::{self, ReviewSpec};
use tokengate_sim::{Sim, SimOptions};

use common::{AUDIENCE, REVIEW_V1, Workloads};

struct Fixture {
    issuers: Vec<String>,
    valid: String,
    expired: String,
    forged: String,
    /// The sim's JWKS document (ES256 keys: the sim signs as a cluster with EC keys does).
    jwks: Vec<u8>,
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
        let forged = common::forged_copy(&valid, 1);
        let issuers = vec![sim.issuer().to_owned()];
        let jwks = get(sim.addr(), "/openid/v1/jwks").await;
        sim.shutdown().await;
        Fixture {
            issuers,
            valid,
            expired,
            forged,
            jwks,
        }
    })
}

/// The body of `GET path` over plain HTTP/1.0 (setup only).
async fn get(addr: std::net::SocketAddr, path: &str) -> Vec<u8> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let start = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response")
        + 4;
    assert!(response.starts_with(b"HTTP/1.0 200") || response.starts_with(b"HTTP/1.1 200"));
    response.split_off(start)
}

fn signature_benches(c: &mut Criterion) {
    let f = fixture();
    let keys = KeySet::from_jwks(&f.jwks).expect("the sim's JWKS loads");
    let header = |raw: &str| match token::classify(raw, &f.issuers) {
        Ok(Classified::ServiceAccount(t)) => t.header.clone(),
        _ => panic!("a service-account token"),
    };
    let (valid_header, forged_header) = (header(&f.valid), header(&f.forged));
    assert_eq!(valid_header.alg, "ES256");
    assert_eq!(keys.verify(&f.valid, &valid_header), Verification::Valid);
    assert!(matches!(
        keys.verify(&f.forged, &forged_header),
        Verification::Invalid(_)
    ));
    let mut group = c.benchmark_group("signature");
    group.bench_function("ES256 verify (valid)", |b| {
        b.iter(|| keys.verify(black_box(&f.valid), &valid_header))
    });
    group.bench_function("ES256 verify (forged)", |b| {
        b.iter(|| keys.verify(black_box(&f.forged), &forged_header))
    });
    group.finish();
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
    let spec = ReviewSpec::new(&f.valid, Some(vec![AUDIENCE.to_owned()]));
    const V1: &str = "authentication.k8s.io/v1";
    let bytes = wire::answer(V1, &spec, &verdict);
    println!("TokenReview response: {} bytes", bytes.len());

    let mut group = c.benchmark_group("response");
    group.bench_function("TokenReview answer to JSON bytes (wire::answer)", |b| {
        b.iter(|| wire::answer(V1, black_box(&spec), black_box(&verdict)))
    });
    group.finish();
}

/// Whole requests through the gate's router in-process (no sockets): what the gate adds
/// per request over the least axum handler can do, without HTTP parsing and the kernel.
fn router_benches(c: &mut Criterion) {
    use axum::body::{Body, Bytes};
    use axum::http::{Request, StatusCode, header};
    use tower::ServiceExt as _;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (state, sim, token, caller) = rt.block_on(async {
        let sim = Sim::start(SimOptions {
            out_dir: Some(dir.path().to_owned()),
            ..SimOptions::default()
        })
        .await
        .expect("the sim starts");
        let workloads = Workloads::create(&sim, 1);
        let token = workloads.mint(&sim, 1).remove(0);
        let addr = "127.0.0.1:1".parse().expect("an address");
        let text = tokengate::cli::dev_config(addr, &sim.url(), dir.path(), sim.issuer());
        let config = tokengate::config::from_str(&text, Vec::<(String, String)>::new())
            .expect("the dev configuration is valid");
        let built = tokengate::build(&config).await.expect("the gate builds");
        let upstream = built.state.reviewer.upstream();
        upstream.probe_until_ready(Duration::from_millis(50)).await;
        let caller = sim.reviewer_token();
        (built.state, sim, token, caller)
    });
    let least = common::under_the_gates_middleware(common::least_a_gate_must_do(
        std::sync::Arc::clone(&state),
    ));
    let router = http::router(state);
    let body = serde_json::to_vec(&serde_json::json!({
        "apiVersion": REVIEW_V1,
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": [AUDIENCE]},
    }))
    .expect("JSON");
    let review = || {
        Request::post("/review")
            .header(header::AUTHORIZATION, format!("Bearer {caller}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.clone()))
            .expect("a request")
    };
    let auth = || {
        Request::get("/auth?audience=vault")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .expect("a request")
    };
    let call = |router: &axum::Router, request: Request<Body>| {
        let router = router.clone();
        async move {
            let response = router.oneshot(request).await.expect("infallible");
            axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("a body")
        }
    };
    // Warm: the caller's token and the reviewed one are cached from here on.
    let answer = rt.block_on(call(&router, review()));
    assert!(answer.windows(20).any(|w| w == br#""authenticated":true"#));
    // The review's own work alone answers the same bytes, from the same cache.
    assert_eq!(rt.block_on(call(&least, review())), answer);
    let baseline = axum::Router::new().route(
        "/review",
        axum::routing::post(move |_body: Bytes| {
            let answer = answer.clone();
            async move {
                (
                    StatusCode::CREATED,
                    [(header::CONTENT_TYPE, "application/json")],
                    answer,
                )
            }
        }),
    );
    // The same handler under the gate's middleware (the request's span, and Admission:
    // the bound on requests in progress, the time budget): what the stack costs apart
    // from the gate's own work.
    let layered = common::under_the_gates_middleware(baseline.clone());
    let mut group = c.benchmark_group("router");
    group.bench_function("baseline: axum handler answering fixed bytes", |b| {
        b.to_async(&rt).iter(|| call(&baseline, review()))
    });
    group.bench_function("baseline under the gate's middleware", |b| {
        b.to_async(&rt).iter(|| call(&layered, review()))
    });
    // The review's own work alone (parse, keyed hash, lookup, answer), under the same
    // middleware: what the gate adds to it is the cached row's cost beyond this one.
    group.bench_function(
        "the least a gate must do, under the gate's middleware",
        |b| b.to_async(&rt).iter(|| call(&least, review())),
    );
    group.bench_function("cached POST /review", |b| {
        b.to_async(&rt).iter(|| call(&router, review()))
    });
    group.bench_function("cached GET /auth", |b| {
        b.to_async(&rt).iter(|| call(&router, auth()))
    });
    group.finish();
    rt.block_on(sim.shutdown());
}

criterion_group! {
    name = micro;
    // Short runs: the machine has 2 shared cores and others build on it.
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    targets = token_benches, signature_benches, cache_benches, response_benches, router_benches
}
criterion_main!(micro);
