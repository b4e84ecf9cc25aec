//! Access rules (`access-rules.json`, DorkOS's shape): who may send where.
//!
//! Rules are sorted by priority, highest first (ties keep file order); the
//! first rule whose `from` pattern matches the sender and whose `to` pattern
//! matches the publish subject decides. No file allows everything; a file
//! that cannot be read as rules denies everything (fail closed).
//!
//! What is a valid file is exactly DorkOS's validation
//! (`RelayAccessRuleSchema.array()`, dorkos-contract.md section 7): a JSON
//! array of objects with `from` and `to` strings, `action` `allow` or
//! `deny`, and an integer `priority` (required; a JSON number with no
//! fraction within JavaScript's safe integers). Other keys are stripped, as
//! Zod strips them, and reported by `relay config validate` and `doctor`.
//! One entry that does not hold makes the whole file invalid. Patterns are
//! not validated (DorkOS does not): one that is not a valid pattern just
//! never matches a sender or subject, and is reported the same way.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::subject;

/// The rules file name inside the relay home.
pub const FILE_NAME: &str = "access-rules.json";

/// The keys of a rule; any other key is stripped.
const KEYS: [&str; 4] = ["from", "to", "action", "priority"];
/// JavaScript's `Number.MAX_SAFE_INTEGER`, the bound of Zod's `int()`.
const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// One rule as written in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Sender pattern.
    pub from: String,
    /// Subject pattern.
    pub to: String,
    /// `allow` or `deny`.
    pub action: Action,
    /// Higher first.
    pub priority: i64,
}

/// What a rule decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Let it through.
    Allow,
    /// Refuse it.
    Deny,
}

/// The loaded rules, or why they could not be loaded.
#[derive(Debug, Clone)]
pub enum Rules {
    /// No file: everything allowed.
    None,
    /// Valid rules, sorted by priority (highest first, stable).
    Some(Vec<Rule>),
    /// The file exists but is not valid rules: everything denied.
    Quarantined(String),
}

/// A rules file as `relay config validate` and `doctor` report it.
#[derive(Debug, Clone)]
pub struct Checked {
    /// What sends get.
    pub rules: Rules,
    /// What is accepted but worth saying: stripped keys, patterns that can
    /// never match.
    pub warnings: Vec<String>,
}

/// Longest access rules file read.
const FILE_MAX: u64 = 16 << 20;

/// What the fix of a quarantined file is, for messages.
pub const FIX: &str = "fix it (a JSON array of {\"from\": PATTERN, \"to\": PATTERN, \"action\": \"allow\"|\"deny\", \"priority\": INTEGER}) or remove it (no file allows every send)";

impl Rules {
    /// Loads `path`; never fails: a broken file quarantines.
    #[must_use]
    pub fn load(path: &Path) -> Self {
        Self::check_file(path).rules
    }

    /// Loads `path` with the warnings worth reporting.
    #[must_use]
    pub fn check_file(path: &Path) -> Checked {
        // A FIFO or device there is refused, never waited on. Bytes that
        // are not UTF-8 are decoded as DorkOS's readFileSync('utf-8') does.
        let text = match crate::home::read_operator_file(path, FILE_MAX) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(crate::home::Unreadable::Missing) => {
                return Checked {
                    rules: Rules::None,
                    warnings: Vec::new(),
                };
            }
            Err(e) => {
                return Checked {
                    rules: Rules::Quarantined(format!("cannot read {}: {e}", path.display())),
                    warnings: Vec::new(),
                };
            }
        };
        Self::check_text(&text, &path.display().to_string())
    }

    /// Parses rules text; `origin` names the file in messages.
    #[must_use]
    pub fn parse(text: &str, origin: &str) -> Self {
        Self::check_text(text, origin).rules
    }

    /// Parses rules text with the warnings worth reporting.
    #[must_use]
    pub fn check_text(text: &str, origin: &str) -> Checked {
        let mut warnings = Vec::new();
        let quarantined = |why: String| Checked {
            rules: Rules::Quarantined(why),
            warnings: Vec::new(),
        };
        let value: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => return quarantined(format!("{origin} is not valid JSON: {e}")),
        };
        let Value::Array(entries) = value else {
            return quarantined(format!(
                "{origin} is not a JSON array of rules (its top level is {})",
                kind(&value)
            ));
        };
        let mut rules = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let n = i + 1;
            match rule(entry) {
                Ok(r) => {
                    if let Value::Object(map) = entry {
                        for k in map.keys().filter(|k| !KEYS.contains(&k.as_str())) {
                            warnings.push(format!(
                                "{origin}: rule {n}: unknown key '{k}' ignored (as DorkOS strips it)"
                            ));
                        }
                    }
                    for (what, p) in [("from", &r.from), ("to", &r.to)] {
                        if let Err(e) = subject::validate_pattern(p, what) {
                            warnings.push(format!("{origin}: rule {n} can never match: {e}"));
                        }
                    }
                    rules.push(r);
                }
                Err(why) => return quarantined(format!("{origin}: rule {n}: {why}")),
            }
        }
        rules.sort_by_key(|r| std::cmp::Reverse(r.priority));
        Checked {
            rules: Rules::Some(rules),
            warnings,
        }
    }

    /// Checks `sender` -> `subj`; a refusal is `Error::Denied` (77) naming
    /// the rule or the quarantine and the fix.
    pub fn check(&self, sender: &str, subj: &str) -> Result<()> {
        match self {
            Rules::None => Ok(()),
            Rules::Quarantined(why) => Err(Error::Denied(format!(
                "access denied for '{sender}' -> '{subj}': the access rules are unusable, so every send is refused ({why}); {FIX}"
            ))),
            Rules::Some(rules) => match rules
                .iter()
                .find(|r| matches(&r.from, sender) && matches(&r.to, subj))
            {
                Some(r) if r.action == Action::Deny => Err(Error::Denied(format!(
                    "access denied for '{sender}' -> '{subj}' by rule {{from: '{}', to: '{}', priority: {}}} in {FILE_NAME}",
                    r.from, r.to, r.priority
                ))),
                _ => Ok(()),
            },
        }
    }
}

