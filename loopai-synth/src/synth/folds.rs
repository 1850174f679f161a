//! Cross-validation plumbing: stratified, grouped folds and the scoped-thread map that
//! runs them.

use serde_json::Value;

use crate::rng::Rng;

/// Stratified, grouped fold assignment: identical inputs form one group (so duplicates
/// never sit on both sides of a split), each class's groups (by the label of their first
/// example) are shuffled and dealt round-robin.
pub(super) fn stratified_folds(
    inputs: &[&Value],
    y: &[usize],
    k: usize,
    n_folds: usize,
    seed: u64,
) -> Vec<usize> {
    let mut rng = Rng::new(seed ^ 0xf01d);
    let mut group_of: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, x) in inputs.iter().enumerate() {
        let key = x.to_string();
        let g = *group_of.entry(key).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    let mut folds = vec![0; y.len()];
    let mut next = 0usize;
    for c in 0..k {
        let mut idx: Vec<usize> = (0..groups.len())
            .filter(|&g| y[groups[g][0]] == c)
            .collect();
        rng.shuffle(&mut idx);
        for g in idx {
            for &i in &groups[g] {
                folds[i] = next % n_folds;
            }
            next += 1;
        }
    }
    folds
}

/// Maps `f` over `0..n` on up to `threads` scoped threads; results in index order.
pub(crate) fn par_map<T, F>(n: usize, threads: usize, f: F) -> Vec<T>
where
    T: Send,
    F: Fn(usize) -> T + Sync,
{
    if threads <= 1 || n <= 1 {
        return (0..n).map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut parts: Vec<Vec<(usize, T)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.min(n))
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        out.push((i, f(i)));
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let mut all: Vec<(usize, T)> = parts.iter_mut().flat_map(std::mem::take).collect();
    all.sort_by_key(|e| e.0);
    all.into_iter().map(|e| e.1).collect()
}
