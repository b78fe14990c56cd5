//! Config reloads under load: a valid change swaps in with no failed request; an invalid one
//! is rejected, reported on the admin endpoint, and the old split keeps serving.

mod common;

use common::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_split_changes_from_90_10_to_50_50_without_a_failed_request() {
    let v1 = upstream("v1", Duration::ZERO).await;
    let v2 = upstream("v2", Duration::ZERO).await;
    let registry = registry(&[&v1, &v2]);
    let config = ConfigDir::new(&(registry.clone() + &split(&[("v1", 90), ("v2", 10)])));
    let proxy = start_proxy(&config).await;
    let c = client(proxy.outbound, false);

    // Background load across every change below; every answer must be a 200.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (c, stop, failures, served) =
            (c.clone(), stop.clone(), failures.clone(), served.clone());
        load.push(tokio::spawn(async move {
            // Bounded: at most 100k requests per worker even if `stop` never comes.
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let (status, _, _) = get(&c, "hello", "/", &[]).await;
                served.fetch_add(1, Ordering::Relaxed);
                if status != 200 {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    let before = tally(&c, 2_000, 4).await;
    assert!(
        (86.0..=94.0).contains(&percent(&before, "v1")),
        "{before:?}"
    );

    let version = proxy.store().version();
    config.replace(&(registry.clone() + &split(&[("v1", 50), ("v2", 50)])));
    wait_for("the 50/50 config", || proxy.store().version() > version).await;
    let after = tally(&c, 4_000, 4).await;
    assert!((46.0..=54.0).contains(&percent(&after, "v1")), "{after:?}");

    // An invalid rewrite: two destinations that both weigh 0, and a bad regex.
    let serving = proxy.store().version();
    let bad = registry.clone()
        + &split(&[("v1", 0), ("v2", 0)])
        + "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: { name: other }\nspec:\n  hosts: [other.example.com]\n  http:\n  - match: [{ uri: { regex: \"(\" } }]\n    route: [{ destination: { host: hello } }]\n";
    config.replace(&bad);
    wait_for("the rejection", || proxy.store().last_rejection().is_some()).await;
    let rejection = proxy.store().last_rejection().unwrap();
    assert_eq!(rejection.serving_version, serving);
    assert_eq!(
        proxy.store().version(),
        serving,
        "the last good config keeps serving"
    );
    let errors = rejection.errors.join("\n");
    assert!(
        errors.contains(
            "VirtualService default/hello: spec.http[0].route: weights sum to 0: with several destinations at least one weight must be positive"
        ),
        "{errors}"
    );
    assert!(
        errors.contains(
            "VirtualService default/other: spec.http[0].match[0].uri.regex: invalid regex"
        ),
        "{errors}"
    );

    // The admin endpoint shows the live version and the rejected change.
    let (status, dump, _) = get(
        &client(proxy.admin, false),
        "localhost",
        "/config_dump",
        &[],
    )
    .await;
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["version"], serving);
    assert!(
        dump["last_rejection"]["errors"][0]
            .as_str()
            .unwrap()
            .contains("weights sum to 0"),
        "{dump}"
    );

    let still = tally(&c, 4_000, 4).await;
    assert!((46.0..=54.0).contains(&percent(&still, "v1")), "{still:?}");

    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert!(served.load(Ordering::Relaxed) > 0);
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "no request failed across the reloads"
    );
    proxy.shutdown().await;
}
