//! `execute`: the loop body runs a function registered in the program on the serving process's
//! machine (to save files there, say) and gets its result back. Scheduling goes on meanwhile.
//!
//! ```text
//! cargo run --release -p colony-examples --bin execute
//! ```
//!
//! One worker process is started next to the serving one; both call `save`, which appends to a
//! file only the serving process writes.

use std::io::Write;
use std::sync::{Arc, Mutex};

use colony_examples::{init_logging, is_spawned_copy, spawn_copies};
use colony_tokio::forloop::{Functions, Loop, LoopError};

fn main() -> Result<(), LoopError> {
    init_logging();
    let path =
        std::env::temp_dir().join(format!("colony-execute-example-{}.txt", std::process::id()));
    let file = Arc::new(Mutex::new(None::<std::fs::File>));
    let functions = Functions::new().register("save", {
        let (file, path) = (file.clone(), path.clone());
        move |(index, line): (usize, String)| -> Result<u64, String> {
            let mut guard = file.lock().map_err(|_| "poisoned".to_string())?;
            if guard.is_none() {
                *guard = Some(std::fs::File::create(&path).map_err(|e| e.to_string())?);
            }
            let f = guard.as_mut().ok_or("no file")?;
            writeln!(f, "{index}: {line}").map_err(|e| e.to_string())?;
            Ok(f.metadata().map_err(|e| e.to_string())?.len())
        }
    });

    let mut job = Loop::new("execute-demo", 0..200u32).functions(functions);
    if !is_spawned_copy() {
        job = job.addr("127.0.0.1:0");
    }
    let mut running = job.start()?;
    let children = match running.local_addr() {
        Some(addr) => spawn_copies(1, addr).map_err(|e| LoopError::Config(e.to_string()))?,
        None => Vec::new(),
    };
    for item in running.iter() {
        let line = format!(
            "{} squared is {} (computed by process {})",
            *item,
            *item * *item,
            std::process::id()
        );
        let size: u64 = item.execute("save", &(item.index(), line))?;
        item.produce(&size)?;
    }
    let report = running.finish::<u64>()?;
    for mut child in children {
        let _ = child.wait();
    }
    if report.product.is_some() {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let writers: std::collections::BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.rsplit("process ").next())
            .collect();
        println!(
            "{} lines saved on the serving process, written for {} processes",
            text.lines().count(),
            writers.len()
        );
        let _ = std::fs::remove_file(&path);
    }
    Ok(())
}
