//! The panel in a real headless browser (Debian's chromium): after a breaker
//! trips, a sender hits its hard rate limit and a claim's lease runs out,
//! the rendered page shows the open pair, the sender's hard hits, the
//! `rate_limit_hard` event, the dead letters and the redelivery with their
//! envelopes.
//!
//! A screenshot of the same page (for people):
//! `chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run
//!  --disable-background-networking --disable-component-update --disable-sync
//!  --user-data-dir=$(mktemp -d) --virtual-time-budget=3000 --window-size=1400,1400
//!  --timeout=4000 --screenshot=panel.png 'http://127.0.0.1:4242/?nostream=1'`

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{Server, known_state, scratch_dir, secs};
use crate::harness::Relay;

/// `chromium` (or `chromium-browser`) on PATH.
fn find_chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|n| dir.join(n)))
        .find(|p| p.is_file())
}

/// The DOM of `url` after its fetches, as chromium dumps it.
fn dump_dom(chromium: &Path, r: &Relay, url: &str) -> String {
    let profile = scratch_dir(r, "chromium-profile");
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", profile.display()),
            "--virtual-time-budget=3000",
            "--dump-dom",
            url,
        ])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", r.user_home())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium.display()));
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut s);
            }
            s
        })
    };
    let out = read(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = read(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + secs(60);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromium did not finish within 60 s");
            }
        }
    };
    let dom = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    assert!(
        status.success() && dom.contains("</html>"),
        "chromium failed ({status}):\n{stderr}\n--- stdout:\n{dom}"
    );
    dom
}

/// The inner HTML of the `<section>` titled `title`.
#[track_caller]
fn section<'a>(dom: &'a str, title: &str) -> &'a str {
    let head = format!("<h2>{title}</h2>");
    let start = dom
        .find(&head)
        .unwrap_or_else(|| panic!("no section {title:?} in the DOM:\n{dom}"));
    let rest = &dom[start..];
    &rest[..rest.find("</section>").unwrap_or(rest.len())]
}

/// The table rows of `html`, each as its cells' inner HTML.
fn rows(html: &str) -> Vec<Vec<String>> {
    html.split("<tr>")
        .skip(1)
        .map(|row| {
            let row = row.split("</tr>").next().unwrap_or_default();
            row.split("<td")
                .skip(1)
                .map(|cell| {
                    let cell = cell.split_once('>').map_or("", |(_, c)| c);
                    cell.split("</td>").next().unwrap_or_default().to_string()
                })
                .collect()
        })
        .filter(|cells: &Vec<String>| !cells.is_empty())
        .collect()
}

#[test]
fn the_panel_shows_breakers_limits_dead_letters_and_redeliveries_in_chromium() {
    let Some(chromium) = find_chromium() else {
        crate::harness::skip(
            "the_panel_shows_breakers_limits_dead_letters_and_redeliveries_in_chromium",
            "chromium is not installed (apt-get install chromium)",
        );
        return;
    };
    let r = Relay::new();
    // The real time of day, so the page reads naturally, but pinned for
    // every command and for the server: a slow run (the machine under load)
    // must not let agent.x's bucket refill a token before the page is read.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
    let first_dead = known_state(&r, Some(now));
    // A claim made 40 minutes ago: its 30-minute lease ran out, and the
    // next sweep (gc) gives it back for a second delivery.
    r.add(&["agent.r"]);
    let again = r
        .cmd(["send", "agent.r", "{\"job\":7}", "--from", "agent.a"])
        .at(now - 40 * 60_000)
        .success()
        .id();
    r.cmd(["recv", "agent.r"]).at(now - 40 * 60_000).success();
    r.cmd(["gc"]).at(now).success();
    let now_env = now.to_string();
    let s = Server::start(
        &r,
        "127.0.0.1:0",
        &[],
        &[("RELAY_FAKE_NOW_MS", now_env.as_str())],
    );
    let dom = dump_dom(&chromium, &r, &format!("{}?nostream=1", s.url));

    assert!(
        dom.contains(r#"id="err" hidden"#),
        "the page reported an error:\n{dom}"
    );
    let breakers = rows(section(&dom, "Circuit breakers"));
    let pair = breakers
        .iter()
        .find(|cells| cells.first().is_some_and(|c| c == "agent.a → agent.b"))
        .unwrap_or_else(|| panic!("no agent.a → agent.b row in:\n{dom}"));
    assert_eq!(
        pair[1], r#"<span class="pill open">open</span>"#,
        "{pair:?}"
    );
    assert_eq!(pair[2], "5", "consecutive failures: {pair:?}");

    let limits = rows(section(&dom, "Rate limits"));
    let x = limits
        .iter()
        .find(|cells| cells.first().is_some_and(|c| c == "agent.x"))
        .unwrap_or_else(|| panic!("no agent.x rate-limit row in:\n{dom}"));
    // sender, tokens, soft hits, hard hits, last hit
    assert_eq!(x[1], "0/2", "{x:?}");
    assert_eq!(x[3], "1", "hard hits: {x:?}");

    let events = rows(section(&dom, "Recent events"));
    assert!(
        events
            .iter()
            .any(|cells| cells.get(1).is_some_and(|c| c == "rate_limit_hard")
                && cells.get(2).is_some_and(|c| c == "agent.x")),
        "no rate_limit_hard event of agent.x in:\n{dom}"
    );
    assert!(
        events
            .iter()
            .any(|cells| cells.get(1).is_some_and(|c| c == "breaker_opened")),
        "no breaker_opened event in:\n{dom}"
    );

    let dead = rows(section(&dom, "Dead letters"));
    let d = dead
        .iter()
        .find(|cells| cells.first().is_some_and(|c| *c == first_dead))
        .unwrap_or_else(|| panic!("no dead letter {first_dead} in:\n{dom}"));
    // id, endpoint, from, code, reason, when, envelope
    assert_eq!(
        (d[1].as_str(), d[2].as_str()),
        ("agent.b", "agent.a"),
        "{d:?}"
    );
    assert_eq!(d[4], "handler exited with status 1", "{d:?}");
    assert!(
        d[6].contains("<details>") && d[6].contains(&format!("\"id\": \"{first_dead}\"")),
        "the envelope is on the page: {d:?}"
    );

    let redelivered = rows(section(&dom, "Redeliveries"));
    let rd = redelivered
        .iter()
        .find(|cells| cells.get(1).is_some_and(|c| c == "redelivered"))
        .unwrap_or_else(|| panic!("no redelivery in:\n{dom}"));
    // when, event, endpoint, message, delivery, now in, envelope
    assert_eq!(
        (rd[2].as_str(), rd[3].as_str()),
        ("agent.r", again.as_str()),
        "{rd:?}"
    );
    assert_eq!((rd[4].as_str(), rd[5].as_str()), ("1", "new"), "{rd:?}");
    assert!(
        rd[6].contains("\"deliveryCount\": 1") && rd[6].contains("\"job\": 7"),
        "the redelivered envelope is on the page: {rd:?}"
    );

    let endpoints = rows(section(&dom, "Endpoints and backpressure"));
    let c = endpoints
        .iter()
        .find(|cells| cells.first().is_some_and(|c| c == "agent.c"))
        .unwrap_or_else(|| panic!("no agent.c row in:\n{dom}"));
    assert_eq!(c[1], "4/4", "{c:?}");
    assert!(
        c[2].contains(r#"class="bar full""#),
        "a full mailbox shows a full bar: {c:?}"
    );
}
