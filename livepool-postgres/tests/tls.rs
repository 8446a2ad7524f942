//! TLS through `SSLRequest` against a real PostgreSQL that requires it (`hostssl` only):
//! the certificate and its name verified, a wrong name a configuration error, no TLS refused.
#![cfg(feature = "tls")]

use std::time::Duration;

use livepool::BreakerState;
use livepool::rustls::pki_types::ServerName;
use livepool_postgres::Postgres;
use livepool_postgres::tokio_postgres::Config;
use livepool_testkit::pg::PgCluster;
use livepool_testkit::tls::TestCerts;
use livepool_testkit::within;

fn config(c: &PgCluster) -> Config {
    let mut config = Config::new();
    config
        .user(c.user())
        .password(c.password())
        .dbname("postgres");
    config
}

#[tokio::test]
async fn tls_is_verified_and_required() {
    let Some(mut cluster) = PgCluster::start().await else {
        return;
    };
    let certs = TestCerts::new();
    let (cert, key) = (certs.cert_path().to_owned(), certs.key_path().to_owned());
    let cluster_config = config(&cluster);
    cluster = tokio::task::spawn_blocking(move || {
        cluster.require_tls(&cert, &key);
        cluster
    })
    .await
    .expect("turn TLS on");
    let pool = |protocol| {
        livepool::Pool::builder(cluster.addr())
            .protocol(protocol)
            .connect_timeout(Some(Duration::from_secs(10)))
            .build()
            .unwrap()
    };

    // TLS with the right name: SCRAM over TLS, typed queries, pooled.
    let name = ServerName::try_from("localhost").unwrap();
    let tls = pool(
        Postgres::builder(cluster_config.clone())
            .tls(certs.client_config(), name)
            .build(),
    );
    for round in 0..2 {
        let conn = within(10, "get over TLS", tls.get()).await.expect("get");
        let ssl: bool = conn
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .expect("pg_stat_ssl")
            .get(0);
        assert!(ssl, "round {round}: the session is not encrypted");
        let n: i64 = conn
            .query_one("SELECT $1::int8 * 2", &[&21i64])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 42);
    }
    assert_eq!(tls.statistics().created, 1);

    // A name the certificate does not carry: this client's mistake, not the server's.
    let wrong = pool(
        Postgres::builder(cluster_config.clone())
            .tls(
                certs.client_config(),
                ServerName::try_from("db.example").unwrap(),
            )
            .build(),
    );
    let e = within(10, "get with a wrong name", wrong.get())
        .await
        .expect_err("wrong name");
    assert!(e.is_config(), "{e}");
    assert!(e.to_string().contains("TLS handshake failed"), "{e}");
    assert_eq!(wrong.statistics().breaker_state, BreakerState::Closed);

    // No TLS: the server refuses the session (no `host` entry without encryption).
    let plain = pool(Postgres::new(cluster_config));
    let e = within(10, "get without TLS", plain.get())
        .await
        .expect_err("plaintext refused");
    assert!(e.is_config(), "{e}");
    assert!(e.to_string().contains("28000"), "{e}");
}
