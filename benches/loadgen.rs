//! Admission load benchmark: starts the injector binary (the one Cargo built for this
//! profile: `cargo bench` = release), drives `POST /mutate` over TLS on 127.0.0.1 and prints
//! one table. Run through `scripts/bench-admission.sh` (see BENCHMARKS.md).
//!
//! Why a client of our own rather than `oha`: it needs nothing from outside the lockfile; it
//! measures fixed-rate latency from each request's *intended* send time (open loop, so a
//! stall shows up in the percentiles instead of silently lowering the offered rate), it can
//! open a new TLS connection per request with session resumption off (as the API server's Go
//! client does), and it reads the server's CPU time and RSS from /proc at the exact start and
//! end of every measured window. It speaks HTTP/1.1 with keep-alive on a hand-written,
//! allocation-free request/response loop over tokio-rustls, so that the client, which shares
//! the 2 cores with the server, costs as little CPU as possible (its share is printed).
//!
//! Every response is checked: HTTP 200 and exactly the body length of the first answer,
//! whose JSON is checked in full (uid echoed, allowed, a JSONPatch). Anything else counts as
//! an error, and any error makes the run exit 1. Wall-clock figures never fail a run.

#[path = "support/fixtures.rs"]
mod fixtures;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const USAGE: &str = "\
usage: loadgen [--smoke] [--duration SECS] [--reps N] [--client-threads N]
               [--fixtures 5k,64k,1m] [--only throughput|latency] [--rust-log FILTER]
  --smoke            every scenario once for 0.5 s (CI): fails on errors, never on timings
  --duration SECS    measured seconds per scenario (default 20), after 1 s of warm-up
  --reps N           repetitions of the headline figure, 5.5 KB at c=32 (default 3)
  --client-threads N tokio worker threads of this client (default 1)
  --fixtures LIST    which bodies (default 5k,64k,1m)
  --only KIND        run only the closed-loop throughput or only the fixed-rate latency scenarios
  --rust-log FILTER  RUST_LOG of the server (default: unset, i.e. info, as deployed)
  --new-conn-rate R  highest fixed rate with a new TLS connection per request (default 500)";

#[derive(Debug, Clone)]
struct Args {
    smoke: bool,
    duration: Duration,
    warmup: Duration,
    reps: usize,
    client_threads: usize,
    fixtures: Vec<String>,
    only: Option<String>,
    rust_log: Option<String>,
    new_conn_rate: f64,
}

/// New TLS connections per second in `--smoke` (a dev build on 2 shared cores).
const SMOKE_NEW_CONN_RATE: f64 = 100.0;

fn parse_args() -> Args {
    let mut a = Args {
        smoke: false,
        duration: Duration::from_secs(20),
        warmup: Duration::from_secs(1),
        reps: 3,
        client_threads: 1,
        fixtures: vec!["5k".into(), "64k".into(), "1m".into()],
        only: None,
        rust_log: None,
        new_conn_rate: 500.0,
    };
    let mut it = std::env::args().skip(1);
    let value = |it: &mut dyn Iterator<Item = String>, flag: &str| {
        it.next().unwrap_or_else(|| {
            eprintln!("loadgen: {flag} needs a value\n{USAGE}");
            std::process::exit(2)
        })
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            // `cargo bench` passes --bench to harness-less targets.
            "--bench" => {}
            "--smoke" => a.smoke = true,
            "--duration" => {
                a.duration = Duration::from_secs_f64(value(&mut it, &arg).parse().expect("seconds"))
            }
            "--reps" => a.reps = value(&mut it, &arg).parse().expect("a count"),
            "--client-threads" => a.client_threads = value(&mut it, &arg).parse().expect("a count"),
            "--fixtures" => {
                a.fixtures = value(&mut it, &arg)
                    .split(',')
                    .map(str::to_string)
                    .collect()
            }
            "--only" => a.only = Some(value(&mut it, &arg)),
            "--rust-log" => a.rust_log = Some(value(&mut it, &arg)),
            "--new-conn-rate" => {
                a.new_conn_rate = value(&mut it, &arg).parse().expect("requests per second")
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0)
            }
            other => {
                eprintln!("loadgen: unknown argument {other:?}\n{USAGE}");
                std::process::exit(2)
            }
        }
    }
    if a.smoke {
        a.duration = Duration::from_millis(500);
        a.warmup = Duration::from_millis(100);
        a.reps = 1;
    }
    a
}

