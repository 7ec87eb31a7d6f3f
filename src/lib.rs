//! tokengate: a TokenReview gate in front of the Kubernetes API server.
//!
//! Data flows one way:
//!
//! ```text
//! http  ──▶  review  ──▶  token    (parse + local checks: pure, no I/O, `now` passed in)
//!                    ──▶  cache    (moka; keyed hash; TTL ≤ exp)
//!                    ──▶  upstream (the API server: TokenReview)
//! ```
//!
//! `sim` is a small, faithful API server used by `tokengate dev`, the tests and the benches.

pub mod cache;
pub mod config;
pub mod http;
pub mod review;
pub mod sim;
pub mod token;
pub mod upstream;
