//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document, generated from the handlers'
//! `#[utoipa::path]` annotations and the API types' `ToSchema` derives.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::Serialize;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{Object, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Required};
use utoipa::{Modify, OpenApi, ToSchema};

use super::ApiError;
use super::json::Json;
use crate::app::AppState;
use crate::auth::{Permission, Principal};

/// Every error answer: `{"error": {"code", "message", "field"?}}` (what `ApiError` sends).
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)] // for the schema: `additionalProperties: false`
pub(super) struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)] // for the schema: `additionalProperties: false`
struct ErrorDetail {
    /// Machine-readable: `invalid`, `malformed`, `not_found`, `insufficient_stock`, ...
    code: String,
    /// For a person.
    message: String,
    /// The field (JSON path or header) at fault, for bad input; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false)]
    field: Option<String>,
    /// Every error, when the request has several (each unreadable line of a batch); the first
    /// is the one above. Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false)]
    errors: Option<Vec<FieldError>>,
}

/// One of several errors of a request.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct FieldError {
    /// Machine-readable: `invalid`, `out_of_range`, ...
    code: String,
    /// For a person.
    message: String,
    /// The field at fault (`movements[3].qty`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false)]
    field: Option<String>,
}

/// An answer with an [`ErrorBody`].
fn error_response(
    description: &str,
    header: Option<(&str, &str)>,
) -> RefOr<utoipa::openapi::Response> {
    let mut r = ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name(ErrorBody::name())))
            .build(),
    );
    if let Some((name, description)) = header {
        r = r.header(
            name,
            HeaderBuilder::new()
                .schema(Object::with_type(Type::String))
                .description(Some(description))
                .build(),
        );
    }
    RefOr::T(r.build())
}

/// Adds to every operation the answers any of them can give, where its own annotation has not
/// listed them: 401 (no valid token), 403 (the role lacks the permission; not on `/me`), 429
/// (rate limits), 500 and 503; and for those with a JSON body, 400 (not JSON), 413 (too large),
/// 415 (not `application/json`) and 422 (a field the `Json` extractor or the parse refuses).
/// Every POST takes an `Idempotency-Key` (the `idempotency` middleware), and with it can answer
/// 409 (the key's first request is still running) and 422 (a bad key, or one used before for
/// another request).
struct CommonResponses;

impl CommonResponses {
    fn idempotency(op: &mut Operation) {
        let params = op.parameters.get_or_insert_with(Vec::new);
        if !params.iter().any(|p| p.name == "Idempotency-Key") {
            params.push(
                ParameterBuilder::new()
                    .name("Idempotency-Key")
                    .parameter_in(ParameterIn::Header)
                    .required(Required::False)
                    .description(Some(
                        "repeat-safe request: a key new to each request; the same request sent \
                         again with the same key gets the first answer",
                    ))
                    .schema(Some(Ref::from_schema_name(
                        super::schema::IdempotencyKeySchema::name(),
                    )))
                    .build(),
            );
        }
        for (status, description) in [
            (
                "409",
                "the request's Idempotency-Key is in use by a request still running",
            ),
            (
                "422",
                "an invalid field (named in `error.field`), or an Idempotency-Key that is not 1 \
                 to 255 visible ASCII characters or was used before for another request",
            ),
        ] {
            op.responses
                .responses
                .entry(status.to_owned())
                .or_insert_with(|| error_response(description, None));
        }
    }

    fn add(path: &str, op: &mut Operation) {
        let mut common = vec![
            (
                "401",
                error_response(
                    "unauthorized: no valid token",
                    Some(("WWW-Authenticate", "`Bearer`")),
                ),
            ),
            (
                "429",
                error_response(
                    "rate_limited: over the token's rate, or too many failed requests from this \
                     address",
                    Some(("Retry-After", "Seconds to wait")),
                ),
            ),
            (
                "500",
                error_response("internal: a server fault (logged)", None),
            ),
            (
                "503",
                error_response(
                    "unavailable: nothing was written; the same request may be sent again",
                    None,
                ),
            ),
        ];
        if path != "/api/v1/me" {
            common.push((
                "403",
                error_response("forbidden: the token's role lacks the permission", None),
            ));
        }
        if op.request_body.is_some() {
            common.extend([
                (
                    "400",
                    error_response("malformed: the body is not JSON", None),
                ),
                (
                    "413",
                    error_response("too_large: the body is over 1 MiB", None),
                ),
                (
                    "415",
                    error_response(
                        "unsupported_media_type: the body is not `application/json`",
                        None,
                    ),
                ),
                (
                    "422",
                    error_response(
                        "invalid: a field's value is refused (named in `error.field`)",
                        None,
                    ),
                ),
            ]);
        }
        for (status, response) in common {
            op.responses
                .responses
                .entry(status.to_owned())
                .or_insert(response);
        }
    }
}

