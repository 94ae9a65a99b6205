//! The dashboard page in a real browser: headless Chromium driven through
//! chromedriver (WebDriver). Orders go in through the command API, the real
//! ingest carries them to ClickHouse, and the numbers the page renders must
//! equal the JSON API's. A screenshot is kept as a test artifact.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`./scripts/setup
//! --browser`, which `./scripts/test` runs); `TALLY_CHROMEDRIVER` overrides
//! the driver's path.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt;
use serde_json::{Value, json};
use tally_dashboards::views::{DailyResponse, SummaryResponse, TopResponse};
use tally_tests::{Ingest, TestApp, ingest_drained, init_logs, order_body, spawn_app};

/// A chromedriver of the test's own, on a free port; killed on drop.
struct Driver {
    _child: tokio::process::Child,
    url: String,
}

async fn start_driver() -> Driver {
    let bin = std::env::var("TALLY_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let child = tokio::process::Command::new(&bin)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start `{bin}` ({e}): run ./scripts/setup --browser (installs chromium and chromium-driver)")
        });
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let ready = tally_tests::eventually(Duration::from_secs(20), || async {
        let s: Value = http
            .get(format!("{url}/status"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        s["value"]["ready"].as_bool()?.then_some(())
    })
    .await;
    assert!(ready.is_some(), "chromedriver did not become ready in 20 s");
    Driver { _child: child, url }
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,2000", "--lang=en-US"],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session through chromedriver")
}

async fn wait_for_state(c: &Client, state: &str) {
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(&format!("body[data-state='{state}']")))
        .await
        .unwrap_or_else(|e| panic!("the page never reached state `{state}`: {e}"));
}

