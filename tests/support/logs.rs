//! The logs of a test binary, captured by one process-wide subscriber.
//!
//! A scoped subscriber (`tracing::subscriber::set_default`) races with the
//! binary's other test threads over tracing's callsite cache: a callsite
//! first hit on a thread without a subscriber can cache "nobody listens"
//! after the test rebuilt the cache, and the test then misses its own
//! events (it failed about one run in five on a loaded machine). A global
//! subscriber is seen by every thread. Tests assert on lines their own
//! requests write (other tests' lines may be there too).
#![allow(dead_code)]

use std::sync::{Arc, Mutex, OnceLock};

/// Everything the process-wide subscriber wrote.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// The text written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The process-wide subscriber's output (every level), installed by the
/// first call.
pub fn captured() -> &'static Captured {
    static LOGS: OnceLock<Captured> = OnceLock::new();
    LOGS.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::TRACE)
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("one global subscriber per test binary");
        captured
    })
}
