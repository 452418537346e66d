//! Delta debugging (Zeller's ddmin, greedy variant) over a failing
//! operation sequence.
//!
//! `fails(candidate)` replays a candidate from scratch and says whether it
//! still diverges. The sequence is first cut after the failing step, then
//! chunks of halving size are removed while the failure persists, down to
//! single operations: the result is 1-minimal (no single step can go) when
//! the time budget allows.

use std::time::{Duration, Instant};

/// Shrink `seq` (which fails) to a smaller failing sequence within
/// `budget`. Returns the smallest failing sequence found and the number
/// of replays made.
pub async fn ddmin<T: Clone, E>(
    seq: Vec<T>,
    budget: Duration,
    mut fails: impl AsyncFnMut(&[T]) -> Result<bool, E>,
) -> Result<(Vec<T>, usize), E> {
    let deadline = Instant::now() + budget;
    let mut cur = seq;
    let mut tries = 0;
    let mut n = 2usize;
    while cur.len() >= 2 && Instant::now() < deadline {
        let chunk = cur.len().div_ceil(n);
        let mut reduced = false;
        let mut start = 0;
        while start < cur.len() && Instant::now() < deadline {
            let end = (start + chunk).min(cur.len());
            let cand: Vec<T> = cur[..start].iter().chain(&cur[end..]).cloned().collect();
            tries += 1;
            if !cand.is_empty() && fails(&cand).await? {
                cur = cand;
                reduced = true;
                // Same position: the next chunk slid into it.
            } else {
                start = end;
            }
        }
        if reduced {
            n = n.saturating_sub(1).max(2);
        } else if chunk == 1 {
            break;
        } else {
            n = (n * 2).min(cur.len());
        }
    }
    Ok((cur, tries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finds_the_two_culprits() {
        let seq: Vec<u32> = (0..200).collect();
        // Fails iff both 17 and 123 are present, in order.
        let (min, _) = ddmin(seq, Duration::from_secs(10), async |c: &[u32]| {
            Ok::<_, ()>(c.contains(&17) && c.contains(&123))
        })
        .await
        .unwrap();
        assert_eq!(min, vec![17, 123]);
    }
}
