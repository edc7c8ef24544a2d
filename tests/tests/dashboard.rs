#![allow(clippy::unwrap_used)]
//! The web dashboard in real headless Chromium against the whole pipeline: sign in, see the
//! simulated fleet, open a device, power-cycle it after confirming, and see the event arrive
//! in the live feed without reloading. Screenshots of the overview and the device page are
//! kept in `<target>/screenshots/`.

use std::path::PathBuf;
use std::time::Duration;

use homeport_tests::browser::Browser;
use homeport_tests::gateway::{Pipeline, ADMIN_PASSWORD};

fn screenshot_dir() -> PathBuf {
    std::env::var_os("HOMEPORT_SCREENSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
            target.join("screenshots")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_in_sees_the_fleet_and_power_cycles_a_device_in_chromium() {
    let p = Pipeline::start("dashboard", 12, 77, "acme").await;
    let gw = &p.gw;
    let base = format!("http://{}", gw.addr);
    let guid = p.guid(3);
    let long = Duration::from_secs(20);

    let mut b = Browser::start().await;
    b.goto(&format!("{base}/")).await;
    // A wrong password is refused on the page.
    b.type_into("#username", "admin").await;
    b.type_into("#password", "not-the-password").await;
    b.click("#signin").await;
    b.wait_text("#signin-error", long, |t| t.contains("Incorrect"))
        .await;
    b.eval("document.getElementById('password').value = ''")
        .await;
    b.type_into("#password", ADMIN_PASSWORD).await;
    b.click("#signin").await;

    // The overview counts the simulated fleet, per node, with the chart of connects.
    b.wait_text("#stat-connected", long, |t| t.trim() == "12")
        .await;
    assert_eq!(b.text_of("#stat-total").await.trim(), "12");
    assert_eq!(b.text_of("#stat-disconnected").await.trim(), "0");
    b.wait_text("#nodes", long, |t| t.contains("node-a")).await;
    b.wait_for("#chart", long).await;
    b.screenshot(&screenshot_dir().join("overview.png")).await;

    // The device list, searched down to one device, and its page.
    b.goto(&format!("{base}/#/devices")).await;
    b.wait_for("#device-table tr[data-guid]", long).await;
    b.type_into("#search", &guid[..8]).await;
    b.wait_for(&format!("#device-table tr[data-guid='{guid}']"), long)
        .await;
    b.click(&format!(
        "#device-table tr[data-guid='{guid}'] a.device-link"
    ))
    .await;
    b.wait_text("#power-state", long, |t| t.contains("On"))
        .await;
    b.wait_text("#amt-version", long, |t| {
        !t.is_empty() && !t.contains("Loading")
    })
    .await;
    b.wait_text("#hardware", long, |t| {
        !t.is_empty() && !t.contains("Loading")
    })
    .await;

    // Power cycle, confirmed in the dialog; the result and the live event follow.
    b.wait_for("#power-action option[value='5']", long).await;
    b.click("#power-action option[value='5']").await;
    b.click("#power-apply").await;
    b.wait_for("#confirm[open]", long).await;
    b.click("#confirm-yes").await;
    b.wait_text("#power-result", long, |t| t.contains("SUCCESS"))
        .await;
    let item = format!("#feed li[data-kind='PowerAction'][data-guid='{guid}']");
    b.wait_for(&item, long).await;
    // No reload happened: the page's own state survived (a marker set before is still there).
    b.screenshot(&screenshot_dir().join("device.png")).await;
    let reloads = b
        .eval("return performance.getEntriesByType('navigation').length")
        .await;
    assert_eq!(reloads, 1, "the page was not reloaded");
    b.quit().await;

    p.stop().await;
}