// ---------------------------------------------------------------------------------------
// The server under test and what /proc says about it.

struct Server {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    ca_file: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(rust_log: Option<&str>) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let certs = dir.path().join("certs");
        let out = Command::new("bash")
            .arg(repo.join("certs/generate.sh"))
            .arg(&certs)
            .output()
            .expect("running certs/generate.sh");
        assert!(
            out.status.success(),
            "certs/generate.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let password = dir.path().join("password");
        std::fs::write(&password, "bench-password\n").expect("password file");
        let webhook_port = free_port();
        let admin_port = free_port();
        let config = dir.path().join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "webhook:\n  listen: \"127.0.0.1:{webhook_port}\"\n  tlsCertFile: {}\n  tlsKeyFile: {}\nadmin:\n  listen: \"127.0.0.1:{admin_port}\"\n{}",
                certs.join("tls.crt").display(),
                certs.join("tls.key").display(),
                fixtures::REGISTRIES_YAML.replace("PASSWORD_FILE", &password.display().to_string()),
            ),
        )
        .expect("writing config");
        let log = dir.path().join("injector.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pullsecret-injector"));
        cmd.args(["run", "--no-sync", "--config"])
            .arg(&config)
            .env_remove("PULLSECRET_INJECTOR_CONFIG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        match rust_log {
            Some(f) => cmd.env("RUST_LOG", f),
            None => cmd.env_remove("RUST_LOG"),
        };
        let mut child = cmd.spawn().expect("starting pullsecret-injector");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "injector exited with {status}:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if http_get(admin_port, "/readyz")
                .is_some_and(|s| s.split_whitespace().nth(1) == Some("200"))
            {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "injector not ready after 30 s:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Server {
            pid: child.id(),
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], webhook_port)),
            ca_file: certs.join("ca.crt"),
            log,
            _dir: dir,
        }
    }

    /// Server CPU time (user + system) in seconds.
    fn cpu_seconds(&self) -> f64 {
        proc_cpu_seconds(&format!("/proc/{}/stat", self.pid))
    }

    /// A `/proc/PID/status` field in KiB (VmRSS, VmHWM).
    fn status_kib(&self, field: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("server is running");
        text.lines()
            .find_map(|l| {
                l.strip_prefix(field)?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no {field} in /proc/{}/status", self.pid))
    }

    /// Reset VmHWM to the current RSS (Linux >= 4.0: "5" > clear_refs), so that each
    /// scenario reports its own peak. Returns false where that is not allowed.
    fn reset_peak(&self) -> bool {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5").is_ok()
    }

    fn threads(&self) -> u64 {
        let text =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("Threads:")?.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

fn proc_cpu_seconds(stat_path: &str) -> f64 {
    let text = std::fs::read_to_string(stat_path).expect("reading /proc stat");
    // Fields after the command name, which is in parentheses and may contain spaces:
    // state(3) ... utime(14) stime(15).
    let rest = &text[text.rfind(')').expect("stat has a comm field") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
    ticks as f64 / clock_ticks_per_second()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = StdTcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    Some(buf)
}

// ---------------------------------------------------------------------------------------
// The client: HTTP/1.1 over TLS, one request at a time per connection.

/// What every request needs, shared by all tasks.
struct Target {
    addr: SocketAddr,
    connector: TlsConnector,
    /// The whole request (headers and body), written with one `write_all`.
    request: Vec<u8>,
    /// Body length of a correct answer (from the checked first response).
    expected_len: usize,
}

// The fields are read through Debug, in the report of the first error.
#[allow(dead_code)]
#[derive(Debug)]
enum Failure {
    Connect(String),
    Io(String),
    Status(String),
    Length(usize),
    Timeout,
}

struct Conn {
    tls: TlsStream<TcpStream>,
    buf: Vec<u8>,
}

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

async fn connect(t: &Target) -> Result<Conn, Failure> {
    let tcp = TcpStream::connect(t.addr)
        .await
        .map_err(|e| Failure::Connect(e.to_string()))?;
    tcp.set_nodelay(true)
        .map_err(|e| Failure::Connect(e.to_string()))?;
    let name = ServerName::IpAddress(t.addr.ip().into());
    let tls = t
        .connector
        .connect(name, tcp)
        .await
        .map_err(|e| Failure::Connect(format!("TLS: {e}")))?;
    Ok(Conn {
        tls,
        buf: Vec::with_capacity(64 * 1024),
    })
}

/// Send the request and read one response; returns the body (borrowed from the buffer).
async fn exchange<'c>(c: &'c mut Conn, request: &[u8]) -> Result<&'c [u8], Failure> {
    let io = |e: std::io::Error| Failure::Io(e.to_string());
    c.tls.write_all(request).await.map_err(io)?;
    c.tls.flush().await.map_err(io)?;
    c.buf.clear();
    let mut chunk = [0u8; 16 * 1024];
    let (head_len, body_len) = loop {
        let n = c.tls.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            return Err(Failure::Io("connection closed before the response".into()));
        }
        c.buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&c.buf, b"\r\n\r\n") {
            let head = std::str::from_utf8(&c.buf[..end])
                .map_err(|_| Failure::Io("non-UTF-8 headers".into()))?;
            if !head.starts_with("HTTP/1.1 200 ") {
                let line = head.lines().next().unwrap_or("").to_string();
                return Err(Failure::Status(line));
            }
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .ok_or_else(|| Failure::Io("no content-length".into()))?;
            break (end + 4, len);
        }
    };
    while c.buf.len() < head_len + body_len {
        let n = c.tls.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            return Err(Failure::Io("connection closed in the body".into()));
        }
        c.buf.extend_from_slice(&chunk[..n]);
    }
    Ok(&c.buf[head_len..head_len + body_len])
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn one(c: &mut Conn, t: &Target) -> Result<(), Failure> {
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange(c, &t.request)).await {
        Err(_) => Err(Failure::Timeout),
        Ok(Err(e)) => Err(e),
        Ok(Ok(body)) if body.len() != t.expected_len => Err(Failure::Length(body.len())),
        Ok(Ok(_)) => Ok(()),
    }
}

