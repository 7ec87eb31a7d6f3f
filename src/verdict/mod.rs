//! What the pipeline concludes: a [`Verdict`] on a token, whose it is ([`User`]), and a
//! [`Decision`] (a verdict and where it came from).
//!
//! Responsible for: the types every stage passes on, and nothing else: it depends on no
//! other module, so the cache, the review, the wire format and the endpoints all build on
//! it without building on each other.

use std::sync::Arc;

mod user;

pub(crate) use user::KNOWN_KEYS;
pub use user::{Extra, User, audiences};

/// The extra key that marks a verdict decided from the token's claims while the API
/// server could not be reached.
pub(crate) const OFFLINE_EXTRA: &str = "tokengate.io/decided-offline";

/// What a review concluded. Shared, immutable; a cache hit is an `Arc` clone.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Verdict {
    /// Whether the token is valid for the requested audiences.
    pub authenticated: bool,
    /// Whose token it is, as the API server said (only when authenticated).
    pub user: Option<User>,
    /// The audiences the token is valid for, as the API server said (shared between
    /// verdicts: see `user::audiences`).
    pub audiences: Arc<[String]>,
    /// Why not (only when not authenticated); never contains the token.
    pub error: String,
}

impl Verdict {
    /// A "no" with a reason.
    pub(crate) fn denied(error: impl Into<String>) -> Verdict {
        Verdict {
            error: error.into(),
            ..Verdict::default()
        }
    }
}

/// Where a decision came from (for logs and metrics).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub(crate) enum Source {
    /// The local checks rejected the token.
    Local,
    /// The cache.
    Cache,
    /// The API server.
    Upstream,
    /// The token's verified claims, while the API server could not be reached.
    Offline,
}

impl Source {
    /// Every source, in label order.
    pub(crate) const ALL: [Source; 4] = [
        Source::Local,
        Source::Cache,
        Source::Upstream,
        Source::Offline,
    ];

    /// Its name, as logs and metrics label it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Source::Local => "local",
            Source::Cache => "cache",
            Source::Upstream => "upstream",
            Source::Offline => "offline",
        }
    }
}

/// A verdict and where it came from.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The verdict.
    pub verdict: Arc<Verdict>,
    /// Where it came from.
    pub(crate) source: Source,
    /// A short, per-process hash of the token and audiences, to correlate log lines
    /// (never the token).
    pub(crate) fingerprint: Fingerprint,
}

/// Eight hex digits of the cache key: enough to tell requests apart in a log, nothing
/// that leads back to the token (the key is a keyed hash under a per-process secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fingerprint([u8; 4]);

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl Fingerprint {
    /// The fingerprint of a cache key.
    pub(crate) fn of(key: &[u8; 32]) -> Fingerprint {
        Fingerprint([key[0], key[1], key[2], key[3]])
    }
}

/// Whether `s` holds a byte JSON escapes. Every byte is looked at, with no early exit,
/// in one fold over whole 16-byte blocks, which the compiler does 16 bytes at a time
/// (twice as fast as `any` on the identities here, which need no escape; folded block
/// by block, it gathered bytes across blocks instead: over three times the instructions
/// on a token). The last block overlaps the one before rather than leave a tail of up
/// to 15 bytes to look at one by one.
pub(crate) fn needs_escape(s: &[u8]) -> bool {
    fn any(bytes: &[u8]) -> bool {
        bytes.iter().fold(false, |any, &b| {
            any | (b < 0x20) | (b == b'"') | (b == b'\\')
        })
    }
    let Some(last) = s.last_chunk::<16>() else {
        return any(s);
    };
    let (blocks, _) = s.as_chunks::<16>();
    any(blocks.as_flattened()) | any(last)
}

#[cfg(test)]
mod tests {
    use super::needs_escape;

    #[test]
    fn needs_escape_finds_an_escaped_byte_wherever_it_is() {
        for len in 0..50 {
            let plain = vec![b'a'; len];
            assert!(!needs_escape(&plain), "{len} plain bytes");
            for at in 0..len {
                for byte in [b'"', b'\\', 0x00, 0x1f] {
                    let mut s = plain.clone();
                    s[at] = byte;
                    assert!(needs_escape(&s), "{byte:#x} at {at} of {len}");
                }
                let mut s = plain.clone();
                s[at] = 0x7f;
                assert!(!needs_escape(&s), "DEL needs no escape in JSON");
            }
        }
    }
}
