//! What the load generator sends: the operation mix and named profiles.
//!
//! A [`Mix`] is a weighted choice over [`OpKind`]s, written on the command
//! line as `fault=90,mmap=4,munmap=4,fork=1,exit=1`. A [`Profile`] is a
//! preset of mix and batch size for a question people ask: how fast can
//! faults go (`fault-heavy`), how much VMA slot reuse and call_rcu saving
//! does layout churn cause (`churn`), what do fork/exit storms do to the
//! cache (`fork-storm`).

use rand::Rng;
use std::fmt;
use std::str::FromStr;

/// One kind of operation. `Spawn` and `Maps` are never drawn from a mix:
/// the worker issues them to set up processes and to verify layouts;
/// `Health` only `vmasim bench` sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpKind {
    /// `Fault` (batch 1) or `FaultBatch`.
    Fault,
    /// `Mmap`.
    Mmap,
    /// `Munmap`.
    Munmap,
    /// `Mprotect`.
    Mprotect,
    /// `Brk`.
    Brk,
    /// `Fork`.
    Fork,
    /// `Exit`.
    Exit,
    /// `Madvise`: `MADV_DONTNEED` or `MADV_FREE` on part of a VMA (the
    /// advice mainline runs under the per-VMA read lock).
    Madvise,
    /// `Spawn` (setup, and replacing exited processes).
    Spawn,
    /// `Maps` (verification).
    Maps,
    /// `grpc.health.v1.Health/Check`: the no-op call `vmasim bench`
    /// compares `Fault` against.
    Health,
    /// `Mremap` (`load --trace` only: recorded programs' calls).
    Mremap,
}

impl OpKind {
    /// All kinds, in report order.
    pub const ALL: [OpKind; 12] = [
        OpKind::Fault,
        OpKind::Mmap,
        OpKind::Munmap,
        OpKind::Mprotect,
        OpKind::Brk,
        OpKind::Fork,
        OpKind::Exit,
        OpKind::Madvise,
        OpKind::Spawn,
        OpKind::Maps,
        OpKind::Health,
        OpKind::Mremap,
    ];

    /// Lower-case name, as in `--mix`.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Fault => "fault",
            OpKind::Mmap => "mmap",
            OpKind::Munmap => "munmap",
            OpKind::Mprotect => "mprotect",
            OpKind::Brk => "brk",
            OpKind::Fork => "fork",
            OpKind::Exit => "exit",
            OpKind::Madvise => "madvise",
            OpKind::Spawn => "spawn",
            OpKind::Maps => "maps",
            OpKind::Health => "health",
            OpKind::Mremap => "mremap",
        }
    }

    /// Index into per-kind arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Weights of the operations a worker draws from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    /// (kind, weight) with weight > 0.
    weights: Vec<(OpKind, u32)>,
    /// Sum of the weights.
    total: u32,
}

impl Mix {
    /// Draws one kind.
    pub fn pick<R: Rng>(&self, rng: &mut R) -> OpKind {
        let mut x = rng.random_range(0..self.total);
        for &(k, w) in &self.weights {
            if x < w {
                return k;
            }
            x -= w;
        }
        self.weights[0].0
    }

    /// Weight of one kind (0 if absent).
    pub fn weight(&self, kind: OpKind) -> u32 {
        self.weights
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(0, |x| x.1)
    }
}

impl FromStr for Mix {
    type Err = String;

    /// `fault=90,mmap=4,...`; kinds: fault, mmap, munmap, mprotect, brk,
    /// fork, exit, madvise.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut weights: Vec<(OpKind, u32)> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, w) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected NAME=WEIGHT"))?;
            let kind = OpKind::ALL[..8]
                .iter()
                .copied()
                .find(|k| k.name() == name.trim())
                .ok_or_else(|| {
                    format!("unknown operation `{name}` (fault, mmap, munmap, mprotect, brk, fork, exit, madvise)")
                })?;
            let w: u32 = w
                .trim()
                .parse()
                .map_err(|_| format!("`{part}`: weight must be a whole number"))?;
            if weights.iter().any(|(k, _)| *k == kind) {
                return Err(format!("`{name}` given twice"));
            }
            if w > 0 {
                weights.push((kind, w));
            }
        }
        let total = weights.iter().map(|x| x.1).sum::<u32>();
        if total == 0 {
            return Err("the mix has no operation with a weight > 0".into());
        }
        Ok(Mix { weights, total })
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .weights
            .iter()
            .map(|(k, w)| format!("{k}={w}"))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Named presets of mix and batch size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// Almost only faults, in batches of 64: throughput of the fault path.
    FaultHeavy,
    /// Layout churn (mmap/munmap/mprotect/brk) with faults in between:
    /// VMA slot reuse, call_rcu savings, lock aborts.
    Churn,
    /// Processes forking and exiting while faulting: dup_mmap and
    /// exit_mmap free and allocate VMAs in bulk.
    ForkStorm,
}

impl Profile {
    /// The profile's mix.
    pub fn mix(self) -> Mix {
        match self {
            Profile::FaultHeavy => "fault=97,mmap=1,munmap=1,mprotect=1",
            Profile::Churn => "fault=40,mmap=20,munmap=18,mprotect=15,brk=7",
            Profile::ForkStorm => "fault=50,fork=20,exit=20,mmap=5,munmap=5",
        }
        .parse()
        .expect("built-in mix parses")
    }

    /// Faults per call.
    pub fn batch(self) -> usize {
        match self {
            Profile::FaultHeavy => 64,
            Profile::Churn | Profile::ForkStorm => 16,
        }
    }
}

/// The mix used when neither `--mix` nor `--profile` is given.
pub const DEFAULT_MIX: &str = "fault=90,mmap=4,munmap=4,fork=1,exit=1";

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn parse_and_pick() {
        let m: Mix = DEFAULT_MIX.parse().unwrap();
        assert_eq!(m.to_string(), DEFAULT_MIX);
        assert_eq!(m.weight(OpKind::Fault), 90);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let faults = (0..10_000)
            .filter(|_| m.pick(&mut rng) == OpKind::Fault)
            .count();
        assert!((8500..9500).contains(&faults), "{faults}");
        assert!("fault=0".parse::<Mix>().is_err());
        assert!("fault=1,fault=2".parse::<Mix>().is_err());
        assert!("spawn=1".parse::<Mix>().is_err());
        assert!("fault".parse::<Mix>().is_err());
        for p in [Profile::FaultHeavy, Profile::Churn, Profile::ForkStorm] {
            assert!(p.mix().weight(OpKind::Fault) > 0);
        }
    }

    #[test]
    fn madvise_is_a_mix_kind_and_mremap_is_not() {
        let m: Mix = "fault=8,madvise=2".parse().unwrap();
        assert_eq!(m.weight(OpKind::Madvise), 2);
        assert_eq!(m.to_string(), "fault=8,madvise=2");
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        assert!((0..100).any(|_| m.pick(&mut rng) == OpKind::Madvise));
        let e = "mremap=1".parse::<Mix>().unwrap_err();
        assert!(e.contains("exit, madvise)"), "{e}");
    }
}
