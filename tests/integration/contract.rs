//! Both HTTP contracts, checked by a schema-based generator against the
//! running services: Schemathesis (installed by `scripts/setup`) reads
//! each `/openapi.json`, generates requests from it (examples, boundary
//! values, then random ones) and fails on a 5xx, a status the document
//! does not list, a body or content type that does not match it, and a
//! schema-valid request refused with `400`. The read API's rules across
//! parameters are honoured by `tests/contract/hooks.py`.

use std::path::PathBuf;
use std::process::Command;

use tally_tests::{Ingest, order_body, spawn_app};

/// Where `scripts/setup --contract` puts Schemathesis
/// (`TALLY_CONTRACT_VENV` moves it, as it moves the install).
fn schemathesis() -> PathBuf {
    if let Some(venv) = std::env::var_os("TALLY_CONTRACT_VENV") {
        return PathBuf::from(venv).join("bin/schemathesis");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/tally/contract-venv/bin/schemathesis")
}

fn run(doc_url: &str, key: &str, max_span_days: i64) {
    let bin = schemathesis();
    assert!(
        bin.exists(),
        "{} is missing: run ./scripts/setup --contract (it installs Schemathesis for this test)",
        bin.display()
    );
    // Read at run time, like tidy.rs: a test binary can be reused from
    // another checkout that shares the target directory.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo test");
    let hooks = PathBuf::from(manifest).join("contract");
    let out = Command::new(&bin)
        .arg("--config-file")
        .arg(hooks.join("schemathesis.toml"))
        .arg("run")
        .arg(doc_url)
        .args(["--header", &format!("Authorization: Bearer {key}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance,positive_data_acceptance",
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "150", "--seed", "20261202"])
        .args(["--workers", "2", "--continue-on-failure", "--no-color"])
        .args(["--generation-database", "none"])
        // Its crash cache goes to a directory of its own, not the checkout.
        .current_dir(std::env::temp_dir())
        .env("PYTHONPATH", &hooks)
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("TALLY_CONTRACT_MAX_SPAN_DAYS", max_span_days.to_string())
        .output()
        .expect("running schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("generated") || l.contains("passed") || l.contains("failures"))
        .collect();
    println!("{doc_url}: {}", summary.join(" | "));
    assert!(
        out.status.success(),
        "the contract of {doc_url} does not hold:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_http_contracts_hold_under_generated_requests() {
    let app = spawn_app(Ingest::Running).await;
    for i in 0..5 {
        app.place(&order_body(&format!("m-{i}"), "EUR", &[("a", 1, 100 + i)]))
            .await;
    }
    let (api, dash, key) = (
        app.api_url.clone(),
        app.dashboards_url.clone(),
        app.api_key.clone(),
    );
    tokio::task::spawn_blocking(move || {
        run(&format!("{api}/openapi.json"), &key, 366);
        run(&format!("{dash}/openapi.json"), &key, 366);
    })
    .await
    .unwrap();
    app.stop().await;
}
