//! Device store tests, each run against a throwaway PostgreSQL database and a SQLite file.

use chrono::{Duration, TimeZone, Utc};
use homeport_store::testing::{with_temp_postgres, TempSqlite, DEFAULT_ADMIN_URL};
use homeport_store::{DeviceInfo, NewDevice, Store, StoreConfig, StoreError};

fn admin_url() -> String {
    std::env::var("HOMEPORT_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

/// Generates `<name>_postgres` and `<name>_sqlite` tests running the same scenario.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::with_temp_postgres(&super::admin_url(), stringify!($name), super::$name)
                        .await
                        .expect("temporary postgres database");
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::TempSqlite::new(stringify!($name));
                    super::$name(db.url.clone()).await;
                }
            )*
        }
    };
}

both_backends!(
    migrations_are_idempotent,
    upsert_get_list_count_delete,
    tenant_isolation,
    bulk_upsert_5000,
    connection_timestamps,
    invalid_guids,
    batched_login_lookup,
    audit_retention_deletes_only_old_events,
    racing_creates_register_a_device_once,
    provisioning_configs_are_versioned_unique_and_per_tenant,
    sessions_are_recorded_in_one_statement_and_only_move_forward,
    device_queries_filter_in_the_database,
    audit_events_are_counted_per_interval_and_paged_newest_first,
);

fn guid(n: u32) -> String {
    format!("{n:08x}-0000-4000-8000-{n:012x}")
}

fn device(n: u32, tenant: &str) -> NewDevice {
    NewDevice {
        tenant_id: tenant.to_owned(),
        hostname: Some(format!("host-{n}")),
        tags: vec!["sim".to_owned()],
        ..NewDevice::new(guid(n), "admin")
    }
}

async fn migrations_are_idempotent(url: String) {
    let first = Store::connect(&url).await.expect("first connect");
    first.upsert_device(device(1, "")).await.expect("upsert");
    drop(first);
    let second = Store::connect(&url).await.expect("second connect");
    assert_eq!(second.count_devices("").await.expect("count"), 1);
    // Several processes (here: pools) starting at once must not trip over each other.
    let racers = (0..3).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { Store::connect(&url).await.map(drop) })
    });
    for racer in racers {
        racer.await.expect("join").expect("concurrent connect");
    }
    second.ping().await.expect("ping");
    if second.backend() == sea_orm::DatabaseBackend::Postgres {
        let rows = sea_orm::ConnectionTrait::query_all(
            second.connection(),
            sea_orm::Statement::from_string(
                sea_orm::DatabaseBackend::Postgres,
                "SELECT column_name, data_type FROM information_schema.columns \
                 WHERE table_name = 'devices' ORDER BY column_name",
            ),
        )
        .await
        .expect("columns");
        let types: std::collections::BTreeMap<String, String> = rows
            .iter()
            .map(|r| {
                (
                    r.try_get_by_index(0).expect("name"),
                    r.try_get_by_index(1).expect("type"),
                )
            })
            .collect();
        assert_eq!(types["tags"], "jsonb");
        assert_eq!(types["guid"], "text");
        assert_eq!(types["last_connected_at"], "timestamp with time zone");
    }
    if second.backend() == sea_orm::DatabaseBackend::Sqlite {
        // Other processes (simulator, all-in-one server) share the file: WAL must be on.
        let row = sea_orm::ConnectionTrait::query_one(
            second.connection(),
            sea_orm::Statement::from_string(
                sea_orm::DatabaseBackend::Sqlite,
                "PRAGMA journal_mode",
            ),
        )
        .await
        .expect("pragma")
        .expect("row");
        let mode: String = row.try_get_by_index(0).expect("mode");
        assert_eq!(mode, "wal");
    }
}

