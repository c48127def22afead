//! The gateway example as a child process, for process-level tests.
//!
//! Over 600 lines: the one harness every process test shares (start, config,
//! waits, logs), kept in one place so no test starts the binary its own way.
//!
//! [`GatewayCommand`] starts `target/<profile>/examples/gateway` (which
//! `cargo test` builds; found next to the test executable) with a config
//! written to a temporary file, `--listen 127.0.0.1:0` and JSON logs, and
//! waits (bounded) for the line where it prints the address it bound.
//! [`Gateway`] then talks about the process: its address, its logs (stderr,
//! parsed per line), signals, its exit; it is killed when dropped. Several
//! gateways may run at once (one Redis, three gateways), and a config file
//! may outlive one process for the next ([`GatewayCommand::config_file`]).
//!
//! `tests/support/stub_upstream.rs` has an upstream written for a test, to
//! put behind a gateway.
#![allow(dead_code)]

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

/// How long a gateway may take to say it listens.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The example binary, built by `cargo test` (`cargo test --test X` alone
/// does not build examples: then it says so).
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/examples/gateway
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable is in target/<profile>/deps");
    let binary = profile_dir.join("examples").join("gateway");
    assert!(
        binary.exists(),
        "{} is missing: build it with `cargo build --example gateway` \
         (`cargo test` builds it; `cargo test --test <file>` alone does not)",
        binary.display()
    );
    assert_fresh(&binary);
    binary
}

/// Fails when a source file of the binary (from cargo's dep-info next to
/// it) is newer than the binary: the test would run yesterday's code.
fn assert_fresh(binary: &Path) {
    let Ok(dep_info) = std::fs::read_to_string(binary.with_extension("d")) else {
        return;
    };
    let built = modified(binary);
    let Some((_, sources)) = dep_info.split_once(": ") else {
        return;
    };
    let escaped = sources.replace("\\ ", "\u{0}");
    for source in escaped.split_whitespace() {
        let source = PathBuf::from(source.replace('\u{0}', " "));
        if modified(&source) > built {
            panic!(
                "{} is older than {}: rebuild it with `cargo build --example gateway`",
                binary.display(),
                source.display()
            );
        }
    }
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// How to start a gateway.
#[derive(Debug, Default)]
pub struct GatewayCommand {
    config: Option<ConfigSource>,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
}

#[derive(Debug)]
enum ConfigSource {
    Toml(String),
    File(PathBuf),
}

impl GatewayCommand {
    /// The embedded demo config, unless [`config`](Self::config) is called.
    pub fn new() -> GatewayCommand {
        GatewayCommand::default()
    }

    /// `toml`, written to a temporary file that lives as long as the process.
    pub fn config(mut self, toml: &str) -> GatewayCommand {
        self.config = Some(ConfigSource::Toml(toml.to_owned()));
        self
    }

    /// An existing config file (one a test keeps for a restart).
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> GatewayCommand {
        self.config = Some(ConfigSource::File(path.into()));
        self
    }

    /// One more command-line argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> GatewayCommand {
        self.args.push(arg.into());
        self
    }

    /// More command-line arguments.
    pub fn args<I, A>(mut self, args: I) -> GatewayCommand
    where
        I: IntoIterator<Item = A>,
        A: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An environment variable for the process.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> GatewayCommand {
        self.envs.push((key.into(), value.into()));
        self
    }

    fn has_arg(&self, name: &str) -> bool {
        self.args.iter().any(|a| {
            a.to_str()
                .is_some_and(|a| a == name || a.starts_with(&format!("{name}=")))
        })
    }

    fn has_env(&self, key: &str) -> bool {
        self.envs.iter().any(|(k, _)| k == key)
    }

    /// Starts the process and waits (bounded) until it prints its address;
    /// panics with its output if it exits or stays silent.
    pub fn start(self) -> Gateway {
        let mut gateway = self.spawn();
        gateway.wait_ready(READY_TIMEOUT);
        gateway
    }

    /// Starts the process without waiting for anything.
    pub fn spawn(self) -> Gateway {
        let mut command = Command::new(binary());
        // The runner's environment must not configure the gateway under test.
        for key in [
            "TOLLGATE_CONFIG",
            "TOLLGATE_LISTEN",
            "TOLLGATE_UPSTREAM",
            "TOLLGATE_STORE",
            "TOLLGATE_LOG_FORMAT",
            "RUST_LOG",
        ] {
            command.env_remove(key);
        }
        if !self.has_env("RUST_LOG") {
            command.env("RUST_LOG", "info");
        }
        let dir = tempfile::tempdir().expect("a temporary directory");
        match &self.config {
            Some(ConfigSource::Toml(toml)) => {
                let path = dir.path().join("gateway.toml");
                std::fs::write(&path, toml).expect("the config file is written");
                command.arg("--config").arg(path);
            }
            Some(ConfigSource::File(path)) => {
                command.arg("--config").arg(path);
            }
            None => {}
        }
        if !self.has_arg("--listen") && !self.has_env("TOLLGATE_LISTEN") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        if !self.has_arg("--log-format") && !self.has_env("TOLLGATE_LOG_FORMAT") {
            command.args(["--log-format", "json"]);
        }
        command.args(&self.args);
        command.envs(self.envs.iter().map(|(k, v)| (k, v)));
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the gateway example starts");
        let output = Arc::new(Captured::default());
        capture(child.stdout.take(), output.clone(), Stream::Stdout);
        capture(child.stderr.take(), output.clone(), Stream::Stderr);
        Gateway {
            child,
            addr: None,
            output,
            exit: None,
            _dir: dir,
        }
    }

    /// Runs the process to its end (`--help`, `--check`, a bad config)
    /// within `limit`.
    pub fn run(self, limit: Duration) -> Finished {
        let mut gateway = self.spawn();
        let status = gateway.wait_exit(limit);
        gateway.output.wait_closed(Duration::from_secs(5));
        Finished {
            status,
            stdout: gateway.stdout(),
            stderr: gateway.stderr(),
        }
    }
}

