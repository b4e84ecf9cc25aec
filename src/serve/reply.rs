//! Answers: compact JSON as DorkOS's `res.json` sends it, error bodies
//! `{error, code?}`, the Zod-style validation body, and the mapping of
//! relay's errors to statuses.

// An early answer (`Err(Response)`) is returned once per request, at once:
// boxing it would buy nothing.
#![allow(clippy::result_large_err)]

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::error::Error;

/// `Content-Type` of every JSON answer (DorkOS's).
pub const JSON: &str = "application/json; charset=utf-8";

/// `value` as compact JSON with `status`.
pub fn json(status: StatusCode, value: &Value) -> Response {
    body(status, JSON, value.to_string())
}

/// A 200 with `value`.
pub fn ok(value: &Value) -> Response {
    json(StatusCode::OK, value)
}

/// `text` as `content_type` with `status`, never cached.
pub fn body(status: StatusCode, content_type: &'static str, text: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-store"),
        ],
        text,
    )
        .into_response()
}

/// The error body `{"error": message, "code": code}` (`code` left out
/// when `None`, as on some DorkOS routes).
#[must_use]
pub fn error_body(message: &str, code: Option<&str>) -> String {
    let mut m = Map::new();
    m.insert("error".into(), Value::String(message.to_string()));
    if let Some(c) = code {
        m.insert("code".into(), Value::String(c.to_string()));
    }
    Value::Object(m).to_string()
}

/// An error answer.
pub fn error(status: StatusCode, message: &str, code: Option<&str>) -> Response {
    body(status, JSON, error_body(message, code))
}

/// Zod's flattened validation error: `400 {"error":"Validation failed",
/// "details":{"formErrors":[...],"fieldErrors":{field:[...]}}}`.
#[derive(Debug, Default)]
pub struct Invalid {
    form: Vec<String>,
    fields: Map<String, Value>,
}

impl Invalid {
    /// A problem with the whole body or query.
    pub fn form(&mut self, message: impl Into<String>) {
        self.form.push(message.into());
    }

    /// A problem with `field`.
    pub fn field(&mut self, field: &str, message: impl Into<String>) {
        let entry = self
            .fields
            .entry(field.to_string())
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(a) = entry {
            a.push(Value::String(message.into()));
        }
    }

    /// Whether nothing was found wrong.
    pub fn is_empty(&self) -> bool {
        self.form.is_empty() && self.fields.is_empty()
    }

    /// The 400 answer.
    pub fn response(self) -> Response {
        json(
            StatusCode::BAD_REQUEST,
            &json!({
                "error": "Validation failed",
                "details": { "formErrors": self.form, "fieldErrors": self.fields },
            }),
        )
    }

    /// `Ok(v)` if nothing was wrong, else the 400.
    pub fn or<T>(self, v: T) -> Result<T, Response> {
        if self.is_empty() {
            Ok(v)
        } else {
            Err(self.response())
        }
    }
}

/// Zod's name for the type of `v` ("received …").
#[must_use]
pub fn type_name(v: Option<&Value>) -> &'static str {
    match v {
        None => "undefined",
        Some(Value::Null) => "null",
        Some(Value::Bool(_)) => "boolean",
        Some(Value::Number(_)) => "number",
        Some(Value::String(_)) => "string",
        Some(Value::Array(_)) => "array",
        Some(Value::Object(_)) => "object",
    }
}

/// The answer for an error from relay's own functions: the status its
/// kind calls for, `code` the kind in capitals (`NO_ENDPOINT`, `DATA`, ...).
pub fn failure(e: &Error) -> Response {
    let status = match e {
        Error::NoInput(_) | Error::NoEndpoint(_) => StatusCode::NOT_FOUND,
        Error::Data(_) | Error::Usage(_) => StatusCode::BAD_REQUEST,
        Error::Denied(_) => StatusCode::FORBIDDEN,
        Error::Refused { .. } | Error::Locked(_) => StatusCode::SERVICE_UNAVAILABLE,
        Error::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let code = e.kind().to_ascii_uppercase();
    let mut resp = error(status, &e.to_string(), Some(&code));
    if let Some(ms) = e.retry_after_ms() {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(ms.div_ceil(1000)));
    }
    resp
}
