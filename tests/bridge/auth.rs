//! NATS authentication: user and password, or a token, in the URL reach
//! the server; what relay shows of the URL (status lines, `relay status`,
//! events, errors) never has the secret; credentials the server refuses
//! are a configuration error (78) naming the server, not a silent retry.

use std::time::Duration;

use super::harness::{Bridge, Nats, Pair, ids, wait_for, wait_remote};
use crate::harness::Relay;

const PASSWORD: &str = "pw-s3cret-xyz";
const TOKEN: &str = "tok-s3cret-xyz";

/// Everything relay shows of its bridge on `relay`'s home, and the log of `bridge`.
fn shown(relay: &Relay, bridge: &Bridge) -> String {
    let status = relay.cmd(["status"]).success().stdout;
    let json = relay
        .cmd(["status", "--json", "--events", "1000"])
        .success()
        .stdout;
    let link = std::fs::read_to_string(relay.path("bridge/link.json")).unwrap_or_default();
    format!("{status}\n{json}\n{link}\n{}", bridge.log())
}

#[test]
fn user_and_password_in_the_url_get_through_and_the_password_is_never_shown() {
    let Some(nats) = Nats::start_args(&["--user", "relay", "--pass", PASSWORD]) else {
        return;
    };
    let url = format!("nats://relay:{PASSWORD}@127.0.0.1:{}", nats.port);
    let p = Pair::start_at(nats, &url, &["agent.a"], &["agent.b"], "{}", "{}");
    let id = p.a.cmd(["send", "agent.b", "{}"]).success().id();
    wait_for("the copy on B", || {
        ids(&p.b, "agent.b", "new").contains(&id).then_some(())
    });
    let seen = shown(&p.a, &p.ba);
    assert!(!seen.contains(PASSWORD), "the password is shown:\n{seen}");
    assert!(seen.contains("nats://relay:***@127.0.0.1"), "{seen}");
}

#[test]
fn a_token_in_the_url_gets_through_and_is_never_shown() {
    let Some(nats) = Nats::start_args(&["--auth", TOKEN]) else {
        return;
    };
    let url = format!("nats://{TOKEN}@127.0.0.1:{}", nats.port);
    let (a, b) = (Relay::new(), Relay::new());
    a.add(&["agent.a"]);
    b.add(&["agent.b"]);
    // From the environment this time.
    a.write_file("config.json", r#"{"bridge":{"host":"hosta"}}"#);
    let ba = Bridge::start_flagless(&a, &[("RELAY_NATS_URL", &url)]);
    let _bb = Bridge::start(&b, &url, "hostb");
    wait_remote(&a, "agent.b", "hostb");
    let seen = shown(&a, &ba);
    assert!(!seen.contains(TOKEN), "the token is shown:\n{seen}");
    assert!(seen.contains("nats://***@127.0.0.1"), "{seen}");
    drop(nats);
}

/// `relay bridge` with `url` on `relay`'s home exits by itself within a
/// few seconds: its exit code and what it printed.
fn refused(relay: &Relay, url: &str) -> (Option<i32>, String) {
    let mut b = Bridge::start(relay, url, "hosta");
    let code = b.wait_exit(Duration::from_secs(20));
    (code, b.log())
}

#[test]
fn credentials_the_server_refuses_are_a_config_error_naming_the_server() {
    let Some(nats) = Nats::start_args(&["--user", "relay", "--pass", PASSWORD]) else {
        return;
    };
    let r = Relay::new();
    let wrong = format!("nats://relay:wrong-pw-abc@127.0.0.1:{}", nats.port);
    let (code, log) = refused(&r, &wrong);
    assert_eq!(code, Some(78), "{log}");
    assert!(log.contains("authentication failed"), "{log}");
    assert!(
        log.contains(&format!("nats://relay:***@127.0.0.1:{}", nats.port)),
        "{log}"
    );
    assert!(log.contains("user 'relay'"), "{log}");
    assert!(
        !log.contains("wrong-pw-abc"),
        "the password is shown:\n{log}"
    );
    // None at all, where the server wants some.
    let none = format!("nats://127.0.0.1:{}", nats.port);
    let (code, log) = refused(&r, &none);
    assert_eq!(code, Some(78), "{log}");
    assert!(
        log.contains("authentication failed (the URL has no credentials)"),
        "{log}"
    );
}

#[test]
fn a_wrong_token_is_a_config_error_and_json_says_so_in_json() {
    let Some(nats) = Nats::start_args(&["--auth", TOKEN]) else {
        return;
    };
    let r = Relay::new();
    let mut b = Bridge::start_json(
        &r,
        &format!("nats://not-it-123@127.0.0.1:{}", nats.port),
        "hosta",
    );
    let code = b.wait_exit(Duration::from_secs(20));
    let log = b.log();
    assert_eq!(code, Some(78), "{log}");
    let last: serde_json::Value = log
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON error line:\n{log}"));
    assert_eq!(last["error"]["kind"], "config", "{log}");
    assert_eq!(last["error"]["code"], 78, "{log}");
    let msg = last["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("authentication failed (the token in the URL)"),
        "{msg}"
    );
    assert!(!log.contains("not-it-123"), "the token is shown:\n{log}");
}

#[test]
fn config_show_redacts_the_password_of_bridge_url_and_get_gives_it() {
    let r = Relay::new();
    r.add(&["agent.a"]);
    r.write_file(
        "config.json",
        format!(r#"{{"bridge":{{"url":"nats://relay:{PASSWORD}@h:4222"}}}}"#),
    );
    for args in [&["config", "show"][..], &["config", "show", "--json"][..]] {
        let out = r.cmd(args).success().stdout;
        assert!(!out.contains(PASSWORD), "{out}");
        assert!(out.contains("nats://relay:***@h:4222"), "{out}");
    }
    let got = r.cmd(["config", "get", "bridge.url"]).success().stdout;
    assert!(got.contains(PASSWORD), "{got}");
}

#[test]
fn credentials_refused_on_a_reconnect_are_a_warning_once_and_it_keeps_trying() {
    let conf = |pw: &str| format!("authorization {{ user: relay, password: {pw} }}\n");
    let Some(mut nats) = Nats::start_conf(&conf(PASSWORD)) else {
        return;
    };
    let r = Relay::new();
    r.add(&["agent.a"]);
    let url = format!("nats://relay:{PASSWORD}@127.0.0.1:{}", nats.port);
    let mut b = Bridge::start(&r, &url, "hosta");
    wait_for("the bridge to connect", || {
        b.log().contains("connected to NATS").then_some(())
    });
    // The server comes back with another password: it refuses the
    // bridge on every reconnect.
    nats.set_conf(&conf("another-one"));
    nats.kill();
    nats.up();
    wait_for("the warning", || {
        b.log()
            .contains("refuses the bridge's credentials on reconnect")
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let log = b.log();
    assert_eq!(
        log.matches("refuses the bridge's credentials").count(),
        1,
        "{log}"
    );
    assert!(log.contains("authentication failed (user 'relay'"), "{log}");
    assert!(!log.contains(PASSWORD), "{log}");
    // Still running, and stops cleanly.
    assert_eq!(b.stop(), Some(0), "{}", b.log());
}
