//! The watched stream's one timer: a coarse tick that checks the idle
//! timeout, the keep-alive interval and the first-event timeout, so that a
//! busy stream pays nothing per event for them.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::layer::Settings;

/// What a timer tick asks for.
pub(super) enum Tick {
    Nothing,
    Idle,
    Commit,
    KeepAlive,
}

/// The timer and what it has seen since the last tick.
pub(super) struct Ticker {
    timer: Option<Pin<Box<Sleep>>>,
    /// The waker the pending `timer` will wake.
    timer_waker: Option<Waker>,
    tick: Duration,
    last_tick: Instant,
    /// An upstream event arrived since the last tick.
    pub(super) progress: bool,
    /// Something was sent to the client since the last tick.
    pub(super) sent: bool,
    idle_for: Duration,
    quiet_for: Duration,
    holding_for: Duration,
}

impl Ticker {
    pub(super) fn new(settings: &Settings, holding: bool) -> Ticker {
        let tick = tick_for(settings, holding);
        let now = Instant::now();
        Ticker {
            timer: tick.map(|t| Box::pin(tokio::time::sleep_until(now + t))),
            timer_waker: None,
            tick: tick.unwrap_or_default(),
            last_tick: now,
            progress: false,
            sent: false,
            idle_for: Duration::ZERO,
            quiet_for: Duration::ZERO,
            holding_for: Duration::ZERO,
        }
    }

    /// The stream started: the first-event timeout no longer counts.
    pub(super) fn streaming(&mut self, settings: &Settings) {
        match tick_for(settings, false) {
            Some(tick) => self.tick = tick,
            None => self.timer = None,
        }
    }

    pub(super) fn stop(&mut self) {
        self.timer = None;
    }

    pub(super) fn is_stopped(&self) -> bool {
        self.timer.is_none()
    }

    /// Whether the timer is pending and will wake this task: then polling it
    /// again (on every event of a busy stream) is waste. A fired timer is
    /// `is_elapsed` until it is polled and reset.
    #[inline]
    pub(super) fn armed(&self, cx: &Context<'_>) -> bool {
        match (&self.timer_waker, &self.timer) {
            (Some(waker), Some(timer)) => waker.will_wake(cx.waker()) && !timer.is_elapsed(),
            _ => false,
        }
    }

    /// `holding`: the head is held; `streaming`: whole events are forwarded
    /// (keep-alives may be sent).
    pub(super) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        settings: &Settings,
        holding: bool,
        streaming: bool,
    ) -> Poll<Tick> {
        if self.armed(cx) {
            return Poll::Pending;
        }
        let Some(timer) = self.timer.as_mut() else {
            return Poll::Pending;
        };
        if timer.as_mut().poll(cx).is_pending() {
            self.timer_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        self.timer_waker = None;
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.last_tick);
        self.last_tick = now;
        timer.as_mut().reset(now + self.tick);
        if std::mem::take(&mut self.progress) {
            self.idle_for = Duration::ZERO;
        } else {
            self.idle_for += elapsed;
        }
        if std::mem::take(&mut self.sent) {
            self.quiet_for = Duration::ZERO;
        } else {
            self.quiet_for += elapsed;
        }
        self.holding_for += elapsed;
        let config = &settings.config;
        if config.idle_timeout.is_some_and(|t| self.idle_for >= t) {
            return Poll::Ready(Tick::Idle);
        }
        if holding && self.holding_for >= config.first_event_timeout {
            return Poll::Ready(Tick::Commit);
        }
        if streaming && config.keep_alive.is_some_and(|k| self.quiet_for >= k) {
            self.quiet_for = Duration::ZERO;
            return Poll::Ready(Tick::KeepAlive);
        }
        Poll::Ready(Tick::Nothing)
    }
}

/// The timer tick: fine enough for every active deadline (1/8 of the idle
/// timeout, 1/4 of the keep-alive interval and of the first-event timeout).
fn tick_for(settings: &Settings, holding: bool) -> Option<Duration> {
    let config = &settings.config;
    let candidates = [
        config.idle_timeout.map(|t| t / 8),
        config.keep_alive.map(|k| k / 4),
        holding.then_some(config.first_event_timeout / 4),
    ];
    candidates
        .into_iter()
        .flatten()
        .min()
        .map(|t| t.max(Duration::from_millis(1)))
}
