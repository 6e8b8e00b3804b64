//! Dependencies: edges `(a, b)` make item `a` run (and be recorded) before item `b` starts;
//! items run in topological order with the most parallelism the edges allow.
//!
//! ```text
//! cargo run --release -p colony-examples --bin dependencies
//! ```
//!
//! A build-like graph: 4 "compile" items, 2 "link" items that need some of them, 1 "package"
//! item that needs both links. Each item produces the time it finished; the serving process
//! checks every dependent finished after its predecessors.

use std::time::{SystemTime, UNIX_EPOCH};

use colony_examples::init_logging;
use colony_tokio::forloop::{Loop, LoopError};

fn main() -> Result<(), LoopError> {
    init_logging();
    let steps = [
        "compile a",
        "compile b",
        "compile c",
        "compile d",
        "link x",
        "link y",
        "package",
    ];
    let edges = [(0, 4), (1, 4), (2, 5), (3, 5), (4, 6), (5, 6)];
    let mut job = Loop::new("build", steps.map(String::from))
        .addr("127.0.0.1:0")
        .dependencies(edges)
        .start()?;
    for item in job.iter() {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let finished_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        println!("ran {:?}", item.value());
        item.produce(&finished_at)?;
    }
    let report = job.finish::<u128>()?;
    if let Some(times) = report.product {
        let ordered = edges.iter().all(|&(a, b)| times[a] < times[b]);
        println!("every step ran after the steps it depends on: {ordered}");
    }
    Ok(())
}