/// One entry, validated as DorkOS's Zod schema does; the error says what
/// is wrong with it.
fn rule(entry: &Value) -> std::result::Result<Rule, String> {
    let Value::Object(map) = entry else {
        return Err(format!("must be an object, got {}", shown(entry)));
    };
    let text = |key: &str| match map.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("'{key}' must be a string, got {}", shown(other))),
        None => Err(format!("'{key}' is missing")),
    };
    let (from, to) = (text("from")?, text("to")?);
    let action = match map.get("action") {
        Some(Value::String(a)) if a == "allow" => Action::Allow,
        Some(Value::String(a)) if a == "deny" => Action::Deny,
        Some(other) => {
            return Err(format!(
                "'action' must be \"allow\" or \"deny\", got {other}"
            ));
        }
        None => return Err("'action' is missing".into()),
    };
    let priority = match map.get("priority") {
        Some(Value::Number(n)) => integer(n).ok_or_else(|| {
            format!("'priority' must be an integer (at most 2^53 - 1 either way), got {n}")
        })?,
        Some(other) => {
            return Err(format!(
                "'priority' must be an integer, got {}",
                shown(other)
            ));
        }
        None => {
            return Err(
                "'priority' is missing (DorkOS requires it: a rule without one makes the whole file invalid)"
                    .into(),
            );
        }
    };
    Ok(Rule {
        from,
        to,
        action,
        priority,
    })
}

/// A JSON number as JavaScript's `Number.isSafeInteger` takes it (`2.0`
/// and `1e3` are integers).
fn integer(n: &serde_json::Number) -> Option<i64> {
    let i = n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() <= MAX_SAFE_INTEGER as f64)
            .map(|f| f as i64)
    })?;
    (i.abs() <= MAX_SAFE_INTEGER).then_some(i)
}

/// `v` as JSON for a message, shortened past 40 characters.
fn shown(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(40) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text,
    }
}

/// The JSON type of `v`, for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// DorkOS's `matchesPattern`: `*` one token, `>` the rest (one or more),
/// literal tokens compared exactly; an empty pattern has no tokens. Any
/// string is taken as a pattern (not validated), as DorkOS does.
fn matches(pattern: &str, subj: &str) -> bool {
    !pattern.is_empty() && subject::matches(pattern, subj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Rules {
        Rules::parse(text, "rules.json")
    }

    #[test]
    fn no_rules_allow() {
        assert!(Rules::None.check("a", "b").is_ok());
        assert!(rules("[]").check("a", "b").is_ok());
    }

    #[test]
    fn first_match_by_priority_wins() {
        let r = rules(
            r#"[{"from":">","to":"secret.>","action":"deny","priority":1},
                {"from":"admin.*","to":"secret.>","action":"allow","priority":10}]"#,
        );
        assert!(r.check("admin.x", "secret.a").is_ok());
        let e = r
            .check("user.x", "secret.a")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("'user.x' -> 'secret.a'") && e.contains("priority: 1"),
            "{e}"
        );
        assert!(r.check("user.x", "public.a").is_ok());
    }

    #[test]
    fn ties_keep_file_order() {
        let r = rules(
            r#"[{"from":">","to":">","action":"allow","priority":0},
                {"from":">","to":">","action":"deny","priority":0}]"#,
        );
        assert!(r.check("a", "b").is_ok());
    }

    #[test]
    fn extra_keys_are_stripped_and_reported() {
        let c = Rules::check_text(
            r#"[{"from":">","to":"a","action":"deny","priority":1,"when":"always"}]"#,
            "rules.json",
        );
        assert!(matches!(c.rules, Rules::Some(ref r) if r.len() == 1));
        assert!(c.rules.check("x", "a").is_err());
        assert_eq!(
            c.warnings,
            ["rules.json: rule 1: unknown key 'when' ignored (as DorkOS strips it)"]
        );
    }

    #[test]
    fn integral_numbers_are_priorities() {
        for p in ["1.0", "1e3", "-5", "9007199254740991", "-9007199254740991"] {
            let text = format!(r#"[{{"from":">","to":">","action":"deny","priority":{p}}}]"#);
            assert!(matches!(rules(&text), Rules::Some(_)), "{p}");
        }
    }

    #[test]
    fn unvalidated_patterns_never_match_but_are_valid() {
        let c = Rules::check_text(
            r#"[{"from":"a..b","to":">","action":"deny","priority":1},
                {"from":"","to":">","action":"deny","priority":1}]"#,
            "rules.json",
        );
        assert!(c.rules.check("a.b", "x").is_ok());
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    }

    #[test]
    fn broken_files_fail_closed() {
        for bad in [
            "{",
            "{}",
            r#"[{"from":"a","to":"b","action":"maybe","priority":1}]"#,
            r#"[{"from":"a","to":"b","action":"allow"}]"#,
            r#"[{"from":"a","to":"b","action":"allow","priority":1.5}]"#,
            r#"[{"from":"a","to":"b","action":"allow","priority":"1"}]"#,
            r#"[{"from":"a","to":"b","action":"allow","priority":9007199254740992}]"#,
            r#"[{"from":1,"to":"b","action":"allow","priority":1}]"#,
            r#"[null]"#,
        ] {
            let r = rules(bad);
            assert!(matches!(r, Rules::Quarantined(_)), "{bad}");
            assert!(matches!(r.check("a", "b"), Err(Error::Denied(_))));
        }
    }
}