async fn upsert_get_list_count_delete(url: String) {
    let store = Store::connect_with(StoreConfig {
        max_connections: 2,
        ..StoreConfig::new(&url)
    })
    .await
    .expect("connect");
    let upper = guid(7).to_uppercase();
    let mut new = device(7, "t1");
    new.guid = upper.clone();
    new.device_info = Some(DeviceInfo {
        fw_version: Some("16.1.25".into()),
        fw_sku: Some("16392".into()),
        ..DeviceInfo::default()
    });
    let created = store.upsert_device(new.clone()).await.expect("insert");
    assert_eq!(created.guid, guid(7), "guid stored lowercase");
    assert_eq!(created.tenant_id, "t1");
    assert_eq!(created.tags, ["sim"]);
    assert_eq!(created.device_info, new.device_info);
    assert_eq!(created.created_at, created.updated_at);
    assert_eq!(created.last_connected_at, None);

    assert_eq!(
        store.get_device(&upper).await.expect("get"),
        Some(created.clone())
    );
    assert_eq!(
        store
            .get_device_for_tenant("t1", &guid(7))
            .await
            .expect("get"),
        Some(created.clone())
    );

    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let mut changed = new.clone();
    changed.friendly_name = Some("Front desk".into());
    changed.tags = vec!["a".into(), "b".into()];
    let updated = store.upsert_device(changed).await.expect("update");
    assert_eq!(updated.friendly_name.as_deref(), Some("Front desk"));
    assert_eq!(updated.tags, ["a", "b"]);
    assert_eq!(updated.created_at, created.created_at, "created_at kept");
    assert!(updated.updated_at > created.updated_at);

    for n in [3, 1, 2] {
        store.upsert_device(device(n, "t1")).await.expect("insert");
    }
    store.upsert_device(device(4, "t2")).await.expect("insert");
    assert_eq!(store.count_devices("t1").await.expect("count"), 4);
    assert_eq!(store.count_devices("t2").await.expect("count"), 1);
    assert_eq!(store.count_devices("none").await.expect("count"), 0);
    let page: Vec<_> = store
        .list_devices("t1", 2, 1)
        .await
        .expect("list")
        .into_iter()
        .map(|d| d.guid)
        .collect();
    assert_eq!(page, [guid(2), guid(3)], "ordered by guid, paged");
    assert_eq!(store.list_devices("t1", 10, 4).await.expect("list"), []);

    assert!(store.delete_device("t1", &guid(7)).await.expect("delete"));
    assert!(!store
        .delete_device("t1", &guid(7))
        .await
        .expect("delete again"));
    assert_eq!(store.get_device(&guid(7)).await.expect("get"), None);
    assert_eq!(store.count_devices("t1").await.expect("count"), 3);
}

async fn tenant_isolation(url: String) {
    let store = Store::connect(&url).await.expect("connect");
    let b_device = store.upsert_device(device(1, "b")).await.expect("insert");

    assert_eq!(
        store
            .get_device_for_tenant("a", &guid(1))
            .await
            .expect("get"),
        None
    );
    assert!(!store.delete_device("a", &guid(1)).await.expect("delete"));
    assert_eq!(store.list_devices("a", 100, 0).await.expect("list"), []);

    // Tenant A cannot take over or change B's device by registering the same guid.
    let mut hijack = device(1, "a");
    hijack.hostname = Some("evil".into());
    assert!(matches!(
        store.upsert_device(hijack.clone()).await,
        Err(StoreError::TenantConflict { .. })
    ));
    assert_eq!(
        store.bulk_upsert_devices(vec![hijack]).await.expect("bulk"),
        0
    );
    assert_eq!(
        store.get_device(&guid(1)).await.expect("get"),
        Some(b_device.clone())
    );
    // Device login (guid only) still finds it.
    assert_eq!(
        store
            .get_device(&guid(1))
            .await
            .expect("get")
            .map(|d| d.tenant_id),
        Some("b".into())
    );
    // Batched login lookup: every tenant, canonical guids, unknown and invalid ones absent.
    let a_device = store.upsert_device(device(2, "a")).await.expect("insert");
    let found = store
        .get_devices(&[
            guid(1).to_uppercase(),
            guid(2),
            guid(9),
            "not-a-guid".into(),
        ])
        .await
        .expect("batch");
    assert_eq!(found.len(), 2);
    assert_eq!(found.get(&guid(1)), Some(&b_device));
    assert_eq!(found.get(&guid(2)), Some(&a_device));
    assert!(store.get_devices(&[]).await.expect("empty").is_empty());
    assert!(store.delete_device("b", &guid(1)).await.expect("delete"));
    assert!(store.delete_device("a", &guid(2)).await.expect("delete"));
}

