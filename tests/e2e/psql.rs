//! psql meta-commands against a real server, checked on their output.

use touchlake_tests::{Server, psql};

#[test]
fn meta_commands_list_the_lake() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path());
    let url = srv.url();
    let (_, err, ok) = psql(
        &url,
        &[
            "-c",
            "CREATE SCHEMA unified",
            "-c",
            "CREATE TABLE unified.touchpoints (touchpoint_id text NOT NULL, revenue numeric(18,2), occurred_at timestamptz NOT NULL)",
            "-c",
            "CREATE VIEW unified.v AS SELECT touchpoint_id FROM unified.touchpoints",
        ],
    );
    assert!(ok, "{err}");
    let (out, err, ok) = psql(&url, &["-c", "\\dn"]);
    assert!(ok, "{err}");
    assert!(out.contains("unified") && out.contains("public"), "{out}");
    let (out, err, ok) = psql(&url, &["-c", "\\dt unified.*"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("touchpoints") && out.contains("table"),
        "{out}"
    );
    let (out, err, ok) = psql(&url, &["-c", "\\d unified.touchpoints"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("touchpoint_id") && out.contains("not null"),
        "{out}"
    );
    assert!(out.contains("timestamp with time zone"), "{out}");
    assert!(out.contains("numeric(18,2)"), "{out}");
    let (out, err, ok) = psql(&url, &["-c", "\\d+ unified.touchpoints"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("numeric(18,2)") && out.contains("Storage"),
        "{out}"
    );
    let (out, err, ok) = psql(&url, &["-c", "\\du"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("touchlake") && out.contains("Superuser"),
        "{out}"
    );
    let (out, err, ok) = psql(&url, &["-c", "\\df"]);
    assert!(ok, "{err}");
    assert!(out.contains("List of functions"), "{out}");
    let (out, err, ok) = psql(&url, &["-c", "\\dt"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("Did not find any relations") || out.contains("List of relations"),
        "{out}"
    );
    let (out, err, ok) = psql(&url, &["-c", "\\dv unified.*"]);
    assert!(ok, "{err}");
    assert!(out.contains(" v "), "{out}");
    let (out, err, ok) = psql(&url, &["-c", "\\l"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("touchlake") && out.contains("(1 row)"),
        "{out}"
    );
    let (out, _, ok) = psql(&url, &["-At", "-c", "SELECT 1 AS one; SELECT 'two'"]);
    assert!(ok);
    assert_eq!(out.trim(), "1\ntwo");
}

#[test]
fn unknown_role_and_database_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::start(dir.path());
    let (_, err, ok) = psql(
        &format!("postgresql://mallory@{}/touchlake", srv.addr),
        &["-c", "SELECT 1"],
    );
    assert!(!ok);
    assert!(err.contains("role \"mallory\" does not exist"), "{err}");
    let (_, err, ok) = psql(
        &format!("postgresql://touchlake@{}/other", srv.addr),
        &["-c", "SELECT 1"],
    );
    assert!(!ok);
    assert!(err.contains("database \"other\" does not exist"), "{err}");
}
