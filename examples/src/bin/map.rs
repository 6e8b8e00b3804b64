//! `map`: a function mapped over items across every process of the loop; the serving process
//! gets the outputs in input order.
//!
//! ```text
//! cargo run --release -p colony-examples --bin map
//! ```
//!
//! Run the same command in other terminals (or on other machines, with `COLONY_ADDR` and
//! `COLONY_SECRET` set) while it runs, and they join in.

use colony_examples::init_logging;
use colony_tokio::forloop::{LoopError, map};

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

fn main() -> Result<(), LoopError> {
    init_logging();
    let ranges: Vec<(u64, u64)> = (0..100).map(|i| (i * 100_000, (i + 1) * 100_000)).collect();
    match map("count-primes", ranges, |&(lo, hi)| {
        (lo..hi).filter(|&n| is_prime(n)).count()
    })? {
        Some(counts) => {
            println!("primes below 10,000,000: {}", counts.iter().sum::<usize>());
            println!("per block of 100,000, the first five: {:?}", &counts[..5]);
        }
        None => println!("helped another process with its map"),
    }
    Ok(())
}
