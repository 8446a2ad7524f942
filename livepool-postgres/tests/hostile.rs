//! A hostile server that echoes the cleartext password it was sent in its FATAL message: the
//! password must reach no error text, no `Debug` output and no tracing event.

use livepool_postgres::Postgres;
use livepool_postgres::tokio_postgres::Config;
use livepool_testkit::{capture_logs, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SECRET: &str = "Sup3r-Secret-pw!";

/// A backend message: its type, its length, its body.
fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Reads one length-prefixed body (after an optional type byte).
async fn read_message(s: &mut TcpStream, typed: bool) -> Vec<u8> {
    if typed {
        s.read_u8().await.expect("type");
    }
    let len = s.read_u32().await.expect("length") as usize;
    let mut body = vec![0; len.saturating_sub(4)];
    s.read_exact(&mut body).await.expect("body");
    body
}

/// Asks for a cleartext password, then fails with it in the message and the detail.
async fn serve_hostile(listener: TcpListener) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let _startup = read_message(&mut s, false).await;
        s.write_all(&message(b'R', &3u32.to_be_bytes()))
            .await
            .unwrap();
        let password = read_message(&mut s, true).await;
        let password = String::from_utf8_lossy(&password);
        let password = password.trim_end_matches('\0');
        let mut fields = Vec::new();
        for (code, value) in [
            (b'S', "FATAL".to_string()),
            (b'V', "FATAL".to_string()),
            (b'C', "28P01".to_string()),
            (
                b'M',
                format!("password authentication failed: you sent {password}"),
            ),
            (b'D', format!("the password was {password:?}")),
        ] {
            fields.push(code);
            fields.extend_from_slice(value.as_bytes());
            fields.push(0);
        }
        fields.push(0);
        let _ = s.write_all(&message(b'E', &fields)).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_password_echoed_by_the_server_is_scrubbed_everywhere() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve_hostile(listener));
    let (logs, _guard) = capture_logs(tracing::Level::TRACE);

    let mut config = Config::new();
    config.user("app").password(SECRET).dbname("app");
    let pool = livepool::Pool::builder(addr)
        .protocol(Postgres::new(config))
        .build()
        .unwrap();
    let mut shown = Vec::new();
    for _ in 0..3 {
        let e = within(10, "get", pool.get())
            .await
            .expect_err("the server refuses");
        assert!(e.is_config(), "{e}");
        shown.push(format!("{e} / {e:?}"));
    }
    // The server really echoed it: the first error carries the redacted message.
    assert!(shown[0].contains("<redacted>"), "{}", shown[0]);
    shown.push(format!("{pool:?}"));
    shown.push(format!("{:?}", pool.statistics()));
    shown.push(logs.text());
    for text in &shown {
        assert!(!text.contains(SECRET), "the password leaked: {text}");
    }
    server.abort();
}
