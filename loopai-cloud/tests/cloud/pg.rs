//! A throwaway PostgreSQL server for the tests: the Debian binaries
//! (`/usr/lib/postgresql/*/bin`, installed by `scripts/install-deps.sh`), a cluster made by
//! `initdb` in a temporary directory, started on a free loopback port with its unix socket
//! in that directory, stopped (immediately) when dropped. As root (CI), the cluster is made
//! and run as the `postgres` user through `runuser`, since `initdb` refuses root.
//!
//! When PostgreSQL cannot be found or started the test fails, naming why; only with
//! `LOOPAI_SKIP_PG_TESTS=1` in the environment does it skip instead (a local machine
//! without PostgreSQL).

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The superuser `initdb` creates.
const USER: &str = "loopai";

pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// `Some("postgres")` when running as root.
    run_as: Option<&'static str>,
}

fn bin_dir() -> Result<PathBuf, String> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("/usr/lib/postgresql: {e} (install the postgresql package: scripts/install-deps.sh)"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| "no /usr/lib/postgresql/*/bin/initdb (install the postgresql package: scripts/install-deps.sh)".to_owned())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

fn check(what: &str, output: std::io::Result<Output>) -> Result<Output, String> {
    let output = output.map_err(|e| format!("{what}: {e}"))?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(format!(
            "{what}: {}\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

impl PgServer {
    /// Starts a server, or `None` when PostgreSQL is unavailable and
    /// `LOOPAI_SKIP_PG_TESTS=1` says the test may skip; panics otherwise.
    pub fn start() -> Option<PgServer> {
        match PgServer::try_start() {
            Ok(server) => Some(server),
            Err(e) if std::env::var("LOOPAI_SKIP_PG_TESTS").as_deref() == Ok("1") => {
                eprintln!("SKIPPED (LOOPAI_SKIP_PG_TESTS=1): PostgreSQL unavailable: {e}");
                None
            }
            Err(e) => panic!(
                "PostgreSQL could not be started for this test: {e}\n(set LOOPAI_SKIP_PG_TESTS=1 to skip the PostgreSQL tests on a machine without it)"
            ),
        }
    }

    fn command(&self, program: &Path) -> Command {
        match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    fn try_start() -> Result<PgServer, String> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("loopai-pg-")
            .tempdir()
            .map_err(|e| format!("temporary directory: {e}"))?;
        let run_as = is_root().then_some("postgres");
        if let Some(user) = run_as {
            check(
                "chown of the cluster directory",
                Command::new("chown")
                    .arg(format!("{user}:"))
                    .arg(dir.path())
                    .output(),
            )?;
        }
        let mut server = PgServer {
            dir,
            bin,
            port: 0,
            run_as,
        };
        let data = server.dir.path().join("data");
        check(
            "initdb",
            server
                .command(&server.bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync"])
                .output(),
        )?;
        // A port picked free may be taken by the time the server binds it: try a few.
        let mut last = String::new();
        for _ in 0..5 {
            server.port = free_port();
            let options = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off -c full_page_writes=off",
                server.port,
                server.dir.path().display()
            );
            let started = check(
                "pg_ctl start",
                server
                    .command(&server.bin.join("pg_ctl"))
                    .arg("-D")
                    .arg(&data)
                    .arg("-l")
                    .arg(server.dir.path().join("log"))
                    .args(["-w", "-t", "60", "-o", &options, "start"])
                    .stdin(Stdio::null())
                    .output(),
            );
            match started {
                Ok(_) => return Ok(server),
                Err(e) => {
                    last = format!(
                        "{e}\nserver log:\n{}",
                        std::fs::read_to_string(server.dir.path().join("log")).unwrap_or_default()
                    )
                }
            }
        }
        Err(last)
    }

    /// Creates database `name`; returns its URL.
    pub fn database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(name)
    }

    pub fn url(&self, name: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs `sql` in database `db` with psql; returns its unaligned output, trimmed.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let output = check(
            &format!("psql {sql:?}"),
            self.psql_command(db).args(["-c", sql]).output(),
        )
        .unwrap();
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    fn psql_command(&self, db: &str) -> Command {
        let mut c = Command::new(self.bin.join("psql"));
        c.args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args(["-p", &self.port.to_string(), "-U", USER, "-d", db]);
        c
    }

    /// A psql session that runs `sql` and then stays connected, idle, until its standard
    /// input is closed (to hold a session lock): drop the returned [`Session`] to end it.
    pub fn session(&self, db: &str, sql: &str) -> Session {
        let mut child = self
            .psql_command(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting psql");
        let mut stdin = child.stdin.take().expect("psql's stdin");
        writeln!(stdin, "{sql};").expect("writing to psql");
        Session {
            child,
            stdin: Some(stdin),
        }
    }

    /// Polls `sql` until it prints `want` (not a timed assertion: `deadline` only stops a
    /// hung test).
    pub fn wait_for(&self, db: &str, sql: &str, want: &str, deadline: Duration) {
        let start = Instant::now();
        loop {
            let got = self.psql(db, sql);
            if got == want {
                return;
            }
            assert!(
                start.elapsed() < deadline,
                "{sql}: still {got:?}, expected {want:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// An open psql session; dropping it closes psql's input, so it disconnects and exits.
pub struct Session {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
}

impl Drop for Session {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self
            .command(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
