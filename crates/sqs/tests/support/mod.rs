//! A local SQS-compatible server for tests: moto's server mode (`moto[server]` from PyPI, in
//! the virtualenv `scripts/test` makes), one per test, on a free port.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr
)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Moto {
    pub endpoint: String,
    child: Child,
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// moto's server, or why there is none.
pub fn moto_server() -> Result<PathBuf, String> {
    let bin = std::env::var("MALAKA_TEST_PYTHON")
        .map(|p| PathBuf::from(p).with_file_name("moto_server"))
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/moto_server")
        });
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "{} is missing (scripts/test installs moto[server])",
            bin.display()
        ))
    }
}

impl Moto {
    /// Starts a moto server; `None` when moto is missing outside CI.
    pub fn start() -> Option<Self> {
        let bin = match moto_server() {
            Ok(b) => b,
            Err(why) => {
                assert!(!in_ci(), "SQS tests must run under CI: {why}");
                eprintln!("skipping an SQS test: {why}");
                return None;
            }
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto_server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            child,
        })
    }

    pub async fn client(&self) -> malaka_sqs::Client {
        malaka_sqs::client_with("us-east-1", Some(&self.endpoint), Some(("test", "test"))).await
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
