//! `voxlb top`: a live full-screen view of the daemon over the control
//! socket (`status`, `stats` and `telemetry` requests), drawn with ratatui.
//!
//! The pure part — [`View::build`] from two [`Snapshot`]s, [`draw`] into any
//! ratatui backend, [`render_text`] for `--once` — is what the tests check
//! (ratatui's `TestBackend`); the terminal loop around it is thin.
//!
//! Per backend: state, health, configured and effective weight (0 unless it
//! takes new flows), table share (Maglev slots / table size), new flows/s,
//! packets/s, bytes/s and flow-table entries (the census, refreshed every
//! 10 s by the daemon; an entry stays until the LRU evicts it, so this counts
//! recent flows, not only open ones). Below: flow-table fill, per-reason
//! packet rates and the last health events.

use std::{
    fmt::Write as _,
    io::IsTerminal,
    net::IpAddr,
    path::Path,
    process::ExitCode,
    time::{Duration, Instant},
};

use ratatui::{
    Frame,
    layout::{Constraint, Direction, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Borders, Cell, Paragraph, Row as TRow, Table},
};

use crate::{
    cli::{CLIENT_TIMEOUT, EXIT_ERROR, EXIT_OK, EXIT_UNREACHABLE},
    control::{
        self, BackendView, ControlError, Request, Response, ServiceStat, ServiceView, StatsView,
        StatusView,
    },
    telemetry::{FlowCensus, TelemetryView},
};

/// Sort column of the backend table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    /// Service, then address.
    Name,
    /// Packets/s.
    Packets,
    /// Bytes/s.
    Bytes,
    /// New flows/s.
    NewFlows,
    /// Flow-table entries.
    Flows,
    /// Table share.
    Share,
}

impl SortKey {
    const ALL: [SortKey; 6] = [
        SortKey::Name,
        SortKey::Packets,
        SortKey::Bytes,
        SortKey::NewFlows,
        SortKey::Flows,
        SortKey::Share,
    ];
    fn label(self) -> &'static str {
        match self {
            SortKey::Name => "name",
            SortKey::Packets => "packets/s",
            SortKey::Bytes => "bytes/s",
            SortKey::NewFlows => "new flows/s",
            SortKey::Flows => "flows",
            SortKey::Share => "share",
        }
    }
    fn next(self) -> SortKey {
        let i = SortKey::ALL.iter().position(|k| *k == self).unwrap_or(0);
        SortKey::ALL[(i + 1) % SortKey::ALL.len()]
    }
}

/// What the daemon said at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Seconds on any monotonic clock (only differences are used).
    pub at: f64,
    pub status: StatusView,
    pub stats: StatsView,
    pub telemetry: TelemetryView,
}

/// Ask the daemon for a snapshot.
pub fn snapshot(socket: &Path, clock: Instant) -> Result<Snapshot, ControlError> {
    let ask = |r: Request| control::request(socket, &r, CLIENT_TIMEOUT);
    let bad = |r: Response| ControlError::Protocol(format!("unexpected answer {r:?}"));
    let status = match ask(Request::Status {})? {
        Response::Status(s) => s,
        r => return Err(bad(r)),
    };
    let stats = match ask(Request::Stats {})? {
        Response::Stats(s) => s,
        r => return Err(bad(r)),
    };
    let telemetry = match ask(Request::Telemetry {})? {
        Response::Telemetry(t) => t,
        r => return Err(bad(r)),
    };
    Ok(Snapshot {
        at: clock.elapsed().as_secs_f64(),
        status,
        stats,
        telemetry,
    })
}

/// How the operator looks at it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub sort: SortKey,
    pub reverse: bool,
    pub service: Option<String>,
    pub paused: bool,
}

/// One line of the backend table.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendRow {
    pub service: String,
    pub address: IpAddr,
    pub name: String,
    pub state: String,
    pub health: String,
    /// Configured weight, or the CA role.
    pub weight: String,
    pub effective: String,
    /// Percent of the service's table (compiler), or `serving` (CA).
    pub share: Option<f64>,
    pub new_flows_s: Option<f64>,
    pub packets_s: Option<f64>,
    pub bytes_s: Option<f64>,
    pub flows: Option<u64>,
}

/// One line per service (the header of its backends).
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceRow {
    pub name: String,
    pub kind: String,
    pub vip: String,
    pub usable: String,
    pub new_flows_s: Option<f64>,
    pub packets_s: Option<f64>,
    pub bytes_s: Option<f64>,
    pub no_backend_s: Option<f64>,
}

