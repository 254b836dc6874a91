//! Running the services and noticing when one fails.
//!
//! **Policy.** A service that fails (returns an error, panics, or stops on its own before
//! shutdown) is logged at `error` with its cause, counted in
//! `kindling_service_failures_total{service}`, listed as failing in `/healthz` (which then
//! says `degraded`), announced on the event bus, and started again after a pause that doubles
//! from 1 s to 30 s while it keeps failing. Once it has run for a minute it counts as
//! recovered. A boot server that restarts a broken part and keeps the rest serving is what a
//! rack in the middle of a bring-up needs; the operator sees the failure in the log, the
//! metrics and the health check. Sockets are bound once and handed to each run again.
//!
//! The exception is a task that keeps state durable (the inventory and lease writers): one
//! that ends before shutdown stops the daemon with exit code 1, because nothing acknowledged
//! may be lost. See [`Supervisor::critical`].

use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ctx::Ctx;
use crate::events::ServiceFailed;

/// The first pause before a failed service starts again; doubled per failure in a row.
const RESTART_FIRST: Duration = Duration::from_secs(1);
/// The longest pause.
const RESTART_MAX: Duration = Duration::from_secs(30);
/// A service that has run this long counts as recovered.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// Starts services, restarts failed ones, and tracks them for shutdown.
#[derive(Debug, Clone)]
pub struct Supervisor {
    ctx: Ctx,
    tracker: TaskTracker,
    token: CancellationToken,
    /// Why a critical task ended, when one did: the daemon then exits 1.
    fatal: Arc<Mutex<Option<String>>>,
}

impl Supervisor {
    /// A supervisor for services sharing `ctx`, stopped by `token`.
    pub fn new(ctx: Ctx, token: CancellationToken) -> Supervisor {
        Supervisor {
            ctx,
            tracker: TaskTracker::new(),
            token,
            fatal: Arc::new(Mutex::new(None)),
        }
    }

    /// The token that stops every service.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// The tasks to wait for at shutdown.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Why a critical task ended, if one did.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Run service `name`: `start()` makes one run of it; a run that fails is started again
    /// after a pause (see the module's policy). A run that ends at shutdown is simply over.
    pub fn service<F, Fut, E>(&self, name: impl Into<String>, start: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        self.supervise(None, name.into(), start);
    }

    /// [`Supervisor::service`], each run on `lane` (see [`Lane`]).
    pub fn service_in<F, Fut, E>(&self, lane: &Lane, name: impl Into<String>, start: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        self.supervise(Some(lane.handle.clone()), name.into(), start);
    }

