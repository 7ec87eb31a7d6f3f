//! tokengate: a TokenReview gate in front of the Kubernetes API server.
//!
//! Workloads present service-account tokens to backends; the backends ask tokengate
//! whether a token is valid for an audience and whose it is. tokengate answers from its
//! cache when it can, rejects hopeless tokens locally, and otherwise asks the API server
//! once per token. Data flows one way:
//!
//! ```text
//! http  ──▶  review  ──▶  token    (parse + local checks: pure, no I/O, `now` passed in)
//!                    ──▶  cache    (quick_cache; keyed hash; TTL ≤ exp; coalesced misses)
//!                    ──▶  upstream (the API server: TokenReview, reviewer credential)
//! ```
//!
//! `ingress` answers the `/auth` hook of nginx, Traefik and Envoy; `wire` reads and
//! writes TokenReviews as the API server does; `user` keeps a verdict's identity in
//! little memory. `config` turns the file and environment into a validated [`config::Config`]; `cli`
//! is the command line; `sim` is a small, faithful API server used by `tokengate dev`,
//! the tests and the benches. `gate` ties them together: the entry points are [`build`]
//! and [`run`].

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
pub mod sim;
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
