//! The chat page at `GET /` in headless Chromium, driven over the DevTools protocol: a sent
//! message shows a streamed answer with tool and handoff markers and the speaking agent.
//!
//! Needs Debian's `chromium` (`apt-get install -y chromium`). Without it the test says so
//! and passes as skipped, unless `CALLBOARD_REQUIRE_CHROMIUM=1`, when it fails.

mod common;

use common::browser::Browser;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_page_streams_an_answer_in_headless_chromium() {
    let Some((_browser, mut cdp)) = Browser::launch("chat", 1200, 800).await else {
        return;
    };
    let srv = start(TWO_TENANTS).await;
    let url = format!(
        "http://{}/?access_token=key-acme&session=browser-1",
        srv.addr
    );
    cdp.navigate(&url).await;
    cdp.wait_for(
        "document.getElementById('status') && document.getElementById('status').textContent === 'connected' && document.getElementById('agent').options.length > 0",
        "the page to connect",
    )
    .await;
    cdp.eval(
        "document.getElementById('input').value = 'What is the weather in Oslo?'; document.getElementById('send').click(); true",
    )
    .await;
    cdp.wait_for(
        "document.body.dataset.state === 'done'",
        "the streamed answer",
    )
    .await;
    let text = cdp.eval("document.getElementById('log').innerText").await;
    let text = text.as_str().unwrap();
    eprintln!("chat log:\n{text}");
    assert!(text.contains("What is the weather in Oslo?"), "{text}");
    assert!(text.contains("[handoff -> Weather]"), "{text}");
    assert!(text.contains("[tool: get_weather]"), "{text}");
    assert!(
        text.contains("Here is the forecast you asked for"),
        "{text}"
    );
    assert!(text.contains("Oslo"), "{text}");
    assert!(text.contains("[done by Weather]"), "{text}");
    // The answer links to its trace in the trace browser.
    let link = cdp
        .eval("(document.querySelector('a.trace-link') || {}).href || ''")
        .await;
    let link = link.as_str().unwrap_or("");
    assert!(link.contains("/traces?trace=trace_"), "{link}");
    assert!(link.contains("access_token=key-acme"), "{link}");
    // The answer arrived as many token frames, not one message.
    let tokens = srv.core.metrics_text();
    assert!(
        tokens.contains("callboard_runs_finished_total 1"),
        "{tokens}"
    );
}