async fn bulk_upsert_5000(url: String) {
    let store = Store::connect(&url).await.expect("connect");
    let started = std::time::Instant::now();
    let devices: Vec<_> = (0..5000).map(|n| device(n, "bulk")).collect();
    assert_eq!(
        store
            .bulk_upsert_devices(devices.clone())
            .await
            .expect("bulk insert"),
        5000
    );
    let elapsed = started.elapsed();
    assert_eq!(store.count_devices("bulk").await.expect("count"), 5000);
    assert!(
        elapsed < std::time::Duration::from_secs(30),
        "bulk insert took {elapsed:?}"
    );

    // Re-running updates in place; a duplicate guid in one batch keeps the last entry.
    let mut again: Vec<_> = devices.into_iter().take(10).collect();
    let mut renamed = device(3, "bulk");
    renamed.hostname = Some("renamed".into());
    again.push(renamed);
    assert_eq!(store.bulk_upsert_devices(again).await.expect("bulk"), 10);
    assert_eq!(store.count_devices("bulk").await.expect("count"), 5000);
    let d3 = store.get_device(&guid(3)).await.expect("get").expect("d3");
    assert_eq!(d3.hostname.as_deref(), Some("renamed"));
    assert_eq!(
        store.bulk_upsert_devices(Vec::new()).await.expect("empty"),
        0
    );
}

async fn connection_timestamps(url: String) {
    let store = Store::connect(&url).await.expect("connect");
    let created = store.upsert_device(device(1, "")).await.expect("insert");
    let t1 = Utc
        .with_ymd_and_hms(2025, 3, 1, 12, 0, 0)
        .single()
        .expect("t1")
        + Duration::microseconds(123_456);
    let t2 = t1 + Duration::seconds(90);

    assert!(store.mark_connected(&guid(1), t1).await.expect("connected"));
    assert!(store
        .mark_disconnected(&guid(1), t2)
        .await
        .expect("disconnected"));
    let d = store
        .get_device(&guid(1))
        .await
        .expect("get")
        .expect("device");
    assert_eq!(d.last_connected_at, Some(t1));
    assert_eq!(d.last_disconnected_at, Some(t2));
    assert_eq!(
        d.updated_at, created.updated_at,
        "presence is not a config change"
    );

    // Older (redelivered, reordered) events do not move the times back.
    assert!(!store
        .mark_connected(&guid(1), t1 - Duration::milliseconds(1))
        .await
        .expect("old"));
    assert!(!store.mark_connected(&guid(1), t1).await.expect("same"));
    assert!(store
        .mark_connected(&guid(1), t2 + Duration::seconds(1))
        .await
        .expect("newer"));
    let d = store
        .get_device(&guid(1))
        .await
        .expect("get")
        .expect("device");
    assert_eq!(d.last_connected_at, Some(t2 + Duration::seconds(1)));

    // Re-registering keeps the connection times.
    let again = store.upsert_device(device(1, "")).await.expect("upsert");
    assert_eq!(again.last_connected_at, d.last_connected_at);

    assert!(!store.mark_connected(&guid(99), t1).await.expect("unknown"));
}

async fn invalid_guids(url: String) {
    let store = Store::connect(&url).await.expect("connect");
    let bad = NewDevice::new("not-a-guid", "admin");
    assert!(matches!(
        store.upsert_device(bad.clone()).await,
        Err(StoreError::InvalidInput(_))
    ));
    assert!(matches!(
        store.bulk_upsert_devices(vec![device(1, ""), bad]).await,
        Err(StoreError::InvalidInput(_))
    ));
    assert_eq!(
        store.count_devices("").await.expect("count"),
        0,
        "all or nothing"
    );
    assert_eq!(store.get_device("not-a-guid").await.expect("get"), None);
    assert!(!store.delete_device("", "x").await.expect("delete"));
}

