//! The operator's kit held against a running `tally up`: every metric
//! family a role's registry defines (as `tally metrics` walks it) is on
//! the live `/metrics`, named by convention; every metric the alert rules
//! and the Grafana dashboard name is one of them, and the dashboard's
//! expressions parse (`promtool`); responses carry request ids, problems
//! quote them, and the page and CSV downloads are compressed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use tally_tests::TestDb;

/// Gauges and histograms end in their unit (or say they are a state): a
/// reader of a dashboard never has to guess what a number counts.
const UNIT_SUFFIXES: [&str; 11] = [
    "_seconds",
    "_bytes",
    "_rows",
    "_events",
    "_connections",
    "_minor",
    "_cells",
    "_parts",
    "_in_flight",
    "_state",
    "_held_by",
];

fn repo() -> PathBuf {
    // At run time: a test binary may be reused from another checkout.
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo"))
        .parent()
        .unwrap()
        .to_owned()
}

/// `tally metrics --role R`: family name to type.
fn defined(role: &str) -> BTreeMap<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["metrics", "--role", role])
        .output()
        .expect("run tally metrics");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (n, t) = l.split_once(' ').expect("name type");
            (n.to_owned(), t.to_owned())
        })
        .collect()
}

/// Family name to type, from the `# TYPE` lines of a scrape.
fn scraped(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_owned(), t.to_owned()))
        .collect()
}

/// The names a query can use for a family's samples.
fn sample_names(families: &BTreeMap<String, String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (name, kind) in families {
        match kind.as_str() {
            "counter" => {
                out.insert(format!("{name}_total"));
            }
            "histogram" => {
                for s in ["_bucket", "_sum", "_count"] {
                    out.insert(format!("{name}{s}"));
                }
            }
            "info" => {
                out.insert(format!("{name}_info"));
            }
            _ => {
                out.insert(name.clone());
            }
        }
    }
    out
}

/// Every `tally_…` metric name in a PromQL text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while let Some(at) = text[i..].find("tally_") {
        let start = i + at;
        let preceded =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start + "tally_".len();
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        if !preceded && end > start + "tally_".len() {
            out.insert(text[start..end].to_owned());
        }
        i = end;
    }
    out
}

