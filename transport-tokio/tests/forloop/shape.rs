//! The job the for-loop fixture runs, shared by the fixture program and the tests: item values,
//! dependency edges and the expected digest of each item.
//!
//! Everything here is a pure function of its arguments, so every process of a test (and the
//! test itself) derives the very same items and edges.
#![allow(dead_code)]

/// The value of item `index` (a different `salt` gives a different item list).
pub(crate) fn value(index: usize, salt: u64) -> u64 {
    (index as u64)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(salt)
}

/// The items of a job of `n` items.
pub(crate) fn items(n: usize, salt: u64) -> Vec<u64> {
    (0..n).map(|i| value(i, salt)).collect()
}

/// The output every run of an item must produce from its value.
pub(crate) fn digest(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// How items depend on each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Deps {
    /// No edges.
    None,
    /// `k` interleaved chains: item `i` runs after item `i - k`.
    Chains(usize),
    /// A random DAG from this seed: each item after up to three of the 64 items before it.
    Dag(u64),
}

impl std::str::FromStr for Deps {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: expected none, chains:K or dag:SEED");
        match s.split_once(':') {
            None if s == "none" => Ok(Deps::None),
            Some(("chains", k)) => match k.parse() {
                Ok(k) if k > 0 => Ok(Deps::Chains(k)),
                _ => Err(bad()),
            },
            Some(("dag", seed)) => seed.parse().map(Deps::Dag).map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

/// The edges `(before, after)` of a job of `n` items.
pub(crate) fn edges(n: usize, deps: Deps) -> Vec<(usize, usize)> {
    match deps {
        Deps::None => Vec::new(),
        Deps::Chains(k) => (k..n).map(|i| (i - k, i)).collect(),
        Deps::Dag(seed) => {
            let mut state = seed;
            let mut next = move || {
                state = state.wrapping_add(1);
                digest(state)
            };
            let mut edges = Vec::new();
            for i in 1..n {
                let mut preds: Vec<usize> = (0..next() % 4)
                    .map(|_| i - 1 - (next() % (i.min(64) as u64)) as usize)
                    .collect();
                preds.sort_unstable();
                preds.dedup();
                edges.extend(preds.into_iter().map(|p| (p, i)));
            }
            edges
        }
    }
}
