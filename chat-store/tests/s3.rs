//! The blob store suite on the S3 store, against a moto server (`pip
//! install 'moto[server]'`) the test starts on a free loopback port. The
//! test fails, never skips, when moto cannot be started: `MOTO_SERVER`
//! names the program if it is not `moto_server` on the `PATH`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chat_store::blobs::s3::{S3BlobStore, S3Config};
use chat_store::conformance;

/// A moto server, stopped (killed) on drop.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start() -> Self {
        let program = std::env::var("MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program} (pip install 'moto[server]'): {e}"));
        let mut moto = Moto { child, port };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("{program} exited at start: {status}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{program} did not listen on port {port} within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (moto takes unsigned requests).
    fn create_bucket(&self, bucket: &str) {
        let mut conn = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to moto");
        write!(
            conn,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .expect("send");
        let mut answer = String::new();
        conn.read_to_string(&mut answer).expect("read");
        assert!(
            answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"),
            "create bucket: {answer}"
        );
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_s3_blob_store_passes_the_suite_against_moto() {
    let moto = Moto::start();
    moto.create_bucket("chat-blobs");
    let config = S3Config {
        bucket: "chat-blobs".into(),
        region: "us-east-1".into(),
        endpoint: Some(moto.endpoint()),
        access_key_id: "test".into(),
        secret_access_key: "test".into(),
        prefix: "attachments".into(),
    };
    assert!(
        !format!("{config:?}").contains("test\""),
        "Debug does not show the keys"
    );
    let store = S3BlobStore::new(&config).unwrap();
    conformance::blob_store_suite(&store).await;
    conformance::blob_store_suite(&store).await;
    // Another prefix is another namespace on the same bucket.
    let other = S3BlobStore::new(&S3Config {
        prefix: String::new(),
        ..config
    })
    .unwrap();
    conformance::blob_store_suite(&other).await;
}
