//! A reply that did not match the shadow model (`load --verify`): what
//! the owner worker or trace player reports, and the run's summary lists.

/// A reply that did not match the shadow model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Divergence {
    /// Worker index.
    pub worker: usize,
    /// Process the reply was about.
    pub pid: u32,
    /// What was expected and what came back.
    pub message: String,
    /// The worker's last operations, oldest first (the last one is the
    /// operation that diverged).
    pub history: Vec<String>,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "divergence in worker {} pid {}: {}",
            self.worker, self.pid, self.message
        )?;
        writeln!(f, "  last operations (oldest first):")?;
        for h in &self.history {
            writeln!(f, "    {h}")?;
        }
        Ok(())
    }
}
