//! Durable events end to end: producers → JetStream → the audit worker → PostgreSQL, and
//! AuditService queries and live subscriptions over gRPC.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use homeport_proto::audit::v1 as pb;
use homeport_proto::device::v1 as dpb;
use homeport_tests::audit::{AuditClient, TcpProxy};
use homeport_tests::command::CommandSetup;
use homeport_tests::{wait_until, TestEnv};

const WAIT: Duration = Duration::from_secs(30);

/// Waits until the database holds `n` events.
async fn wait_stored(env: &TestEnv, n: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let have = env.store.count_audit_events().await.unwrap_or(0);
        if have >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out: {have}/{n} events stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every stored event of `tenant`, through the API, following pages.
async fn query_all(
    client: &mut AuditClient,
    filter: pb::EventFilter,
    page_size: u32,
) -> Vec<pb::StoredEvent> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .query_events(pb::QueryEventsRequest {
                filter: Some(filter.clone()),
                page_size,
                page_token: token.clone(),
                newest_first: false,
            })
            .await
            .unwrap()
            .into_inner();
        out.extend(page.events);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

fn ids(events: &[pb::StoredEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| e.event.as_ref().unwrap().id.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_and_command_events_are_stored_once_and_tenant_scoped() {
    let s = CommandSetup::start("audlife", 2, 61, "acme", |_| {}).await;
    let audit = s.env.start_audit().await;
    let mut api = s.cmd.devices("acme").await;
    api.power_action(dpb::PowerActionRequest {
        guid: s.guid(0),
        action: 10,
    })
    .await
    .unwrap();
    let guids: Vec<String> = s
        .fleet
        .identities()
        .iter()
        .map(|i| i.guid.clone())
        .collect();
    let (env, cmd, fleet) = (s.env, s.cmd, s.fleet);
    cmd.stop().await;
    fleet.stop().await; // two disconnected events
                        // 2 connected + 2 disconnected + the command's request and outcome.
    wait_stored(&env, 6, WAIT).await;
    let mut acme = audit.client("acme").await;
    let all = query_all(&mut acme, pb::EventFilter::default(), 7).await;
    let kinds: Vec<&str> = all
        .iter()
        .map(|e| e.event.as_ref().unwrap().kind.as_str())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "connected").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "disconnected").count(),
        2,
        "{kinds:?}"
    );
    // The command's request and its outcome.
    assert_eq!(
        kinds.iter().filter(|k| **k == "PowerAction").count(),
        2,
        "{kinds:?}"
    );
    let unique: HashSet<_> = ids(&all).into_iter().collect();
    assert_eq!(unique.len(), all.len(), "no event twice");
    assert!(
        all.windows(2).all(|w| w[0].sequence < w[1].sequence),
        "stream order"
    );
    // Filters: one device, one kind, a time range that excludes everything.
    let one = query_all(
        &mut acme,
        pb::EventFilter {
            device_guid: guids[1].to_uppercase(),
            ..Default::default()
        },
        7,
    )
    .await;
    assert!(
        one.iter()
            .all(|e| e.event.as_ref().unwrap().device_guid == guids[1])
            && one.len() == 2,
        "{one:?}"
    );
    let cmds = query_all(
        &mut acme,
        pb::EventFilter {
            kind: "PowerAction".into(),
            ..Default::default()
        },
        7,
    )
    .await;
    assert_eq!(cmds.len(), 2);
    assert!(cmds
        .iter()
        .all(|c| c.event.as_ref().unwrap().actor == "tester"));
    let none = query_all(
        &mut acme,
        pb::EventFilter {
            to_unix_nanos: 1,
            ..Default::default()
        },
        7,
    )
    .await;
    assert!(none.is_empty());
    // Another tenant sees nothing, with or without filters naming acme's devices.
    let mut evil = audit.client("evil").await;
    assert!(query_all(&mut evil, pb::EventFilter::default(), 7)
        .await
        .is_empty());
    assert!(query_all(
        &mut evil,
        pb::EventFilter {
            device_guid: guids[0].clone(),
            ..Default::default()
        },
        7
    )
    .await
    .is_empty());
    assert_eq!(audit.metrics.poison.get(), 0);
    audit.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_loses_nothing_and_stores_nothing_twice() {
    let env = TestEnv::new("audrestart").await;
    let audit = env.start_audit().await;
    let mut published = Vec::new();
    for i in 0..3000u32 {
        published.push(
            env.publish_event(
                "acme",
                &format!("00000000-0000-0000-0000-{i:012}"),
                "connected",
            )
            .await
            .id,
        );
        if i == 1000 {
            // Stop mid-stream: whatever batch is uncommitted stays unacked.
            let a = audit;
            a.stop().await;
            break;
        }
    }
    for i in 1001..3000u32 {
        published.push(
            env.publish_event(
                "acme",
                &format!("00000000-0000-0000-0000-{i:012}"),
                "connected",
            )
            .await
            .id,
        );
    }
    let audit = env.start_audit().await;
    wait_stored(&env, 3000, WAIT).await;
    // The same event published again under a new stream message (past JetStream's
    // de-duplication) is not stored twice either.
    let again = &published[5];
    let ev = homeport_contracts::proto::Event {
        id: again.clone(),
        tenant: "acme".into(),
        kind: "connected".into(),
        ..Default::default()
    };
    env.publish_raw(
        &env.names.device_event("acme", "x", "connected"),
        "another-msg-id",
        prost::Message::encode_to_vec(&ev),
    )
    .await;
    wait_until("the duplicate is seen", WAIT, || {
        audit.metrics.duplicates.get() > 0
    })
    .await;
    assert_eq!(env.store.count_audit_events().await.unwrap(), 3000);
    let mut client = audit.client("acme").await;
    let stored: HashSet<String> =
        ids(&query_all(&mut client, pb::EventFilter::default(), 1000).await)
            .into_iter()
            .collect();
    let expected: HashSet<String> = published.into_iter().collect();
    assert_eq!(stored, expected);
    audit.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_loses_nothing() {
    let env = TestEnv::new("audpg").await;
    // The server the test database is on (the system PostgreSQL or the suite's private one).
    let host_port = env
        .database_url()
        .split_once('@')
        .and_then(|(_, rest)| rest.split('/').next())
        .unwrap()
        .to_string();
    let pg: std::net::SocketAddr = host_port.parse().unwrap();
    let proxy = TcpProxy::start(pg).await;
    let url = env
        .database_url()
        .replace(&host_port, &proxy.addr.to_string());
    assert_ne!(
        url,
        env.database_url(),
        "the database URL goes through the proxy"
    );
    let mut config = homeport_store::StoreConfig::new(url);
    config.acquire_timeout = Duration::from_secs(2);
    let store = homeport_store::Store::connect_with(config).await.unwrap();
    let audit = env.start_audit_with(store).await;
    for i in 0..100u32 {
        env.publish_event(
            "acme",
            &format!("00000000-0000-0000-0000-{i:012}"),
            "connected",
        )
        .await;
    }
    wait_stored(&env, 100, WAIT).await;
    proxy.cut();
    for i in 100..600u32 {
        env.publish_event(
            "acme",
            &format!("00000000-0000-0000-0000-{i:012}"),
            "connected",
        )
        .await;
    }
    wait_until("the worker notices the outage", WAIT, || {
        audit.metrics.db_errors.get() > 0
    })
    .await;
    assert_eq!(
        env.store.count_audit_events().await.unwrap(),
        100,
        "nothing stored while the database is away"
    );
    proxy.restore();
    wait_stored(&env, 600, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.store.count_audit_events().await.unwrap(), 600);
    audit.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_resumes_without_gap_or_duplicate() {
    let env = TestEnv::new("audsub").await;
    let audit = env.start_audit().await;
    // Make sure the stream exists before subscribing to "from now on".
    env.publish_event("acme", "00000000-0000-0000-0000-000000000000", "warmup")
        .await;
    let mut client = audit.client("acme").await;
    let mut live = client
        .subscribe(pb::SubscribeRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut other = audit
        .client("evil")
        .await
        .subscribe(pb::SubscribeRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut published = Vec::new();
    for i in 0..10u32 {
        published.push(
            env.publish_event(
                "acme",
                &format!("00000000-0000-0000-0000-{i:012}"),
                "connected",
            )
            .await
            .id,
        );
    }
    let mut seen = Vec::new();
    let mut last = 0;
    for _ in 0..4 {
        let e = tokio::time::timeout(WAIT, live.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        last = e.sequence;
        seen.push(e.event.unwrap().id);
    }
    drop(live); // the dashboard goes away...
    for i in 10..20u32 {
        published.push(
            env.publish_event(
                "acme",
                &format!("00000000-0000-0000-0000-{i:012}"),
                "connected",
            )
            .await
            .id,
        );
    }
    // ...and comes back from its last position.
    let mut resumed = client
        .subscribe(pb::SubscribeRequest {
            after_sequence: last,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    while seen.len() < published.len() {
        let e = tokio::time::timeout(WAIT, resumed.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(e.sequence > last, "in order, no repeat");
        last = e.sequence;
        seen.push(e.event.unwrap().id);
    }
    assert_eq!(seen, published, "no gap, no duplicate");
    // A live filter by device and kind.
    let mut one = client
        .subscribe(pb::SubscribeRequest {
            filter: Some(pb::EventFilter {
                device_guid: "00000000-0000-0000-0000-000000000003".into(),
                kind: "disconnected".into(),
                ..Default::default()
            }),
            after_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    env.publish_event("acme", "00000000-0000-0000-0000-000000000003", "connected")
        .await;
    let want = env
        .publish_event(
            "acme",
            "00000000-0000-0000-0000-000000000003",
            "disconnected",
        )
        .await;
    let e = tokio::time::timeout(WAIT, one.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(e.event.unwrap().id, want.id);
    // The other tenant's feed stayed silent.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), other.next())
            .await
            .is_err()
    );
    audit.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_subject_is_counted_and_skipped() {
    let env = TestEnv::new("audpoison").await;
    let audit = env.start_audit().await;
    env.publish_event("acme", "00000000-0000-0000-0000-000000000001", "connected")
        .await;
    env.publish_raw(
        &env.names.device_event("acme", "x", "connected"),
        "junk-1",
        vec![0xff, 0xfe, 0x01, 0x02],
    )
    .await;
    env.publish_raw(
        &env.names.device_event("acme", "x", "connected"),
        "junk-2",
        Vec::new(),
    )
    .await;
    env.publish_event("acme", "00000000-0000-0000-0000-000000000002", "connected")
        .await;
    wait_stored(&env, 2, WAIT).await;
    wait_until("both poison messages are counted", WAIT, || {
        audit.metrics.poison.get() >= 2
    })
    .await;
    assert_eq!(env.store.count_audit_events().await.unwrap(), 2);
    audit.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_database_refuses_or_under_another_tenant_is_terminated_alone() {
    let env = TestEnv::new("audrefuse").await;
    let audit = env.start_audit().await;
    let good = |i: u32| format!("00000000-0000-0000-0000-{i:012}");
    for i in 0..50 {
        env.publish_event("acme", &good(i), "connected").await;
    }
    // PostgreSQL refuses U+0000 in text: this event can never be stored.
    let nul = homeport_contracts::proto::Event {
        id: "refused-nul".into(),
        tenant: "acme".into(),
        kind: "connected".into(),
        actor: "a\u{0}b".into(),
        ..Default::default()
    };
    env.publish_raw(
        &env.names.device_event("acme", "x", "connected"),
        "refused-nul",
        prost::Message::encode_to_vec(&nul),
    )
    .await;
    // An event of tenant acme on another tenant's subject is not stored under either.
    let misfiled = homeport_contracts::proto::Event {
        id: "misfiled".into(),
        tenant: "acme".into(),
        kind: "connected".into(),
        ..Default::default()
    };
    env.publish_raw(
        &env.names.device_event("evil", "x", "connected"),
        "misfiled",
        prost::Message::encode_to_vec(&misfiled),
    )
    .await;
    for i in 50..100 {
        env.publish_event("acme", &good(i), "connected").await;
    }
    // Every good event of the batches around them is stored; the two are terminated.
    wait_stored(&env, 100, WAIT).await;
    wait_until("both are terminated", WAIT, || {
        audit.metrics.poison.get() >= 2
    })
    .await;
    env.publish_event("acme", &good(100), "connected").await;
    wait_stored(&env, 101, WAIT).await;
    assert_eq!(env.store.count_audit_events().await.unwrap(), 101);
    assert_eq!(audit.metrics.poison.get(), 2);
    audit.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_consumer_and_store_each_event_once() {
    let env = TestEnv::new("audrepl").await;
    let a = env.start_audit().await;
    let b = env.start_audit().await;
    for i in 0..2000u32 {
        env.publish_event(
            "acme",
            &format!("00000000-0000-0000-0000-{i:012}"),
            "connected",
        )
        .await;
    }
    wait_stored(&env, 2000, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.store.count_audit_events().await.unwrap(), 2000);
    let (sa, sb) = (a.metrics.stored.get(), b.metrics.stored.get());
    assert_eq!(
        sa + sb,
        2000,
        "each event stored by exactly one replica ({sa} + {sb})"
    );
    a.stop().await;
    b.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_feeds_are_capped_per_caller() {
    let env = TestEnv::new("audfeeds").await;
    let audit = env.start_audit().await;
    env.publish_event("acme", "00000000-0000-0000-0000-000000000001", "connected")
        .await;
    let mut client = audit.client("acme").await;
    let mut open = Vec::new();
    for _ in 0..homeport_audit::MAX_FEEDS_PER_CALLER {
        open.push(
            client
                .subscribe(pb::SubscribeRequest::default())
                .await
                .unwrap()
                .into_inner(),
        );
    }
    let refused = client
        .subscribe(pb::SubscribeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    // Another tenant's caller is not held back by this one.
    let mut other = audit.client("evil").await;
    assert!(other
        .subscribe(pb::SubscribeRequest::default())
        .await
        .is_ok());
    // A closed feed gives its place back.
    drop(open.pop());
    let mut freed = false;
    for _ in 0..50 {
        if client
            .subscribe(pb::SubscribeRequest::default())
            .await
            .is_ok()
        {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(freed, "the closed feed's place came back");
    audit.stop().await;
    env.cleanup().await;
}

/// Polls the registry row of `guid` until `pick` returns a time.
async fn wait_time(
    env: &TestEnv,
    guid: &str,
    pick: fn(&homeport_store::Device) -> Option<chrono::DateTime<chrono::Utc>>,
) -> chrono::DateTime<chrono::Utc> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(t) = env
            .store
            .get_device(guid)
            .await
            .unwrap()
            .as_ref()
            .and_then(pick)
        {
            return t;
        }
        assert!(Instant::now() < deadline, "no time recorded for {guid}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_learns_when_devices_connected_and_disconnected() {
    let s = CommandSetup::start("audsess", 3, 91, "acme", |_| {}).await;
    let audit = s.env.start_audit().await;
    let guid = s.guid(0);
    let connected = wait_time(&s.env, &guid, |d| d.last_connected_at).await;
    for i in 1..3 {
        wait_time(&s.env, &s.guid(i), |d| d.last_connected_at).await;
    }
    // The device API shows it.
    let mut registry = s.cmd.registry("acme").await;
    let d = registry
        .get_device(dpb::DeviceRef { guid: guid.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.last_connected_at, connected.timestamp());
    assert_eq!(d.last_disconnected_at, 0);
    assert!(d.last_seen >= connected.timestamp(), "connected: seen now");
    // A dropped session records its end; the reconnect moves the start forward.
    s.fleet.device(&guid).unwrap().disconnect();
    let ended = wait_time(&s.env, &guid, |d| d.last_disconnected_at).await;
    assert!(ended >= connected);
    let again = {
        let deadline = Instant::now() + WAIT;
        loop {
            let t = wait_time(&s.env, &guid, |d| d.last_connected_at).await;
            if t > connected {
                break t;
            }
            assert!(Instant::now() < deadline, "the reconnect is not recorded");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert!(again >= ended);
    audit.stop().await;
    s.stop().await;
}
