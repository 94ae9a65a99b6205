//! The same migration files on a replicated cluster.
//!
//! The files are written for one server (`ENGINE = ReplacingMergeTree(…)`);
//! on a cluster each `CREATE TABLE` is rewritten to the `Replicated` engine
//! with a ZooKeeper path per shard, database and table, and the replica
//! from the node's `{replica}` macro. Statements run node by node, not
//! `ON CLUSTER`: the runner knows every replica's address anyway (the
//! ingest writes to them), an error names the node that refused, and a
//! node that is down fails the run at once instead of after the
//! distributed DDL queue's three-minute wait. Data statements (`INSERT …
//! SELECT` backfills) run on one node per shard: replication carries the
//! rows to the others, and running them on each would insert them twice.
//!
//! Each node records what it applied in its own, unreplicated
//! `schema_migrations`, written only once the file has run on every node:
//! a replica that was down or newly added is migrated by the next run,
//! whatever the others say.

/// Whether a statement writes data (once per shard) rather than schema
/// (on every node).
pub fn is_data_statement(sql: &str) -> bool {
    sql.trim_start()
        .get(..6)
        .is_some_and(|w| w.eq_ignore_ascii_case("insert"))
}

/// The ZooKeeper path of a replicated table: shard (from the node's
/// macro), database and table. `nonce` keeps tables that are dropped and
/// created again (a rebuild's copies) from meeting an old table's log.
pub fn zookeeper_path(database: &str, table: &str, nonce: Option<&str>) -> String {
    let base = format!("/clickhouse/tables/{{shard}}/{database}/{table}");
    match nonce {
        Some(n) => format!("{base}/{n}"),
        None => base,
    }
}

/// `CREATE TABLE` statements with a `…MergeTree(args)` engine become
/// `Replicated…MergeTree('<path>', '{replica}', args)`; every other
/// statement is returned unchanged.
pub fn replicate(sql: &str, database: &str, nonce: Option<&str>) -> String {
    let Some(table) = created_table(sql) else {
        return sql.to_owned();
    };
    let Some(engine_at) = find_ascii_ci(sql, "engine") else {
        return sql.to_owned();
    };
    let after = &sql[engine_at + "engine".len()..];
    let Some(eq) = after.find('=') else {
        return sql.to_owned();
    };
    let rest = &after[eq + 1..];
    let name_start = rest.len() - rest.trim_start().len();
    let name_len = rest[name_start..]
        .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .unwrap_or(rest.len() - name_start);
    let name = &rest[name_start..name_start + name_len];
    if !name.ends_with("MergeTree") || name.starts_with("Replicated") {
        return sql.to_owned();
    }
    let args_at = name_start + name_len;
    let Some(args) = rest[args_at..].strip_prefix('(') else {
        return sql.to_owned();
    };
    let Some(close) = args.find(')') else {
        return sql.to_owned();
    };
    let inner = args[..close].trim();
    let path = zookeeper_path(database, table, nonce);
    let replicated_args = if inner.is_empty() {
        format!("'{path}', '{{replica}}'")
    } else {
        format!("'{path}', '{{replica}}', {inner}")
    };
    let head_len = engine_at + "engine".len() + eq + 1 + name_start;
    format!(
        "{}Replicated{name}({replicated_args}){}",
        &sql[..head_len],
        &args[close + 1..]
    )
}

/// The table a `CREATE TABLE [IF NOT EXISTS] name` statement creates.
fn created_table(sql: &str) -> Option<&str> {
    let mut words = sql.split_whitespace();
    if !words.next()?.eq_ignore_ascii_case("create") || !words.next()?.eq_ignore_ascii_case("table")
    {
        return None;
    }
    let mut name = words.next()?;
    if name.eq_ignore_ascii_case("if") {
        words.next()?; // NOT
        words.next()?; // EXISTS
        name = words.next()?;
    }
    let name = name.split('(').next()?;
    Some(name.rsplit('.').next().unwrap_or(name).trim_matches('`'))
}

fn find_ascii_ci(haystack: &str, needle: &str) -> Option<usize> {
    haystack
        .to_ascii_lowercase()
        .find(&needle.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clickhouse::{MIGRATIONS, statements};

    #[test]
    fn create_statements_get_the_replicated_engine_with_path_and_replica() {
        let sql = "CREATE TABLE IF NOT EXISTS order_facts (\n  x UInt8\n) ENGINE = ReplacingMergeTree(version)\nORDER BY x";
        assert_eq!(
            replicate(sql, "tally", None),
            "CREATE TABLE IF NOT EXISTS order_facts (\n  x UInt8\n) ENGINE = \
             ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/tally/order_facts', \
             '{replica}', version)\nORDER BY x"
        );
        assert_eq!(
            replicate(
                "CREATE TABLE t AS s\nENGINE = MergeTree() ORDER BY k",
                "db",
                Some("n1")
            ),
            "CREATE TABLE t AS s\nENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/db/t/n1', \
             '{replica}') ORDER BY k"
        );
    }

    #[test]
    fn other_statements_are_left_alone() {
        for sql in [
            "INSERT INTO a SELECT * FROM b",
            "RENAME TABLE a TO b",
            "DROP TABLE IF EXISTS a",
            "CREATE TABLE t (x UInt8) ENGINE = Memory",
            "CREATE TABLE t AS s ENGINE = ReplicatedMergeTree('/p', '{replica}') ORDER BY x",
        ] {
            assert_eq!(replicate(sql, "db", None), sql);
        }
        assert!(is_data_statement("  insert into a select 1"));
        assert!(!is_data_statement("CREATE TABLE a AS b"));
    }

    #[test]
    fn every_table_the_migrations_create_is_replicated_on_a_cluster() {
        for m in MIGRATIONS {
            for s in statements(m.sql) {
                let out = replicate(&s.sql, "tally", None);
                if s.sql.starts_with("CREATE TABLE") {
                    assert!(out.contains("ENGINE = Replicated"), "{}: {out}", m.name);
                    assert!(out.contains("'{replica}'"), "{}: {out}", m.name);
                } else {
                    assert_eq!(out, s.sql);
                }
            }
        }
    }
}
