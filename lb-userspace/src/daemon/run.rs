//! The run loop: the control socket, signals, timers and the messages of
//! checkers, pollers and the route watcher, all handled by one task that
//! owns the [`Daemon`].

use super::*;

/// Run the daemon until SIGTERM/SIGINT (or `opts.stop`). `listener` is the
/// bound control socket (bind it before loading the data plane, so that a
/// second daemon fails before touching the maps). On exit the data plane is
/// left as it is: forwarding goes on without the daemon.
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    dp: Box<dyn DataPlane>,
    listener: UnixListener,
    opts: RunOptions,
) -> Result<(), DaemonError> {
    let socket_path = config.control_socket.clone();
    let metrics_addr = config.metrics_listen;
    let (health_tx, mut health_rx) = mpsc::channel(1024);
    let mut daemon = Daemon::start(
        config,
        config_path,
        dp,
        opts.resolver,
        opts.spawner,
        health_tx,
    )?;
    let (load_tx, mut load_rx) = mpsc::channel(1024);
    daemon.enable_load_polling(load_tx);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (calls_tx, mut calls_rx) = mpsc::channel::<Call>(64);
    let server = tokio::spawn(control::serve(
        listener,
        calls_tx.clone(),
        shutdown_rx.clone(),
    ));
    let metrics = serve_metrics(metrics_addr, calls_tx.clone(), shutdown_rx.clone()).await;
    drop(calls_tx);

    let mut signals = Signals::new(opts.signals)?;
    let mut stop = opts.stop;
    let mut t = Ticks::new();
    let mut route_rx = spawn_route_watcher();
    info!(
        "voxlb daemon ready; control socket {}",
        socket_path.display()
    );
    // Attached, first reconcile applied, control socket serving: tell
    // systemd (Type=notify), if it started us.
    let notifier = crate::notify::Notifier::from_env();
    notifier.ready(&ready_status(&daemon));
    loop {
        tokio::select! {
            Some(call) = calls_rx.recv() => handle_call(&mut daemon, &notifier, call),
            Some(ev) = health_rx.recv() => daemon.on_health(ev),
            _ = t.retry.tick() => daemon.neigh_tick(false),
            _ = t.refresh.tick() => daemon.neigh_tick(true),
            _ = t.pins.tick() => daemon.check_pins(),
            _ = t.retire.tick() => daemon.retire_tick(),
            _ = t.census.tick() => daemon.census(),
            _ = t.announce.tick() => daemon.announce_tick(),
            Some(ev) = load_rx.recv() => daemon.on_load(ev),
            _ = t.weights.tick() => daemon.weights_tick(),
            _ = t.route_backstop.tick() => daemon.route_tick(),
            Some(()) = route_rx.recv() => daemon.route_tick(),
            _ = recv_signal(&mut signals.hup) => {
                info!("SIGHUP: reloading the config");
                notifier.reloading();
                daemon.reload();
                notifier.ready(&ready_status(&daemon));
            }
            _ = recv_signal(&mut signals.term) => {
                info!("SIGTERM: exiting; the data plane keeps forwarding");
                break;
            }
            _ = recv_signal(&mut signals.int) => {
                info!("SIGINT: exiting; the data plane keeps forwarding");
                break;
            }
            _ = wait_stop(&mut stop) => break,
        }
    }
    notifier.stopping();
    let _ = shutdown_tx.send(true);
    daemon.stop_checkers();
    daemon.stop_announcing();
    let _ = server.await;
    if let Some(m) = metrics {
        let _ = m.await;
    }
    let _ = std::fs::remove_file(&socket_path);
    Ok(())
}

/// The metrics endpoint, if the config asks for one; a listener that cannot
/// be bound disables it (logged), it does not stop the daemon.
async fn serve_metrics(
    addr: Option<std::net::SocketAddr>,
    calls_tx: mpsc::Sender<Call>,
    shutdown_rx: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let addr = addr?;
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => {
            info!("metrics at http://{addr}/metrics");
            Some(tokio::spawn(crate::metrics::serve(
                l,
                calls_tx,
                shutdown_rx,
            )))
        }
        Err(e) => {
            error!("metrics listener {addr}: {e}; metrics disabled");
            None
        }
    }
}

