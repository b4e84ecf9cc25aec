//! Subjects and patterns (NATS-style): validation and matching. Pure, no I/O.
//!
//! A subject names a mailbox directory, so validation is what keeps anything
//! but `[A-Za-z0-9_-]` tokens joined by dots from reaching the filesystem.

use crate::error::{Error, Result};

/// The most tokens a subject or pattern may have.
pub const MAX_TOKENS: usize = 16;
/// The longest subject in bytes: it names a directory, and file names stop
/// at 255 bytes on the filesystems relay runs on.
pub const MAX_LEN: usize = 200;

/// Prefix of the private reply endpoints a request waits on (`relay
/// request`, `relay_send_and_wait`): DorkOS's query inboxes.
pub const QUERY_INBOX_PREFIX: &str = "relay.inbox.query.";
/// Prefix of the inboxes `relay_send_async` makes: DorkOS's dispatch inboxes.
pub const DISPATCH_INBOX_PREFIX: &str = "relay.inbox.dispatch.";

/// Whether `s` names a private reply endpoint (query or dispatch inbox):
/// made for one request and removed after it, so a message for one that is
/// gone (a late reply, a late failure notice) is refused rather than
/// dead-lettered into a directory of that name made afresh.
#[must_use]
pub fn is_private_inbox(s: &str) -> bool {
    s.starts_with(QUERY_INBOX_PREFIX) || s.starts_with(DISPATCH_INBOX_PREFIX)
}

/// Validates a literal subject (no wildcards), e.g. an endpoint or a sender.
/// `what` names the role in the error message ("endpoint", "sender", ...).
pub fn validate_subject(s: &str, what: &str) -> Result<()> {
    validate(s, what, false)
}

/// Validates a subject that may contain `*` (one token) and a final `>`.
pub fn validate_pattern(s: &str, what: &str) -> Result<()> {
    validate(s, what, true)
}

/// Whether `s` contains a wildcard token.
#[must_use]
pub fn is_pattern(s: &str) -> bool {
    s.split('.').any(|t| t == "*" || t == ">")
}

fn validate(s: &str, what: &str, wildcards: bool) -> Result<()> {
    let bad = |why: String| {
        Err(Error::Data(format!(
            "invalid {what} '{}': {why}",
            s.escape_debug()
        )))
    };
    if s.is_empty() {
        return bad("it is empty; use dot-separated tokens like agent.backend".into());
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return bad(format!(
            "control character {:?} is not allowed",
            c.escape_unicode().to_string()
        ));
    }
    if s.contains('/') {
        return bad("'/' is not allowed; tokens are separated by '.'".into());
    }
    if s.len() > MAX_LEN {
        return bad(format!(
            "{} bytes long, at most {MAX_LEN} are allowed",
            s.len()
        ));
    }
    let tokens: Vec<&str> = s.split('.').collect();
    if tokens.len() > MAX_TOKENS {
        return bad(format!(
            "{} tokens, at most {MAX_TOKENS} are allowed",
            tokens.len()
        ));
    }
    let last = tokens.len() - 1;
    for (i, t) in tokens.iter().enumerate() {
        match *t {
            "" => {
                return bad(format!(
                    "empty token at position {} (no leading, trailing or doubled dots)",
                    i + 1
                ));
            }
            "*" | ">" if !wildcards => {
                return bad(format!(
                    "wildcard '{t}' is not allowed here; an {what} must be a literal subject"
                ));
            }
            ">" if i != last => return bad("'>' may only be the last token".into()),
            "*" | ">" => {}
            _ => {
                if let Some(c) = t
                    .chars()
                    .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
                {
                    return bad(format!(
                        "character '{}' in token '{t}' is not allowed (use A-Z, a-z, 0-9, '_' and '-')",
                        c.escape_debug()
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Whether literal `subject` matches `pattern`: `*` matches exactly one
/// token, `>` one or more trailing tokens; everything else is compared
/// literally and case-sensitively. Inputs are assumed valid.
#[must_use]
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str, wild: bool) -> String {
        validate(s, "subject", wild)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn accepts_valid() {
        for s in ["a", "agent.backend", "relay.agent.ns-1.id_2", "A.b.C"] {
            assert!(validate_subject(s, "subject").is_ok(), "{s}");
        }
        for p in ["a.*", "*.b", "a.>", ">", "*.*.>"] {
            assert!(validate_pattern(p, "pattern").is_ok(), "{p}");
        }
        let sixteen = vec!["t"; 16].join(".");
        assert!(validate_subject(&sixteen, "subject").is_ok());
    }

    #[test]
    fn rejects_each_bad_form_with_reason() {
        assert!(err("", false).contains("empty"));
        assert!(err("a..b", false).contains("empty token at position 2"));
        assert!(err(".a", false).contains("empty token"));
        assert!(err("a.", false).contains("empty token"));
        assert!(err("..", false).contains("empty token"));
        assert!(err("a/b", false).contains("'/'"));
        assert!(err("../etc", false).contains("'/'"));
        assert!(err("a\0b", false).contains("control"));
        assert!(err("a\nb", false).contains("control"));
        assert!(err(&vec!["t"; 17].join("."), false).contains("17 tokens"));
        assert!(err("a.>.b", true).contains("'>' may only be the last"));
        assert!(err("a.*", false).contains("wildcard"));
        assert!(err("a.>", false).contains("wildcard"));
        assert!(err("a b", false).contains("character ' '"));
        assert!(err("a.b*", true).contains("character '*'"));
        assert!(err("é", false).contains("character"));
    }

    #[test]
    fn matching() {
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "a.B"));
        assert!(matches("a.*", "a.b"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(!matches("a.*", "a"));
        assert!(matches("a.>", "a.b.c"));
        assert!(!matches("a.>", "a"));
        assert!(matches("*.b.>", "x.b.c"));
        assert!(matches(">", "x"));
        assert!(!matches("a.b.c", "a.b"));
    }
}
