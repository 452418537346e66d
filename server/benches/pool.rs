//! VMA cache alloc+free: `typesafe` vs `rcu` vs a plain `Box`, on 1 and 2
//! threads. The `rcu` policy pays a `call_rcu` (a deferred closure) per
//! free and, while epochs lag, a fresh slot per allocation; `typesafe`
//! pops and pushes one free-list entry.
//!
//! `cargo bench -p vmasim-server --bench pool`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};
use vmasim_server::mm::{CachePolicy, Vma, VmaCache};

const CAPACITY: u32 = 1 << 22;

fn run_pool(pool: &VmaCache, iters: u64) {
    for _ in 0..iters {
        let (i, v) = pool.vm_area_alloc().expect("pool large enough");
        black_box(v);
        pool.vm_area_free(i);
    }
}

fn run_box(iters: u64) {
    for _ in 0..iters {
        let b = Box::new(Vma::default());
        black_box(&b);
        drop(b);
    }
}

fn threaded(threads: usize, iters: u64, f: Arc<dyn Fn(u64) + Send + Sync>) -> Duration {
    let barrier = Arc::new(Barrier::new(threads + 1));
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let (b, f) = (barrier.clone(), f.clone());
            std::thread::spawn(move || {
                b.wait();
                f(iters);
            })
        })
        .collect();
    barrier.wait();
    let t = Instant::now();
    for h in hs {
        h.join().unwrap();
    }
    t.elapsed()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool_alloc_free");
    for threads in [1usize, 2] {
        g.throughput(Throughput::Elements(threads as u64));
        for policy in [CachePolicy::Typesafe, CachePolicy::Rcu] {
            g.bench_function(BenchmarkId::new(policy.as_str(), threads), |b| {
                b.iter_custom(|iters| {
                    let pool = VmaCache::new(policy, CAPACITY);
                    let p = pool.clone();
                    threaded(threads, iters, Arc::new(move |n| run_pool(&p, n)))
                })
            });
        }
        g.bench_function(BenchmarkId::new("box", threads), |b| {
            b.iter_custom(|iters| threaded(threads, iters, Arc::new(run_box)))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