impl Modify for CommonResponses {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        for (path, item) in &mut doc.paths.paths {
            if let Some(op) = &mut item.post {
                Self::idempotency(op);
            }
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                Self::add(path, op);
            }
        }
    }
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
    components(schemas(
        ErrorBody,
        crate::input::MovementIn,
        super::schema::RuleInSchema,
        super::schema::SkuSchema,
        super::schema::WarehouseCodeSchema,
        super::schema::DecimalSchema,
        super::schema::PositiveDecimalSchema,
        super::schema::PageLimit,
        super::schema::TimeOrDateSchema,
        super::schema::IdempotencyKeySchema,
        super::schema::CursorSchema,
        super::schema::BalanceCursorSchema,
        super::schema::IdCursorSchema,
        super::schema::TextFilterSchema,
        super::schema::AlertLevelSchema,
        super::schema::AlertingLevelSchema,
        super::schema::AlertStateSchema,
        super::schema::PositiveIdSchema,
        super::schema::SinceSchema,
        super::schema::LiveTypesSchema,
        super::schema::ReportStateSchema,
        super::schema::JobStatesSchema,
        super::schema::InboxStateSchema,
        super::schema::FailureStateSchema,
    )),
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
    CommonResponses.modify(&mut doc);
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

    /// The constraints come from the parsers' own constants and variant lists.
    #[test]
    fn schemas_state_what_the_parsers_take() {
        use malaka_inventory::{
            CODE_PATTERN, MovementKind, NAME_MAX, SKU_MAX, ValuationMethod, WAREHOUSE_CODE_MAX,
        };
        let doc = serde_json::to_value(document()).unwrap();
        let schemas = &doc["components"]["schemas"];
        assert_eq!(schemas["Sku"]["pattern"], CODE_PATTERN);
        assert_eq!(schemas["Sku"]["maxLength"], SKU_MAX);
        assert_eq!(schemas["WarehouseCode"]["maxLength"], WAREHOUSE_CODE_MAX);
        assert_eq!(schemas["Name"]["maxLength"], NAME_MAX);
        let methods: Vec<&str> = ValuationMethod::ALL.iter().map(|m| m.as_str()).collect();
        assert_eq!(
            schemas["ValuationMethod"]["enum"],
            serde_json::json!(methods)
        );
        assert_eq!(
            schemas["ArticleIn"]["properties"]["valuation"]["oneOf"][1]["$ref"],
            "#/components/schemas/ValuationMethod"
        );
        // One movement schema per kind, told apart by `type`.
        let one_of = schemas["MovementIn"]["oneOf"].as_array().unwrap();
        assert_eq!(one_of.len(), MovementKind::ALL.len());
        for kind in MovementKind::ALL {
            let target = &schemas["MovementIn"]["discriminator"]["mapping"][kind.as_str()];
            let name = target.as_str().unwrap().rsplit('/').next().unwrap();
            assert_eq!(
                schemas[name]["properties"]["type"]["enum"],
                serde_json::json!([kind.as_str()])
            );
        }
        assert_eq!(
            schemas["ReceiptIn"]["required"],
            serde_json::json!(["type", "sku", "warehouse", "qty", "unit_cost"])
        );
        assert_eq!(schemas["ErrorBody"]["additionalProperties"], false);
        assert_eq!(
            schemas["ErrorDetail"]["properties"]["errors"]["items"]["$ref"],
            "#/components/schemas/FieldError"
        );
        assert!(schemas["FieldError"]["properties"]["field"].is_object());
    }

    /// Every operation lists the answers any operation can give, with the error body.
    #[test]
    fn every_operation_lists_its_error_answers() {
        let doc = serde_json::to_value(document()).unwrap();
        let mut n = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                n += 1;
                let responses = &op["responses"];
                for status in ["401", "429", "500", "503"] {
                    assert_eq!(
                        responses[status]["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
                if op["requestBody"].is_object() {
                    for status in ["400", "413", "415", "422"] {
                        assert!(responses[status].is_object(), "{method} {path} {status}");
                    }
                }
                if path.contains('{') {
                    assert!(responses["404"].is_object(), "{method} {path} 404");
                }
            }
        }
        assert!(n > 40, "{n} operations");
    }
}
