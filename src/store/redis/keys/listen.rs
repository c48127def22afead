//! The invalidation listener: every instance's subscription to the
//! channel on which writes announce the hashes they changed.

use std::pin::Pin;
use std::sync::Weak;
use std::time::Duration;

use futures_core::Stream;
use tokio::sync::watch;

use super::Inner;

/// How often the subscription is checked with a `PING`.
const PING_INTERVAL: Duration = Duration::from_secs(1);

/// Subscribes to the invalidation channel and applies what it hears, until
/// the store is dropped; resubscribes (with backoff) when the subscription
/// breaks.
pub(super) async fn listen(store: Weak<Inner>, mut shutdown: watch::Receiver<()>) {
    let mut delay = Duration::ZERO;
    loop {
        if !delay.is_zero() {
            tokio::select! {
                _ = shutdown.changed() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
        let Some(inner) = store.upgrade() else {
            return;
        };
        let config = inner.redis.config().clone();
        let client = inner.redis.client().clone();
        let channel = inner.names.channel.clone();
        drop(inner);
        delay = config.next_reconnect_delay(delay);

        let subscribe = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub.split())
        };
        let subscribed = tokio::select! {
            _ = shutdown.changed() => return,
            r = tokio::time::timeout(config.connect_timeout, subscribe) => r,
        };
        let (mut sink, mut stream) = match subscribed {
            Ok(Ok(split)) => split,
            Ok(Err(error)) => {
                tracing::debug!(%error, "redis key invalidation subscription failed");
                continue;
            }
            Err(_) => continue,
        };
        match store.upgrade() {
            Some(inner) => inner.set_listening(true),
            None => return,
        }
        tracing::debug!("redis key invalidation subscription live");

        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                message = next(&mut stream) => {
                    let Some(message) = message else { break };
                    let Some(inner) = store.upgrade() else { return };
                    inner.invalidate_message(&String::from_utf8_lossy(message.get_payload_bytes()));
                }
                _ = ping.tick() => {
                    let alive = tokio::time::timeout(
                        config.call_timeout,
                        sink.ping::<redis::Value>(),
                    ).await;
                    if !matches!(alive, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        match store.upgrade() {
            Some(inner) => inner.set_listening(false),
            None => return,
        }
        tracing::warn!(
            "redis key invalidation subscription lost; bypassing the key cache until it is back"
        );
    }
}

async fn next(stream: &mut redis::aio::PubSubStream) -> Option<redis::Msg> {
    std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}
