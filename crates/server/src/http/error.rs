//! The one HTTP error type: a status, a machine-readable code, a human message and, for bad input,
//! the field at fault. Server-side failures are logged in full and answered with a generic message.

use axum::Json;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error answer: `{"error": {"code", "message", "field"?, "errors"?}}`; `errors` lists every
/// field at fault when a request has several (the lines of a batch), the first of them repeated
/// in `code`, `message` and `field`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: Box<str>,
    field: Option<String>,
    /// Every error, when there are several (boxed: rare, and an `ApiError` is returned often).
    errors: Option<Box<[Listed]>>,
    /// For 5xx: what went wrong, logged and never sent.
    internal: Option<Box<str>>,
    /// Headers sent with the answer (`WWW-Authenticate`, `Retry-After`).
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// One of several errors: code, message, field.
type Listed = (&'static str, String, Option<String>);

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<Detail<'a>>,
}

impl ApiError {
    /// Any status with a code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into().into_boxed_str(),
            field: None,
            errors: None,
            internal: None,
            headers: Vec::new(),
        }
    }

    /// The same error with another machine-readable code.
    #[must_use]
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }

    /// Adds a header to the answer.
    #[must_use]
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// 422: a field's value is well-formed JSON but not acceptable (`field` is the JSON path, or
    /// a header's name).
    pub fn unprocessable(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
        }
    }

    /// 400: the body could not be parsed.
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed", message)
    }

    /// 401 with `WWW-Authenticate: Bearer`: no valid token.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
            .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    }

    /// 403: the token is valid but not allowed to do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 409: the request conflicts with the current state.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 429 with `Retry-After` (whole seconds, at least 1).
    pub fn rate_limited(retry_after: std::time::Duration) -> Self {
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        let secs = secs.max(1);
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests for this token; retry in {secs} s"),
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from(secs))
    }

    /// 429 `rate_limited`: the client address made too many failed requests.
    pub fn client_limited(retry_after: std::time::Duration) -> Self {
        let secs = (retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0)).max(1);
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many failed requests from this address; retry in {secs} s"),
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from(secs))
    }

    /// 400: a field's value is invalid.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_input", message)
        }
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 503: temporarily unable to serve.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 503 `unavailable` with `Retry-After: 1`: the database (or the posting committer) failed
    /// and nothing was written; the same request may be sent again. The cause is logged, not
    /// sent.
    pub fn unavailable_retry(cause: impl std::fmt::Display) -> Self {
        Self {
            internal: Some(cause.to_string().into()),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the request could not be committed now and nothing was written; send it again",
            )
        }
        .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
    }

    /// 500: the cause is logged, the client gets a generic message.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self {
            internal: Some(cause.to_string().into()),
            ..Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal server error",
            )
        }
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The same error naming `field` as the one at fault.
    #[must_use]
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// The same error with its field placed under `prefix` (`movements[3]` + `qty` ->
    /// `movements[3].qty`), for items of a list.
    #[must_use]
    pub fn in_field(mut self, prefix: &str) -> Self {
        self.field = Some(match self.field.take() {
            Some(f) => format!("{prefix}.{f}"),
            None => prefix.to_owned(),
        });
        self.message = format!("{prefix}: {}", self.message).into_boxed_str();
        self
    }

    /// One answer for several errors of the same request (each line of a batch that cannot be
    /// read): the first gives the status, code, message and field, and `errors` lists them all.
    /// None when `errors` is empty.
    pub fn all(errors: Vec<ApiError>) -> Option<Self> {
        let mut iter = errors.into_iter();
        let first = iter.next()?;
        let mut listed = vec![(first.code, first.message.to_string(), first.field.clone())];
        listed.extend(iter.map(|e| (e.code, e.message.into_string(), e.field)));
        if listed.len() == 1 {
            return Some(first);
        }
        Some(Self {
            errors: Some(listed.into_boxed_slice()),
            ..first
        })
    }

    /// The field at fault, if any.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Some(cause) = &self.internal {
            tracing::error!(status = %self.status, code = self.code, %cause, "request failed");
        }
        let body = Body {
            error: Detail {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
                errors: self
                    .errors
                    .iter()
                    .flat_map(|all| all.iter())
                    .map(|(code, message, field)| Detail {
                        code,
                        message,
                        field: field.as_deref(),
                        errors: Vec::new(),
                    })
                    .collect(),
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        for (name, value) in self.headers {
            response.headers_mut().append(name, value);
        }
        if self.code == super::idempotency::ALREADY_ANSWERED {
            // The idempotency middleware replays the recorded answer instead.
            response
                .extensions_mut()
                .insert(super::idempotency::ReplayStored);
        }
        response
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(e: crate::db::DbError) -> Self {
        Self::internal(e)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self::internal(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body(r: Response) -> serde_json::Value {
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn invalid_names_the_field() {
        let r = ApiError::invalid("qty", "must be greater than 0").into_response();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            body(r).await,
            serde_json::json!({"error": {"code": "invalid_input", "message": "must be greater than 0", "field": "qty"}})
        );
    }

    #[tokio::test]
    async fn auth_errors_carry_their_headers() {
        let r = ApiError::unauthorized("no token").into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let r = ApiError::rate_limited(std::time::Duration::from_millis(1200)).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()["retry-after"], "2");
        let r = ApiError::rate_limited(std::time::Duration::from_millis(10)).into_response();
        assert_eq!(r.headers()["retry-after"], "1");
        assert_eq!(body(r).await["error"]["code"], "rate_limited");
    }

    #[tokio::test]
    async fn unprocessable_names_the_field() {
        let r = ApiError::unprocessable("name", "must not be empty").into_response();
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            body(r).await,
            serde_json::json!({"error": {"code": "invalid", "message": "must not be empty", "field": "name"}})
        );
    }

    #[tokio::test]
    async fn internal_details_are_not_sent() {
        let r = ApiError::internal("password=hunter2 at db.rs:42").into_response();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let b = body(r).await;
        assert!(!b.to_string().contains("hunter2"));
        assert_eq!(b["error"]["code"], "internal");
    }
}
