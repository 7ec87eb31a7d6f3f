//! The one bounded wait for what has no event to await: another process's readiness, a
//! counter of the sim's, the health of a watch. Ask, sleep a little, ask again, until the
//! condition holds or the time is up.
//!
//! Self-contained, so that `benches/real.rs` includes it by path together with `bao.rs`
//! and `real/control_plane.rs`, which wait with it.

use std::time::{Duration, Instant};

/// The longest sleep between two askings. The first sleeps are shorter (1 ms, doubling),
/// so that what comes at once is seen at once and a time measured with `eventually` is
/// not mostly its own sleeping.
const MAX_PAUSE: Duration = Duration::from_millis(20);

/// Asks `condition` until it holds, for at most `within`; returns how long that took.
/// Panics, naming `what`, when it never held.
pub async fn eventually(
    within: Duration,
    what: &str,
    condition: impl AsyncFnMut() -> bool,
) -> Duration {
    match held_within(within, condition).await {
        Some(took) => took,
        None => panic!("{what}: not within {within:?}"),
    }
}

/// [`eventually`] for a peer process to come up: when it never does, the panic also
/// shows `log()`, the peer's own account of why (read only then).
pub async fn eventually_or_log(
    within: Duration,
    what: &str,
    log: impl FnOnce() -> String,
    condition: impl AsyncFnMut() -> bool,
) -> Duration {
    match held_within(within, condition).await {
        Some(took) => took,
        None => panic!("{what}: not within {within:?}\n{}", log()),
    }
}

/// How long `condition` took to hold, or `None` when it did not within `within`.
async fn held_within(
    within: Duration,
    mut condition: impl AsyncFnMut() -> bool,
) -> Option<Duration> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        if condition().await {
            return Some(started.elapsed());
        }
        if started.elapsed() >= within {
            return None;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}