#[tokio::test]
async fn unreachable_database_is_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let config = StoreConfig {
        // sqlx retries refused connections until the acquire timeout.
        acquire_timeout: std::time::Duration::from_millis(500),
        ..StoreConfig::new(format!("postgres://postgres@127.0.0.1:{port}/postgres"))
    };
    let err = Store::connect_with(config)
        .await
        .expect_err("nothing listens there");
    assert!(err.is_unavailable(), "{err}");
}

#[tokio::test]
async fn in_memory_sqlite_works() {
    let store = Store::connect("sqlite::memory:").await.expect("connect");
    store.upsert_device(device(1, "")).await.expect("insert");
    assert_eq!(store.count_devices("").await.expect("count"), 1);
}

#[tokio::test]
async fn unsupported_url_is_a_config_error() {
    assert!(matches!(
        Store::connect("mysql://root@localhost/test").await,
        Err(StoreError::Config(_))
    ));
}

#[tokio::test]
async fn temp_postgres_is_dropped_even_when_the_test_panics() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let seen_in_test = seen.clone();
    let outcome = tokio::spawn(async move {
        with_temp_postgres(&admin_url(), "panics", move |url| async move {
            *seen_in_test.lock().expect("lock") = url;
            panic!("deliberate");
        })
        .await
    })
    .await;
    assert!(outcome.expect_err("panic propagates").is_panic());
    let url = seen.lock().expect("lock").clone();
    let name = url.rsplit('/').next().expect("db name").to_owned();
    assert!(name.starts_with("homeport_test_panics_"), "{name}");
    // Plain connection: Store::connect would migrate the admin database.
    let admin = sea_orm::Database::connect(admin_url())
        .await
        .expect("admin");
    let rows = sea_orm::ConnectionTrait::query_all(
        &admin,
        sea_orm::Statement::from_sql_and_values(
            sea_orm::DatabaseBackend::Postgres,
            "SELECT datname FROM pg_database WHERE datname = $1",
            [name.into()],
        ),
    )
    .await
    .expect("query");
    assert!(rows.is_empty(), "database left behind");
}

async fn batched_login_lookup(url: String) {
    let store = Store::connect(&url).await.expect("connect");
    for n in 1..=5 {
        store
            .upsert_device(device(n, &format!("t{}", n % 2)))
            .await
            .expect("upsert");
    }
    assert!(store.get_devices(&[]).await.expect("empty").is_empty());
    // Every batch size up to and past a power of two finds exactly the devices asked for,
    // across tenants, without unknown or malformed guids.
    for size in 1..=5u32 {
        let mut asked: Vec<String> = (1..=size).map(guid).collect();
        asked.push(guid(99));
        asked.push("not-a-guid".to_owned());
        let found = store.get_devices(&asked).await.expect("batch");
        assert_eq!(found.len(), size as usize, "batch of {size}");
        for n in 1..=size {
            let d = &found[&guid(n)];
            assert_eq!(d.tenant_id, format!("t{}", n % 2));
        }
    }
    // Upper-case guids are canonicalised.
    let found = store
        .get_devices(&[guid(3).to_uppercase()])
        .await
        .expect("upper case");
    assert!(found.contains_key(&guid(3)));
}