/// Everything a frame shows.
#[derive(Clone, Debug, PartialEq)]
pub struct View {
    pub title: String,
    pub flow_table: String,
    pub services: Vec<ServiceRow>,
    pub backends: Vec<BackendRow>,
    /// (reason, verdict, packets/s), busiest first, zero rates left out.
    pub reasons: Vec<(String, String, f64)>,
    pub events: Vec<String>,
    pub footer: String,
}

fn rate(now: u64, before: Option<u64>, secs: f64) -> Option<f64> {
    let b = before?;
    (secs > 0.0).then(|| now.saturating_sub(b) as f64 / secs)
}

fn clock(unix: u64) -> String {
    let s = unix % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn uptime(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        s => format!("{}d{:02}h", s / 86_400, s / 3600 % 24),
    }
}

/// `1.5k`, `2.3M`: rates in a narrow column.
pub fn si(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v < 1000.0 => format!("{v:.1}"),
        Some(v) if v < 1e6 => format!("{:.1}k", v / 1e3),
        Some(v) if v < 1e9 => format!("{:.1}M", v / 1e6),
        Some(v) => format!("{:.1}G", v / 1e9),
    }
}

impl View {
    /// The view of `cur`, with rates against `prev` (none without it).
    pub fn build(prev: Option<&Snapshot>, cur: &Snapshot, opts: &Options) -> View {
        let secs = prev.map(|p| cur.at - p.at).unwrap_or(0.0);
        let st = &cur.status;
        let shown = |name: &str| opts.service.as_deref().is_none_or(|s| s == name);
        let census = cur.telemetry.flow_census.as_ref();
        let mut services = Vec::new();
        let mut backends = Vec::new();
        for s in st.services.iter().filter(|s| shown(&s.name)) {
            let stat = cur.stats.services.iter().find(|x| x.name == s.name);
            let before = prev.and_then(|p| p.stats.services.iter().find(|x| x.name == s.name));
            services.push(service_row(s, stat, before, secs));
            for b in &s.backends {
                backends.push(backend_row(s, b, stat, before, secs, census));
            }
        }
        sort_backends(&mut backends, opts);
        let events = cur
            .telemetry
            .health_events
            .iter()
            .filter(|e| shown(&e.service))
            .map(|e| {
                format!(
                    "{} {} {} {} ({})",
                    clock(e.at),
                    e.service,
                    e.address,
                    if e.up { "up" } else { "DOWN" },
                    e.detail
                )
            })
            .collect();
        View {
            title: title_line(cur),
            flow_table: flow_table_line(census),
            services,
            backends,
            reasons: reason_rates(prev, cur, secs),
            events,
            footer: footer_line(opts),
        }
    }
}

/// A service's row: `stat` and `before` are its counters now and at the
/// previous snapshot, `secs` apart.
fn service_row(
    s: &ServiceView,
    stat: Option<&ServiceStat>,
    before: Option<&ServiceStat>,
    secs: f64,
) -> ServiceRow {
    ServiceRow {
        name: s.name.clone(),
        kind: s.kind.to_string(),
        vip: s.vip.clone(),
        usable: if s.active == 0 {
            format!("0/{} ALL DOWN", s.backends.len())
        } else {
            format!("{}/{}", s.active, s.backends.len())
        },
        new_flows_s: stat.and_then(|x| rate(x.new_flows, before.map(|b| b.new_flows), secs)),
        packets_s: stat.and_then(|x| rate(x.packets, before.map(|b| b.packets), secs)),
        bytes_s: stat.and_then(|x| rate(x.bytes, before.map(|b| b.bytes), secs)),
        no_backend_s: stat.and_then(|x| rate(x.no_backend, before.map(|b| b.no_backend), secs)),
    }
}

