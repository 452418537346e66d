//! Fault threads (`load --threads N`): workers that only fault,
//! concurrently, in an owner worker's processes, reading the owner's
//! layout copy (which may be one operation old); what makes per-VMA locks
//! contend.

use crate::load::LoadConfig;
use crate::load::mix::OpKind;
use crate::load::recorder::Recorder;
use crate::load::shared::Shared;
use crate::load::worker::{Layout, MMAP_MIN_ADDR, TASK_SIZE};
use crate::stats::{add_totals, single_totals};
use crate::transport::Transport;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tonic::Code;
use vmasim_proto::v1::Access;
use vmasim_proto::v1::session_reply::Result as Reply;

/// What a fault thread expects: its layout copy may be one operation old,
/// so the owner may have exited the process (`NOT_FOUND`).
const RACED_WITH_EXIT: &str = "fault thread raced with the owner's exit";

/// A worker that only faults in an owner's processes (`--threads`).
pub struct FaultThread {
    cfg: Arc<LoadConfig>,
    shared: Arc<Shared>,
    t: Transport,
    rng: StdRng,
    layout: Arc<RwLock<Layout>>,
    rec: Recorder,
}

impl FaultThread {
    /// A fault thread reading `layout`.
    pub fn new(
        id: usize,
        cfg: Arc<LoadConfig>,
        shared: Arc<Shared>,
        t: Transport,
        layout: Arc<RwLock<Layout>>,
    ) -> Self {
        let rng = StdRng::seed_from_u64(
            cfg.seed ^ (0x5851_f42d_4c95_7f2d_u64.wrapping_mul(id as u64 + 1)),
        );
        let rec = cfg.recorder();
        FaultThread {
            cfg,
            shared,
            t,
            rng,
            layout,
            rec,
        }
    }

    /// Faults until the run stops; returns the measurements.
    pub async fn run(mut self) -> Recorder {
        let n = self.cfg.batch.max(1);
        loop {
            let pick = {
                let l = self.layout.read().expect("not poisoned");
                if l.is_empty() {
                    None
                } else {
                    let (pid, ranges) = &l[self.rng.random_range(0..l.len())];
                    let addrs: Vec<u64> = (0..n)
                        .map(|_| {
                            if ranges.is_empty() {
                                return self.rng.random_range(MMAP_MIN_ADDR..TASK_SIZE);
                            }
                            let (s, e) = ranges[self.rng.random_range(0..ranges.len())];
                            self.rng.random_range(s..e)
                        })
                        .collect();
                    Some((*pid, addrs))
                }
            };
            let Some((pid, addrs)) = pick else {
                if self.shared.stop.load(Ordering::Relaxed) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            };
            let access = if self.rng.random_bool(0.3) {
                Access::Write
            } else {
                Access::Read
            };
            let Some(due) = self.shared.admit().await else {
                break;
            };
            let op = crate::transport::fault_op(pid, addrs, access, n, true);
            let start = due.unwrap_or_else(Instant::now);
            let r = self.t.call(op).await;
            match &r {
                Ok(Reply::Fault(f)) => add_totals(&mut self.rec.fault_totals, &single_totals(f)),
                Ok(Reply::FaultBatch(b)) => {
                    add_totals(&mut self.rec.fault_totals, &b.totals.unwrap_or_default())
                }
                _ => {}
            }
            let expected = match &r {
                Err(s) if s.code() == Code::NotFound => Some(RACED_WITH_EXIT),
                _ => None,
            };
            self.shared
                .finish(&mut self.rec, OpKind::Fault, start, &r, n as u64, expected);
        }
        self.rec
    }
}