async fn audit_retention_deletes_only_old_events(url: String) {
    let store = Store::connect(&url).await.expect("connect");
    let record = |i: i64| homeport_store::AuditRecord {
        id: format!("ev-{i}"),
        stream_seq: i,
        tenant: "acme".into(),
        device_guid: guid(1),
        kind: "connected".into(),
        subject: "hp.evt.acme.device.x.connected".into(),
        time_nanos: i * 1_000,
        source: "test".into(),
        actor: String::new(),
        trace_id: String::new(),
        payload: Vec::new(),
        stored_nanos: 0,
    };
    store
        .insert_audit_events((1..=25).map(record).collect())
        .await
        .expect("insert");
    // Events before t=20,500 ns: 20 of them, deleted 8 at a time, oldest first.
    assert_eq!(store.prune_audit_events(20_500, 8).await.expect("prune"), 8);
    assert_eq!(store.prune_audit_events(20_500, 8).await.expect("prune"), 8);
    assert_eq!(store.prune_audit_events(20_500, 8).await.expect("prune"), 4);
    assert_eq!(store.prune_audit_events(20_500, 8).await.expect("prune"), 0);
    assert_eq!(store.count_audit_events().await.expect("count"), 5);
}

async fn racing_creates_register_a_device_once(url: String) {
    let store = Store::connect(&url).await.expect("connect");
    let (a, b, other) = tokio::join!(
        store.create_device(device(7, "acme")),
        store.create_device(device(7, "acme")),
        store.create_device(device(7, "evil")),
    );
    let won: Vec<_> = [a, b, other]
        .into_iter()
        .map(|r| r.expect("no database error"))
        .filter(Option::is_some)
        .collect();
    assert_eq!(won.len(), 1, "exactly one create registers the device");
    assert!(store
        .create_device(device(7, "acme"))
        .await
        .expect("no database error")
        .is_none());
}