/// A process that ran to its end.
#[derive(Debug)]
pub struct Finished {
    /// How it exited.
    pub status: ExitStatus,
    /// All it printed on stdout.
    pub stdout: String,
    /// All it printed on stderr (its logs).
    pub stderr: String,
}

impl Finished {
    /// The exit code (`None` when killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// The lines a process printed so far, and whether each stream is closed.
#[derive(Debug, Default)]
struct Captured {
    lines: Mutex<Lines>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Lines {
    stdout: Vec<String>,
    stderr: Vec<String>,
    closed: usize,
}

impl Captured {
    /// Waits until `found` says yes about the lines, or both streams close,
    /// or `limit` passes; returns what `found` returned last.
    fn wait<T>(&self, limit: Duration, mut found: impl FnMut(&Lines) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + limit;
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(value) = found(&lines) {
                return Some(value);
            }
            let now = Instant::now();
            if lines.closed == 2 || now >= deadline {
                return None;
            }
            lines = self
                .changed
                .wait_timeout(lines, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn wait_closed(&self, limit: Duration) {
        self.wait(limit, |lines| (lines.closed == 2).then_some(()));
    }
}

fn capture(pipe: Option<impl Read + Send + 'static>, output: Arc<Captured>, stream: Stream) {
    let Some(pipe) = pipe else { return };
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if std::env::var_os("GATEWAY_ECHO").is_some() {
                eprintln!("[gateway {stream:?}] {line}");
            }
            let mut lines = output.lines.lock().unwrap_or_else(|p| p.into_inner());
            match stream {
                Stream::Stdout => lines.stdout.push(line),
                Stream::Stderr => lines.stderr.push(line),
            }
            output.changed.notify_all();
        }
        let mut lines = output.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines.closed += 1;
        output.changed.notify_all();
    });
}

/// A running gateway process; killed (SIGKILL) when dropped.
pub struct Gateway {
    child: Child,
    addr: Option<SocketAddr>,
    output: Arc<Captured>,
    exit: Option<ExitStatus>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    fn wait_ready(&mut self, limit: Duration) {
        let addr = self.output.wait(limit, |lines| {
            lines.stdout.iter().find_map(|line| {
                line.split_once("listening on http://")
                    .and_then(|(_, addr)| addr.trim().parse::<SocketAddr>().ok())
            })
        });
        match addr {
            Some(addr) => self.addr = Some(addr),
            None => {
                let exited = self.child.try_wait().ok().flatten();
                panic!(
                    "the gateway did not say it listens within {limit:?} (exit: {exited:?})\n\
                     stdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("the gateway was started with `start`")
    }

    /// `http://ADDR`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends signal `name` (`TERM`, `INT`, `HUP`, `KILL`) with `kill -s`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status()
            .expect("`kill` runs");
        assert!(status.success(), "kill -s {name} {} failed", self.pid());
    }

    /// SIGKILL, as a crash, and waits for the process to be gone.
    pub fn kill(&mut self) -> ExitStatus {
        let _ = self.child.kill();
        let status = self.child.wait().expect("the killed gateway is reaped");
        self.exit = Some(status);
        status
    }

    /// Waits for the process to exit; panics with its output after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        if let Some(status) = self.exit {
            return status;
        }
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.exit = Some(status);
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the gateway did not exit within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything it printed on stdout so far.
    pub fn stdout(&self) -> String {
        let lines = self.output.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines.stdout.join("\n")
    }

    /// Everything it printed on stderr (its logs) so far.
    pub fn stderr(&self) -> String {
        let lines = self.output.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines.stderr.join("\n")
    }

    /// The log lines so far that are JSON objects (`--log-format json`).
    pub fn logs(&self) -> Vec<Value> {
        let lines = self.output.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines.stderr.iter().filter_map(|l| json_line(l)).collect()
    }

    /// The access-log lines so far (`"message": "request"`).
    pub fn access_log(&self) -> Vec<Value> {
        self.logs()
            .into_iter()
            .filter(|l| l["message"] == "request")
            .collect()
    }

    /// Waits (bounded) until `count` access-log lines match, and returns
    /// them (a line is written when its response ends, which may be after
    /// the client read it); panics with the logs when they do not come
    /// within `limit`.
    pub fn wait_for_access_log(
        &self,
        limit: Duration,
        count: usize,
        matches: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        self.wait_for_logs(limit, count, |l| l["message"] == "request" && matches(l))
    }

    /// Waits (bounded) until `count` JSON log lines match, and returns
    /// every matching line (the process writes them after it answered, and
    /// they are read from its stderr as they come); panics with the logs
    /// when they do not come within `limit`.
    pub fn wait_for_logs(
        &self,
        limit: Duration,
        count: usize,
        matches: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let found = self.output.wait(limit, |lines| {
            let matching: Vec<Value> = lines
                .stderr
                .iter()
                .filter_map(|l| json_line(l))
                .filter(|l| matches(l))
                .collect();
            (matching.len() >= count).then_some(matching)
        });
        found.unwrap_or_else(|| {
            panic!(
                "fewer than {count} matching log lines within {limit:?}; logs:\n{}",
                self.stderr()
            )
        })
    }

    /// Waits (bounded) for a JSON log line that `matches`; panics with the
    /// logs when none comes within `limit`.
    pub fn wait_for_log(&self, limit: Duration, matches: impl Fn(&Value) -> bool) -> Value {
        let found = self.output.wait(limit, |lines| {
            lines
                .stderr
                .iter()
                .filter_map(|l| json_line(l))
                .find(|l| matches(l))
        });
        found.unwrap_or_else(|| {
            panic!(
                "no matching log line within {limit:?}; logs:\n{}",
                self.stderr()
            )
        })
    }

    /// Waits (bounded) for a stdout line containing `text`.
    pub fn wait_for_stdout(&self, limit: Duration, text: &str) -> String {
        let found = self.output.wait(limit, |lines| {
            lines.stdout.iter().find(|l| l.contains(text)).cloned()
        });
        found.unwrap_or_else(|| {
            panic!(
                "no stdout line with {text:?} within {limit:?}; stdout:\n{}",
                self.stdout()
            )
        })
    }

    /// Waits (bounded) for a stderr line containing `text` (text logs).
    pub fn wait_for_text(&self, limit: Duration, text: &str) -> String {
        let found = self.output.wait(limit, |lines| {
            lines.stderr.iter().find(|l| l.contains(text)).cloned()
        });
        found.unwrap_or_else(|| {
            panic!(
                "no log line with {text:?} within {limit:?}; logs:\n{}",
                self.stderr()
            )
        })
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn json_line(line: &str) -> Option<Value> {
    serde_json::from_str::<Value>(line)
        .ok()
        .filter(Value::is_object)
}

/// Whether a TCP connection to `addr` is refused now (the listener is gone).
pub fn refuses_connections(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err()
}

/// A small JSON client for process tests (admin API, proxy calls): every
/// call bounded by 20 s.
#[derive(Clone)]
pub struct Http {
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
}

/// An answer: status, headers and the body as JSON (`Value::Null` when it
/// is not JSON; the text is in `text`).
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status.
    pub status: http::StatusCode,
    /// The headers.
    pub headers: http::HeaderMap,
    /// The body as JSON.
    pub json: Value,
    /// The body as text.
    pub text: String,
}

impl Default for Http {
    fn default() -> Self {
        Http::new()
    }
}

impl Http {
    /// A client with a connection pool.
    pub fn new() -> Http {
        Http {
            client: hyper_util::client::legacy::Client::builder(
                hyper_util::rt::TokioExecutor::new(),
            )
            .build_http(),
        }
    }

    /// Sends `method url` with `Authorization: Bearer key`, the extra
    /// `headers`, and `body` as JSON (none for `Value::Null`).
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> Answer {
        let mut builder = http::Request::builder()
            .method(method)
            .uri(url)
            .header("content-type", "application/json");
        if let Some(key) = key {
            builder = builder.header("authorization", format!("Bearer {key}"));
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let bytes = if body.is_null() {
            bytes::Bytes::new()
        } else {
            bytes::Bytes::from(body.to_string())
        };
        let request = builder
            .body(http_body_util::Full::new(bytes))
            .expect("a request");
        let response = tokio::time::timeout(Duration::from_secs(20), self.client.request(request))
            .await
            .unwrap_or_else(|_| panic!("{method} {url}: no answer within 20 s"))
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(
            Duration::from_secs(20),
            http_body_util::BodyExt::collect(body),
        )
        .await
        .unwrap_or_else(|_| panic!("{method} {url}: body not done within 20 s"))
        .unwrap_or_else(|e| panic!("{method} {url}: body: {e}"))
        .to_bytes();
        let text = String::from_utf8_lossy(&body).into_owned();
        Answer {
            status: parts.status,
            headers: parts.headers,
            json: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    /// `GET url` with `key`.
    pub async fn get(&self, url: &str, key: Option<&str>) -> Answer {
        self.send("GET", url, key, &[], &Value::Null).await
    }

    /// `POST url` with `key` and a JSON `body`.
    pub async fn post(&self, url: &str, key: Option<&str>, body: &Value) -> Answer {
        self.send("POST", url, key, &[], body).await
    }

    /// A chat completion of `model` saying `text`, with `key`.
    pub async fn chat(&self, gateway: &Gateway, key: &str, model: &str, text: &str) -> Answer {
        let body = serde_json::json!({
            "model": model,
            "messages": [{"role": "user", "content": text}],
        });
        self.post(&gateway.url("/v1/chat/completions"), Some(key), &body)
            .await
    }
}
