//! The /dashboard page rendered by headless Chromium (Debian's `chromium`; the test says so and
//! passes without checking when it is not installed): a screenshot of the split under load, and
//! the page's numbers checked against the metrics.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_split_the_metrics_count() {
    let Some(browser) = chromium() else {
        eprintln!("chromium is not installed: skipping the dashboard rendering test");
        return;
    };
    let v1 = upstream("v1", Duration::ZERO).await;
    let v2 = upstream("v2", Duration::ZERO).await;
    let config = ConfigDir::new(&(registry(&[&v1, &v2]) + &split(&[("v1", 90), ("v2", 10)])));
    let proxy = start_proxy(&config).await;
    let counts = tally(&client(proxy.outbound, false), 2_000, 8).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let url = format!("http://{}/dashboard", proxy.admin);
    // Kept in the target directory, so that a developer can look at it.
    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let common_flags = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--virtual-time-budget=5000",
    ];
    let run = |extra: Vec<String>| {
        let browser = browser.to_owned();
        let args: Vec<String> = common_flags
            .iter()
            .map(|s| s.to_string())
            .chain(extra)
            .collect();
        tokio::task::spawn_blocking(move || {
            Command::new(browser)
                .args(&args)
                .env("HOME", std::env::temp_dir())
                .output()
                .expect("chromium runs")
        })
    };
    let shot = run(vec![
        format!("--screenshot={}", screenshot.display()),
        "--window-size=1000,500".into(),
        url.clone(),
    ]);
    let dom = run(vec!["--dump-dom".into(), url]);
    let (shot, dom) = (shot.await.unwrap(), dom.await.unwrap());
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let png = std::fs::read(&screenshot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 5_000,
        "a real PNG ({} bytes)",
        png.len()
    );

    // The page's split for hello, against the metrics' (and the requests each version served).
    let dom = String::from_utf8_lossy(&dom.stdout).to_string();
    let share_of = |version: &str| -> f64 {
        let marker = format!(
            "data-service=\"hello.default.svc.cluster.local\" data-version=\"{version}\" data-share=\""
        );
        let at = dom
            .find(&marker)
            .unwrap_or_else(|| panic!("no row for {version} in {dom}"))
            + marker.len();
        dom[at..].split('"').next().unwrap().parse().unwrap()
    };
    let served_v1 = 100.0 * counts["v1"] as f64 / 2_000.0;
    let (page_v1, page_v2) = (share_of("v1"), share_of("v2"));
    assert!(
        (page_v1 - served_v1).abs() <= 0.2,
        "page {page_v1}% vs served {served_v1}%"
    );
    assert!((page_v1 + page_v2 - 100.0).abs() <= 0.2);
    assert!((88.0..=92.0).contains(&page_v1), "{page_v1}");
    proxy.shutdown().await;
}