async fn provisioning_configs_are_versioned_unique_and_per_tenant(url: String) {
    use homeport_store::ConfigUpdate;
    let store = Store::connect(&url).await.expect("connect");
    let spec = serde_json::json!({"domain_suffix": "corp.example.com"});
    let made = store
        .create_config(
            "acme",
            "domain",
            "Corp",
            Some("Corp.Example.com".into()),
            spec.clone(),
        )
        .await
        .expect("create");
    assert_eq!((made.name.as_str(), made.version), ("Corp", 1));
    // Names and unique keys are case-insensitive per tenant and kind.
    assert!(matches!(
        store
            .create_config("acme", "domain", "corp", None, spec.clone())
            .await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert!(matches!(
        store
            .create_config(
                "acme",
                "domain",
                "other",
                Some("corp.example.COM".into()),
                spec.clone()
            )
            .await,
        Err(StoreError::AlreadyExists(_))
    ));
    store
        .create_config(
            "beta",
            "domain",
            "Corp",
            Some("corp.example.com".into()),
            spec.clone(),
        )
        .await
        .expect("another tenant may use the same name and suffix");
    store
        .create_config("acme", "profile", "Corp", None, serde_json::json!({}))
        .await
        .expect("another kind may use the same name");
    let found = store
        .find_config_by_unique_key("acme", "domain", "CORP.example.com")
        .await
        .expect("find")
        .expect("found");
    assert_eq!(found.name, "Corp");
    // Optimistic concurrency: only the version read may be replaced.
    let new_spec = serde_json::json!({"domain_suffix": "corp2.example.com"});
    match store
        .update_config(
            "acme",
            "domain",
            "CORP",
            1,
            Some("corp2.example.com".into()),
            new_spec.clone(),
        )
        .await
        .expect("update")
    {
        ConfigUpdate::Updated(r) => assert_eq!((r.version, r.spec), (2, new_spec.clone())),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store
            .update_config("acme", "domain", "corp", 1, None, spec.clone())
            .await
            .expect("update"),
        ConfigUpdate::Stale(r) if r.version == 2
    ));
    assert!(matches!(
        store
            .update_config("acme", "domain", "nope", 1, None, spec)
            .await
            .expect("update"),
        ConfigUpdate::NotFound
    ));
    let (page, total) = store
        .list_configs("acme", "domain", 0, 10)
        .await
        .expect("list");
    assert_eq!((page.len(), total), (1, 1));
    assert!(store
        .delete_config("acme", "domain", "corp")
        .await
        .expect("delete"));
    assert!(!store
        .delete_config("acme", "domain", "corp")
        .await
        .expect("delete"));
    assert_eq!(
        store
            .list_configs("beta", "domain", 0, 10)
            .await
            .expect("list")
            .1,
        1
    );
    store.close().await.expect("close");
}

async fn sessions_are_recorded_in_one_statement_and_only_move_forward(url: String) {
    let store = Store::connect(&url).await.expect("connect");
    for n in 1..=3 {
        store
            .upsert_device(device(n, "acme"))
            .await
            .expect("device");
    }
    let t = Utc
        .with_ymd_and_hms(2026, 12, 6, 10, 0, 0)
        .single()
        .expect("time");
    let marks = vec![
        (guid(1), t),
        (guid(1), t + Duration::seconds(5)),
        (guid(2).to_uppercase(), t),
        (guid(99), t),
        ("not-a-guid".to_string(), t),
    ];
    assert_eq!(
        store.record_sessions(true, &marks).await.expect("record"),
        2
    );
    let get = |n| {
        let store = store.clone();
        async move {
            store
                .get_device(&guid(n))
                .await
                .expect("get")
                .expect("device")
        }
    };
    assert_eq!(
        get(1).await.last_connected_at,
        Some(t + Duration::seconds(5))
    );
    assert_eq!(get(2).await.last_connected_at, Some(t));
    assert_eq!(get(3).await.last_connected_at, None);
    // An older, late event changes nothing; a newer one does; disconnects are their own.
    let late = vec![(guid(1), t), (guid(2), t + Duration::seconds(1))];
    assert_eq!(store.record_sessions(true, &late).await.expect("record"), 1);
    assert_eq!(
        get(1).await.last_connected_at,
        Some(t + Duration::seconds(5))
    );
    assert_eq!(
        get(2).await.last_connected_at,
        Some(t + Duration::seconds(1))
    );
    assert_eq!(
        store
            .record_sessions(false, &[(guid(3), t)])
            .await
            .expect("record"),
        1
    );
    assert_eq!(get(3).await.last_disconnected_at, Some(t));
    assert_eq!(store.record_sessions(false, &[]).await.expect("record"), 0);
    store.close().await.expect("close");
}

async fn device_queries_filter_in_the_database(url: String) {
    use homeport_store::DeviceQuery;
    let store = Store::connect(&url).await.expect("connect");
    let mut devices: Vec<NewDevice> = (1..=30).map(|n| device(n, "acme")).collect();
    devices[0].friendly_name = Some("Front Desk 100%_off".into());
    devices[1].tags = vec!["lab".into(), "floor-2".into()];
    devices[2].tags = vec!["lab".into()];
    devices[3].tags = vec!["floor-2".into()];
    devices.push(NewDevice {
        tags: vec!["lab".into()],
        ..device(31, "other")
    });
    store.bulk_upsert_devices(devices).await.expect("upsert");
    let q = |f: fn(&mut DeviceQuery)| {
        let mut q = DeviceQuery::default();
        f(&mut q);
        q
    };
    let count = |query: DeviceQuery| {
        let store = store.clone();
        async move {
            store
                .count_query_devices("acme", &query)
                .await
                .expect("count")
        }
    };
    assert_eq!(count(DeviceQuery::default()).await, 30);
    // Substring of the host name, any case; of the guid; of the friendly name, with LIKE's
    // wildcards taken literally.
    assert_eq!(count(q(|q| q.search = Some("HOST-1".into()))).await, 11);
    assert_eq!(count(q(|q| q.search = Some("0000000000".into()))).await, 30);
    assert_eq!(count(q(|q| q.search = Some("100%_".into()))).await, 1);
    assert_eq!(count(q(|q| q.search = Some("0%_o".into()))).await, 1);
    assert_eq!(count(q(|q| q.search = Some("%".into()))).await, 1);
    assert_eq!(count(q(|q| q.search = Some("_".into()))).await, 1);
    assert_eq!(count(q(|q| q.search = Some("nothing".into()))).await, 0);
    // Tags: all of them, or any; another tenant's devices never count.
    assert_eq!(count(q(|q| q.tags = vec!["lab".into()])).await, 2);
    assert_eq!(
        count(q(|q| q.tags = vec!["lab".into(), "floor-2".into()])).await,
        1
    );
    assert_eq!(
        count(q(|q| {
            q.tags = vec!["lab".into(), "floor-2".into()];
            q.any_tag = true;
        }))
        .await,
        3
    );
    assert_eq!(count(q(|q| q.hostname = Some("host-7".into()))).await, 1);
    assert_eq!(
        count(q(|q| q.friendly_name = Some("Front Desk 100%_off".into()))).await,
        1
    );
    // Pages are ordered by guid.
    let page = store
        .query_devices("acme", &q(|q| q.search = Some("host-1".into())), 5, 5)
        .await
        .expect("page");
    let guids: Vec<_> = page.iter().map(|d| d.guid.clone()).collect();
    let mut sorted = guids.clone();
    sorted.sort();
    assert_eq!((guids.len(), &guids), (5, &sorted));
    assert_eq!(
        store.device_tags("acme", 100).await.expect("tags"),
        vec!["floor-2".to_owned(), "lab".into(), "sim".into()]
    );
    assert_eq!(store.device_tags("acme", 1).await.expect("tags").len(), 1);
    assert!(store
        .device_tags("nobody", 10)
        .await
        .expect("tags")
        .is_empty());
    store.close().await.expect("close");
}

async fn audit_events_are_counted_per_interval_and_paged_newest_first(url: String) {
    let store = Store::connect(&url).await.expect("connect");
    let record = |i: i64, tenant: &str, kind: &str| homeport_store::AuditRecord {
        id: format!("ev-{tenant}-{i}"),
        stream_seq: i,
        tenant: tenant.into(),
        device_guid: guid(1),
        kind: kind.into(),
        subject: format!("hp.evt.{tenant}.device.x.{kind}"),
        // One event every 20 s from t = 1,000 s.
        time_nanos: (1_000 + i * 20) * 1_000_000_000,
        source: "test".into(),
        actor: String::new(),
        trace_id: String::new(),
        payload: Vec::new(),
        stored_nanos: 0,
    };
    let mut records: Vec<_> = (0..12)
        .map(|i| {
            record(
                i,
                "acme",
                if i % 3 == 0 {
                    "disconnected"
                } else {
                    "connected"
                },
            )
        })
        .collect();
    records.push(record(100, "other", "connected"));
    store.insert_audit_events(records).await.expect("insert");
    // Three one-minute buckets from t = 1,000 s: events 0-2, 3-5, 6-8 (9-11 fall after).
    let rows = store
        .count_audit_events_by_bucket(
            "acme",
            &["connected".into(), "disconnected".into()],
            1_000_000_000_000,
            60_000_000_000,
            3,
        )
        .await
        .expect("count");
    let mut rows = rows;
    rows.sort();
    assert_eq!(
        rows,
        vec![
            ("connected".to_owned(), 0, 2),
            ("connected".into(), 1, 2),
            ("connected".into(), 2, 2),
            ("disconnected".into(), 0, 1),
            ("disconnected".into(), 1, 1),
            ("disconnected".into(), 2, 1),
        ]
    );
    let newest = store
        .query_audit_events_newest("acme", &Default::default(), 0, 5)
        .await
        .expect("newest");
    let seqs: Vec<i64> = newest.iter().map(|r| r.stream_seq).collect();
    assert_eq!(seqs, vec![11, 10, 9, 8, 7]);
    let next = store
        .query_audit_events_newest("acme", &Default::default(), 7, 5)
        .await
        .expect("next page");
    assert_eq!(
        next.iter().map(|r| r.stream_seq).collect::<Vec<_>>(),
        vec![6, 5, 4, 3, 2]
    );
    store.close().await.expect("close");
}