/// The signals the loop answers: none when `RunOptions::signals` is off.
struct Signals {
    hup: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new(enabled: bool) -> Result<Signals, DaemonError> {
        let mut s = Signals {
            hup: None,
            term: None,
            int: None,
        };
        if enabled {
            use tokio::signal::unix::{SignalKind, signal};
            s.hup = Some(signal(SignalKind::hangup()).map_err(DaemonError::Signal)?);
            s.term = Some(signal(SignalKind::terminate()).map_err(DaemonError::Signal)?);
            s.int = Some(signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?);
        }
        Ok(s)
    }
}

/// The loop's timers.
struct Ticks {
    retry: tokio::time::Interval,
    refresh: tokio::time::Interval,
    pins: tokio::time::Interval,
    retire: tokio::time::Interval,
    census: tokio::time::Interval,
    announce: tokio::time::Interval,
    weights: tokio::time::Interval,
    route_backstop: tokio::time::Interval,
}

impl Ticks {
    fn new() -> Ticks {
        Ticks {
            retry: tokio::time::interval(NEIGH_RETRY),
            refresh: tokio::time::interval(NEIGH_REFRESH),
            pins: tokio::time::interval(PIN_CHECK),
            retire: tokio::time::interval(RETIRE_TICK),
            census: tokio::time::interval(crate::telemetry::CENSUS_INTERVAL),
            announce: tokio::time::interval(ANNOUNCE_TICK),
            weights: tokio::time::interval(WEIGHTS_TICK),
            route_backstop: tokio::time::interval(ROUTE_BACKSTOP),
        }
    }
}

/// One control request: handled, logged if it changes anything, answered.
/// A reload is told to systemd.
fn handle_call(daemon: &mut Daemon, notifier: &crate::notify::Notifier, call: Call) {
    let is_change = !matches!(
        call.request,
        Request::BackendList { .. }
            | Request::BackendConnections { .. }
            | Request::Status {}
            | Request::Stats {}
            | Request::Flows { .. }
            | Request::Telemetry {}
    );
    let desc = format!("{:?}", call.request);
    let reload = matches!(call.request, Request::Reload {});
    if reload {
        notifier.reloading();
    }
    let resp = daemon.handle(call.request);
    if reload {
        notifier.ready(&ready_status(daemon));
    }
    if is_change {
        match &resp {
            Response::Ok { message } => info!("control: {message}"),
            Response::Error { message } => warn!("control: {desc} refused: {message}"),
            _ => {}
        }
    }
    let _ = call.reply.send(resp);
}

/// How often routed compilers are re-resolved without a netlink event (a
/// lost notification, a neighbour gone stale).
pub(super) const ROUTE_BACKSTOP: Duration = Duration::from_secs(5);

/// A thread that wakes the loop on route, neighbour, link and address
/// changes. It ends when the loop drops the receiver. Without rtnetlink
/// (no permission) the loop keeps the backstop tick alone.
pub(super) fn spawn_route_watcher() -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel(1);
    match crate::route::RouteWatcher::new() {
        Ok(mut w) => {
            std::thread::spawn(move || {
                while !tx.is_closed() {
                    match w.wait(Duration::from_secs(1)) {
                        // A full channel already holds a wake-up.
                        Ok(true) => {
                            let _ = tx.try_send(());
                        }
                        Ok(false) => {}
                        Err(e) => {
                            warn!("route watcher: {e}; re-resolving every {ROUTE_BACKSTOP:?}");
                            break;
                        }
                    }
                }
            });
        }
        Err(e) => warn!("route watcher: {e}; re-resolving every {ROUTE_BACKSTOP:?}"),
    }
    rx
}

/// The `STATUS=` systemd shows next to the unit.
pub(super) fn ready_status(d: &Daemon) -> String {
    let s = d.status();
    let usable: usize = s.services.iter().map(|v| v.active).sum();
    let all: usize = s.services.iter().map(|v| v.backends.len()).sum();
    match &s.last_reload_error {
        Some(e) => format!("serving; LAST RELOAD FAILED (old config kept): {e}"),
        None => format!(
            "serving {} service(s), {usable}/{all} backend(s) usable",
            s.services.len()
        ),
    }
}

pub(super) async fn recv_signal(s: &mut Option<tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

pub(super) async fn wait_stop(s: &mut Option<watch::Receiver<bool>>) {
    match s {
        Some(s) => control::stopped(s).await,
        None => std::future::pending().await,
    }
}
