//! Property tests (proptest) of every parser that reads hostile input: the
//! envelope parser, the subject validator and matcher, the config parser,
//! the access-rules parser, the HTTP request reader and the duration and
//! time parsers. None may panic; the validator and the matcher must agree
//! with independent reference implementations written here.
//!
//! Run:
//!
//! ```text
//! cargo test --test integration fuzz
//! PROPTEST_CASES=100000 cargo test --release --test integration fuzz
//! ```
//!
//! Each property runs `PROPTEST_CASES` cases if that is set, else its own
//! default (a few thousand, the whole file in a few seconds in debug).
//! Failures are not persisted to files; proptest prints the minimal input.

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::{Map, Value, json};

use relay::access::Rules;
use relay::envelope::{Budget, Envelope};
use relay::subject;

/// The proptest config of a property: `PROPTEST_CASES` or `default` cases,
/// no regression files written into the tree.
fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Reference implementations (no regex, no code shared with the product).

/// Whether `s` is in the subject grammar of SPEC.md section 1: 1 to 16
/// dot-separated non-empty tokens of `[A-Za-z0-9_-]`; with `wildcards`, a
/// token may also be `*`, and the last one `>`.
fn reference_valid(s: &str, wildcards: bool) -> bool {
    let tokens: Vec<&str> = s.split('.').collect();
    if tokens.len() > 16 {
        return false;
    }
    let last = tokens.len() - 1;
    tokens.iter().enumerate().all(|(i, t)| match *t {
        "*" => wildcards,
        ">" => wildcards && i == last,
        _ => {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        }
    })
}

/// Whether literal `subject` matches `pattern`, by recursion on token lists.
fn reference_matches(pattern: &[&str], subject: &[&str]) -> bool {
    match (pattern.split_first(), subject.split_first()) {
        (None, None) => true,
        (Some((&">", _)), Some(_)) => true,
        (Some((&"*", p)), Some((_, s))) => reference_matches(p, s),
        (Some((a, p)), Some((b, s))) => a == b && reference_matches(p, s),
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// Strategies.

/// Pieces of subject-like strings: the characters that matter to the
/// grammar and a few that must be refused (weighted by repetition).
const PIECES: &[&str] = &[
    "a",
    "a",
    "a",
    "Zz9",
    "Zz9",
    "_-",
    ".",
    ".",
    ".",
    ".",
    "*",
    "*",
    ">",
    ">",
    "/",
    "..",
    " ",
    "\n",
    "\u{1b}",
    "\0",
    "é",
    "\u{7f}",
    "\u{202e}",
    "a.b.c.d.e.f.g.h",
    "\t",
];

/// Strings built from [`PIECES`], so that valid subjects come up often.
fn subjectish() -> impl Strategy<Value = String> {
    prop::collection::vec(0..PIECES.len(), 0..24)
        .prop_map(|v| v.into_iter().map(|i| PIECES[i]).collect())
}

/// A short key from a small alphabet (cheaper than a regex strategy).
fn key() -> impl Strategy<Value = String> {
    prop::collection::vec(0..6_usize, 0..4).prop_map(|v| {
        v.into_iter()
            .map(|i| ["a", "b", "Z", ".", ":", "x"][i])
            .collect()
    })
}

/// Printable ASCII of up to `max` characters.
fn ascii(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(0x20_u8..0x7f, 0..max)
        .prop_map(|v| v.into_iter().map(char::from).collect())
}

/// Short arbitrary Unicode text (cheaper to generate than `any::<String>()`).
fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..12).prop_map(String::from_iter)
}

/// A valid token from a tiny alphabet, so that patterns and subjects collide.
fn token() -> impl Strategy<Value = String> {
    prop::collection::vec(0..5_usize, 1..4).prop_map(|v| {
        v.into_iter()
            .map(|i| ["a", "b", "c", "_", "-"][i])
            .collect()
    })
}

/// A valid literal subject of 1 to 5 tokens.
fn literal() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(token(), 1..6)
}

