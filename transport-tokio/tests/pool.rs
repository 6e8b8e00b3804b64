//! The resource pool end to end: the real server, pool workers registering typed kinds, and
//! executors submitting and mapping tasks. Real sockets on 127.0.0.1, no fixed ports, every wait
//! bounded.

mod common;

use std::time::Duration;

use colony_tokio::executor::{Executor, ExecutorError, RetryPolicy, Wait};
use colony_tokio::kind::TaskKind;
use colony_tokio::secret::Secret;
use colony_tokio::worker::{TaskError, Worker};

use common::{PATIENCE, bounded, config, start};

fn secret() -> Secret {
    Secret::from_bytes(&[9; 32]).unwrap()
}

fn sum_kind() -> TaskKind<u64, u64> {
    TaskKind::new("sum", |n: u64| Ok::<_, TaskError>((1..=n).sum()))
}

fn fail_kind() -> TaskKind<String, u8> {
    TaskKind::new("fail", |why: String| {
        Err::<u8, _>(TaskError::permanent(why))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_and_map_through_an_in_process_pool() {
    let dir = tempfile::tempdir().unwrap();
    let (handle, addr, server) = start(config(&secret()).checkpoint(dir.path().join("log")));
    let worker = Worker::builder()
        .kind(sum_kind())
        .kind(fail_kind())
        .slots(2)
        .connect(&addr.to_string(), secret())
        .unwrap();
    let stop = worker.shutdown_token();
    let worker = tokio::spawn(worker.run());

    let exec = bounded(Executor::connect(format!("tcp://{addr}"), secret()))
        .await
        .unwrap();
    let sum = sum_kind();
    let one = bounded(exec.submit(&sum, &100)).await.unwrap();
    assert_eq!(bounded(one).await, Ok(5050));

    let mut results = exec.map(&sum, 0..1000u64);
    let mut n = 0u64;
    while let Some(r) = bounded(results.next()).await {
        assert_eq!(r, Ok(n * (n + 1) / 2));
        n += 1;
    }
    assert_eq!(n, 1000);

    let fail = fail_kind();
    let bad = bounded(exec.submit_with(&fail, &"boom".to_owned(), RetryPolicy::attempts(2)))
        .await
        .unwrap();
    match bounded(bad).await {
        Err(ExecutorError::Remote { kind, error, .. }) => {
            assert_eq!((kind.as_str(), error.as_str()), ("fail", "boom"));
        }
        other => panic!("{other:?}"),
    }
    bounded(exec.shutdown(Wait::Yes)).await;
    assert!(matches!(
        exec.submit(&sum, &1).await,
        Err(ExecutorError::Shutdown)
    ));
    stop.shutdown();
    bounded(worker).await.unwrap().unwrap();
    handle.shutdown().await.unwrap();
    bounded(server).await.unwrap().unwrap();
    let _ = PATIENCE;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_worker_for_a_kind_is_an_error_after_the_wait() {
    let (handle, addr, server) = start(config(&secret()));
    let exec = bounded(
        Executor::builder(addr.to_string(), secret())
            .no_worker_wait(Some(Duration::from_millis(300)))
            .connect(),
    )
    .await
    .unwrap();
    let h = exec.submit(&sum_kind(), &5).await.unwrap();
    match bounded(h).await {
        Err(ExecutorError::NoWorker { kind, .. }) => assert_eq!(kind, "sum"),
        other => panic!("{other:?}"),
    }
    drop(exec);
    handle.shutdown().await.unwrap();
    bounded(server).await.unwrap().unwrap();
}
