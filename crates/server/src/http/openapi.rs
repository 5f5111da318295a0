//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document, generated from the handlers'
//! `#[utoipa::path]` annotations and the API types' `ToSchema` derives.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use super::ApiError;
use super::json::Json;
use crate::app::AppState;
use crate::auth::{Permission, Principal};

/// Every error answer: `{"error": {"code", "message", "field"?}}`.
#[derive(Serialize, ToSchema)]
pub(super) struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
struct ErrorDetail {
    /// Machine-readable: `invalid`, `malformed`, `not_found`, `insufficient_stock`, ...
    code: String,
    /// For a person.
    message: String,
    /// The field (JSON path or header) at fault, for bad input.
    field: Option<String>,
}

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Malaka API",
        description = "Inventory ledger: articles, warehouses, movements, balances, valuation; \
            stock alerts, the job queue and live events over WebSocket. \
            Every route needs `Authorization: Bearer <token>`; roles decide what a token may do.",
    ),
    components(schemas(ErrorBody)),
    modifiers(&Bearer),
    security(("bearer" = [])),
    tags(
        (name = "articles"), (name = "warehouses"), (name = "movements"), (name = "stock"),
        (name = "tokens"), (name = "alerts"), (name = "jobs"), (name = "live"), (name = "notifications"), (name = "reports")
    )
)]
struct ApiDoc;

/// The whole document.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(super::inventory::ApiDoc::openapi());
    doc.merge(super::tokens::ApiDoc::openapi());
    doc.merge(super::alerts::ApiDoc::openapi());
    doc.merge(super::jobs::ApiDoc::openapi());
    doc.merge(super::ws::ApiDoc::openapi());
    doc.merge(super::notify::ApiDoc::openapi());
    doc.merge(super::reports::ApiDoc::openapi());
    doc.merge(super::integrations::ApiDoc::openapi());
    doc
}

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/openapi.json", get(openapi))
}

async fn openapi(
    State(_): State<AppState>,
    principal: Principal,
) -> Result<Json<utoipa::openapi::OpenApi>, ApiError> {
    principal.require(Permission::Read)?;
    Ok(Json(document()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_lists_every_route_as_openapi_3_1() {
        let doc = serde_json::to_value(document()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        for path in [
            "/api/v1/articles",
            "/api/v1/articles/{sku}",
            "/api/v1/articles/{sku}/valuation",
            "/api/v1/warehouses",
            "/api/v1/warehouses/{code}",
            "/api/v1/movements",
            "/api/v1/movements/batch",
            "/api/v1/balances",
            "/api/v1/ledger",
            "/api/v1/tokens",
            "/api/v1/tokens/{id}",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} missing");
        }
        assert!(doc["components"]["schemas"]["MovementIn"].is_object());
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    }
}
