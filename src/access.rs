//! Access rules (`access-rules.json`, DorkOS's shape): who may send where.
//!
//! Rules are sorted by priority, highest first (ties keep file order); the
//! first rule whose `from` pattern matches the sender and whose `to` pattern
//! matches the publish subject decides. No file allows everything; a file
//! that cannot be read as rules denies everything (fail closed).

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::subject;

/// The rules file name inside the relay home.
pub const FILE_NAME: &str = "access-rules.json";

/// One rule as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Sender pattern.
    pub from: String,
    /// Subject pattern.
    pub to: String,
    /// `allow` or `deny`.
    pub action: Action,
    /// Higher first.
    #[serde(default)]
    pub priority: i64,
}

/// What a rule decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
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

/// Longest access rules file read.
const FILE_MAX: u64 = 16 << 20;

impl Rules {
    /// Loads `path`; never fails: a broken file quarantines.
    #[must_use]
    pub fn load(path: &Path) -> Self {
        // A FIFO or device there is refused, never waited on.
        let text = match crate::home::read_operator_file(path, FILE_MAX).map(String::from_utf8) {
            Ok(Ok(t)) => t,
            Err(crate::home::Unreadable::Missing) => return Rules::None,
            Ok(Err(e)) => {
                return Rules::Quarantined(format!("cannot read {}: {e}", path.display()));
            }
            Err(e) => return Rules::Quarantined(format!("cannot read {}: {e}", path.display())),
        };
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses rules text; `origin` names the file in messages.
    #[must_use]
    pub fn parse(text: &str, origin: &str) -> Self {
        let mut rules: Vec<Rule> = match serde_json::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                return Rules::Quarantined(format!(
                    "{origin} is not a JSON array of {{from, to, action, priority}} rules: {e}"
                ));
            }
        };
        for (i, r) in rules.iter().enumerate() {
            for (what, p) in [("from", &r.from), ("to", &r.to)] {
                if let Err(e) = subject::validate_pattern(p, what) {
                    return Rules::Quarantined(format!("{origin}: rule {}: {e}", i + 1));
                }
            }
        }
        rules.sort_by_key(|r| std::cmp::Reverse(r.priority));
        Rules::Some(rules)
    }

    /// Checks `sender` -> `subj`; a refusal is `Error::Denied` (77) naming
    /// the rule or the quarantine and the fix.
    pub fn check(&self, sender: &str, subj: &str) -> Result<()> {
        match self {
            Rules::None => Ok(()),
            Rules::Quarantined(why) => Err(Error::Denied(format!(
                "access denied for '{sender}' -> '{subj}': the access rules are unusable, so every send is refused ({why}); fix or remove {FILE_NAME}"
            ))),
            Rules::Some(rules) => match rules
                .iter()
                .find(|r| subject::matches(&r.from, sender) && subject::matches(&r.to, subj))
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
    fn broken_files_fail_closed() {
        for bad in [
            "{",
            "{}",
            r#"[{"from":"a","to":"b","action":"maybe"}]"#,
            r#"[{"from":"a..b","to":"b","action":"allow"}]"#,
            r#"[{"from":"a","to":"b","action":"allow","extra":1}]"#,
        ] {
            let r = rules(bad);
            assert!(matches!(r, Rules::Quarantined(_)), "{bad}");
            assert!(matches!(r.check("a", "b"), Err(Error::Denied(_))));
        }
    }
}
