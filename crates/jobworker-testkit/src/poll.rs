//! Waiting for a condition that someone else makes true.

use std::time::{Duration, Instant};

/// Time between two looks at the condition: short against the deadlines tests use, long
/// enough not to busy-wait.
const INTERVAL: Duration = Duration::from_millis(10);

/// Polls `condition` until it holds (`true`) or `within` has passed (`false`).
///
/// Returns as soon as the condition holds, so a generous deadline costs nothing when things
/// work. For async tests: the runtime keeps running other tasks between polls.
pub async fn eventually(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if condition() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(INTERVAL).await;
    }
}

/// [`eventually`] for tests without a runtime: blocks the calling thread between polls.
pub fn eventually_blocking(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(INTERVAL);
    }
}