/// A valid pattern: tokens or `*`, optionally ending in `>`.
fn pattern() -> impl Strategy<Value = Vec<String>> {
    let tok = prop_oneof![3 => token(), 1 => Just("*".to_string())];
    (prop::collection::vec(tok, 0..5), any::<bool>()).prop_filter_map(
        "empty pattern",
        |(mut toks, tail)| {
            if tail {
                toks.push(">".to_string());
            }
            (!toks.is_empty()).then_some(toks)
        },
    )
}

/// Arbitrary JSON without floats (serde_json float parsing is not
/// guaranteed to round-trip to the last bit, which is not what is tested).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Arbitrary JSON including floats and huge numbers (for parsers that only
/// have to survive it).
fn wild_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop_oneof![
            Just(0.5),
            Just(1.0),
            Just(1.5),
            Just(-0.0),
            Just(1e300),
            Just(2.0),
            Just(0.0)
        ]
        .prop_map(|f| json!(f)),
        prop_oneof![
            Just(0_i64),
            Just(1),
            Just(-1),
            Just(59),
            Just(60),
            Just(999),
            Just(1000),
            Just(3650),
            Just(3651)
        ]
        .prop_map(Value::from),
        key().prop_map(Value::from),
    ];
    leaf.prop_recursive(1, 6, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid envelope with arbitrary contents.
fn envelope() -> impl Strategy<Value = Envelope> {
    let budget = (
        any::<u32>(),
        any::<u32>(),
        prop::collection::vec(text(), 0..4),
        any::<u64>(),
        any::<u32>(),
    )
        .prop_map(|(h, m, chain, ttl, calls)| Budget {
            hop_count: h,
            max_hops: m,
            ancestor_chain: chain,
            ttl,
            call_budget_remaining: calls,
        });
    let extra =
        prop::collection::btree_map(key().prop_map(|k| format!("x_{k}")), json_value(), 0..3)
            .prop_map(|m| m.into_iter().collect::<Map<String, Value>>());
    (
        (text(), text(), text()),
        prop::option::of(text()),
        (budget, any::<u32>()),
        text(),
        json_value(),
        (
            prop::option::of(text()),
            prop::option::of(text()),
            prop::option::of(text()),
        ),
        extra,
    )
        .prop_map(
            |(
                (id, subject, from),
                reply_to,
                (budget, delivery_count),
                created_at,
                payload,
                (d, t, p),
                extra,
            )| {
                Envelope {
                    id,
                    subject,
                    from,
                    reply_to,
                    budget,
                    created_at,
                    payload,
                    dispatch_id: d,
                    trace_id: t,
                    priority: p,
                    delivery_count,
                    extra,
                }
            },
        )
}

/// One edit of a byte string.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
    Splice(usize, &'static str),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let snippet = prop_oneof![
        Just("{"),
        Just("}"),
        Just("\""),
        Just(","),
        Just("null"),
        Just("-1"),
        Just("1e999"),
        Just("18446744073709551616"),
        Just("\\u0000"),
        Just("\\ud800"),
        Just("[]"),
        Just("\"id\":1,"),
        Just("\"budget\":{},"),
        Just("\u{feff}"),
    ];
    let edit = prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), snippet).prop_map(|(i, s)| Edit::Splice(i, s)),
    ];
    prop::collection::vec(edit, 1..6)
}

fn mutate(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = bytes.len();
        match *e {
            Edit::Flip(i, b) if n > 0 => bytes[i % n] ^= b | 1,
            Edit::Insert(i, b) => bytes.insert(i % (n + 1), b),
            Edit::Delete(i) if n > 0 => {
                bytes.remove(i % n);
            }
            Edit::Truncate(i) => bytes.truncate(i % (n + 1)),
            Edit::Splice(i, s) => {
                let at = i % (n + 1);
                bytes.splice(at..at, s.bytes());
            }
            _ => {}
        }
    }
    bytes
}

