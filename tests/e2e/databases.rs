//! Database sources end to end: a real PostgreSQL (Debian's `postgresql`) and a real
//! MariaDB (Debian's `mariadb-server`), each started by the test in a temporary directory,
//! pulled incrementally by cursor and primary key through the server.

use std::process::Command;

use touchlake_tests::Server;

use crate::sources::{run_counts, scalar_i64};

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    l.local_addr().expect("addr").port()
}

/// A throwaway PostgreSQL cluster (Debian's `postgresql` package), run as the
/// `postgres` user when the tests run as root.
pub(crate) struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    bin: std::path::PathBuf,
}

impl Postgres {
    fn as_owner(&self, cmd: &mut Command) -> std::process::Output {
        let root = is_root();
        let out = if root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"])
                .arg(cmd.get_program())
                .args(cmd.get_args());
            c.output()
        } else {
            cmd.output()
        };
        out.expect("run a PostgreSQL tool")
    }

    pub(crate) fn start() -> Postgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server installed (Debian package postgresql)")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .find(|p| p.join("initdb").exists())
            .expect("initdb");
        let dir = tempfile::tempdir().expect("tempdir");
        if is_root() {
            let _ = Command::new("chown")
                .arg("postgres")
                .arg(dir.path())
                .status();
        }
        let port = free_port();
        let pg = Postgres { dir, port, bin };
        let data = pg.dir.path().join("data");
        let out = pg.as_owner(
            Command::new(pg.bin.join("initdb"))
                .args(["-A", "trust", "-U", "postgres", "-D"])
                .arg(&data),
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            pg.port,
            pg.dir.path().display()
        );
        let out = pg.as_owner(
            Command::new(pg.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .args(["-w", "-o", &opts, "-l"])
                .arg(pg.dir.path().join("log"))
                .arg("start"),
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg
    }

    /// A client of the cluster (its connection runs on a task of its own).
    pub(crate) async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.conn(), tokio_postgres::NoTls)
            .await
            .expect("connect to PostgreSQL");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    pub(crate) fn conn(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self.as_owner(
            Command::new(self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "stop"]),
        );
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_table_pulled_incrementally() {
    let pg = Postgres::start();
    let src = pg.client().await;
    src.batch_execute(
        "CREATE SCHEMA crm;
         CREATE TABLE crm.contacts (id int PRIMARY KEY, mobile text, email text, kind text,
                                    amount numeric(10,2), updated_at timestamptz);
         INSERT INTO crm.contacts
           SELECT g, '1380013' || lpad(g::text, 4, '0'), 'User' || g || '@Example.com',
                  CASE WHEN g % 10 = 0 THEN 'bogus' ELSE 'register' END, g * 1.5,
                  timestamptz '2026-01-01 00:00:00+00' + (g / 7) * interval '1 minute'
           FROM generate_series(1, 2500) g;",
    )
    .await
    .expect("source table");

    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("lake"));
    let c = server.connect().await;
    c.batch_execute(&format!(
        "CREATE SOURCE crm WITH (kind = 'postgres', connection = '{}', table = 'crm.contacts', \
         cursor = 'updated_at', primary_key = ARRAY['id'], batch_rows = 1000, \
         channel = 'crm', channel_type = 'offline', mapping.occurred_at = 'updated_at', \
         mapping.event_type = 'kind', mapping.phone = 'phone_e164(mobile, ''CN'')', \
         mapping.email = 'email_canonical(email)', mapping.revenue = 'CAST(amount AS decimal(18,2))', \
         rules.1.column = 'event_type', rules.1.accepted_values = ARRAY['register'], \
         rules.1.reason = 'unknown contact kind')",
        pg.conn()
    ))
    .await
    .expect("create postgres source");

    // Ties on the cursor (7 rows per minute) across batch boundaries of 1000 rows.
    let rows = c
        .query("CALL ingest('crm')", &[])
        .await
        .expect("first pull");
    assert_eq!(rows.len(), 3, "2500 rows in batches of 1000");
    assert_eq!(
        scalar_i64(
            &c,
            "SELECT count(*) FROM unified.touchpoints WHERE source = 'crm'"
        )
        .await,
        2250
    );
    assert_eq!(
        scalar_i64(&c, "SELECT count(*) FROM quality.rejected WHERE source = 'crm' AND reason = 'unknown contact kind'").await,
        250
    );
    assert_eq!(
        scalar_i64(
            &c,
            "SELECT count(DISTINCT touchpoint_id) FROM unified.touchpoints WHERE source = 'crm'"
        )
        .await,
        2250
    );
    let r = c
        .query_one(
            "SELECT phone, email, revenue::text FROM unified.touchpoints WHERE source = 'crm' AND phone = '+8613800130007'",
            &[],
        )
        .await
        .expect("row 7");
    assert_eq!(r.get::<_, String>(1), "user7@example.com");
    assert_eq!(r.get::<_, String>(2), "10.50");

    // Nothing new: nothing read. New rows and an update: only those are read.
    let rows = c
        .query("CALL ingest('crm')", &[])
        .await
        .expect("second pull");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, i64>("rows_read"), 0);
    src.batch_execute(
        "INSERT INTO crm.contacts VALUES (2501, '13800132501', 'new@x.com', 'register', 1, '2026-02-01 00:00:00+00');
         UPDATE crm.contacts SET updated_at = '2026-02-02 00:00:00+00' WHERE id = 5;",
    )
    .await
    .expect("changes");
    let rows = c
        .query("CALL ingest('crm')", &[])
        .await
        .expect("third pull");
    assert_eq!(rows[0].get::<_, i64>("rows_read"), 2);
    assert_eq!(rows[0].get::<_, i64>("rows_accepted"), 1);
    assert_eq!(rows[0].get::<_, i64>("rows_duplicate"), 1);
    let (read, acc, rej, dup) = run_counts(&c, "crm").await;
    assert_eq!((read, acc, rej, dup), (2502, 2251, 250, 1));

    // An unreachable database fails the run with a clear error, server stays up.
    c.batch_execute(
        "CREATE SOURCE down WITH (kind = 'postgres', connection = 'host=127.0.0.1 port=1 user=x', \
         table = 'a.b', cursor = 'c', primary_key = ARRAY['id'], channel = 'crm', channel_type = 'offline', \
         mapping.occurred_at = 'c', mapping.event_type = '''x''')",
    )
    .await
    .expect("create");
    let e = c
        .query("CALL ingest('down')", &[])
        .await
        .expect_err("fails");
    assert!(
        e.to_string().contains("cannot connect") || format!("{e:?}").contains("cannot connect"),
        "{e:?}"
    );
    assert_eq!(scalar_i64(&c, "SELECT 1").await, 1);
}