/// Latencies (µs) and errors of one scenario, plus the server's cost over the window.
#[derive(Default)]
struct Stats {
    latencies_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
    window: Duration,
    server_cpu: f64,
    client_cpu: f64,
    peak_rss_kib: u64,
    /// Fixed rate only: p99 of how late the pacer released requests (machine noise).
    pacer_lag_p99_ms: f64,
}

impl Stats {
    fn rate(&self) -> f64 {
        self.latencies_us.len() as f64 / self.window.as_secs_f64()
    }
    fn pct(&mut self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        self.latencies_us.sort_unstable();
        let i = ((p / 100.0) * self.latencies_us.len() as f64).ceil() as usize;
        f64::from(self.latencies_us[i.clamp(1, self.latencies_us.len()) - 1]) / 1000.0
    }
    fn cpu_per_10k(&self) -> f64 {
        self.server_cpu / self.latencies_us.len().max(1) as f64 * 10_000.0
    }
    fn client_cpu_per_10k(&self) -> f64 {
        self.client_cpu / self.latencies_us.len().max(1) as f64 * 10_000.0
    }
}

/// Per-task results, merged at the end.
#[derive(Default)]
struct Local {
    lat: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

impl Local {
    fn fail(&mut self, f: Failure) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{f:?}"));
        }
    }
}

