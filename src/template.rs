//! `recv --format` templates: `{id} {payload}` and friends, parsed once
//! (a typo is a usage error before anything is claimed) and rendered per
//! message.

use serde_json::Value;

use crate::envelope::Envelope;
use crate::error::{Error, Result};

/// A message field a template can print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Id,
    Payload,
    Subject,
    Endpoint,
    From,
    ReplyTo,
    TraceId,
    CreatedAt,
    DeliveryCount,
    Priority,
}

/// Placeholder names, in the order the help lists them.
const FIELDS: [(&str, Field); 10] = [
    ("id", Field::Id),
    ("payload", Field::Payload),
    ("subject", Field::Subject),
    ("endpoint", Field::Endpoint),
    ("from", Field::From),
    ("replyTo", Field::ReplyTo),
    ("traceId", Field::TraceId),
    ("createdAt", Field::CreatedAt),
    ("deliveryCount", Field::DeliveryCount),
    ("priority", Field::Priority),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(Field),
}

/// A parsed `--format` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses `text`: `{name}` placeholders, `{{` and `}}` for literal braces.
    /// An unknown name or a lone brace is a usage error naming it.
    pub fn parse(text: &str) -> Result<Self> {
        let names = || {
            FIELDS
                .iter()
                .map(|(n, _)| format!("{{{n}}}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        name.push(c);
                    }
                    if !closed {
                        return Err(Error::Usage(format!(
                            "--format '{text}': '{{{name}' is not closed; write {{{{ for a literal brace"
                        )));
                    }
                    let field = FIELDS
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map(|(_, f)| *f)
                        .ok_or_else(|| {
                            Error::Usage(format!(
                                "--format '{text}': unknown placeholder '{{{name}}}'; use {} (or {{{{ and }}}} for braces)",
                                names()
                            ))
                        })?;
                    if !lit.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Field(field));
                }
                '}' => {
                    return Err(Error::Usage(format!(
                        "--format '{text}': a lone '}}'; write }}}} for a literal brace"
                    )));
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Text(lit));
        }
        Ok(Template { parts })
    }

    /// `env` (claimed from `endpoint`) through the template.
    #[must_use]
    pub fn render(&self, env: &Envelope, endpoint: &str) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field(f) => out.push_str(&field(env, endpoint, *f)),
            }
        }
        out
    }
}

fn field(env: &Envelope, endpoint: &str, f: Field) -> String {
    match f {
        Field::Id => env.id.clone(),
        Field::Payload => match &env.payload {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        },
        Field::Subject => env.subject.clone(),
        Field::Endpoint => endpoint.to_string(),
        Field::From => env.from.clone(),
        Field::ReplyTo => env.reply_to.clone().unwrap_or_default(),
        Field::TraceId => env.trace().to_string(),
        Field::CreatedAt => env.created_at.clone(),
        Field::DeliveryCount => env.delivery_count.to_string(),
        Field::Priority => env.priority().as_str().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn braces_and_unknown_names() {
        assert!(Template::parse("{id} {{x}}").is_ok());
        let e = Template::parse("{idd}").err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("'{idd}'") && e.contains("{payload}")));
        assert!(Template::parse("a } b").is_err());
        assert!(Template::parse("{id").is_err());
    }
}