/// Config-shaped JSON: the real sections and knob names (plus near misses),
/// with values of every type and around every bound.
fn config_json() -> impl Strategy<Value = Value> {
    let rate = prop::collection::btree_map(
        prop_oneof![
            Just("enabled"),
            Just("windowSecs"),
            Just("maxPerWindow"),
            Just("burst"),
            Just("softLimitRatio"),
            Just("perSenderOverrides"),
            Just("maxperwindow"),
        ],
        prop_oneof![
            3 => wild_json(),
            1 => prop::collection::btree_map(key(), wild_json(), 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ],
        0..6,
    );
    let breaker = prop::collection::btree_map(
        prop_oneof![
            Just("enabled"),
            Just("failureThreshold"),
            Just("cooldownMs"),
            Just("halfOpenProbeCount"),
            Just("successToClose"),
            Just("cooldownBackoff"),
            Just("maxCooldownMs"),
        ],
        wild_json(),
        0..7,
    );
    let pressure = prop::collection::btree_map(
        prop_oneof![
            Just("enabled"),
            Just("maxMailboxSize"),
            Just("pressureWarningAt"),
            Just("shedLowAt"),
            Just("shedBackgroundAt"),
            Just("priorityHeadroom"),
        ],
        wild_json(),
        0..6,
    );
    let obj = |m: std::collections::BTreeMap<&'static str, Value>| {
        Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    };
    (
        prop::option::of(rate.prop_map(obj)),
        prop::option::of(breaker.prop_map(obj)),
        prop::option::of(pressure.prop_map(obj)),
        prop::option::of(wild_json()),
        prop::option::of(wild_json()),
        prop::option::of(wild_json()),
        any::<bool>(),
    )
        .prop_map(
            |(rate, breaker, pressure, payload, retention, odd, dotted)| {
                let mut rel = Map::new();
                if let Some(v) = rate {
                    rel.insert("rateLimit".into(), v);
                }
                if let Some(v) = breaker {
                    rel.insert("circuitBreaker".into(), v);
                }
                if let Some(v) = pressure {
                    rel.insert("backpressure".into(), v);
                }
                let mut top = Map::new();
                top.insert("reliability".into(), Value::Object(rel));
                if let Some(v) = payload {
                    top.insert("maxPayloadBytes".into(), v);
                }
                if let Some(v) = retention {
                    top.insert(
                        "retention".into(),
                        json!({"days": v.clone(), "tmpMaxAgeSecs": v}),
                    );
                }
                if let Some(v) = odd {
                    let key = if dotted {
                        "reliability.rateLimit.enabled"
                    } else {
                        "idempotency"
                    };
                    top.insert(key.into(), v);
                }
                Value::Object(top)
            },
        )
}

/// Whether the envelope holds a JSON number that is not an integer: those
/// do not round-trip exactly (see `float_payloads_round_trip_exactly`), so
/// the other round-trip properties leave them out.
fn has_float(env: &Envelope) -> bool {
    fn walk(v: &Value) -> bool {
        match v {
            Value::Number(n) => n.is_f64(),
            Value::Array(a) => a.iter().any(walk),
            Value::Object(o) => o.values().any(walk),
            _ => false,
        }
    }
    serde_json::to_value(env).is_ok_and(|v| walk(&v))
}