/// A throwaway MariaDB server (Debian's `mariadb-server`) on a free port, without grant
/// tables (any user connects), stopped and removed when dropped.
struct Mariadb {
    dir: tempfile::TempDir,
    port: u16,
    child: std::process::Child,
}

impl Mariadb {
    fn start() -> Mariadb {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let user = if is_root() { "root" } else { "" };
        let mut install = Command::new("mariadb-install-db");
        install
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"]);
        if !user.is_empty() {
            install.arg(format!("--user={user}"));
        }
        let out = install
            .output()
            .expect("mariadb-install-db (Debian package mariadb-server)");
        assert!(
            out.status.success(),
            "mariadb-install-db: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let server = ["/usr/sbin/mariadbd", "/usr/bin/mariadbd"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("mariadbd");
        let mut cmd = Command::new(server);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.path().join("sock").display()))
            .arg(format!("--port={port}"))
            .arg(format!("--log-error={}", dir.path().join("err").display()))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-grant-tables",
                "--skip-log-bin",
            ]);
        if !user.is_empty() {
            cmd.arg(format!("--user={user}"));
        }
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start mariadbd");
        let db = Mariadb { dir, port, child };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while db.sql("SELECT 1").is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "mariadbd did not start: {}",
                std::fs::read_to_string(db.dir.path().join("err")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        db
    }

    /// Run SQL with the `mariadb` client.
    fn sql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new("mariadb")
            .args(["-h127.0.0.1", "-uroot", "--batch", "--skip-column-names"])
            .arg(format!("-P{}", self.port))
            .args(["-e", sql])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_table_pulled_incrementally() {
    let my = Mariadb::start();
    my.sql(
        "CREATE DATABASE shop CHARACTER SET utf8mb4;
         CREATE TABLE shop.orders (id int PRIMARY KEY, buyer varchar(40), mobile varchar(20),
                                   status varchar(10), amount decimal(10,2), paid_at datetime(6));
         SET SESSION max_recursive_iterations = 100000;
         INSERT INTO shop.orders
           WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 2500)
           SELECT n, CONCAT('张', n), CONCAT('+86 138 0013 ', LPAD(n, 4, '0')),
                  IF(n % 10 = 0, 'void', 'paid'), n * 1.5,
                  TIMESTAMP('2026-01-01 00:00:00') + INTERVAL (n DIV 7) MINUTE
           FROM g;
         INSERT INTO shop.orders VALUES (9999, 'no time', '13800009999', 'paid', 1, NULL);",
    )
    .expect("source table");

    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&dir.path().join("lake"));
    let c = server.connect().await;
    c.batch_execute(&format!(
        "CREATE SOURCE shop WITH (kind = 'mysql', connection = 'mysql://root@127.0.0.1:{}/shop', \
         table = 'orders', cursor = 'paid_at', primary_key = ARRAY['id'], batch_rows = 1000, \
         channel = 'mall', channel_type = 'online', mapping.occurred_at = 'paid_at', \
         mapping.event_type = 'CASE status WHEN ''paid'' THEN ''purchase'' ELSE status END', \
         mapping.phone = 'phone_e164(mobile, ''CN'')', mapping.content = 'buyer', \
         mapping.revenue = 'CAST(amount AS decimal(18,2))', \
         rules.1.column = 'event_type', rules.1.accepted_values = ARRAY['purchase'], \
         rules.1.reason = 'not paid')",
        my.port
    ))
    .await
    .expect("create mysql source");

    // 2,500 rows with 7 per cursor value across batches of 1,000; the NULL-cursor row is
    // never pulled.
    let rows = c
        .query("CALL ingest('shop')", &[])
        .await
        .expect("first pull");
    assert_eq!(rows.len(), 3, "2500 rows in batches of 1000");
    assert_eq!(
        scalar_i64(
            &c,
            "SELECT count(DISTINCT touchpoint_id) FROM unified.touchpoints WHERE source = 'shop'"
        )
        .await,
        2250
    );
    assert_eq!(
        scalar_i64(
            &c,
            "SELECT count(*) FROM quality.rejected WHERE source = 'shop' AND reason = 'not paid'"
        )
        .await,
        250
    );
    let r = c
        .query_one(
            "SELECT content, revenue::text, CAST(extract(epoch FROM occurred_at) AS BIGINT) \
             FROM unified.touchpoints WHERE source = 'shop' AND phone = '+8613800130007'",
            &[],
        )
        .await
        .expect("order 7");
    assert_eq!(r.get::<_, String>(0), "张7");
    assert_eq!(r.get::<_, String>(1), "10.50");
    // 2026-01-01 00:01 UTC
    assert_eq!(r.get::<_, i64>(2), 1_767_225_660);

    // Nothing new, then one insert and one update (a duplicate of its touchpoint).
    let rows = c
        .query("CALL ingest('shop')", &[])
        .await
        .expect("second pull");
    assert_eq!(rows[0].get::<_, i64>("rows_read"), 0);
    my.sql(
        "INSERT INTO shop.orders VALUES (2501, 'x', '13800132501', 'paid', 1, '2026-02-01 00:00:00');
         UPDATE shop.orders SET paid_at = '2026-02-02 00:00:00' WHERE id = 5;",
    )
    .expect("changes");
    let rows = c
        .query("CALL ingest('shop')", &[])
        .await
        .expect("third pull");
    assert_eq!(rows[0].get::<_, i64>("rows_read"), 2);
    assert_eq!(rows[0].get::<_, i64>("rows_accepted"), 1);
    assert_eq!(rows[0].get::<_, i64>("rows_duplicate"), 1);
    assert_eq!(run_counts(&c, "shop").await, (2502, 2251, 250, 1));

    // A missing table and an unreachable server fail the run with a clear error.
    c.batch_execute(&format!(
        "CREATE SOURCE gone WITH (kind = 'mysql', connection = 'mysql://root@127.0.0.1:{}/shop', \
         table = 'nope', cursor = 'c', primary_key = ARRAY['id'], channel = 'mall', \
         channel_type = 'online', mapping.occurred_at = 'c', mapping.event_type = '''x''')",
        my.port
    ))
    .await
    .expect("create");
    let e = c
        .query("CALL ingest('gone')", &[])
        .await
        .expect_err("missing table");
    assert!(format!("{e:?}").contains("does not exist"), "{e:?}");
    drop(my);
    let e = c
        .query("CALL ingest('shop')", &[])
        .await
        .expect_err("server gone");
    assert!(format!("{e:?}").contains("cannot connect"), "{e:?}");
    assert_eq!(scalar_i64(&c, "SELECT 1").await, 1);
}
