//! `relay config`: `path`, `show` (value and source of every key), `get`,
//! `set` (validated, atomic, preserving the rest of the file; an invalid
//! knob exits 78 and leaves the file byte-identical) and `validate`.

use std::fs;

use serde_json::{Value, json};

use crate::harness::Relay;

/// The keys of the effective config this suite covers, with their defaults.
const DEFAULTS: [(&str, &str); 20] = [
    ("maxPayloadBytes", "1048576"),
    ("reliability.rateLimit.enabled", "true"),
    ("reliability.rateLimit.windowSecs", "60"),
    ("reliability.rateLimit.maxPerWindow", "100"),
    ("reliability.rateLimit.burst", "null"),
    ("reliability.rateLimit.softLimitRatio", "0.8"),
    ("reliability.rateLimit.perSenderOverrides", "{}"),
    ("reliability.circuitBreaker.enabled", "true"),
    ("reliability.circuitBreaker.failureThreshold", "5"),
    ("reliability.circuitBreaker.cooldownMs", "30000"),
    ("reliability.circuitBreaker.halfOpenProbeCount", "1"),
    ("reliability.circuitBreaker.successToClose", "2"),
    ("reliability.circuitBreaker.cooldownBackoff", "1.0"),
    ("reliability.circuitBreaker.maxCooldownMs", "300000"),
    ("reliability.backpressure.enabled", "true"),
    ("reliability.backpressure.maxMailboxSize", "1000"),
    ("reliability.backpressure.pressureWarningAt", "0.8"),
    ("reliability.backpressure.shedLowAt", "0.9"),
    ("reliability.backpressure.shedBackgroundAt", "0.75"),
    ("reliability.backpressure.priorityHeadroom", "0.1"),
];

