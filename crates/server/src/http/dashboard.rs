//! The web dashboard at `/`: static files compiled into the binary (no CDN, no build step, works
//! offline). `index.html` is the shell; `js/main.js` routes `#/...` to one ES module per page
//! under `js/pages/`. It signs in with an API token and uses only the public API and
//! `/api/v1/ws`.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::app::AppState;

const INDEX: &str = include_str!("../../dashboard/index.html");

/// `(path, contents)` of files under `dashboard/`, compiled in.
macro_rules! files {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../../dashboard/", $path)))),*]
    };
}

/// Every file under `/dashboard/`. A new page is a module in `dashboard/js/pages/`, a line
/// here and a route in `js/main.js`.
const FILES: &[(&str, &str)] = files![
    "app.css",
    "js/core.js",
    "js/main.js",
    "js/pages/overview.js",
    "js/pages/post.js",
    "js/pages/articles.js",
    "js/pages/article.js",
    "js/pages/warehouses.js",
];

/// Scripts and styles from this server only; connections to this server (and its WebSocket).
const POLICY: &str = "default-src 'self'; img-src 'self' data:; connect-src 'self'; \
                      frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(POLICY),
            ),
            (
                HeaderName::from_static("x-content-type-options"),
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

async fn asset(Path(path): Path<String>) -> Response {
    match FILES.iter().find(|(p, _)| *p == path) {
        Some((p, body)) if p.ends_with(".css") => file("text/css; charset=utf-8", body),
        Some((_, body)) => file("text/javascript; charset=utf-8", body),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/",
            get(|| async { file("text/html; charset=utf-8", INDEX) }),
        )
        .route("/dashboard/{*path}", get(asset))
}

#[cfg(test)]
mod tests {
    use super::FILES;

    /// Every module a served file imports is served too.
    #[test]
    fn every_import_is_served() {
        for (path, body) in FILES {
            let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
            for line in body.lines().filter(|l| l.starts_with("import ")) {
                let Some(spec) = line.split('"').nth(1) else {
                    continue;
                };
                let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
                for seg in spec.split('/') {
                    match seg {
                        "." => {}
                        ".." => {
                            parts.pop();
                        }
                        s => parts.push(s),
                    }
                }
                let target = parts.join("/");
                assert!(
                    FILES.iter().any(|(p, _)| *p == target),
                    "{path} imports {spec} ({target}), which is not served"
                );
            }
        }
    }
}
