//! `vmasim kernel-diff` against the running kernel: a bounded random run
//! (embedded server and `--server`), scripts, and the errors a user meets.
//!
//! Every family of operations is in: none is left out with `--without`.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use common::TestServer;
use vmasim_client::embedded::CachePolicy;

mod common;

fn kernel_diff(args: &[&str]) -> std::process::Output {
    common::vmasim()
        .arg("kernel-diff")
        .args(args)
        .output()
        .unwrap()
}

fn count(summary: &str, kind: &str) -> u64 {
    summary
        .lines()
        .find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(kind)).then(|| it.next().and_then(|n| n.parse().ok()))?
        })
        .unwrap_or(0)
}

#[test]
fn random_run_agrees_with_the_kernel() {
    // Every family of operations: nothing is left out.
    let out = kernel_diff(&["--ops", "20000", "--seed", "1", "-q"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kernel-diff diverged:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("20000 operations"), "{stdout}");
    assert!(stdout.contains("0 divergences"), "{stdout}");
    for kind in [
        "mmap:anon-private",
        "mmap:MAP_FIXED",
        "mmap:MAP_FIXED_NOREPLACE",
        "mmap:hint",
        "mmap:non-fixed",
        "mmap:MAP_NORESERVE",
        "mmap:MAP_STACK",
        "mmap:prot=---",
        "mmap:prot=rwx",
        "munmap",
        "mprotect",
        "brk",
        "fork",
        "mmap:MAP_POPULATE",
        "mmap:MAP_LOCKED",
        "mmap:MAP_GROWSDOWN",
        "mmap:MAP_SHARED_VALIDATE",
        "mmap:0x200000",
        "mmap:anon-shared",
        "mmap:file-private",
        "mmap:file-shared",
        "mmap:MAP_HUGETLB",
        "touch:read",
        "touch:write",
        "mremap:shrink",
        "mremap:grow",
        "mremap:same-size",
        "mremap:no-flags",
        "mremap:MREMAP_MAYMOVE",
        "mremap:MREMAP_FIXED",
        "mremap:MREMAP_DONTUNMAP",
        "mremap:stayed",
        "mremap:moved",
        "madvise:MADV_DONTNEED",
        "madvise:MADV_FREE",
        "madvise:MADV_DONTFORK",
        "madvise:MADV_DOFORK",
        "madvise:MADV_WIPEONFORK",
        "madvise:MADV_KEEPONFORK",
    ] {
        assert!(count(&stdout, kind) > 0, "no {kind} in\n{stdout}");
    }
    // Some calls failed on the kernel and the simulation said so too.
    assert!(count(&stdout, "EFAULT") > 0, "{stdout}");
    assert!(count(&stdout, "EEXIST") > 0, "{stdout}");
}

#[test]
fn max_map_count_scenario_agrees_with_the_kernel() {
    // Filled to the kernel's vm.max_map_count, then operations at the
    // limit: do_mmap's `map_count > max`, split_vma's `>= max`, munmap's
    // exempt first split (vms_gather_munmap_vmas).
    let out = kernel_diff(&["--limit-only", "--limit-ops", "100", "-q"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kernel-diff diverged at the limit:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("max_map_count scenario"), "{stdout}");
    assert!(stdout.contains("0 divergences"), "{stdout}");
    assert!(
        count(&stdout, "ENOMEM") > 0,
        "no call hit the limit:\n{stdout}"
    );
}

#[test]
fn against_a_server_url() {
    let srv = TestServer::start(CachePolicy::Typesafe);
    let out = kernel_diff(&["--server", &srv.url, "--ops", "2000", "--seed", "9", "-q"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn script_runs_and_bad_scripts_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.txt");
    std::fs::write(
        &good,
        "# a VMA split in three and merged back, touched on both sides of a fork\n\
         mmap 0x7f003ff00000 64K rw- MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED\n\
         touch 0x7f003ff00000 write\n\
         mmap 0x7f003ff04000 8K r-- MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED\n\
         mmap 0x7f003ff04000 8K rw- MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED\n\
         mmap 0x7f003ff10000 4K r-- MAP_SHARED file=1 offset=0x3000\n\
         touch 0x7f003ff10000 read\n\
         munmap 0x7f003ff08000 4K\n\
         mmap 0x7f003ff08000 4K rw- MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED_NOREPLACE\n\
         touch 0x7f003ff30000 read   # unmapped: EFAULT on both sides\n",
    )
    .unwrap();
    let out = kernel_diff(&["--script", good.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("9 operations"), "{stdout}");

    let bad = dir.path().join("bad.txt");
    std::fs::write(
        &bad,
        "munmap 0x7f003ff00000 4K\nmmap 0x1000 4K rw- MAP_BOGUS\n",
    )
    .unwrap();
    let out = kernel_diff(&["--script", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("script line 2") && err.contains("MAP_BOGUS"),
        "{err}"
    );
}

/// Rules the random generator does not reach, as scripts checked against
/// the kernel: `mremap` with `old_len` 0 duplicates a shared mapping, file
/// or shmem (`remap_is_valid`, `move_vma` keeping the source), refuses a
/// private one (EINVAL) and cannot grow in place (ENOMEM); a file mapping
/// grown past the memfd's end faults SIGBUS there (`shmem_get_folio_gfp`,
/// the simulation told the size by `MmapRequest.file_size`); MADV_DONTNEED
/// on a hugetlb VMA wants a huge-page-aligned start and MADV_FREE there is
/// EINVAL (`madvise_dontneed_free_valid_vma`).
#[test]
fn scripted_rules_agree_with_the_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("rules.txt");
    std::fs::write(
        &script,
        "mmap 0x7f003ff00000 16K rw- MAP_SHARED|MAP_FIXED file=1 offset=0x3000\n\
         touch 0x7f003ff01000 write\n\
         mremap 0x7f003ff01000 0 8K MREMAP_MAYMOVE|MREMAP_FIXED 0x7f003fe00000\n\
         touch 0x7f003fe00000 read\n\
         mremap 0x7f003ff00000 0 4K 0\n\
         mremap 0x7f003ff02000 0 12K MREMAP_MAYMOVE\n\
         mmap 0x7f003fd00000 8K rw- MAP_SHARED|MAP_ANONYMOUS|MAP_FIXED\n\
         touch 0x7f003fd00000 write\n\
         mremap 0x7f003fd00000 0 8K MREMAP_MAYMOVE|MREMAP_FIXED 0x7f003fc00000\n\
         touch 0x7f003fc00000 read\n\
         mmap 0x7f003fb00000 8K rw- MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED\n\
         mremap 0x7f003fb00000 0 8K MREMAP_MAYMOVE\n\
         # the last 2 pages of memfd 2, grown by 2 pages past its end\n\
         mmap 0x7f003fa00000 8K rw- MAP_SHARED|MAP_FIXED file=2 offset=0x3ffe000\n\
         mremap 0x7f003fa00000 8K 16K 0\n\
         touch 0x7f003fa01000 write\n\
         touch 0x7f003fa02000 read   # past the end: SIGBUS, EFAULT on both sides\n\
         touch 0x7f003fa03000 write\n\
         # MADV_DONTNEED on hugetlb: a huge-page-aligned start only (op 122,979 of seed 2026)\n\
         mmap 0x7f003f400000 4M r-x MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED|MAP_HUGETLB|MAP_NORESERVE\n\
         madvise 0x7f003f51c000 0x7000 MADV_DONTNEED\n\
         madvise 0x7f003f400000 0x7000 MADV_DONTNEED\n\
         madvise 0x7f003f400000 2M MADV_FREE\n\
         madvise 0x7f003f600000 2M MADV_DONTNEED\n",
    )
    .unwrap();
    let out = kernel_diff(&["--script", script.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("22 operations"), "{stdout}");
    assert_eq!(count(&stdout, "EFAULT"), 2, "{stdout}");
    assert_eq!(count(&stdout, "EINVAL"), 3, "{stdout}");
    assert_eq!(count(&stdout, "ENOMEM"), 1, "{stdout}");
}
