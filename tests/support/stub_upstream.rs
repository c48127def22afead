//! An upstream written for a test, on loopback: [`StubUpstream`] records
//! each request and when it wrote its answer, which it writes in one piece.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One request an upstream received.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    /// `POST /v1/chat/completions`.
    pub request_line: String,
    /// The body.
    pub body: Vec<u8>,
    /// When its answer was written, whole, in one write.
    pub answered_at: Instant,
}

/// An upstream for a test, on loopback: answers every request with the same
/// bytes in one write (`TCP_NODELAY` set), records what it received and when
/// it answered. HTTP/1.1 with `Content-Length` request bodies, as hyper's
/// client sends them.
pub struct StubUpstream {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<UpstreamRequest>>>,
    connections: Arc<AtomicUsize>,
}

impl StubUpstream {
    /// Serves `answer` (a whole HTTP response: head and body) to every request.
    pub async fn start(answer: Vec<u8>) -> StubUpstream {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the stub upstream");
        let addr = listener.local_addr().expect("its address");
        let received: Arc<Mutex<Vec<UpstreamRequest>>> = Arc::default();
        let connections: Arc<AtomicUsize> = Arc::default();
        let answer = Arc::new(answer);
        let (log, count) = (received.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let _ = stream.set_nodelay(true);
                let (log, answer) = (log.clone(), answer.clone());
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 8192];
                    loop {
                        let Some((request_line, body)) = take_request(&mut buffer) else {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        if stream.write_all(&answer).await.is_err() {
                            return;
                        }
                        let answered_at = Instant::now();
                        log.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(UpstreamRequest {
                                request_line,
                                body,
                                answered_at,
                            });
                    }
                });
            }
        });
        StubUpstream {
            addr,
            received,
            connections,
        }
    }

    /// `http://ADDR/v1`, for `upstream = "..."`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The requests answered so far, in order.
    pub fn received(&self) -> Vec<UpstreamRequest> {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Takes one whole request (head and `Content-Length` body) off the front
/// of `buffer`: its request line and body.
fn take_request(buffer: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let head_end = buffer.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    if buffer.len() < head_end + length {
        return None;
    }
    let body = buffer[head_end..head_end + length].to_vec();
    buffer.drain(..head_end + length);
    Some((head.lines().next().unwrap_or_default().to_owned(), body))
}

/// A whole `text/event-stream` HTTP/1.1 response, chunked, of `events`.
pub fn sse_response(events: &[String]) -> Vec<u8> {
    let body: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
         transfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    )
    .into_bytes()
}
