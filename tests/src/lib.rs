//! Test harness: starts the real `touchlake` binary on an ephemeral port over a lake in a
//! temporary folder, and connects real clients to it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The `touchlake` binary built next to this test binary (or `$TOUCHLAKE_BIN`).
pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("TOUCHLAKE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/e2e-… → target/debug/touchlake
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join("touchlake"))
        .expect("target dir")
}

/// The repository's root folder. `cargo test` sets `CARGO_MANIFEST_DIR` when it runs the
/// test, which is right even when the binary was built from a clone at another path (CI
/// shares one target folder between clones); the compile-time value is the fallback.
pub fn repo_root() -> PathBuf {
    let tests = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    tests.parent().map(Path::to_path_buf).unwrap_or(tests)
}

/// A running server process; killed on drop.
pub struct Server {
    child: Child,
    /// host:port it listens on.
    pub addr: String,
    /// The lake folder.
    pub lake: PathBuf,
    /// host:port of the HTTP collector, if `TOUCHLAKE_HTTP_LISTEN` enabled it.
    pub http: Option<String>,
}

impl Server {
    /// Start `touchlake serve` on `lake` with extra environment variables.
    pub fn start_with(lake: &Path, env: &[(&str, &str)]) -> Server {
        Self::spawn(lake, &["serve"], env)
    }

    /// Start `touchlake serve` on `lake`.
    pub fn start(lake: &Path) -> Server {
        Self::start_with(lake, &[])
    }

    /// Start `touchlake demo --persons N` on `lake`.
    pub fn demo(lake: &Path, persons: u64) -> Server {
        Self::spawn(lake, &["demo", "--persons", &persons.to_string()], &[])
    }

    fn spawn(lake: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(binary());
        cmd.args(args)
            .arg("--lake")
            .arg(lake)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env("TOUCHLAKE_REFRESH_SECONDS", "0.2")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start touchlake");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let http = std::sync::Arc::new(std::sync::Mutex::new(None));
        let http_seen = http.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("touchlake collector listening on http://")
                    && let Ok(mut h) = http_seen.lock()
                {
                    *h = Some(rest.trim().to_string());
                }
                if let Some(rest) = line.strip_prefix("touchlake listening on ") {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("server did not start in time");
        let http = http.lock().ok().and_then(|h| h.clone());
        Server {
            child,
            addr,
            lake: lake.to_path_buf(),
            http,
        }
    }

    /// A libpq URL for this server.
    pub fn url(&self) -> String {
        format!("postgresql://touchlake@{}/touchlake", self.addr)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port")
    }

    /// Connect with tokio-postgres; also returns the connection task, whose abort closes
    /// the socket.
    pub async fn connect_with_task(&self) -> (tokio_postgres::Client, tokio::task::JoinHandle<()>) {
        let (client, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=touchlake dbname=touchlake",
                self.port()
            ),
            tokio_postgres::NoTls,
        )
        .await
        .expect("connect");
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        (client, task)
    }

    /// Connect with tokio-postgres.
    pub async fn connect(&self) -> tokio_postgres::Client {
        self.connect_with_task().await.0
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Is the process still alive?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stop the server.
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run psql against `url` with `args`; returns (stdout, stderr, success).
pub fn psql(url: &str, args: &[&str]) -> (String, String, bool) {
    let out = Command::new("psql")
        .arg(url)
        .args(["-X", "-v", "ON_ERROR_STOP=1"])
        .args(args)
        .output()
        .expect("psql is installed");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}