/// `config show --json` as key -> (value, source).
fn settings(r: &Relay) -> Vec<(String, Value, String)> {
    let out = r.cmd(["config", "show", "--json"]).success();
    let v = out.json();
    let Some(rows) = v["settings"].as_array() else {
        out.fail("config show --json has no settings array")
    };
    rows.iter()
        .map(|s| {
            (
                s["key"].as_str().unwrap_or_default().to_string(),
                s["value"].clone(),
                s["source"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn path_prints_the_config_file_of_the_home() {
    let r = Relay::new();
    let expected = format!("{}\n", r.path("config.json").display());
    r.cmd(["config", "path"]).success().stdout_is(&expected);
    let other = r.scratch().join("elsewhere");
    r.cmd(["config", "path", "--home"])
        .args([&other])
        .success()
        .stdout_is(&format!("{}\n", other.join("config.json").display()));
    assert!(!r.path("config.json").exists(), "path creates no file");
}

#[test]
fn show_lists_every_key_with_its_value_and_source() {
    let r = Relay::new();
    let rows = settings(&r);
    for (key, default) in DEFAULTS {
        let Some((_, value, source)) = rows.iter().find(|(k, _, _)| k == key) else {
            panic!("config show --json lacks {key}: {rows:?}");
        };
        let default: Value = serde_json::from_str(default).unwrap_or_default();
        assert_eq!(value, &default, "{key}");
        assert_eq!(source, "default", "{key}");
    }
    assert!(
        rows.iter().all(|(_, _, source)| source == "default"),
        "no file, every source is default: {rows:?}"
    );

    r.write_file(
        "config.json",
        r#"{"maxPayloadBytes":5000,"reliability":{"circuitBreaker":{"cooldownMs":1000}}}"#,
    );
    r.cmd(["config", "set", "reliability.rateLimit.maxPerWindow", "20"])
        .success();
    for (key, value, source) in settings(&r) {
        let from_file = match key.as_str() {
            "maxPayloadBytes" => Some(json!(5000)),
            "reliability.circuitBreaker.cooldownMs" => Some(json!(1000)),
            "reliability.rateLimit.maxPerWindow" => Some(json!(20)),
            _ => None,
        };
        match from_file {
            Some(v) => {
                assert_eq!(value, v, "{key}");
                assert_eq!(source, "file", "{key}");
            }
            None => assert_eq!(source, "default", "{key}"),
        }
    }

    // The text table has one row per key, with value and source.
    let out = r.cmd(["config", "show"]).success();
    let row = out
        .stdout
        .lines()
        .find(|l| l.starts_with("reliability.rateLimit.maxPerWindow "))
        .unwrap_or_else(|| out.fail("no row for maxPerWindow"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells, ["reliability.rateLimit.maxPerWindow", "20", "file"]);
    for (key, _) in DEFAULTS {
        if !out
            .stdout
            .lines()
            .any(|l| l.split_whitespace().next() == Some(key))
        {
            out.fail(&format!("no row for {key}"));
        }
    }
}

#[test]
fn get_prints_the_effective_value_as_json() {
    let r = Relay::new();
    for (key, default) in DEFAULTS {
        let out = r.cmd(["config", "get", key]).success();
        let got: Value = serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| out.fail(&format!("not JSON: {e}")));
        let want: Value = serde_json::from_str(default).unwrap_or_default();
        assert_eq!(got, want, "{key}");
    }
    r.cmd([
        "config",
        "set",
        "reliability.rateLimit.perSenderOverrides",
        r#"{"ci.":500}"#,
    ])
    .success();
    let out = r
        .cmd(["config", "get", "reliability.rateLimit.perSenderOverrides"])
        .success();
    let got: Value = serde_json::from_str(out.stdout.trim()).unwrap_or_default();
    assert_eq!(got, json!({"ci.": 500}));
    r.cmd(["config", "get", "reliability.rateLimit.nope"])
        .code(64)
        .stderr_has(&["reliability.rateLimit.nope"]);
}

#[test]
fn set_writes_the_key_and_preserves_the_rest_of_the_file() {
    let r = Relay::new();
    r.add(&["q"]);
    // An unknown key, written by something else, survives too.
    r.write_file(
        "config.json",
        r#"{"maxPayloadBytes":5000,"x-note":"keep me","reliability":{"circuitBreaker":{"failureThreshold":3}}}"#,
    );
    r.cmd(["config", "set", "reliability.rateLimit.maxPerWindow", "2"])
        .success();
    r.cmd(["config", "set", "reliability.rateLimit.softLimitRatio", "1"])
        .success();
    let file = r.read_json("config.json");
    assert_eq!(file["maxPayloadBytes"], 5000, "{file}");
    assert_eq!(file["x-note"], "keep me", "{file}");
    assert_eq!(
        file["reliability"]["circuitBreaker"]["failureThreshold"], 3,
        "{file}"
    );
    assert_eq!(
        file["reliability"]["rateLimit"]["maxPerWindow"], 2,
        "{file}"
    );
    assert_eq!(
        file["reliability"]["rateLimit"]["softLimitRatio"], 1,
        "{file}"
    );
    // Written atomically: no temp file left beside it, still private.
    let strays: Vec<String> = fs::read_dir(r.home())
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("config") && n != "config.json")
                .collect()
        })
        .unwrap_or_default();
    assert!(strays.is_empty(), "temp files left: {strays:?}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &fs::metadata(r.path("config.json"))
            .map(|m| m.permissions())
            .unwrap_or_else(|e| panic!("{e}")),
    );
    assert_eq!(mode & 0o077, 0, "config.json is private: {mode:o}");

    // The next invocation obeys it.
    r.cmd(["send", "q", "1", "--from", "a"]).success();
    r.cmd(["send", "q", "2", "--from", "a"]).success();
    r.cmd(["send", "q", "3", "--from", "a"])
        .code(75)
        .stderr_has(&["0 of 2 tokens left (the bucket refills 2 per 60s)"]);

    // `set` on a home without a config file creates it.
    let r = Relay::new();
    r.cmd(["config", "set", "reliability.backpressure.enabled", "false"])
        .success();
    assert_eq!(
        r.read_json("config.json"),
        json!({"reliability":{"backpressure":{"enabled":false}}})
    );
}

#[test]
fn every_invalid_knob_is_refused_with_78_and_the_file_left_byte_identical() {
    let r = Relay::new();
    let original = "{\n  \"maxPayloadBytes\": 5000,\n  \"reliability\": {\"rateLimit\": {\"maxPerWindow\": 50}}\n}\n";
    r.write_file("config.json", original);
    let cases: &[(&str, &str)] = &[
        ("reliability.rateLimit.windowSecs", "0"),
        ("reliability.circuitBreaker.halfOpenProbeCount", "0"),
        ("reliability.rateLimit.softLimitRatio", "1.5"),
        ("reliability.backpressure.pressureWarningAt", "1.01"),
        ("reliability.rateLimit.maxPerWindow", "-5"),
        ("reliability.rateLimit.maxPerWindow", "0"),
        ("reliability.rateLimit.maxPerWindow", "2.5"),
        ("reliability.circuitBreaker.failureThreshold", "\"5\""),
        ("reliability.circuitBreaker.failureThreshold", "0"),
        ("reliability.circuitBreaker.successToClose", "0"),
        ("reliability.circuitBreaker.cooldownMs", "999"),
        ("reliability.circuitBreaker.cooldownMs", "-1"),
        ("reliability.circuitBreaker.cooldownBackoff", "0.5"),
        ("reliability.backpressure.shedBackgroundAt", "0.95"),
        ("reliability.backpressure.shedLowAt", "0.5"),
        ("reliability.backpressure.maxMailboxSize", "0"),
        ("reliability.backpressure.priorityHeadroom", "-0.1"),
        ("reliability.backpressure.priorityHeadroom", "5"),
        ("reliability.rateLimit.burst", "0"),
        ("reliability.rateLimit.softLimitRatio", "0"),
        ("reliability.rateLimit.enabled", "\"yes\""),
        ("reliability.rateLimit.enabled", "1"),
        ("reliability.rateLimit.perSenderOverrides", "[]"),
        (
            "reliability.rateLimit.perSenderOverrides",
            r#"{"agent.":0}"#,
        ),
        ("maxPayloadBytes", "-1"),
        ("index.journalMaxBytes", "1000"),
        ("index.journalMaxBytes", "2000000000"),
        ("reliability.rateLimit.maxPerWindow", "abc"),
    ];
    for (key, value) in cases {
        let out = r.cmd(["config", "set", key, value]).run();
        if out.code != 78 {
            out.fail(&format!("set {key} {value}: expected exit 78"));
        }
        // The cross-field rule names both knobs by their leaf names.
        let needle = match *key {
            "reliability.backpressure.shedLowAt" => "shedLowAt",
            _ => key,
        };
        if !out.stderr.contains(needle) {
            out.fail(&format!("set {key} {value}: stderr does not name the key"));
        }
        let now = fs::read_to_string(r.path("config.json")).unwrap_or_default();
        if now != original {
            out.fail(&format!("set {key} {value} changed the file to:\n{now}"));
        }
    }
    // Nothing was created for an invalid set on a home without a file.
    let r = Relay::new();
    r.cmd(["config", "set", "reliability.rateLimit.windowSecs", "0"])
        .code(78);
    assert!(!r.path("config.json").exists());
}

#[test]
fn validate_checks_the_home_file_or_a_given_one_and_warns_on_unknown_keys() {
    let r = Relay::new();
    r.write_file(
        "config.json",
        r#"{"reliability":{"rateLimit":{"maxPerWindow":20}}}"#,
    );
    r.cmd(["config", "validate"]).success();

    let check = |name: &str, body: &str| {
        let path = r.scratch().join(name);
        fs::write(&path, body).unwrap_or_else(|e| panic!("{e}"));
        r.cmd(["config", "validate"]).args([&path]).run()
    };
    let out = check(
        "ok.json",
        r#"{"reliability":{"backpressure":{"maxMailboxSize":5}}}"#,
    );
    if out.code != 0 {
        out.fail("a valid file fails validation");
    }
    let file = r.scratch().join("unknown.json").display().to_string();
    // DorkOS ignores unknown keys: a warning, and the file is valid.
    check(
        "unknown.json",
        r#"{"reliability":{"rateLimit":{"bogus":true}}}"#,
    )
    .code(0)
    .stderr_has(&[&file, "reliability.rateLimit.bogus", "is valid"]);
    check(
        "bad.json",
        r#"{"reliability":{"rateLimit":{"windowSecs":0}}}"#,
    )
    .code(78)
    .stderr_has(&["reliability.rateLimit.windowSecs"]);
    check(
        "cross.json",
        r#"{"reliability":{"backpressure":{"shedBackgroundAt":0.95,"shedLowAt":0.9}}}"#,
    )
    .code(78)
    .stderr_has(&["shedBackgroundAt"]);
    check("broken.json", "{").code(78);
    // The home's own file is untouched by validating others.
    r.cmd(["config", "validate"]).success();

    // An unknown key warns, at run time and in `validate` (DorkOS ignores it).
    r.write_file("config.json", r#"{"extra":1}"#);
    r.cmd(["config", "validate"])
        .success()
        .stderr_has(&["extra", "1 unknown key(s) ignored"]);
}

/// The help and the man page say what `validate` does with an unknown key
/// (it warns and passes, as DorkOS ignores it), and it does that.
#[test]
fn validate_help_and_man_page_say_an_unknown_key_only_warns() {
    let r = Relay::new();
    let short = r.cmd(["config", "validate", "-h"]).success();
    let long = r.cmd(["config", "validate", "--help"]).success();
    let listed = r.cmd(["config", "--help"]).success();
    let man = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/man/relay-config.1"))
        .unwrap_or_else(|e| panic!("man/relay-config.1: {e}"));
    let man = man.replace("\\*(Aq", "'");
    for (what, text) in [
        ("validate -h", short.stdout.as_str()),
        ("validate --help", long.stdout.as_str()),
        ("config --help", listed.stdout.as_str()),
        ("man/relay-config.1", man.as_str()),
    ] {
        assert!(
            text.contains("an unknown key warns"),
            "{what} does not say an unknown key warns:\n{text}"
        );
        assert!(
            !text.contains("unknown keys fail"),
            "{what} says unknown keys fail:\n{text}"
        );
    }
    assert!(
        long.stdout.contains("still valid (exit 0)") && long.stdout.contains("exits 78"),
        "validate --help does not give the exit codes:\n{}",
        long.stdout
    );
    r.write_file("config.json", r#"{"reliability":{"bogus":1}}"#);
    r.cmd(["config", "validate"])
        .code(0)
        .stderr_has(&["warning", "reliability.bogus", "is valid"]);
    r.write_file(
        "config.json",
        r#"{"reliability":{"rateLimit":{"windowSecs":0}}}"#,
    );
    r.cmd(["config", "validate"])
        .code(78)
        .stderr_has(&["reliability.rateLimit.windowSecs"]);
}

#[test]
fn a_max_cooldown_below_the_cooldown_is_refused() {
    let r = Relay::new();
    r.write_file(
        "config.json",
        r#"{"reliability":{"circuitBreaker":{"cooldownMs":30000}}}"#,
    );
    let before = fs::read(r.path("config.json")).unwrap_or_default();
    r.cmd([
        "config",
        "set",
        "reliability.circuitBreaker.maxCooldownMs",
        "1000",
    ])
    .code(78)
    .stderr_has(&["maxCooldownMs", "cooldownMs"]);
    assert_eq!(fs::read(r.path("config.json")).unwrap_or_default(), before);
}

#[test]
fn validate_passes_on_a_home_without_a_config_file() {
    let r = Relay::new();
    r.add(&["q"]);
    // Every other command runs on the defaults; so must validation.
    r.cmd(["send", "q", "x"]).success();
    r.cmd(["config", "validate"]).success();
}

#[test]
fn concurrent_sets_of_different_keys_lose_none() {
    let r = Relay::new();
    let sets = [
        ("reliability.rateLimit.maxPerWindow", "11"),
        ("reliability.rateLimit.windowSecs", "12"),
        ("reliability.circuitBreaker.failureThreshold", "13"),
        ("reliability.circuitBreaker.cooldownMs", "14000"),
        ("reliability.circuitBreaker.successToClose", "15"),
        ("reliability.backpressure.maxMailboxSize", "16"),
        ("reliability.circuitBreaker.halfOpenProbeCount", "17"),
        ("maxPayloadBytes", "18000"),
    ];
    let running: Vec<_> = sets
        .iter()
        .map(|(k, v)| r.cmd(["config", "set", k, v]).spawn())
        .collect();
    for c in running {
        c.wait().success();
    }
    for (k, v) in sets {
        r.cmd(["config", "get", k])
            .success()
            .stdout_is(&format!("{v}\n"));
    }
}
