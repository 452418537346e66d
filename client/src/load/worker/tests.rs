//! The checker must catch a corrupted reply: the worker's checks are
//! driven here directly, without a server.
use super::*;
use crate::load::mix::Mix;
use vmasim_proto::v1::{FaultOutcome, VmaEntry};

fn worker_with(mm: ShadowMm) -> Worker {
    let cfg = Arc::new(LoadConfig {
        verify: true,
        mix: "fault=1".parse::<Mix>().unwrap(),
        ..LoadConfig::default()
    });
    // The transport is never used by these checks; a lazy channel to
    // nowhere is enough to build one.
    let ch = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
    let client = crate::connect::Target::plain("http://127.0.0.1:9")
        .client(ch)
        .unwrap();
    let mut w = Worker::new(
        0,
        cfg,
        Arc::new(Shared::new(None, None)),
        Transport::new(client, false),
        None,
    );
    w.procs.push(Proc { pid: 42, mm });
    w
}

#[tokio::test]
async fn corrupted_fault_reply_is_caught() {
    let mut mm = ShadowMm::new(0x1000_0000, 0x1000_0000);
    let rw = Prot::Read as u32 | Prot::Write as u32;
    mm.map(0x7f00_0000_0000, 0x7f00_0001_0000, rw, false, Backing::Anon);
    let w = worker_with(mm);
    // The true answers pass.
    assert!(
        w.check_fault(
            0,
            0x7f00_0000_0010,
            Access::Write,
            FaultOutcome::AnonZeroFill as i32
        )
        .is_ok()
    );
    assert!(
        w.check_fault(
            0,
            0x1234_0000,
            Access::Read,
            FaultOutcome::SegvMaperr as i32
        )
        .is_ok()
    );
    // Corrupted: a fault in a hole reported as served, a mapped page
    // reported as SEGV_MAPERR, a read-write page refusing a write.
    let e = w
        .check_fault(
            0,
            0x1234_0000,
            Access::Read,
            FaultOutcome::AnonZeroFill as i32,
        )
        .unwrap_err();
    assert!(e.contains("pid 42") && e.contains("MapErr"), "{e}");
    assert!(
        w.check_fault(
            0,
            0x7f00_0000_0000,
            Access::Read,
            FaultOutcome::SegvMaperr as i32
        )
        .is_err()
    );
    assert!(
        w.check_fault(
            0,
            0x7f00_0000_0000,
            Access::Write,
            FaultOutcome::SegvAccerr as i32
        )
        .is_err()
    );
}

#[tokio::test]
async fn corrupted_maps_reply_is_caught_with_history() {
    let mut mm = ShadowMm::new(0x1000_0000, 0x1000_0000);
    let rw = Prot::Read as u32 | Prot::Write as u32;
    mm.map(0x7f00_0000_0000, 0x7f00_0001_0000, rw, false, Backing::Anon);
    let mut w = worker_with(mm);
    w.note(|| "mmap pid 42 ...".into());
    // The server "forgot" to apply an mprotect: perms differ.
    let entries = [VmaEntry {
        start: 0x7f00_0000_0000,
        end: 0x7f00_0001_0000,
        prot: Prot::Read as u32,
        ..Default::default()
    }];
    let d = w.procs[0].mm.diff_entries(&entries).expect("caught");
    w.diverged(format!("pid 42: {d}"));
    let divs = w.shared.divergences.lock().unwrap().clone();
    assert_eq!(divs.len(), 1);
    assert_eq!(divs[0].pid, 42);
    assert_eq!(divs[0].history, vec!["mmap pid 42 ...".to_string()]);
    assert!(divs[0].to_string().contains("r--p"), "{}", divs[0]);
    assert!(w.shared.stop.load(Ordering::Relaxed));
}
