//! Revocation takes effect on the next request, on every thread, while
//! requests already admitted finish.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tollgate::Principal;
use tollgate::auth::AuthLayer;
use tower::{Layer, service_fn};

use super::{SECRET, alice, bearer, send, service, store_with};

#[tokio::test]
async fn a_key_revoked_mid_request_finishes_that_request_and_no_other() {
    let store = store_with([alice()]);
    let (entered_tx, mut entered) = tokio::sync::mpsc::channel::<()>(1);
    let release = Arc::new(tokio::sync::Notify::new());
    let gate = release.clone();
    let svc = AuthLayer::new(store.clone()).layer(service_fn(move |req: Request<Full<Bytes>>| {
        let (entered_tx, gate) = (entered_tx.clone(), gate.clone());
        async move {
            let id = req
                .extensions()
                .get::<Principal>()
                .unwrap()
                .key_id()
                .to_owned();
            let _ = entered_tx.send(()).await;
            gate.notified().await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(id))))
        }
    }));

    let mut first = svc.clone();
    let in_flight = tokio::spawn(async move { send(&mut first, bearer(SECRET)).await });
    entered.recv().await.unwrap();
    assert!(store.revoke("alice"));
    release.notify_one();
    let a = in_flight.await.unwrap();
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "alice"));

    let a = send(&mut svc.clone(), bearer(SECRET)).await;
    assert_eq!(
        (a.status, a.code().as_str()),
        (StatusCode::UNAUTHORIZED, "revoked_api_key")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_is_seen_by_the_next_request_on_every_thread() {
    let store = store_with([alice()]);
    let svc = service(store.clone());
    let revoked = Arc::new(AtomicBool::new(false));
    let refused_after = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (mut svc, revoked, refused_after) =
            (svc.clone(), revoked.clone(), refused_after.clone());
        tasks.push(tokio::spawn(async move {
            let mut after = 0;
            while after < 50 {
                // Read the flag before sending: if the revocation was already
                // complete, this request must be refused.
                let was_revoked = revoked.load(Ordering::SeqCst);
                let a = send(&mut svc, bearer(SECRET)).await;
                if was_revoked {
                    assert_eq!(a.code(), "revoked_api_key");
                    after += 1;
                    refused_after.fetch_add(1, Ordering::SeqCst);
                } else {
                    assert!(a.status == StatusCode::OK || a.code() == "revoked_api_key");
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    store.revoke("alice");
    revoked.store(true, Ordering::SeqCst);
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(refused_after.load(Ordering::SeqCst), 8 * 50);
}
