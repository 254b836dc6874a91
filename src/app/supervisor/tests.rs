//! The supervisor with services that fail on purpose, on tokio's paused clock.

use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::events::Bus;
use crate::inventory::Inventory;
use crate::metrics::Metrics;

/// Log lines, captured.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn ctx() -> Ctx {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("n.toml"), "[boot]\nkernel = \"k\"\n").unwrap();
    let sources = crate::profiles::Sources {
        profiles: dir.path().to_path_buf(),
        scripts: dir.path().join("none"),
    };
    let set = crate::profiles::ProfileSet::load(&sources, "http://x").unwrap();
    let bus = Bus::new();
    Ctx {
        config: Default::default(),
        base_url: "http://x".into(),
        profiles: Arc::new(crate::profiles::watch::Live::new(
            sources,
            "http://x".into(),
            set,
            bus.clone(),
        )),
        inventory: Arc::new(Inventory::default()),
        metrics: Metrics::new(),
        bus,
        health: Default::default(),
    }
}

fn capture() -> (Log, tracing::subscriber::DefaultGuard) {
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    (log, tracing::subscriber::set_default(subscriber))
}

#[tokio::test(start_paused = true)]
async fn a_failing_service_is_logged_counted_announced_and_restarted_with_backoff() {
    let (log, _guard) = capture();
    let ctx = ctx();
    let mut failures = ctx.bus.subscribe::<ServiceFailed>();
    let token = CancellationToken::new();
    let sup = Supervisor::new(ctx.clone(), token.clone());
    let runs = Arc::new(AtomicU32::new(0));
    let (r, t) = (runs.clone(), token.clone());
    sup.service("tftp", move || {
        let n = r.fetch_add(1, Ordering::SeqCst) + 1;
        let t = t.clone();
        async move {
            if n <= 3 {
                Err(format!("socket broke (run {n})"))
            } else {
                t.cancelled().await;
                Ok(())
            }
        }
    });
    let started = tokio::time::Instant::now();
    for want in 1..=3 {
        let ev = failures.recv().await.unwrap();
        assert_eq!(
            (ev.service.as_str(), ev.failures, ev.error.as_str()),
            ("tftp", want, format!("socket broke (run {want})").as_str())
        );
    }
    // Pauses of 1 s and 2 s before the second and third runs.
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        4,
        "started again after each failure"
    );
    let metrics = ctx.metrics.encode();
    assert!(
        metrics.contains("kindling_service_failures_total{service=\"tftp\"} 3"),
        "{metrics}"
    );
    assert_eq!(ctx.health.failing()["tftp"].failures, 3);
    assert!(
        log.text().contains("service failed: socket broke (run 3)"),
        "{}",
        log.text()
    );
    // A minute of running without a failure: recovered.
    tokio::time::sleep(HEALTHY_AFTER).await;
    assert!(ctx.health.failing().is_empty());
    assert!(log.text().contains("service recovered"));
    token.cancel();
    sup.tracker().close();
    sup.tracker().wait().await;
    assert_eq!(runs.load(Ordering::SeqCst), 4, "not restarted at shutdown");
}

#[tokio::test(start_paused = true)]
async fn a_panic_or_an_unexpected_end_is_a_failure_too() {
    let ctx = ctx();
    let mut failures = ctx.bus.subscribe::<ServiceFailed>();
    let token = CancellationToken::new();
    let sup = Supervisor::new(ctx.clone(), token.clone());
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    sup.background("sweeper", move || {
        let n = r.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                panic!("index out of bounds");
            }
        }
    });
    let ev = failures.recv().await.unwrap();
    assert!(ev.error.contains("panicked: index out of bounds"), "{ev:?}");
    let ev = failures.recv().await.unwrap();
    assert_eq!(ev.error, "it stopped on its own");
    assert_eq!(ev.failures, 2);
    token.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_critical_task_that_ends_stops_the_daemon() {
    let ctx = ctx();
    let token = CancellationToken::new();
    let sup = Supervisor::new(ctx, token.clone());
    let stop = CancellationToken::new();
    let task = sup.critical(None, "the inventory writer", stop.clone(), async {});
    task.await.unwrap();
    assert!(token.is_cancelled(), "the daemon shuts down");
    assert_eq!(
        sup.fatal().as_deref(),
        Some("the inventory writer stopped on its own")
    );
    // Ending when told to is not a failure.
    let token = CancellationToken::new();
    let sup = Supervisor::new(self::ctx(), token.clone());
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = sup.critical(None, "the lease writer", stop.clone(), async move {
        s.cancelled().await;
    });
    stop.cancel();
    task.await.unwrap();
    assert!(!token.is_cancelled() && sup.fatal().is_none());
}

#[test]
fn restart_pauses_double_up_to_the_cap() {
    let pauses: Vec<u64> = (1..=8).map(|n| restart_pause(n).as_secs()).collect();
    assert_eq!(pauses, [1, 2, 4, 8, 16, 30, 30, 30]);
}

#[test]
fn a_niced_lane_runs_at_a_lower_priority_and_a_plain_one_as_the_process() {
    let nice_of_thread = |lane: &Lane| {
        let (tx, rx) = std::sync::mpsc::channel();
        lane.handle().spawn(async move {
            let me = Some(rustix::thread::gettid());
            let _ = tx.send((
                std::thread::current().name().map(str::to_string),
                rustix::process::getpriority_process(me).unwrap(),
            ));
        });
        rx.recv_timeout(Duration::from_secs(5)).unwrap()
    };
    let own = rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
    let plain = Lane::start("test-plain").unwrap();
    assert_eq!(nice_of_thread(&plain), (Some("test-plain".into()), own));
    let niced = Lane::start_niced("test-niced", 5).unwrap();
    assert_eq!(
        nice_of_thread(&niced),
        (Some("test-niced".into()), (own + 5).min(19))
    );
}
