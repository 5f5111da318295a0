//! `Json<T>`: the JSON body extractor and response every handler uses. Its rejections are
//! [`ApiError`]s: a missing or wrong content type is 415, unparsable JSON is 400 `malformed`, and
//! JSON of the wrong shape is 422 `invalid` naming the field at fault.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::ApiError;
use crate::input::JsonError;

/// A JSON request body or response.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Parses `bytes` as a `T`, turning errors into 400 `malformed` or 422 `invalid` with a field
/// (the rules of every edge: `crate::input::from_json`).
///
/// # Errors
/// See above.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Every request body is a JSON object.
    crate::input::from_json::<crate::input::Object<T>>(bytes, "")
        .map(|o| o.0)
        .map_err(|e| match e {
            JsonError::Malformed(m) => {
                ApiError::malformed(format!("request body is not valid JSON: {m}"))
            }
            JsonError::Shape { field, message } if field.is_empty() => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
            }
            JsonError::Shape { field, message } => ApiError::unprocessable(field, message),
        })
}

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected a body with `Content-Type: application/json`",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            let status = e.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(status, "too_large", "request body is too large")
            } else {
                ApiError::malformed(format!("cannot read the request body: {}", e.body_text()))
            }
        })?;
        parse(&bytes).map(Self)
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Item {
        name: String,
        qty: u32,
    }

    #[test]
    fn syntax_errors_are_malformed_and_shape_errors_name_the_field() {
        let e = parse::<Item>(b"{\"name\": ").unwrap_err();
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::BAD_REQUEST, "malformed")
        );
        let e = parse::<Item>(b"{\"name\": \"a\", \"qty\": -1}").unwrap_err();
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.field(), Some("qty"));
        let e = parse::<Item>(b"{\"name\": \"a\"}").unwrap_err();
        assert_eq!(e.field(), Some("qty"));
        let e = parse::<Item>(b"{\"name\": \"a\", \"qty\": 1} x").unwrap_err();
        assert_eq!(e.code(), "malformed");
        assert!(parse::<Item>(b"{\"name\": \"a\", \"qty\": 1}").is_ok());
    }

    #[test]
    fn json_content_types() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        h.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert!(is_json(&h));
        h.insert(
            header::CONTENT_TYPE,
            "application/merge-patch+json".parse().unwrap(),
        );
        assert!(is_json(&h));
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(!is_json(&h));
    }
}
