//! The methods of `vmasim.v1.AddressSpace` and which one each `Session`
//! operation stands for.
//!
//! The server registers a metric series per method at start-up and names
//! a stream operation by its unary twin; the proto test checks the list
//! against the service descriptor, so adding an RPC to the `.proto`
//! without adding it here fails a test instead of silently missing a
//! label.

use crate::v1::session_request::Op;

/// Every RPC of `vmasim.v1.AddressSpace`, in the `.proto`'s order of
/// concern (the `method` label values registered at start-up).
pub const METHODS: &[&str] = &[
    "Spawn",
    "Mmap",
    "Munmap",
    "Mprotect",
    "Brk",
    "Mremap",
    "Madvise",
    "Fault",
    "FaultBatch",
    "Fork",
    "Exit",
    "Maps",
    "Stats",
    "ListRaceScenarios",
    "RaceScenario",
    "Session",
];

impl Op {
    /// The unary RPC this `Session` operation is answered like (`Mmap`):
    /// the oneof variants are named as the methods.
    pub fn method(&self) -> &'static str {
        macro_rules! name {
            ($($v:ident => $m:ident,)*) => {
                match self {
                    $(Op::$v(_) => stringify!($v),)*
                }
            };
        }
        crate::for_each_session_op!(name)
    }
}

/// Calls `$m!` with every `Session` operation as `Variant => method`
/// (the oneof variant, the same-named `session_reply::Result` variant, and
/// the unary stub's method): the one list a `Session` → RPC dispatch is
/// written from, so a new stream operation is added in one place.
#[macro_export]
macro_rules! for_each_session_op {
    ($m:ident) => {
        $m! {
            Spawn => spawn,
            Mmap => mmap,
            Munmap => munmap,
            Mprotect => mprotect,
            Brk => brk,
            Fault => fault,
            FaultBatch => fault_batch,
            Fork => fork,
            Exit => exit,
            Maps => maps,
            Mremap => mremap,
            Madvise => madvise,
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_session_op_is_a_method() {
        macro_rules! check {
            ($($v:ident => $m:ident,)*) => {{
                let ops = [$(Op::$v(Default::default())),*];
                for op in &ops {
                    assert!(METHODS.contains(&op.method()), "{}", op.method());
                }
                assert_eq!(ops.len(), 12);
            }};
        }
        for_each_session_op!(check);
    }
}