/// Every `expr` of every panel target in a Grafana dashboard.
fn panel_expressions(dashboard: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::String(e)) = m.get("expr") {
                    out.push(e.clone());
                }
                m.values().for_each(|v| walk(v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(dashboard, &mut out);
    out
}

fn promtool_check(rules: &Path) {
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(rules)
        .output()
        .expect("promtool is installed (./scripts/setup --alerts)");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_live_stack_exports_every_defined_metric_and_the_rules_and_dashboard_use_only_those() {
    let db = TestDb::new().await;
    let up = crate::start_up(Some(&db));
    let http = reqwest::Client::new();
    let (api, dash) = (&up.stack.api_url, &up.stack.dashboards_url);

    // Some traffic, so that labelled families have series too.
    let placed = http
        .post(format!("{api}/v1/orders"))
        .bearer_auth(&up.stack.api_key)
        .header("idempotency-key", uuid::Uuid::now_v7().to_string())
        .json(&tally_tests::order_body("m-ops", "EUR", &[("sku", 1, 500)]))
        .send()
        .await
        .unwrap();
    assert_eq!(placed.status(), 201);

    // Request ids: the caller's kept and echoed, quoted by problems; a new
    // one when none was sent, or when the caller's is not printable.
    let bad = http
        .post(format!("{api}/v1/orders"))
        .bearer_auth(&up.stack.api_key)
        .header("x-request-id", "ops-test-1")
        .header("idempotency-key", uuid::Uuid::now_v7().to_string())
        .json(&serde_json::json!({"merchant_id": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.headers()["x-request-id"], "ops-test-1");
    let problem: serde_json::Value = bad.json().await.unwrap();
    assert_eq!(
        problem["instance"], "urn:tally:request:ops-test-1",
        "{problem}"
    );
    let unnamed = http
        .get(format!(
            "{dash}/v1/revenue/daily?from=2025-06-01&to=2025-05-01"
        ))
        .bearer_auth(&up.stack.reader_key)
        .send()
        .await
        .unwrap();
    assert_eq!(unnamed.status(), 400);
    let id = unnamed.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    let problem: serde_json::Value = unnamed.json().await.unwrap();
    assert_eq!(problem["instance"], format!("urn:tally:request:{id}"));
    let odd = http
        .get(format!("{dash}/assets/app.css"))
        .header("x-request-id", "a b")
        .send()
        .await
        .unwrap();
    assert_ne!(odd.headers()["x-request-id"], "a b");

    // Compression of the page's assets and of CSV downloads.
    for (path, key) in [
        ("/assets/chart.umd.min.js", None),
        ("/assets/app.js", None),
        (
            "/v1/revenue/daily?from=2025-06-01&to=2025-06-30&format=csv",
            Some(&up.stack.reader_key),
        ),
    ] {
        let mut req = http
            .get(format!("{dash}{path}"))
            .header("accept-encoding", "gzip");
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(
            res.headers()
                .get("content-encoding")
                .map(|v| v.to_str().unwrap()),
            Some("gzip"),
            "{path}"
        );
    }

    // The registry walk against the live scrape of both services.
    let mut live = BTreeMap::new();
    for base in [api, dash] {
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        live.extend(scraped(&text));
        assert!(text.contains("tally_build_info{version=\""), "{base}");
    }
    let everything = defined("up");
    assert!(everything.len() >= 35, "{everything:?}");
    for role in ["api", "ingest", "dashboards", "scheduler"] {
        let own = defined(role);
        assert!(own.contains_key("tally_build"), "{role}");
        assert!(own.contains_key("tally_pg_pool_connections"), "{role}");
        for (name, kind) in &own {
            assert_eq!(
                everything.get(name),
                Some(kind),
                "{role}: {name} is also in tally up"
            );
        }
    }
    for (name, kind) in &everything {
        assert_eq!(
            live.get(name),
            Some(kind),
            "{name} ({kind}) is defined but not scraped"
        );
        assert!(name.starts_with("tally_"), "{name}");
        match kind.as_str() {
            "counter" => assert!(!name.ends_with("_total"), "{name}: the encoder adds _total"),
            "gauge" | "histogram" => assert!(
                UNIT_SUFFIXES.iter().any(|s| name.ends_with(s)),
                "{name}: a {kind} ends in its unit ({UNIT_SUFFIXES:?})"
            ),
            "info" => {}
            other => panic!("{name}: unexpected type {other}"),
        }
    }
    let names = sample_names(&live);

    let rules = repo().join("deploy/prometheus/tally-alerts.yml");
    let used = metric_names(&std::fs::read_to_string(&rules).unwrap());
    assert!(used.len() >= 8, "{used:?}");
    for n in &used {
        assert!(
            names.contains(n),
            "the alert rules use {n}, which no service exports"
        );
    }
    promtool_check(&rules);

    let board: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/tally-operations.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let exprs = panel_expressions(&board);
    assert!(exprs.len() >= 20, "{}", exprs.len());
    let mut rules_file = String::from("groups:\n  - name: dashboard-panels\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        for n in metric_names(e) {
            assert!(
                names.contains(&n),
                "a panel uses {n}, which no service exports: {e}"
            );
        }
        let e = e.replace("$__rate_interval", "5m");
        rules_file.push_str(&format!(
            "      - record: tally_panel_{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    let panels = std::env::temp_dir().join(format!("tally-panels-{}.yml", uuid::Uuid::now_v7()));
    std::fs::write(&panels, rules_file).unwrap();
    promtool_check(&panels);
    let _ = std::fs::remove_file(&panels);
    let shown: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    for must in [
        "tally_ingest_freshness_lag_seconds",
        "tally_ingest_outbox_backlog_rows",
        "tally_ingest_dead_letter_rows",
        "tally_ingest_batch_size_events_bucket",
        "tally_ingest_batch_duration_seconds_bucket",
        "tally_rebuild_last_success_timestamp_seconds",
        "tally_reconcile_drift_minor",
        "tally_api_requests_total",
        "tally_api_request_duration_seconds_bucket",
        "tally_pg_pool_idle_connections",
    ] {
        assert!(shown.contains(must), "the dashboard shows {must}");
    }
    up.stop();
}

#[test]
fn metric_names_are_found_in_promql() {
    let found = metric_names(
        "sum(rate(tally_api_requests_total{status=~\"5..\"}[5m])) / max(xtally_no) + tally_",
    );
    assert_eq!(
        found,
        BTreeSet::from(["tally_api_requests_total".to_owned()])
    );
}