/// Checks what `config::parse` promises about a result: a config within
/// every range, or a 78 naming the file.
fn check_config(text: &str) -> Result<(), TestCaseError> {
    const ORIGIN: &str = "/fuzz/config.json";
    match relay::config::parse(text, ORIGIN) {
        Ok(c) => {
            let r = &c.reliability;
            prop_assert!((1..=64 * 1024 * 1024).contains(&c.max_payload_bytes));
            prop_assert!(r.rate_limit.window_secs >= 1);
            prop_assert!(r.rate_limit.max_per_window >= 1);
            prop_assert!(
                r.rate_limit.soft_limit_ratio > 0.0 && r.rate_limit.soft_limit_ratio <= 1.0
            );
            prop_assert!(r.rate_limit.burst.is_none_or(|b| b >= 1));
            prop_assert!(
                r.rate_limit
                    .per_sender_overrides
                    .iter()
                    // Any key, "" included, as DorkOS.
                    .all(|(_, v)| *v >= 1)
            );
            prop_assert!(r.circuit_breaker.failure_threshold >= 1);
            prop_assert!(r.circuit_breaker.cooldown_ms >= 1000);
            prop_assert!(r.circuit_breaker.max_cooldown_ms >= r.circuit_breaker.cooldown_ms);
            prop_assert!(r.circuit_breaker.half_open_probe_count >= 1);
            prop_assert!(r.circuit_breaker.success_to_close >= 1);
            prop_assert!((1.0..=10.0).contains(&r.circuit_breaker.cooldown_backoff));
            let bp = &r.backpressure;
            prop_assert!(bp.max_mailbox_size >= 1);
            // DorkOS's pressureWarningAt may be 0 (warn on every send).
            prop_assert!((0.0..=1.0).contains(&bp.pressure_warning_at));
            for x in [bp.shed_low_at, bp.shed_background_at] {
                prop_assert!(x > 0.0 && x <= 1.0);
            }
            prop_assert!(bp.shed_background_at <= bp.shed_low_at);
            prop_assert!((0.0..=1.0).contains(&bp.priority_headroom));
            prop_assert!(c.retention_days >= 1 && c.retention_days <= 3650);
            prop_assert!(c.tmp_max_age_secs >= 60);
            prop_assert!(c.idempotency_window_secs >= 1);
        }
        Err(e) => {
            prop_assert_eq!(e.exit_code(), 78);
            let msg = e.to_string();
            prop_assert!(msg.starts_with("config /fuzz/config.json: "), "{}", msg);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Properties.

proptest! {
    #![proptest_config(cases(4000))]

    #[test]
    fn envelope_parse_survives_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(env) = Envelope::parse(&bytes)
            && !has_float(&env)
        {
            let back = env.to_file_bytes().map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(Envelope::parse(&back), Ok(env));
        }
    }

    /// A payload number survives relay exactly (serde_json's
    /// `float_roundtrip`; without it `1.0184467440737096e39` came back one
    /// ULP off).
    #[test]
    fn float_payloads_round_trip_exactly(x in any::<f64>().prop_filter("finite", |x| x.is_finite())) {
        let text = serde_json::to_string(&x).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let envelope = format!(
            r#"{{"id":"x","subject":"a","from":"b","budget":{{"hopCount":0,"maxHops":1,"ttl":1,"callBudgetRemaining":1}},"createdAt":"t","payload":{text}}}"#
        );
        let env = Envelope::parse(envelope.as_bytes()).map_err(TestCaseError::fail)?;
        prop_assert_eq!(env.payload.as_f64(), Some(x), "payload {}", text);
    }

    #[test]
    fn budget_hop_never_panics(
        hop_count in any::<u32>(), max_hops in any::<u32>(), ttl in any::<u64>(),
        calls in any::<u32>(), now in any::<u64>(), chain in prop::collection::vec("[ab]", 0..3),
        target in "[ab]",
    ) {
        let b = Budget { hop_count, max_hops, ancestor_chain: chain, ttl, call_budget_remaining: calls };
        if let Ok(next) = b.hop(&target, now) {
            prop_assert_eq!(next.hop_count, hop_count + 1);
            prop_assert_eq!(next.call_budget_remaining, calls - 1);
            prop_assert!(next.ancestor_chain.last() == Some(&target));
        }
    }
}

proptest! {
    #![proptest_config(cases(2000))]

    #[test]
    fn config_parse_survives_config_shaped_json(v in config_json()) {
        check_config(&v.to_string())?;
        check_config(&serde_json::to_string_pretty(&v).unwrap_or_default())?;
    }

    #[test]
    fn config_parse_survives_mutated_config_text(v in config_json(), edits in edits()) {
        let bytes = mutate(v.to_string().into_bytes(), &edits);
        check_config(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn envelope_round_trips(env in envelope()) {
        let bytes = env.to_file_bytes().map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(!bytes.ends_with(b"\n"), "DorkOS writes no trailing newline");
        let back = Envelope::parse(&bytes);
        prop_assert_eq!(back, Ok(env.clone()));
        // Compact JSON (as `recv --json` prints it) parses to the same value.
        let compact = serde_json::to_vec(&env).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(Envelope::parse(&compact), Ok(env));
    }

    #[test]
    fn mutated_envelopes_never_panic(env in envelope(), edits in edits()) {
        let bytes = env.to_file_bytes().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let bytes = mutate(bytes, &edits);
        if let Ok(parsed) = Envelope::parse(&bytes)
            && !has_float(&parsed)
        {
            // Whatever still parses round-trips.
            let again = parsed.to_file_bytes().map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(Envelope::parse(&again), Ok(parsed));
        }
    }
}

proptest! {
    #![proptest_config(cases(5000))]

    #[test]
    fn validator_agrees_with_the_grammar_on_arbitrary_strings(s in any::<String>()) {
        prop_assert_eq!(subject::validate_subject(&s, "subject").is_ok(), reference_valid(&s, false), "{:?}", s);
        prop_assert_eq!(subject::validate_pattern(&s, "pattern").is_ok(), reference_valid(&s, true), "{:?}", s);
    }

    #[test]
    fn validator_agrees_with_the_grammar_on_subject_like_strings(s in subjectish()) {
        let lit = subject::validate_subject(&s, "subject");
        let pat = subject::validate_pattern(&s, "pattern");
        prop_assert_eq!(lit.is_ok(), reference_valid(&s, false), "{:?}", s);
        prop_assert_eq!(pat.is_ok(), reference_valid(&s, true), "{:?}", s);
        // A valid subject can only name a directory inside mailboxes/.
        if lit.is_ok() {
            prop_assert!(!s.contains('/') && s != "." && s != ".." && !s.is_empty());
        }
        // Every refusal is bad data (65) and names the value, escaped.
        for e in [lit.err(), pat.err()].into_iter().flatten() {
            prop_assert_eq!(e.exit_code(), 65);
            let msg = e.to_string();
            prop_assert!(msg.contains(&s.escape_debug().to_string()), "{}", msg);
            prop_assert!(!msg.chars().any(char::is_control), "raw control character in {:?}", msg);
        }
    }

    #[test]
    fn matcher_agrees_with_the_reference(p in pattern(), s in literal()) {
        let (pattern, subject) = (p.join("."), s.join("."));
        prop_assert!(subject::validate_pattern(&pattern, "pattern").is_ok(), "{}", pattern);
        prop_assert!(subject::validate_subject(&subject, "subject").is_ok(), "{}", subject);
        let pr: Vec<&str> = p.iter().map(String::as_str).collect();
        let sr: Vec<&str> = s.iter().map(String::as_str).collect();
        prop_assert_eq!(
            subject::matches(&pattern, &subject),
            reference_matches(&pr, &sr),
            "pattern {} subject {}", pattern, subject
        );
        prop_assert!(subject::matches(&subject, &subject), "a subject matches itself");
        prop_assert!(subject::matches(">", &subject), "'>' matches everything");
        prop_assert_eq!(subject::is_pattern(&pattern), p.iter().any(|t| t == "*" || t == ">"));
    }

    #[test]
    fn matcher_never_panics_on_arbitrary_strings(p in subjectish(), s in subjectish()) {
        let _ = subject::matches(&p, &s);
        let _ = subject::is_pattern(&p);
    }
}

proptest! {
    #![proptest_config(cases(3000))]

    #[test]
    fn config_parse_survives_arbitrary_text(text in any::<String>()) {
        check_config(&text)?;
    }

    #[test]
    fn access_rules_parse_never_panics(text in any::<String>(), sender in subjectish(), to in subjectish()) {
        let rules = Rules::parse(&text, "/fuzz/access-rules.json");
        let _ = rules.check(&sender, &to);
        // Text that is not rules fails closed.
        if !matches!(rules, Rules::Some(_)) {
            prop_assert!(rules.check("a", "b").is_err());
        }
    }

    #[test]
    fn access_rules_parse_of_rule_shaped_json(
        rules in prop::collection::vec(
            (subjectish(), subjectish(),
             prop_oneof![Just(json!("allow")), Just(json!("deny")), Just(json!("ALLOW")), wild_json()],
             prop_oneof![any::<i64>().prop_map(Value::from), wild_json()],
             any::<bool>(), any::<bool>()),
            0..5),
        sender in subjectish(), to in subjectish(),
    ) {
        // DorkOS requires every rule's priority.
        let missing = rules.iter().any(|r| !r.4);
        let arr: Vec<Value> = rules
            .into_iter()
            .map(|(from, to, action, priority, with_priority, extra)| {
                let mut o = json!({"from": from, "to": to, "action": action});
                if with_priority {
                    o["priority"] = priority;
                }
                if extra {
                    o["extra"] = json!(1);
                }
                o
            })
            .collect();
        let text = Value::Array(arr).to_string();
        let parsed = Rules::parse(&text, "/fuzz/access-rules.json");
        let _ = parsed.check(&sender, &to);
        if let Rules::Some(list) = &parsed {
            prop_assert!(!missing, "a rule without a priority makes the file invalid");
            prop_assert!(list.windows(2).all(|w| w[0].priority >= w[1].priority), "sorted by priority");
        } else {
            prop_assert!(parsed.check("a", "b").is_err(), "unusable rules deny");
        }
    }

    #[test]
    fn query_strings_survive_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..700)) {
        let text = String::from_utf8_lossy(&bytes);
        let q = relay::serve::query::Query::parse(Some(&text));
        let _ = q.get("token");
        let _ = relay::serve::query::decode(&text);
    }

    #[test]
    fn query_strings_survive_mutated_queries(query in ascii(40), edits in edits()) {
        let raw = format!("subject=agent.%2A&token=t&{query}");
        let bytes = mutate(raw.into_bytes(), &edits);
        let text = String::from_utf8_lossy(&bytes);
        let q = relay::serve::query::Query::parse(Some(&text));
        if let Some(t) = q.get("token") {
            prop_assert!(text.contains("token"), "{t} from nowhere");
        }
    }

    #[test]
    fn durations_and_times_never_panic(
        num in prop::collection::vec(0..11_usize, 0..25), unit in 0..7_usize,
        t in text(), ms in any::<u64>(),
    ) {
        let s: String = num.into_iter().map(|i| "0123456789.".as_bytes()[i] as char)
            .chain(["ms", "s", "m", "h", "d", "x", ""][unit].chars())
            .collect();
        for input in [s.as_str(), t.as_str()] {
            if let Ok(d) = relay::clock::parse_duration(input) {
                prop_assert!(d.as_millis() <= 1_000_000_000_000_000);
            }
            let _ = relay::clock::parse_positive_duration(input);
            let _ = relay::clock::parse_iso8601(input);
        }
        let text = relay::clock::iso8601(ms);
        if let Some(back) = relay::clock::parse_iso8601(&text) {
            prop_assert_eq!(back, ms, "{}", text);
        }
        let _ = relay::clock::human_ms(ms);
        let _ = relay::clock::ago(ms, ms / 2);
    }
}

/// The reference implementations themselves, on fixed examples (so a bug in
/// them cannot hide one in the product).
#[test]
fn references_agree_with_the_spec_examples() {
    for s in ["a", "agent.backend", "A.b-c.d_9", &vec!["t"; 16].join(".")] {
        assert!(reference_valid(s, false), "{s}");
    }
    for s in [
        "",
        ".",
        "..",
        "a..b",
        "a.",
        ".a",
        "a/b",
        "../x",
        "a b",
        "é",
        "a\nb",
        "a.*",
        &vec!["t"; 17].join("."),
    ] {
        assert!(!reference_valid(s, false), "{s:?}");
    }
    for p in ["a.*", "*.b", "a.>", ">", "*.*.>", "*"] {
        assert!(reference_valid(p, true), "{p}");
    }
    for p in ["a.>.b", ">.a", "a.**", "a.b>", "", "a..*"] {
        assert!(!reference_valid(p, true), "{p:?}");
    }
    let m = |p: &str, s: &str| {
        reference_matches(
            &p.split('.').collect::<Vec<_>>(),
            &s.split('.').collect::<Vec<_>>(),
        )
    };
    assert!(m("a.*", "a.b") && !m("a.*", "a.b.c") && !m("a.*", "a"));
    assert!(m("a.>", "a.b.c") && !m("a.>", "a") && m(">", "x") && !m("a.b", "a.B"));
}