    fn supervise<F, Fut, E>(&self, lane: Option<Handle>, name: String, mut start: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        let (ctx, token) = (self.ctx.clone(), self.token.clone());
        self.tracker.spawn(async move {
            let mut failures = 0u32;
            loop {
                let mut run = match &lane {
                    Some(lane) => lane.spawn(start()),
                    None => tokio::spawn(start()),
                };
                let outcome = tokio::select! {
                    r = &mut run => r,
                    _ = tokio::time::sleep(HEALTHY_AFTER) => {
                        if failures > 0 {
                            tracing::info!(service = %name, "service recovered");
                            ctx.health.recovered(&name);
                            failures = 0;
                        }
                        run.await
                    }
                };
                if token.is_cancelled() {
                    if let Ok(Err(e)) = &outcome {
                        tracing::debug!(service = %name, error = %e, "service ended with an error at shutdown");
                    }
                    return;
                }
                let error = match outcome {
                    Ok(Ok(())) => "it stopped on its own".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) if e.is_panic() => format!("it panicked: {}", panic_text(e)),
                    Err(e) => e.to_string(),
                };
                failures += 1;
                let pause = restart_pause(failures);
                tracing::error!(service = %name, failures, restart_in = ?pause, "service failed: {error}");
                ctx.metrics.service_failed(&name);
                ctx.health.failed(&name, failures, &error);
                ctx.bus.publish(ServiceFailed {
                    service: name.clone(),
                    error,
                    failures,
                });
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                tracing::info!(service = %name, "starting the service again");
            }
        });
    }

    /// A background loop with no result of its own (a follower, a sweeper): supervised like
    /// a service; it is meant to run until shutdown.
    pub fn background<F, Fut>(&self, name: impl Into<String>, mut start: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.service(name, move || {
            let run = start();
            async move {
                run.await;
                Ok::<(), std::convert::Infallible>(())
            }
        });
    }

    /// Run `task`, which keeps state durable and stops when `stop` is cancelled (after every
    /// service has stopped), on `lane` if given (the writers whose commits DHCP ACKs and
    /// reports wait for). If it ends before that, the daemon shuts down and exits 1.
    pub fn critical<Fut>(
        &self,
        lane: Option<&Lane>,
        name: &'static str,
        stop: CancellationToken,
        task: Fut,
    ) -> JoinHandle<()>
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        let run = match lane {
            Some(lane) => lane.handle.spawn(task),
            None => tokio::spawn(task),
        };
        let (token, fatal) = (self.token.clone(), self.fatal.clone());
        tokio::spawn(async move {
            let outcome = run.await;
            if stop.is_cancelled() {
                return;
            }
            let why = match outcome {
                Ok(()) => format!("{name} stopped on its own"),
                Err(e) if e.is_panic() => format!("{name} panicked: {}", panic_text(e)),
                Err(e) => format!("{name}: {e}"),
            };
            tracing::error!("{why}: stopping, so that nothing acknowledged is lost");
            *fatal.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
            token.cancel();
        })
    }
}

/// A runtime of its own on a thread of its own, for the services whose answers must not
/// queue behind bulk work (DHCP and TFTP behind a thousand kernel downloads, and DHCP behind
/// thousands of TFTP transfers: each has a lane of its own): the kernel's
/// scheduler shares the CPU between this thread and the HTTP workers as it would between
/// dnsmasq and nginx. In a 1,000-machine storm on one core (bench/storm.sh) the TFTP phase's
/// median went from 16.6 s, its transfers one task among the HTTP connections, to 4 s; with
/// the lease and inventory writers here too, DHCP answered without a single retransmit
/// (234 before). Its sockets must be registered from a task on the lane, so that this
/// thread's reactor polls them. The thread ends when the lane is dropped. HTTP connections
/// are served on lanes too, one per core (`http::server`'s workers).
#[derive(Debug)]
pub struct Lane {
    handle: Handle,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Lane {
    /// Start a lane on a thread named `name`.
    pub fn start(name: &str) -> std::io::Result<Lane> {
        Lane::start_niced(name, 0)
    }

    /// Start a lane on a thread named `name` with the scheduler's `nice` value raised by
    /// `nice` (lower priority; 0 leaves it as the process's).
    pub fn start_niced(name: &str, nice: i32) -> std::io::Result<Lane> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let name = name.to_string();
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                if nice != 0 {
                    lower_priority(&name, nice);
                }
                runtime.block_on(stopped.cancelled())
            })?;
        Ok(Lane {
            handle,
            stop,
            thread: Some(thread),
        })
    }

    /// The lane's runtime, to spawn on.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// This thread's `nice` value raised by `by` (Linux keeps one per thread); logged if refused.
fn lower_priority(name: &str, by: i32) {
    let me = Some(rustix::thread::gettid());
    let raised = rustix::process::getpriority_process(me)
        .and_then(|now| rustix::process::setpriority_process(me, (now + by).min(19)));
    if let Err(e) = raised {
        tracing::warn!(thread = name, error = %e, "cannot lower the thread's priority");
    }
}

/// The pause before the `failures`-th restart in a row.
fn restart_pause(failures: u32) -> Duration {
    RESTART_FIRST
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(RESTART_MAX)
}

fn panic_text(e: tokio::task::JoinError) -> String {
    let payload = e.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

#[cfg(test)]
mod tests;
