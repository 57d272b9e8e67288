//! Fault injection for the crash tests: when `TESSERA_FAILPOINT` names a point the process
//! reaches, it says so on standard error and stops there (sleeping), so that a test can kill it
//! with SIGKILL at exactly that step. Inert unless the variable is set.

/// The payout worker's steps, in order, where a crash is tested.
pub const POINTS: &[&str] = &[
    "payout.after_reserve",
    "payout.after_mark_submitting",
    "payout.after_provider_call",
    "payout.after_submitted",
    "payout.after_posted",
];

/// Stops here when `TESSERA_FAILPOINT` is `name`.
pub async fn point(name: &str) {
    if std::env::var("TESSERA_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("failpoint {name} reached");
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        }
    }
}
