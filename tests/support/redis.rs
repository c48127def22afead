//! A throwaway `redis-server` per test: started on a free loopback port,
//! without persistence, killed on drop. No test needs a Redis that was
//! running before, and none touches one that is.
//!
//! A machine without `redis-server` (override the binary with the
//! `REDIS_SERVER` environment variable) fails these tests with a message
//! saying how to install it: `.ci/run` does. A test that skipped itself
//! would pass in a CI that never ran it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server` child process.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    /// Arguments after the defaults (which they override).
    extra: Vec<String>,
}

fn binary() -> String {
    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

/// Whether `redis-server` can be run here.
pub fn available() -> bool {
    Command::new(binary())
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl RedisServer {
    /// Starts a server on a free port; panics, saying how to install it,
    /// when `redis-server` is not installed.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// [`start`](Self::start), with `extra` arguments after the defaults
    /// (`--appendonly yes`: a later value wins); kept on restart.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        assert!(
            available(),
            "`{}` not found: install it (`apt-get install redis-server`, as .ci/run does) \
             or point REDIS_SERVER at one",
            binary()
        );
        for _ in 0..5 {
            let port = free_port();
            let mut server = RedisServer {
                child: None,
                port,
                extra: extra.iter().map(|a| a.to_string()).collect(),
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL, as a crash) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty: no persistence).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not restart on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Thaws a frozen server (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    /// Script calls (`EVAL`, `EVALSHA`) this server has served, from
    /// `INFO commandstats`.
    pub fn script_calls(&self) -> u64 {
        self.info("commandstats")
            .lines()
            .filter(|l| l.starts_with("cmdstat_eval"))
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }

    /// The text of `INFO section`, asked over a plain connection.
    pub fn info(&self, section: &str) -> String {
        let mut stream =
            TcpStream::connect(("127.0.0.1", self.port)).expect("redis-server answers");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("a read timeout");
        write!(
            stream,
            "*2\r\n$4\r\nINFO\r\n${}\r\n{section}\r\n",
            section.len()
        )
        .expect("INFO sent");
        // A bulk string: `$<length>\r\n<bytes>\r\n`.
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        reader.read_line(&mut head).expect("INFO's reply");
        let length: usize = head
            .strip_prefix('$')
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("INFO answered {head:?}"));
        let mut body = vec![0; length];
        reader.read_exact(&mut body).expect("INFO's text");
        String::from_utf8(body).expect("INFO's text is UTF-8")
    }

    fn signal(&self, signal: &str) {
        if let Some(pid) = self.pid() {
            let status = Command::new("kill")
                .args([signal, &pid.to_string()])
                .status()
                .expect("kill(1) runs");
            assert!(status.success(), "kill {signal} {pid} failed");
        }
    }

    /// Runs the server and waits until it answers PING; false if it exited
    /// (port taken) or did not answer within 5 s.
    fn spawn(&mut self) -> bool {
        let child = Command::new(binary())
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &std::env::temp_dir().to_string_lossy(),
                "--loglevel",
                "warning",
            ])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(mut child) = child else {
            return false;
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if ping(self.port) {
                self.child = Some(child);
                return true;
            }
            if matches!(child.try_wait(), Ok(Some(_))) || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL ends a frozen (SIGSTOP) server too.
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// A local Redis Cluster of three primaries (no replicas), each a
/// `redis-server --cluster-enabled yes` on a free loopback port with its own
/// temporary directory, joined by `redis-cli --cluster create`. Killed, and
/// its directories removed, on drop.
pub struct RedisCluster {
    nodes: Vec<Child>,
    ports: Vec<u16>,
    dirs: Vec<std::path::PathBuf>,
}

impl RedisCluster {
    /// Starts the three nodes and creates the cluster; panics, saying what
    /// to install, when `redis-server` or `redis-cli` is missing, and when
    /// the cluster is not ready within 30 s.
    pub fn start() -> RedisCluster {
        assert!(
            available(),
            "`{}` not found: install it (`apt-get install redis-server`, as .ci/run does) \
             or point REDIS_SERVER at one",
            binary()
        );
        let cli = std::env::var("REDIS_CLI").unwrap_or_else(|_| "redis-cli".into());
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            ports: Vec::new(),
            dirs: Vec::new(),
        };
        for _ in 0..3 {
            let port = free_port();
            let dir = std::env::temp_dir()
                .join(format!("tollgate-cluster-{}-{port}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("a temporary directory");
            let child = Command::new(binary())
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    &dir.to_string_lossy(),
                    "--loglevel",
                    "warning",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server starts");
            cluster.nodes.push(child);
            cluster.ports.push(port);
            cluster.dirs.push(dir);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for &port in &cluster.ports {
            while !ping(port) {
                assert!(
                    Instant::now() < deadline,
                    "cluster node {port} did not start"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let addresses: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new(&cli)
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "`{cli}` not found ({e}): install redis-tools (`apt-get install redis-server`)"
                )
            });
        assert!(created.success(), "redis-cli --cluster create failed");
        for &port in &cluster.ports {
            while !cluster_ok(port) {
                assert!(
                    Instant::now() < deadline,
                    "the cluster was not ready within 30 s"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        cluster
    }

    /// `redis://127.0.0.1:<port>` of each node.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// A connection config for the cluster, with every call and connect
    /// bounded (10 s, 5 s).
    #[cfg(feature = "redis")]
    pub fn config(&self) -> tollgate::store::redis::RedisConfig {
        let urls = self.urls();
        tollgate::store::redis::RedisConfig::cluster(urls.iter().map(String::as_str))
            .expect("the cluster's URLs")
            .call_timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Whether the node at `port` reports `cluster_state:ok`.
fn cluster_ok(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"CLUSTER INFO\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 512];
    let Ok(n) = stream.read(&mut reply) else {
        return false;
    };
    String::from_utf8_lossy(&reply[..n]).contains("cluster_state:ok")
}

/// Starts a server for the calling test (fails it when `redis-server` is
/// absent).
#[macro_export]
macro_rules! redis_server {
    () => {
        $crate::redis_support::RedisServer::start()
    };
}