async fn text(c: &Client, css: &str) -> String {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

const DAY: &[time::format_description::FormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]");

/// The page groups thousands with commas; the API's strings have none.
fn ungrouped(s: &str) -> String {
    s.replace(',', "")
}

async fn place_orders(app: &TestApp) {
    let mut n = 0;
    let mut key = || {
        n += 1;
        format!("browser-{n}")
    };
    let orders = [
        ("m-north", "EUR", 3, 1_250_000), // 37 500.00: shows the grouping
        ("m-north", "EUR", 1, 4_999),
        ("m-south", "EUR", 2, 1_500),
        ("m-east", "EUR", 1, 700),
        ("m-west", "USD", 4, 2_500),
    ];
    for (i, (merchant, currency, qty, price)) in orders.into_iter().enumerate() {
        let id = app
            .place(&order_body(merchant, currency, &[("sku", qty, price)]))
            .await;
        let total = qty * price;
        let path = |what: &str| format!("/v1/orders/{id}/{what}");
        if i == 3 {
            let r = app
                .command(&path("cancellation"), &json!({"reason": "test"}), &key())
                .await;
            assert_eq!(r.status(), 202, "cancel");
            continue;
        }
        let r = app
            .command(&path("payments"), &json!({"amount_minor": total}), &key())
            .await;
        assert_eq!(r.status(), 202, "capture");
        if i == 0 {
            let ship = json!({"carrier": "DHL", "tracking_number": "T1"});
            assert_eq!(
                app.command(&path("shipments"), &ship, &key())
                    .await
                    .status(),
                202
            );
            let refund = json!({"amount_minor": 120_000, "reason": "damaged"});
            assert_eq!(
                app.command(&path("refunds"), &refund, &key())
                    .await
                    .status(),
                202
            );
        }
    }
}

async fn api<T: serde::de::DeserializeOwned>(app: &TestApp, path: &str) -> T {
    let r = app.dash(path).await;
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

/// Where the screenshot goes: beside the build, kept after the run.
fn artifact(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Compares every tile, the daily table and the top-merchants table of the
/// rendered page with the JSON API for `currency`.
async fn assert_page_matches_api(c: &Client, app: &TestApp, currency: &str) {
    let range = format!(
        "from={}&to={}",
        c.find(Locator::Id("from"))
            .await
            .unwrap()
            .prop("value")
            .await
            .unwrap()
            .unwrap(),
        c.find(Locator::Id("to"))
            .await
            .unwrap()
            .prop("value")
            .await
            .unwrap()
            .unwrap()
    );
    let summary: SummaryResponse = api(app, &format!("/v1/revenue/summary?{range}")).await;
    let cur = summary
        .currencies
        .iter()
        .find(|s| s.currency == currency)
        .unwrap_or_else(|| panic!("{currency} in the summary"));
    for m in &cur.measures {
        let shown = text(c, &format!("#tile-{} .value", m.measure)).await;
        let expected = if m.unit == "minor" {
            format!("{currency} {}", m.current_formatted)
        } else {
            m.current_formatted.clone()
        };
        assert_eq!(ungrouped(&shown), expected, "tile {}", m.measure);
    }
    let net = cur.measures.iter().find(|m| m.measure == "net").unwrap();
    assert_eq!(
        ungrouped(&text(c, "#daily-total-net").await),
        net.current_formatted
    );

    let daily: DailyResponse = api(
        app,
        &format!("/v1/revenue/daily?{range}&currency={currency}"),
    )
    .await;
    let rows = c
        .find_all(Locator::Css("#daily-table tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), daily.rows.len());
    for (tr, r) in rows.iter().zip(&daily.rows) {
        assert_eq!(
            tr.attr("data-day").await.unwrap().as_deref(),
            Some(r.day.as_str())
        );
        let cells = tr.find_all(Locator::Css("td")).await.unwrap();
        assert_eq!(
            ungrouped(&cells[1].text().await.unwrap()),
            r.orders_placed.to_string()
        );
        assert_eq!(ungrouped(&cells[4].text().await.unwrap()), r.gross);
        assert_eq!(ungrouped(&cells[5].text().await.unwrap()), r.captured);
        assert_eq!(ungrouped(&cells[6].text().await.unwrap()), r.refunded);
        assert_eq!(ungrouped(&cells[7].text().await.unwrap()), r.net);
    }
    let points = c
        .execute(
            "return Chart.getChart('daily-chart').data.datasets.map(d => d.data.length)",
            vec![],
        )
        .await
        .unwrap();
    let days = (time::Date::parse(&daily.to, DAY).unwrap()
        - time::Date::parse(&daily.from, DAY).unwrap())
    .whole_days()
        + 1;
    assert_eq!(
        points,
        json!(vec![days; 3]),
        "the chart has a point for every day of the range"
    );
    let summary_rows = c
        .find_all(Locator::Css("#summary-table tbody tr"))
        .await
        .unwrap();
    assert_eq!(summary_rows.len(), summary.currencies.len());

    let top: TopResponse = api(
        app,
        &format!("/v1/merchants/top?{range}&currency={currency}"),
    )
    .await;
    let rows = c
        .find_all(Locator::Css("#top-table tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), top.rows.len());
    for (tr, r) in rows.iter().zip(&top.rows) {
        let cells = tr.find_all(Locator::Css("td")).await.unwrap();
        assert_eq!(cells[1].text().await.unwrap(), r.merchant_id);
        assert_eq!(ungrouped(&cells[2].text().await.unwrap()), r.net);
        assert_eq!(
            cells[3].text().await.unwrap(),
            r.share_percent
                .as_ref()
                .map_or("–".into(), |s| format!("{s} %"))
        );
    }
    let bars = c
        .execute("return Chart.getChart('top-chart').data.labels", vec![])
        .await
        .unwrap();
    let ids: Vec<&str> = top.rows.iter().map(|r| r.merchant_id.as_str()).collect();
    assert_eq!(bars, json!(ids));
}

#[tokio::test]
async fn the_dashboard_renders_the_same_totals_as_the_json_api() {
    init_logs();
    let app = spawn_app(Ingest::Running).await;
    place_orders(&app).await;
    assert!(
        ingest_drained(&app.db.pg, Duration::from_secs(20)).await,
        "ingest drained"
    );
    let driver = start_driver().await;
    let c = browser(&driver).await;
    // Close the session even when an assertion fails: killing chromedriver
    // alone would leave Chromium running.
    let checks = std::panic::AssertUnwindSafe(check_page(&c, &app))
        .catch_unwind()
        .await;
    let closed = c.close().await;
    if let Err(panic) = checks {
        std::panic::resume_unwind(panic);
    }
    closed.unwrap();
    app.stop().await;
}

/// Picks `code` in the currency list as a user would, and waits for the
/// page to load it.
async fn choose_currency(c: &Client, code: &str) {
    c.execute(
        "const s = document.getElementById('currency'); s.value = arguments[0]; \
         s.dispatchEvent(new Event('change'));",
        vec![json!(code)],
    )
    .await
    .unwrap();
    wait_for_state(c, "ready").await;
}

/// Everything the test looks at in the browser.
async fn check_page(c: &Client, app: &TestApp) {
    // Without a key the page asks for one and shows no data.
    c.goto(&format!("{}/", app.dashboards_url)).await.unwrap();
    wait_for_state(c, "signin").await;
    let signin = c.find(Locator::Id("signin")).await.unwrap();
    assert!(signin.is_displayed().await.unwrap());

    // With one (as `tally up` prints it), the dashboard loads.
    c.goto(&format!("{}/?open#key={}", app.dashboards_url, app.api_key))
        .await
        .unwrap();
    wait_for_state(c, "ready").await;
    assert!(
        !c.current_url().await.unwrap().as_str().contains("key="),
        "the key leaves the address bar"
    );
    let badge = c.find(Locator::Id("freshness")).await.unwrap();
    assert!(badge.text().await.unwrap().starts_with("data as of "));
    assert_eq!(
        badge.attr("class").await.unwrap().as_deref(),
        Some("badge fresh")
    );

    // EUR comes first; its totals are exact down to the cent.
    assert_page_matches_api(c, app, "EUR").await;
    assert_eq!(
        ungrouped(&text(c, "#tile-net .value").await),
        "EUR 36379.99"
    );
    assert_eq!(text(c, "#tile-orders_cancelled .value").await, "1");
    let png = c.screenshot().await.unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    let path = artifact("dashboard-eur.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("screenshot: {}", path.display());

    // The badge follows the watermark by itself (it polls every 5 s).
    let before = badge.attr("data-complete-up-to").await.unwrap();
    app.place(&order_body("m-late", "EUR", &[("sku", 1, 100)]))
        .await;
    let moved = tally_tests::eventually(Duration::from_secs(15), || async {
        let now = badge.attr("data-complete-up-to").await.ok()?;
        (now != before).then_some(now)
    })
    .await;
    assert!(moved.is_some(), "the badge still says {before:?}");

    // Switching currency shows that currency alone.
    choose_currency(c, "USD").await;
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#tile-net .value"))
        .await
        .unwrap();
    assert_page_matches_api(c, app, "USD").await;
    assert_eq!(ungrouped(&text(c, "#tile-net .value").await), "USD 100.00");

    // Clicking a merchant in the ranking lists its recent orders: the
    // order API's page for that merchant, currency and range.
    choose_currency(c, "EUR").await;
    let first = c
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#top-table tbody tr"))
        .await
        .unwrap();
    let merchant = first.attr("data-merchant").await.unwrap().unwrap();
    first.click().await.unwrap();
    let value = |id: &'static str| async move {
        c.find(Locator::Id(id))
            .await
            .unwrap()
            .prop("value")
            .await
            .unwrap()
            .unwrap()
    };
    let (from, to) = (value("from").await, value("to").await);
    let page: Value = api(
        app,
        &format!("/v1/merchants/{merchant}/orders?currency=EUR&from={from}&to={to}&limit=25"),
    )
    .await;
    let want: Vec<&str> = page["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].as_str().unwrap())
        .collect();
    assert!(!want.is_empty(), "{merchant} has EUR orders: {page}");
    let shown = tally_tests::eventually(Duration::from_secs(10), || async {
        let rows = c.find_all(Locator::Css("#mo-table tbody tr")).await.ok()?;
        let mut ids = Vec::new();
        for tr in rows {
            let cells = tr.find_all(Locator::Css("td")).await.ok()?;
            ids.push(cells.get(1)?.text().await.ok()?);
        }
        (ids.len() == want.len()).then_some(ids)
    })
    .await
    .expect("the drill-down shows the merchant's orders");
    assert_eq!(shown, want, "{merchant}'s orders, newest first");
    assert_eq!(text(c, "#mo-merchant").await, merchant);
    std::fs::write(
        artifact("dashboard-drill-down.png"),
        c.screenshot().await.unwrap(),
    )
    .unwrap();

    // A bad merchant filter shows the API's explanation, not a blank page.
    c.execute(
        "document.getElementById('merchants').value = 'bad!id'; \
         document.querySelector('#filters button[type=submit]').click();",
        vec![],
    )
    .await
    .unwrap();
    wait_for_state(c, "error").await;
    assert!(text(c, "#error").await.starts_with("merchant_id:"));
    std::fs::write(
        artifact("dashboard-error.png"),
        c.screenshot().await.unwrap(),
    )
    .unwrap();
}