fn merge(parts: Vec<Local>, window: Duration) -> Stats {
    let mut s = Stats {
        window,
        ..Default::default()
    };
    for p in parts {
        s.latencies_us.extend(p.lat);
        s.errors += p.errors;
        if s.first_error.is_none() {
            s.first_error = p.first_error;
        }
    }
    s
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// Measures the server (and this process) between the window's start and end.
struct Meter<'a> {
    server: &'a Server,
    cpu: f64,
    own_cpu: f64,
}

impl<'a> Meter<'a> {
    fn start(server: &'a Server) -> Self {
        Meter {
            server,
            cpu: server.cpu_seconds(),
            own_cpu: proc_cpu_seconds("/proc/self/stat"),
        }
    }
    fn finish(self, stats: &mut Stats) {
        stats.server_cpu = self.server.cpu_seconds() - self.cpu;
        stats.client_cpu = proc_cpu_seconds("/proc/self/stat") - self.own_cpu;
    }
}

/// Closed loop: `conc` keep-alive connections, each sending its next request as soon as the
/// previous answer is in, for warm-up + duration; only answers within the window count.
async fn closed_loop(
    t: Arc<Target>,
    server: &Server,
    conc: usize,
    warmup: Duration,
    duration: Duration,
) -> Stats {
    let start = Instant::now();
    let (w0, w1) = (start + warmup, start + warmup + duration);
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let mut local = Local {
                lat: Vec::with_capacity(1 << 16),
                ..Default::default()
            };
            let mut conn = None;
            loop {
                let now = Instant::now();
                if now >= w1 {
                    break;
                }
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => match connect(&t).await {
                        Ok(c) => conn.insert(c),
                        Err(e) => {
                            local.fail(e);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                };
                let sent = Instant::now();
                let r = one(c, &t).await;
                let done = Instant::now();
                if done < w0 || done >= w1 {
                    if r.is_err() {
                        conn = None;
                    }
                    continue;
                }
                match r {
                    Ok(()) => local.lat.push(micros(done - sent)),
                    Err(e) => {
                        local.fail(e);
                        conn = None;
                    }
                }
            }
            local
        }));
    }
    tokio::time::sleep_until(w0.into()).await;
    server.reset_peak();
    let meter = Meter::start(server);
    tokio::time::sleep_until(w1.into()).await;
    let mut stats = Stats::default();
    meter.finish(&mut stats);
    stats.peak_rss_kib = server.status_kib("VmHWM:");
    let mut parts = Vec::new();
    for task in tasks {
        parts.push(task.await.expect("client task"));
    }
    let merged = merge(parts, duration);
    Stats {
        latencies_us: merged.latencies_us,
        errors: merged.errors,
        first_error: merged.first_error,
        window: duration,
        ..stats
    }
}

