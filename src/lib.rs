//! tokengate: a TokenReview gate in front of the Kubernetes API server.
//!
//! Workloads present service-account tokens to backends; the backends ask tokengate
//! whether a token is valid for an audience and whose it is. tokengate answers from its
//! cache when it can, rejects hopeless tokens locally, and otherwise asks the API server
//! once per token.
//!
//! The modules and the main lines of use between them (the graph has no cycles;
//! `verdict`, `config`, `token` and `reload` use no other module):
//!
//! ```text
//! cli ─▶ gate ─▶ http ─▶ review ─▶ token     parse + local checks: pure, `now` passed in
//!                 │        ├─────▶ keys      the issuer's keys: JWKS, discovery, files
//!                 │        ├─────▶ cache     moka; keyed hash; expiry ≤ exp; coalesced misses
//!                 │        └─────▶ upstream  the API server over reqwest: reviews, retries
//!                 ├─▶ access                 who may call the TokenReview endpoints
//!                 ├─▶ wire                   TokenReviews read and written as the API server does
//!                 └─▶ tls                    the serving certificate, reloaded
//!        gate ─▶ revocation ─▶ cache         the watch that takes out deleted objects' verdicts
//! verdict      Verdict, Decision, User: what every stage passes on
//! metrics      the Prometheus metrics
//! config       the file and environment, validated
//! reload       a file's change stamp
//! ```
//!
//! `http` is a folder: the router, middleware, serve loop, probes, the TokenReview
//! endpoints and the `/auth` hook, with one mapping from errors to responses. The
//! simulated API server that `tokengate dev` runs is the crate `tokengate-sim`
//! (`crates/tokengate-sim`), linked through the default `sim` feature. The entry points
//! are [`build`] and [`run`].

pub(crate) mod access;
pub mod cache;
pub mod cli;
pub mod config;
pub(crate) mod gate;
pub mod http;
pub mod keys;
pub mod metrics;
pub(crate) mod reload;
pub mod review;
pub(crate) mod revocation;
pub(crate) mod tls;
pub mod token;
pub(crate) mod upstream;
pub mod verdict;
pub mod wire;

pub use gate::{BuildError, Gate, build, build_with_clock, run};
pub use http::AppState;
pub use http::router;

/// mimalloc, not the system allocator, for every program built on this crate (the
/// binary, its tests and benches alike): a cached review allocates a dozen small
/// objects, often freed on another worker thread than made them, where glibc's
/// arenas cost most. Measured in BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
