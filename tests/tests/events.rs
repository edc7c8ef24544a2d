//! The event publisher against real JetStream: events NATS refuses for good are dropped and
//! counted, never retried forever.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::stream;
use homeport_contracts::events::{envelope, EventPublisher, PublishError, PublisherConfig};
use homeport_tests::*;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_refused_for_good_is_dropped_and_the_others_go_on() {
    let env = TestEnv::new("evrefuse").await;
    let subject = format!("{}.evt.acme.device.g.test", env.names.prefix());
    // A stream that refuses messages over 512 bytes: every retry would fail the same way.
    env.js
        .get_or_create_stream(stream::Config {
            name: env.names.events_stream(),
            subjects: vec![env.names.events_subjects()],
            max_message_size: 512,
            ..Default::default()
        })
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let (events, task) = EventPublisher::start(
        env.js.clone(),
        PublisherConfig {
            max_in_flight: 2,
            ..Default::default()
        },
        cancel.clone(),
        Duration::from_secs(2),
    );
    let mut big = envelope("acme", "g", "test", "test");
    big.actor = "x".repeat(2000);
    // Over the publisher's own limit: refused at once.
    let mut huge = envelope("acme", "g", "test", "test");
    huge.actor = "x".repeat(100_000);
    assert!(matches!(
        events.publish(subject.clone(), &huge),
        Err(PublishError::TooLarge(..))
    ));
    // Under it, but over the stream's: refused by JetStream, dropped after one try. Twice as
    // many as the publisher has slots, so a retry loop would block the small ones behind.
    for _ in 0..4 {
        events.publish(subject.clone(), &big).unwrap();
    }
    for _ in 0..3 {
        events
            .publish(subject.clone(), &envelope("acme", "g", "test", "test"))
            .unwrap();
    }
    assert!(events.flush(Duration::from_secs(20)).await, "nothing stuck");
    let stats = events.stats();
    assert_eq!(stats.published.load(Ordering::Relaxed), 3);
    assert_eq!(stats.dropped.load(Ordering::Relaxed), 5);
    cancel.cancel();
    let _ = task.await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_events_stream_with_other_limits_is_used_as_it_is() {
    let env = TestEnv::new("evlimits").await;
    // Created by an older version without a size limit.
    let old = homeport_contracts::events::StreamLimits {
        max_bytes: -1,
        ..test_stream_limits()
    };
    homeport_contracts::events::ensure_events_stream(&env.js, &env.names, &old)
        .await
        .unwrap();
    let mut stream = homeport_contracts::events::ensure_events_stream(
        &env.js,
        &env.names,
        &test_stream_limits(),
    )
    .await
    .expect("the existing stream is used");
    assert_eq!(stream.info().await.unwrap().config.max_bytes, -1);
    env.cleanup().await;
}