/// Backend `b`'s row in service `s` (counters as for [`service_row`]).
fn backend_row(
    s: &ServiceView,
    b: &BackendView,
    stat: Option<&ServiceStat>,
    before: Option<&ServiceStat>,
    secs: f64,
    census: Option<&FlowCensus>,
) -> BackendRow {
    let bs = stat.and_then(|x| x.backends.iter().find(|y| y.address == b.address));
    let bb = before.and_then(|x| x.backends.iter().find(|y| y.address == b.address));
    let takes_new = b.state == crate::control::BackendState::Active;
    let (weight, effective, share) = if s.kind == crate::control::ServiceKind::Ca {
        let serving = s.ca_target == Some(b.address);
        (
            b.role.clone().unwrap_or_default(),
            if serving { "serving" } else { "-" }.to_string(),
            Some(if serving { 100.0 } else { 0.0 }),
        )
    } else {
        (
            b.weight.to_string(),
            if takes_new { b.weight } else { 0 }.to_string(),
            s.table_size
                .filter(|t| *t > 0)
                .map(|t| b.slots as f64 * 100.0 / t as f64),
        )
    };
    BackendRow {
        service: s.name.clone(),
        address: b.address,
        name: b.name.clone().unwrap_or_default(),
        state: b.state.to_string(),
        health: match b.healthy {
            Some(true) => "up",
            Some(false) => "DOWN",
            None => "unchecked",
        }
        .into(),
        weight,
        effective,
        share,
        new_flows_s: bs.and_then(|x| rate(x.new_flows, bb.map(|y| y.new_flows), secs)),
        packets_s: bs.and_then(|x| rate(x.packets, bb.map(|y| y.packets), secs)),
        bytes_s: bs.and_then(|x| rate(x.bytes, bb.map(|y| y.bytes), secs)),
        flows: census.map(|c| c.of(b.id, b.generation)),
    }
}

/// Numeric columns: biggest first; names: alphabetical; then by service
/// and address. `opts.reverse` turns it around.
fn sort_backends(backends: &mut [BackendRow], opts: &Options) {
    let key = |r: &BackendRow| -> f64 {
        match opts.sort {
            SortKey::Name => 0.0,
            SortKey::Packets => r.packets_s.unwrap_or(0.0),
            SortKey::Bytes => r.bytes_s.unwrap_or(0.0),
            SortKey::NewFlows => r.new_flows_s.unwrap_or(0.0),
            SortKey::Flows => r.flows.unwrap_or(0) as f64,
            SortKey::Share => r.share.unwrap_or(0.0),
        }
    };
    backends.sort_by(|a, b| {
        let o = key(b)
            .total_cmp(&key(a))
            .then_with(|| a.service.cmp(&b.service))
            .then_with(|| a.address.cmp(&b.address));
        if opts.reverse { o.reverse() } else { o }
    });
}

/// (reason, verdict, packets/s) of every reason that moved, busiest first.
fn reason_rates(prev: Option<&Snapshot>, cur: &Snapshot, secs: f64) -> Vec<(String, String, f64)> {
    let mut reasons: Vec<(String, String, f64)> = cur
        .stats
        .reasons
        .iter()
        .filter_map(|r| {
            let b = prev?.stats.reasons.iter().find(|x| x.reason == r.reason)?;
            let v = rate(r.packets, Some(b.packets), secs)?;
            (v > 0.0).then(|| (r.reason.clone(), r.verdict.clone(), v))
        })
        .collect();
    reasons.sort_by(|a, b| b.2.total_cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    reasons
}

fn flow_table_line(census: Option<&FlowCensus>) -> String {
    match census {
        Some(c) => match c.capacity {
            Some(cap) if cap > 0 => format!(
                "flow table {}/{} ({:.1}%)",
                c.entries,
                cap,
                c.entries as f64 * 100.0 / cap as f64
            ),
            _ => format!("flow table {} entries", c.entries),
        },
        None => "flow table: not counted yet".into(),
    }
}

fn title_line(cur: &Snapshot) -> String {
    let st = &cur.status;
    let r = &cur.telemetry.rebuilds;
    format!(
        "voxlb {} pid {}  up {}  {}  rebuilds {} (last {:.1} ms){}",
        st.version,
        st.pid,
        uptime(st.uptime_secs),
        st.interfaces.join(","),
        r.rebuilds,
        r.last_seconds * 1000.0,
        match &st.last_reload_error {
            Some(_) => "  LAST RELOAD FAILED",
            None => "",
        }
    )
}

fn footer_line(opts: &Options) -> String {
    format!(
        "sort: {}{}  filter: {}{}   [s] sort [S] reverse [f] filter [p] pause [q] quit",
        opts.sort.label(),
        if opts.reverse { " (reversed)" } else { "" },
        opts.service.as_deref().unwrap_or("all services"),
        if opts.paused { "  PAUSED" } else { "" },
    )
}

const BACKEND_HEADER: [&str; 13] = [
    "SERVICE", "BACKEND", "NAME", "STATE", "HEALTH", "WEIGHT", "EFF", "SHARE", "NEW/s", "PKT/s",
    "BYTES/s", "FLOWS", "",
];

fn backend_cells(b: &BackendRow) -> Vec<String> {
    vec![
        b.service.clone(),
        b.address.to_string(),
        b.name.clone(),
        b.state.clone(),
        b.health.clone(),
        b.weight.clone(),
        b.effective.clone(),
        b.share.map_or("-".into(), |s| format!("{s:.1}%")),
        si(b.new_flows_s),
        si(b.packets_s),
        si(b.bytes_s),
        b.flows.map_or("-".into(), |f| f.to_string()),
        String::new(),
    ]
}

const SERVICE_HEADER: [&str; 8] = [
    "SERVICE",
    "KIND",
    "VIP",
    "USABLE",
    "NEW/s",
    "PKT/s",
    "BYTES/s",
    "NO-BACKEND/s",
];

fn service_cells(s: &ServiceRow) -> Vec<String> {
    vec![
        s.name.clone(),
        s.kind.clone(),
        s.vip.clone(),
        s.usable.clone(),
        si(s.new_flows_s),
        si(s.packets_s),
        si(s.bytes_s),
        si(s.no_backend_s),
    ]
}

fn widths(header: &[&str], rows: &[Vec<String>]) -> Vec<u16> {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    w.into_iter().map(|x| x as u16).collect()
}

fn table<'a>(title: &'a str, header: &'a [&'a str], rows: Vec<Vec<String>>) -> Table<'a> {
    let w = widths(header, &rows);
    Table::new(
        rows.into_iter().map(TRow::new),
        w.into_iter().map(Constraint::Length),
    )
    .header(
        TRow::new(header.iter().map(|h| Cell::from(*h)))
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .column_spacing(2)
    .block(Block::default().borders(Borders::TOP).title(title))
}