/// Open loop at a fixed `rate`: a pacer thread releases request i at start + i/rate; latency
/// is measured from that intended time (no coordinated omission). Keep-alive uses a pool of
/// `pool` connections; otherwise every request opens (and closes) its own TLS connection.
async fn open_loop(
    t: Arc<Target>,
    server: &Server,
    rate: f64,
    keep_alive: bool,
    warmup: Duration,
    duration: Duration,
) -> Stats {
    let pool = 64;
    let total = (rate * (warmup + duration).as_secs_f64()).round() as u64;
    let warm = (rate * warmup.as_secs_f64()).round() as u64;
    let (tx, rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let start = Instant::now() + Duration::from_millis(50);
    let pacer_done = Arc::new(AtomicBool::new(false));
    let pacer = {
        let done = pacer_done.clone();
        std::thread::spawn(move || {
            // How late this thread releases each request: a lag here is the machine (other
            // processes holding the CPUs), not the server.
            let mut lag_us = Vec::with_capacity(total as usize);
            for i in 0..total {
                let at = start + Duration::from_secs_f64(i as f64 / rate);
                let now = Instant::now();
                if at > now {
                    std::thread::sleep(at - now);
                }
                if i >= warm {
                    lag_us.push(micros(at.elapsed()));
                }
                if tx.send((i, at)).is_err() {
                    break;
                }
            }
            done.store(true, Ordering::Release);
            lag_us
        })
    };
    let window_start = start + Duration::from_secs_f64(warm as f64 / rate);
    let window_end = start + Duration::from_secs_f64(total as f64 / rate);
    let record = move |local: &mut Local, i: u64, at: Instant, r: Result<(), Failure>| {
        if i < warm {
            return;
        }
        match r {
            Ok(()) => local.lat.push(micros(at.elapsed())),
            Err(e) => local.fail(e),
        }
    };

    let meter_task = async {
        tokio::time::sleep_until(window_start.into()).await;
        server.reset_peak();
        Meter::start(server)
    };
    let parts: Vec<Local>;
    let meter;
    if keep_alive {
        let rx = Arc::new(Mutex::new(rx));
        let mut tasks = Vec::new();
        for _ in 0..pool {
            let (t, rx) = (t.clone(), rx.clone());
            tasks.push(tokio::spawn(async move {
                let mut local = Local::default();
                let mut conn: Option<Conn> = None;
                loop {
                    let next = rx.lock().await.recv().await;
                    let Some((i, at)) = next else { break };
                    if conn.is_none() {
                        match connect(&t).await {
                            Ok(c) => conn = Some(c),
                            Err(e) => {
                                record(&mut local, i, at, Err(e));
                                continue;
                            }
                        }
                    }
                    let c = conn.as_mut().expect("connected above");
                    let r = one(c, &t).await;
                    if r.is_err() {
                        conn = None;
                    }
                    record(&mut local, i, at, r);
                }
                local
            }));
        }
        meter = meter_task.await;
        let mut p = Vec::new();
        for task in tasks {
            p.push(task.await.expect("client task"));
        }
        parts = p;
    } else {
        let dispatcher = tokio::spawn(async move {
            let mut rx = rx;
            let mut tasks = Vec::new();
            while let Some((i, at)) = rx.recv().await {
                let t = t.clone();
                tasks.push(tokio::spawn(async move {
                    let mut local = Local::default();
                    let r = match connect(&t).await {
                        Ok(mut c) => {
                            let r = one(&mut c, &t).await;
                            let _ = c.tls.shutdown().await;
                            r
                        }
                        Err(e) => Err(e),
                    };
                    record(&mut local, i, at, r);
                    local
                }));
            }
            let mut p = Vec::new();
            for task in tasks {
                p.push(task.await.expect("client task"));
            }
            p
        });
        meter = meter_task.await;
        parts = dispatcher.await.expect("dispatcher");
    }
    let mut lag = Stats {
        latencies_us: pacer.join().expect("pacer thread"),
        ..Default::default()
    };
    debug_assert!(pacer_done.load(Ordering::Acquire));
    let mut stats = Stats::default();
    // The window's cost: the meter started at the window's start; the last answers may come
    // a little after window_end, so the CPU of those is included (and their count too).
    meter.finish(&mut stats);
    stats.peak_rss_kib = server.status_kib("VmHWM:");
    stats.pacer_lag_p99_ms = lag.pct(99.0);
    let merged = merge(parts, window_end - window_start);
    Stats {
        latencies_us: merged.latencies_us,
        errors: merged.errors,
        first_error: merged.first_error,
        window: window_end - window_start,
        ..stats
    }
}

// ---------------------------------------------------------------------------------------
// Scenarios and the table.

struct Row {
    fixture: String,
    scenario: String,
    stats: Stats,
    note: String,
}

fn fmt_ms(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

fn print_table(rows: &mut [Row], server_idle_kib: u64, idle_after_kib: u64, threads: u64) {
    println!();
    println!(
        "| fixture | scenario | req/s | p50 ms | p99 ms | p99.9 ms | max ms | server CPU s/10k req | client CPU s/10k req | peak RSS MiB | errors |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows.iter_mut() {
        let s = &mut r.stats;
        let (p50, p99, p999, max) = (s.pct(50.0), s.pct(99.0), s.pct(99.9), s.pct(100.0));
        println!(
            "| {} | {}{} | {:.0} | {} | {} | {} | {} | {:.2} | {:.2} | {:.1} | {} |",
            r.fixture,
            r.scenario,
            r.note,
            s.rate(),
            fmt_ms(p50),
            fmt_ms(p99),
            fmt_ms(p999),
            fmt_ms(max),
            s.cpu_per_10k(),
            s.client_cpu_per_10k(),
            s.peak_rss_kib as f64 / 1024.0,
            s.errors,
        );
    }
    println!();
    println!(
        "Server RSS idle: {:.1} MiB after start, {:.1} MiB after the load; {threads} threads.",
        server_idle_kib as f64 / 1024.0,
        idle_after_kib as f64 / 1024.0
    );
}

fn main() {
    let args = parse_args();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let errors = rt.block_on(run(args));
    if errors > 0 {
        eprintln!("loadgen: {errors} failed requests");
        std::process::exit(1);
    }
}

fn tls_connector(ca_file: &Path) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).expect("reading ca.crt") {
        roots.add(cert.expect("CA PEM")).expect("adding the CA");
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Every new connection is a full handshake, as from the API server (its Go client keeps
    // no TLS session cache for webhooks).
    config.resumption = rustls::client::Resumption::disabled();
    TlsConnector::from(Arc::new(config))
}

/// Send the body once and check the answer in full; returns the target for the load.
async fn prepare(server: &Server, connector: TlsConnector, body: &[u8]) -> Arc<Target> {
    let mut request = format!(
        "POST /mutate?timeout=10s HTTP/1.1\r\nHost: {}\r\nUser-Agent: pullsecret-injector-loadgen\r\nContent-Type: application/json\r\nAccept: application/json, */*\r\nContent-Length: {}\r\n\r\n",
        server.addr,
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    let mut t = Target {
        addr: server.addr,
        connector,
        request,
        expected_len: 0,
    };
    let mut c = connect(&t).await.expect("connecting to the webhook");
    let answer = exchange(&mut c, &t.request)
        .await
        .expect("first request")
        .to_vec();
    let v: serde_json::Value = serde_json::from_slice(&answer).expect("answer is JSON");
    let sent: serde_json::Value = serde_json::from_slice(body).expect("body is JSON");
    assert_eq!(
        v["response"]["uid"], sent["request"]["uid"],
        "uid echoed: {v}"
    );
    assert_eq!(v["response"]["allowed"], true, "{v}");
    assert_eq!(v["response"]["patchType"], "JSONPatch", "a patch: {v}");
    t.expected_len = answer.len();
    Arc::new(t)
}

async fn run(args: Args) -> u64 {
    let server = Server::start(args.rust_log.as_deref());
    std::thread::sleep(Duration::from_millis(500));
    let idle_kib = server.status_kib("VmRSS:");
    let connector = tls_connector(&server.ca_file);
    let all = fixtures::load_fixtures();
    let chosen: Vec<_> = all
        .into_iter()
        .filter(|(label, _)| {
            let key = match *label {
                "5.5 KB" => "5k",
                "64 KB" => "64k",
                _ => "1m",
            };
            args.fixtures.iter().any(|f| f == key)
        })
        .collect();
    let throughput = args.only.as_deref() != Some("latency");
    let latency = args.only.as_deref() != Some("throughput");
    let (w, d) = (args.warmup, args.duration);
    let mut rows = Vec::new();
    let mut headline = Vec::new();
    eprintln!(
        "loadgen: server pid {} on {}, {} measured + {} warm-up per scenario, client threads {}",
        server.pid,
        server.addr,
        humantime(d),
        humantime(w),
        args.client_threads
    );
    for (label, body) in &chosen {
        let label = format!("{label} ({})", fixtures::human(body.len()));
        let t = prepare(&server, connector.clone(), body).await;
        if throughput {
            let concs: &[usize] = if args.smoke { &[8] } else { &[32, 64] };
            for &conc in concs {
                let reps = if label.starts_with("5.5") && conc == 32 {
                    args.reps
                } else {
                    1
                };
                let mut runs = Vec::new();
                for rep in 0..reps {
                    let s = closed_loop(t.clone(), &server, conc, w, d).await;
                    eprintln!(
                        "loadgen: {label} c={conc} run {}: {:.0} req/s, {} errors",
                        rep + 1,
                        s.rate(),
                        s.errors
                    );
                    runs.push(s);
                }
                let mut note = String::new();
                if runs.len() > 1 {
                    let mut rates: Vec<f64> = runs.iter().map(Stats::rate).collect();
                    rates.sort_by(f64::total_cmp);
                    let median = rates[rates.len() / 2];
                    let spread = (rates[rates.len() - 1] - rates[0]) / median * 100.0;
                    note = format!(
                        " (median of {}: {}; spread {spread:.1} %)",
                        rates.len(),
                        rates
                            .iter()
                            .map(|r| format!("{r:.0}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    headline = rates.clone();
                    runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
                }
                let stats = runs.swap_remove(runs.len() / 2);
                rows.push(Row {
                    fixture: label.clone(),
                    scenario: format!("closed loop c={conc}, keep-alive"),
                    stats,
                    note,
                });
            }
        }
        if latency {
            let rate: f64 = match (args.smoke, body.len()) {
                (true, n) if n > 512 * 1024 => 20.0,
                (true, _) => 500.0,
                (false, n) if n > 512 * 1024 => 50.0,
                (false, n) if n > 32 * 1024 => 1000.0,
                (false, _) => 5000.0,
            };
            for keep_alive in [true, false] {
                // A full TLS handshake (RSA-2048 certificate, as certs/generate.sh and the
                // chart make) costs the server about 1 ms of CPU: 2 cores cannot take 5,000
                // of them a second, so new connections get their own, lower rate.
                // The smoke runs a dev build, whose handshakes are several times slower: at
                // 500 new connections a second it falls behind, the connection cap sheds the
                // oldest handshakes (the overload behaviour, not an error of the server), and
                // the smoke, which fails on errors only, would fail on the machine's speed.
                let rate = if keep_alive {
                    rate
                } else if args.smoke {
                    rate.min(SMOKE_NEW_CONN_RATE)
                } else {
                    rate.min(args.new_conn_rate)
                };
                let mut stats = open_loop(t.clone(), &server, rate, keep_alive, w, d).await;
                eprintln!(
                    "loadgen: {label} {rate}/s keep-alive={keep_alive}: p99 {} ms, {} errors",
                    fmt_ms(stats.pct(99.0)),
                    stats.errors
                );
                let achieved = stats.rate();
                let mut note = format!(" (pacer lag p99 {} ms)", fmt_ms(stats.pacer_lag_p99_ms));
                if achieved < rate * 0.97 {
                    note = format!(
                        " (fell behind: {achieved:.0}/s; pacer lag p99 {} ms)",
                        fmt_ms(stats.pacer_lag_p99_ms)
                    );
                }
                rows.push(Row {
                    fixture: label.clone(),
                    scenario: format!(
                        "fixed {rate:.0}/s, {}",
                        if keep_alive {
                            "keep-alive"
                        } else {
                            "new TLS conn per request"
                        }
                    ),
                    stats,
                    note,
                });
            }
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let idle_after = server.status_kib("VmRSS:");
    let threads = server.threads();
    print_table(&mut rows, idle_kib, idle_after, threads);
    if !headline.is_empty() {
        let median = headline[headline.len() / 2];
        println!(
            "Headline (5.5 KB, c=32, keep-alive): {median:.0} req/s, median of {} runs ({}).",
            headline.len(),
            headline
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let errors: u64 = rows.iter().map(|r| r.stats.errors).sum();
    for r in &rows {
        if let Some(e) = &r.stats.first_error {
            println!("first error in {} {}: {e}", r.fixture, r.scenario);
        }
    }
    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
    let warnings = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .count();
    if warnings > 0 {
        println!(
            "server log: {warnings} WARN/ERROR lines, e.g. {}",
            log.lines()
                .find(|l| l.contains(" WARN ") || l.contains(" ERROR "))
                .unwrap_or("")
        );
    }
    errors
}

fn humantime(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}
