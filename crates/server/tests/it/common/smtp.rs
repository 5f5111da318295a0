//! A real SMTP server for tests: aiosmtpd (from the virtualenv `scripts/test` makes) with a
//! handler that writes each message to a folder. It can be stopped and started again on the
//! same port.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The Python with aiosmtpd, or why there is none.
pub fn python() -> Result<String, String> {
    let py = std::env::var("MALAKA_TEST_PYTHON").unwrap_or_else(|_| {
        let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
        venv.display().to_string()
    });
    let ok = Command::new(&py)
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(py)
    } else {
        Err(format!("{py} has no aiosmtpd (scripts/test installs it)"))
    }
}

/// A running (or stopped) SMTP server writing to `dir`.
pub struct SmtpServer {
    pub port: u16,
    pub dir: PathBuf,
    python: String,
    delay_ms: u64,
    child: Option<Child>,
    _tmp: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl SmtpServer {
    /// Starts a server on a free port; `None` when aiosmtpd is missing outside CI.
    pub fn start(delay_ms: u64) -> Option<Self> {
        let python = match python() {
            Ok(p) => p,
            Err(why) => {
                assert!(!super::in_ci_pub(), "SMTP tests must run under CI: {why}");
                eprintln!("skipping an SMTP test: {why}");
                return None;
            }
        };
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut s = Self {
            port: free_port(),
            dir: tmp.path().join("mail"),
            python,
            delay_ms,
            child: None,
            _tmp: tmp,
        };
        s.resume();
        Some(s)
    }

    /// Starts it again on the same port.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let handlers = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../server/tests/smtp");
        let child = Command::new(&self.python)
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{}", self.port))
            .args(["-c", "maildir_handler.Maildir"])
            .arg(&self.dir)
            .arg(self.delay_ms.to_string())
            .env("PYTHONPATH", handlers)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aiosmtpd");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "aiosmtpd did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops it (connections are refused until [`Self::resume`]).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The messages received so far, oldest first.
    pub fn mails(&self) -> Vec<Mail> {
        mails_in(&self.dir)
    }

    /// Waits until at least `n` messages arrived (within `limit`) and returns all of them.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Mail> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let m = self.mails();
            if m.len() >= n {
                return m;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {n} mails arrived within {limit:?}",
                m.len()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One received message.
#[derive(Debug, Clone)]
pub struct Mail {
    pub rcpt: String,
    pub subject: String,
    pub raw: String,
}

impl Mail {
    /// The plain-text part, decoded (lettre sends 7bit or quoted-printable text).
    pub fn text(&self) -> String {
        let Some(start) = self.raw.find("Content-Type: text/plain") else {
            return String::new();
        };
        let part = &self.raw[start..];
        let body_at = part.find("\r\n\r\n").map_or(0, |i| i + 4);
        let end = part[body_at..]
            .find("\r\n--")
            .map_or(part.len(), |i| body_at + i);
        let body = &part[body_at..end];
        if part[..body_at].contains("quoted-printable") {
            decode_qp(body)
        } else {
            body.to_owned()
        }
    }
}

fn decode_qp(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'=' && i + 2 < b.len() && b[i + 1] == b'\r' && b[i + 2] == b'\n' {
            i += 3;
        } else if b[i] == b'=' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("3F");
            out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The messages in `dir`, oldest first.
pub fn mails_in(dir: &Path) -> Vec<Mail> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| {
            let raw = std::fs::read_to_string(p).unwrap_or_default();
            let header = |name: &str| {
                raw.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_owned())
                    .unwrap_or_default()
            };
            Mail {
                rcpt: header("X-Rcpt-To:"),
                subject: header("Subject:"),
                raw: raw.clone(),
            }
        })
        .collect()
}
