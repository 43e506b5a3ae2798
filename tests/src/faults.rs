//! Faults on the shared servers: `scripts/infra.sh kill|start NAME`. Only
//! the Kafka outage tests use them, each in a test binary of its own.

/// Runs `scripts/infra.sh ARGS` (fault injection: `kill kafka`, `start kafka`, ...).
pub fn infra(args: &[&str]) -> anyhow::Result<()> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/infra.sh");
    let status = std::process::Command::new("bash")
        .arg(script)
        .args(args)
        .status()?;
    anyhow::ensure!(
        status.success(),
        "scripts/infra.sh {args:?} failed: {status}"
    );
    Ok(())
}

/// Starts `service` again when dropped, so a failed fault test leaves the stack up.
pub struct Restart(pub &'static str);

impl Restart {
    /// SIGKILLs the shared `service` (`scripts/infra.sh kill`); the guard
    /// starts it again when dropped, or at [`Restart::start`].
    pub async fn kill(service: &'static str) -> Self {
        let guard = Restart(service);
        tokio::task::spawn_blocking(move || infra(&["kill", service]))
            .await
            .expect("the kill task")
            .expect("scripts/infra.sh kill");
        guard
    }

    /// Starts the service again now and waits until it answers.
    pub async fn start(self) {
        tokio::task::spawn_blocking(move || drop(self))
            .await
            .expect("the start task");
    }
}

impl Drop for Restart {
    fn drop(&mut self) {
        if let Err(err) = infra(&["start", self.0]) {
            eprintln!("could not restart {}: {err}", self.0);
        }
    }
}

/// Serialises the tests of one binary that stop shared services (cargo runs
/// test binaries one at a time, so other binaries never see the outage).
pub static OUTAGE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