/// Draw one frame.
pub fn draw(f: &mut Frame, v: &View) {
    let area = f.area();
    let n_services = v.services.len() as u16;
    let n_backends = v.backends.len() as u16;
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Length(2),
            Constraint::Length(n_services + 2),
            Constraint::Min(n_backends.min(3) + 2),
            Constraint::Length(8),
            Constraint::Length(1),
        ])
        .split(area);
    f.render_widget(
        Paragraph::new(vec![
            Line::from(v.title.clone()).style(Style::default().add_modifier(Modifier::BOLD)),
            Line::from(v.flow_table.clone()),
        ]),
        rows[0],
    );
    f.render_widget(
        table(
            "services",
            &SERVICE_HEADER,
            v.services.iter().map(service_cells).collect(),
        ),
        rows[1],
    );
    f.render_widget(
        table(
            "backends",
            &BACKEND_HEADER,
            v.backends.iter().map(backend_cells).collect(),
        ),
        rows[2],
    );
    let bottom = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Percentage(40), Constraint::Percentage(60)])
        .split(rows[3]);
    let reasons: Vec<Line> = v
        .reasons
        .iter()
        .map(|(r, verdict, x)| Line::from(format!("{r:<20} {verdict:<4} {:>8}", si(Some(*x)))))
        .collect();
    f.render_widget(
        Paragraph::new(reasons).block(
            Block::default()
                .borders(Borders::TOP)
                .title("packets/s by reason"),
        ),
        bottom[0],
    );
    let events: Vec<Line> = v.events.iter().map(|e| Line::from(e.clone())).collect();
    f.render_widget(
        Paragraph::new(events).block(
            Block::default()
                .borders(Borders::TOP)
                .title("health events (newest first)"),
        ),
        bottom[1],
    );
    f.render_widget(Paragraph::new(v.footer.clone()), rows[4]);
}

fn text_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let w = widths(header, rows);
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        let l: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i] as usize))
            .collect();
        let _ = writeln!(out, "{}", l.join("  ").trim_end());
    };
    line(
        &mut out,
        &header.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
    );
    for r in rows {
        line(&mut out, r);
    }
    out
}

/// One frame as plain text (`--once`, and the demo).
pub fn render_text(v: &View) -> String {
    let mut out = format!("{}\n{}\n\n", v.title, v.flow_table);
    out.push_str(&text_table(
        &SERVICE_HEADER,
        &v.services.iter().map(service_cells).collect::<Vec<_>>(),
    ));
    out.push('\n');
    out.push_str(&text_table(
        &BACKEND_HEADER[..12],
        &v.backends
            .iter()
            .map(|b| {
                let mut c = backend_cells(b);
                c.pop();
                c
            })
            .collect::<Vec<_>>(),
    ));
    out.push_str("\npackets/s by reason:\n");
    if v.reasons.is_empty() {
        out.push_str("  (none)\n");
    }
    for (r, verdict, x) in &v.reasons {
        let _ = writeln!(out, "  {r:<20} {verdict:<4} {:>8}", si(Some(*x)));
    }
    out.push_str("\nhealth events (newest first):\n");
    if v.events.is_empty() {
        out.push_str("  (none)\n");
    }
    for e in &v.events {
        let _ = writeln!(out, "  {e}");
    }
    out
}

/// What a key does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAction {
    Quit,
    Redraw,
    Ignore,
}

/// Apply a key to the options; `services` are the names to cycle through.
pub fn on_key(opts: &mut Options, key: char, services: &[String]) -> KeyAction {
    match key {
        'q' | '\x1b' => return KeyAction::Quit,
        's' => opts.sort = opts.sort.next(),
        'S' => opts.reverse = !opts.reverse,
        'p' | ' ' => opts.paused = !opts.paused,
        'f' => {
            opts.service = match &opts.service {
                None => services.first().cloned(),
                Some(cur) => services
                    .iter()
                    .position(|s| s == cur)
                    .and_then(|i| services.get(i + 1))
                    .cloned(),
            }
        }
        _ => return KeyAction::Ignore,
    }
    KeyAction::Redraw
}

/// `voxlb top`.
pub fn main(
    socket: &Path,
    once: bool,
    interval: Duration,
    service: Option<String>,
    sort: SortKey,
) -> ExitCode {
    let fail = |e: ControlError| {
        eprintln!("voxlb: {e}");
        ExitCode::from(match e {
            ControlError::Unreachable { .. } => EXIT_UNREACHABLE,
            _ => EXIT_ERROR,
        })
    };
    let opts = Options {
        sort,
        reverse: false,
        service,
        paused: false,
    };
    let clock = Instant::now();
    if let Some(s) = &opts.service {
        match snapshot(socket, clock) {
            Ok(snap) if !snap.status.services.iter().any(|x| &x.name == s) => {
                eprintln!("voxlb: --service: unknown service {s:?}");
                return ExitCode::from(crate::cli::EXIT_USAGE);
            }
            Ok(_) => {}
            Err(e) => return fail(e),
        }
    }
    if once || !std::io::stdout().is_terminal() {
        // Two snapshots `interval` apart, so the rates are real.
        let first = match snapshot(socket, clock) {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        std::thread::sleep(interval);
        let second = match snapshot(socket, clock) {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        print!(
            "{}",
            render_text(&View::build(Some(&first), &second, &opts))
        );
        return ExitCode::from(EXIT_OK);
    }
    match interactive(socket, interval, opts, clock) {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(e) => fail(e),
    }
}

fn interactive(
    socket: &Path,
    interval: Duration,
    mut opts: Options,
    clock: Instant,
) -> Result<(), ControlError> {
    use crossterm::event::{self, Event, KeyCode, KeyEventKind};
    let mut cur = snapshot(socket, clock)?;
    let mut prev: Option<Snapshot> = None;
    let mut terminal = ratatui::init();
    let mut next = Instant::now() + interval;
    let result = loop {
        let view = View::build(prev.as_ref(), &cur, &opts);
        if let Err(e) = terminal.draw(|f| draw(f, &view)) {
            break Err(ControlError::Protocol(format!("terminal: {e}")));
        }
        let wait = next.saturating_duration_since(Instant::now());
        match event::poll(wait) {
            Ok(true) => {
                if let Ok(Event::Key(k)) = event::read()
                    && k.kind == KeyEventKind::Press
                {
                    let c = match k.code {
                        KeyCode::Char(c) => c,
                        KeyCode::Esc => '\x1b',
                        _ => continue,
                    };
                    let names: Vec<String> =
                        cur.status.services.iter().map(|s| s.name.clone()).collect();
                    if on_key(&mut opts, c, &names) == KeyAction::Quit {
                        break Ok(());
                    }
                }
            }
            Ok(false) => {
                next = Instant::now() + interval;
                if !opts.paused {
                    match snapshot(socket, clock) {
                        Ok(s) => prev = Some(std::mem::replace(&mut cur, s)),
                        Err(e) => break Err(e),
                    }
                }
            }
            Err(e) => break Err(ControlError::Protocol(format!("terminal: {e}"))),
        }
    };
    ratatui::restore();
    result
}
