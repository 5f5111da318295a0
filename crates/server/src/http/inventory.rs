//! The inventory API under `/api/v1`: articles, warehouses, movements, balances, valuation and
//! the ledger. Request bodies become domain values by `parse`; domain records become the API
//! shapes below; `InventoryError` becomes an `ApiError`.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use super::json::Json;
use axum::Extension;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use malaka_inventory::{
    AlertLevel, Article, ArticlePatch, Balance, BalanceCursor, BalanceFilter, InventoryError,
    Layer, LedgerCursor, LedgerFilter, LedgerRow, Movement, NewArticle, Sku, Warehouse,
    WarehouseCode,
};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use super::ApiError;
use super::auth::{Permission, Principal};
use super::idempotency::IdempotencyKey;
#[allow(unused_imports)] // names used in the `utoipa` attributes only
use super::schema::{
    AlertLevelSchema, BalanceCursorSchema, CursorSchema, DecimalSchema, IdCursorSchema,
    IdempotencyKeySchema, MovementKindSchema, NameSchema, PageLimit, SkuSchema, TextFilterSchema,
    TimeOrDateSchema, UnitSchema, ValuationSchema, WarehouseCodeSchema,
};
use crate::app::AppState;
use crate::input::{DecimalText, MovementIn};

/// The inventory part of the OpenAPI document.
#[derive(OpenApi)]
#[openapi(paths(
    create_article,
    list_articles,
    get_article,
    patch_article,
    delete_article,
    valuation,
    create_warehouse,
    list_warehouses,
    get_warehouse,
    patch_warehouse,
    post_movement,
    post_batch,
    balances,
    ledger,
    recent_ledger
))]
pub(super) struct ApiDoc;

/// The inventory routes (relative to `/api/v1`).
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/articles", post(create_article).get(list_articles))
        .route(
            "/articles/{sku}",
            get(get_article).patch(patch_article).delete(delete_article),
        )
        .route("/articles/{sku}/valuation", get(valuation))
        .route("/warehouses", post(create_warehouse).get(list_warehouses))
        .route(
            "/warehouses/{code}",
            get(get_warehouse).patch(patch_warehouse),
        )
        .route("/movements", post(post_movement))
        .route("/movements/batch", post(post_batch))
        .route("/balances", get(balances))
        .route("/ledger", get(ledger))
        .route("/ledger/recent", get(recent_ledger))
}

impl From<InventoryError> for ApiError {
    fn from(e: InventoryError) -> Self {
        if e.is_transient() {
            // Nothing was written; the same request may be sent again.
            return ApiError::unavailable_retry(e);
        }
        match e {
            InventoryError::Invalid { field, message } => ApiError::unprocessable(field, message),
            InventoryError::OutOfRange { field, message } => {
                ApiError::unprocessable(field, message).with_code("out_of_range")
            }
            InventoryError::NotFound { .. } => ApiError::not_found(e.to_string()),
            InventoryError::Conflict { code, message } => {
                let e = ApiError::new(StatusCode::CONFLICT, code, message);
                // The field a person would change, so a form can show it there.
                match code {
                    "duplicate_sku" => e.with_field("sku"),
                    "duplicate_warehouse" => e.with_field("code"),
                    "valuation_locked" => e.with_field("valuation"),
                    _ => e,
                }
            }
            InventoryError::InsufficientStock { .. } => {
                ApiError::new(StatusCode::CONFLICT, "insufficient_stock", e.to_string())
                    .with_field("qty")
            }
            other => ApiError::internal(other),
        }
    }
}

fn opt_decimal(field: &str, v: Option<&DecimalText>) -> Result<Option<Decimal>, ApiError> {
    Ok(v.map(|d| d.parse(field)).transpose()?)
}

fn sku(s: &str) -> Result<Sku, ApiError> {
    Ok(Sku::parse(s)?)
}

fn code(s: &str) -> Result<WarehouseCode, ApiError> {
    Ok(WarehouseCode::parse(s)?)
}

/// The `next` of a page asked for `limit` rows: the last row's key when the page is full (more
/// may follow), none when it is short.
pub(super) fn next_cursor<T>(
    items: &[T],
    limit: u32,
    key: impl FnOnce(&T) -> String,
) -> Option<String> {
    if items.len() == limit as usize {
        items.last().map(key)
    } else {
        None
    }
}

/// An id cursor (`after` or `before`): a non-negative integer.
pub(super) fn id_cursor(q: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ApiError> {
    q.get(name)
        .map(|v| {
            v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                ApiError::unprocessable(
                    name,
                    format!("{name} must be an id (a whole number, 0 or more)"),
                )
            })
        })
        .transpose()
}

/// A filter compared as text (a job queue, an inbox source, ...): any text without NUL, which
/// no stored value holds and PostgreSQL cannot take as a parameter.
pub(super) fn text_filter(
    q: &HashMap<String, String>,
    name: &str,
) -> Result<Option<String>, ApiError> {
    match q.get(name) {
        Some(v) if v.contains('\0') => Err(ApiError::unprocessable(
            name,
            format!("{name} must not contain NUL"),
        )),
        v => Ok(v.cloned()),
    }
}

fn flag(q: &HashMap<String, String>, name: &str) -> Result<bool, ApiError> {
    match q.get(name).map(String::as_str) {
        None | Some("false" | "0") => Ok(false),
        Some("true" | "1") => Ok(true),
        Some(_) => Err(ApiError::unprocessable(
            name,
            format!("{name} must be true or false"),
        )),
    }
}

pub(super) fn limit(q: &HashMap<String, String>, default: u32, max: u32) -> Result<u32, ApiError> {
    match q.get("limit") {
        None => Ok(default),
        Some(s) => s
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| ApiError::unprocessable("limit", format!("limit must be 1 to {max}"))),
    }
}

// ---- API shapes ------------------------------------------------------------------------------

#[derive(Serialize, ToSchema)]
struct ArticleOut {
    #[schema(value_type = SkuSchema)]
    sku: String,
    name: String,
    unit: String,
    #[schema(value_type = ValuationSchema)]
    valuation: &'static str,
    #[schema(value_type = String, example = "12.5")]
    min_qty: Decimal,
    #[schema(value_type = String, example = "12.5")]
    reorder_qty: Decimal,
    allow_negative: bool,
    archived: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Article> for ArticleOut {
    fn from(a: Article) -> Self {
        Self {
            sku: a.sku.to_string(),
            name: a.name,
            unit: a.unit,
            valuation: a.valuation.as_str(),
            min_qty: a.min_qty.normalize(),
            reorder_qty: a.reorder_qty.normalize(),
            allow_negative: a.allow_negative,
            archived: a.archived,
            created_at: a.created_at,
            updated_at: a.updated_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
struct WarehouseOut {
    #[schema(value_type = WarehouseCodeSchema)]
    code: String,
    name: String,
    archived: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Warehouse> for WarehouseOut {
    fn from(w: Warehouse) -> Self {
        Self {
            code: w.code.to_string(),
            name: w.name,
            archived: w.archived,
            created_at: w.created_at,
            updated_at: w.updated_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
struct LedgerRowOut {
    id: i64,
    movement_id: String,
    #[serde(rename = "type")]
    #[schema(value_type = MovementKindSchema)]
    kind: &'static str,
    #[schema(value_type = SkuSchema)]
    sku: String,
    #[schema(value_type = WarehouseCodeSchema)]
    warehouse: String,
    #[schema(value_type = String, example = "12.5")]
    qty_change: Decimal,
    #[schema(value_type = String, example = "12.5")]
    unit_cost: Decimal,
    #[schema(value_type = String, example = "12.5")]
    value_change: Decimal,
    #[schema(value_type = String, example = "12.5")]
    qty_after: Decimal,
    #[schema(value_type = String, example = "12.5")]
    value_after: Decimal,
    #[schema(value_type = String, example = "12.5")]
    rate_after: Decimal,
    reference: Option<String>,
    posted_by: String,
    posted_at: DateTime<Utc>,
}

impl From<LedgerRow> for LedgerRowOut {
    fn from(r: LedgerRow) -> Self {
        Self {
            id: r.id,
            movement_id: r.movement_id,
            kind: r.kind.as_str(),
            sku: r.sku.to_string(),
            warehouse: r.warehouse.to_string(),
            qty_change: r.qty_change.normalize(),
            unit_cost: r.unit_cost.normalize(),
            value_change: r.value_change.normalize(),
            qty_after: r.qty_after.normalize(),
            value_after: r.value_after.normalize(),
            rate_after: r.rate_after.normalize(),
            reference: r.reference,
            posted_by: r.posted_by,
            posted_at: r.posted_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
struct MovementOut {
    id: String,
    #[serde(rename = "type")]
    #[schema(value_type = MovementKindSchema)]
    kind: &'static str,
    #[schema(value_type = SkuSchema)]
    sku: String,
    #[schema(value_type = WarehouseCodeSchema)]
    warehouse: String,
    #[schema(value_type = Option<WarehouseCodeSchema>)]
    to_warehouse: Option<String>,
    #[schema(value_type = String, example = "12.5")]
    qty: Decimal,
    #[schema(value_type = Option<String>, example = "12.5")]
    unit_cost: Option<Decimal>,
    reference: Option<String>,
    note: Option<String>,
    posted_by: String,
    posted_at: DateTime<Utc>,
    rows: Vec<LedgerRowOut>,
}

impl From<Movement> for MovementOut {
    fn from(m: Movement) -> Self {
        Self {
            id: m.id,
            kind: m.kind.as_str(),
            sku: m.sku.to_string(),
            warehouse: m.warehouse.to_string(),
            to_warehouse: m.to_warehouse.map(|w| w.to_string()),
            qty: m.qty.normalize(),
            unit_cost: m.unit_cost.map(|c| c.normalize()),
            reference: m.reference,
            note: m.note,
            posted_by: m.posted_by,
            posted_at: m.posted_at,
            rows: m.rows.into_iter().map(LedgerRowOut::from).collect(),
        }
    }
}

#[derive(Serialize, ToSchema)]
struct LayerOut {
    #[schema(value_type = String, example = "12.5")]
    qty: Decimal,
    #[schema(value_type = String, example = "12.5")]
    rate: Decimal,
    /// When its goods were received (a transfer keeps the date; a count gain is new); absent
    /// for layers stored before dates were kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    received_at: Option<DateTime<Utc>>,
}

impl From<&Layer> for LayerOut {
    fn from(l: &Layer) -> Self {
        Self {
            qty: l.qty.normalize(),
            rate: l.rate.normalize(),
            received_at: l.received_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
struct BalanceOut {
    #[schema(value_type = SkuSchema)]
    sku: String,
    /// The article's name.
    name: String,
    #[schema(value_type = WarehouseCodeSchema)]
    warehouse: String,
    #[schema(value_type = String, example = "12.5")]
    qty: Decimal,
    #[schema(value_type = String, example = "12.5")]
    value: Decimal,
    #[schema(value_type = String, example = "12.5")]
    rate: Decimal,
    #[schema(value_type = String, example = "12.5")]
    min_qty: Decimal,
    #[schema(value_type = AlertLevelSchema)]
    level: AlertLevel,
    updated_at: DateTime<Utc>,
}

impl From<&Balance> for BalanceOut {
    fn from(b: &Balance) -> Self {
        Self {
            sku: b.sku.to_string(),
            name: b.name.clone(),
            warehouse: b.warehouse.to_string(),
            qty: b.qty.normalize(),
            value: b.value.normalize(),
            rate: b.rate.normalize(),
            min_qty: b.min_qty.normalize(),
            level: b.level,
            updated_at: b.updated_at,
        }
    }
}

// ---- articles ---------------------------------------------------------------------------------

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ArticleIn {
    #[schema(value_type = SkuSchema)]
    sku: String,
    #[schema(value_type = NameSchema)]
    name: String,
    /// Default `pcs`.
    #[schema(value_type = Option<UnitSchema>)]
    unit: Option<String>,
    /// Default `moving_average`.
    #[schema(value_type = Option<ValuationSchema>)]
    valuation: Option<String>,
    /// Minimum quantity per warehouse (default 0): at or below it the level is LOW.
    #[serde(default)]
    #[schema(value_type = Option<DecimalSchema>)]
    min_qty: Option<DecimalText>,
    /// Suggested reorder quantity (default 0).
    #[serde(default)]
    #[schema(value_type = Option<DecimalSchema>)]
    reorder_qty: Option<DecimalText>,
    allow_negative: Option<bool>,
}

#[utoipa::path(post, path = "/api/v1/articles", tag = "articles", request_body = ArticleIn,
    responses(
        (status = 201, body = ArticleOut),
        (status = 409, description = "duplicate_sku: an article has this SKU", body = super::openapi::ErrorBody),
    ))]
async fn create_article(
    State(state): State<AppState>,
    principal: Principal,
    body: Result<Json<ArticleIn>, ApiError>,
) -> Result<Response, ApiError> {
    principal.require(Permission::ManageCatalog)?;
    let Json(a) = body?;
    let new = NewArticle::parse(
        &a.sku,
        &a.name,
        a.unit.as_deref(),
        a.valuation.as_deref(),
        opt_decimal("min_qty", a.min_qty.as_ref())?,
        opt_decimal("reorder_qty", a.reorder_qty.as_ref())?,
        a.allow_negative,
    )?;
    let article = state.inventory().create_article(&new).await?;
    Ok((StatusCode::CREATED, Json(ArticleOut::from(article))).into_response())
}

#[derive(Serialize, ToSchema)]
struct Page<T: ToSchema> {
    items: Vec<T>,
    next: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/articles", tag = "articles",
    params(
        ("after" = Option<SkuSchema>, Query, description = "the `next` of the previous page"),
        ("limit" = Option<PageLimit>, Query, description = "1 to 1000, default 100"),
        ("archived" = Option<bool>, Query, description = "include archived articles"),
        ("q" = Option<TextFilterSchema>, Query, description = "only articles whose SKU starts with this text or whose name holds it (case-insensitive)"),
    ),
    responses(
        (status = 200, body = Page<ArticleOut>),
        (status = 422, description = "an invalid query parameter (named in `error.field`)", body = super::openapi::ErrorBody),
    ))]
async fn list_articles(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Page<ArticleOut>>, ApiError> {
    principal.require(Permission::Read)?;
    let after = q.get("after").map(|s| sku(s)).transpose()?;
    let limit = limit(&q, 100, 1000)?;
    let items = state
        .inventory()
        .articles(
            after.as_ref(),
            limit,
            flag(&q, "archived")?,
            text_filter(&q, "q")?.as_deref().filter(|t| !t.is_empty()),
        )
        .await?;
    let next = next_cursor(&items, limit, |a| a.sku.to_string());
    Ok(Json(Page {
        items: items.into_iter().map(ArticleOut::from).collect(),
        next,
    }))
}

#[utoipa::path(get, path = "/api/v1/articles/{sku}", tag = "articles",
    params(("sku" = SkuSchema, Path)),
    responses(
        (status = 200, body = ArticleOut),
        (status = 404, description = "not_found: no such article", body = super::openapi::ErrorBody),
        (status = 422, description = "the SKU is not a valid SKU", body = super::openapi::ErrorBody),
    ))]
async fn get_article(
    State(state): State<AppState>,
    principal: Principal,
    Path(s): Path<String>,
) -> Result<Json<ArticleOut>, ApiError> {
    principal.require(Permission::Read)?;
    Ok(Json(state.inventory().article(&sku(&s)?).await?.into()))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ArticlePatchIn {
    #[schema(value_type = Option<NameSchema>)]
    name: Option<String>,
    #[schema(value_type = Option<UnitSchema>)]
    unit: Option<String>,
    /// Refused (409) once the article has ledger rows.
    #[schema(value_type = Option<ValuationSchema>)]
    valuation: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<DecimalSchema>)]
    min_qty: Option<DecimalText>,
    #[serde(default)]
    #[schema(value_type = Option<DecimalSchema>)]
    reorder_qty: Option<DecimalText>,
    allow_negative: Option<bool>,
    archived: Option<bool>,
}

#[utoipa::path(patch, path = "/api/v1/articles/{sku}", tag = "articles",
    params(("sku" = SkuSchema, Path)),
    request_body = ArticlePatchIn,
    responses(
        (status = 200, body = ArticleOut),
        (status = 404, description = "not_found: no such article", body = super::openapi::ErrorBody),
        (status = 409, description = "a change its state does not allow: valuation_locked (it has ledger rows), ...", body = super::openapi::ErrorBody),
    ))]
async fn patch_article(
    State(state): State<AppState>,
    principal: Principal,
    Path(s): Path<String>,
    body: Result<Json<ArticlePatchIn>, ApiError>,
) -> Result<Json<ArticleOut>, ApiError> {
    principal.require(Permission::ManageCatalog)?;
    let sku = sku(&s)?;
    let Json(p) = body?;
    let patch = ArticlePatch::parse(
        p.name.as_deref(),
        p.unit.as_deref(),
        p.valuation.as_deref(),
        opt_decimal("min_qty", p.min_qty.as_ref())?,
        opt_decimal("reorder_qty", p.reorder_qty.as_ref())?,
        p.allow_negative,
        p.archived,
    )?;
    let article = state
        .inventory()
        .update_article(&sku, &patch, &principal.name)
        .await?;
    state.balances_changed();
    Ok(Json(article.into()))
}

#[utoipa::path(delete, path = "/api/v1/articles/{sku}", tag = "articles",
    params(("sku" = SkuSchema, Path)),
    responses(
        (status = 204, description = "deleted (it had no ledger rows)"),
        (status = 200, description = "archived (it has ledger rows)", body = ArticleOut),
        (status = 404, description = "not_found: no such article", body = super::openapi::ErrorBody),
        (status = 409, description = "it cannot be deleted in its state", body = super::openapi::ErrorBody),
        (status = 422, description = "the SKU is not a valid SKU", body = super::openapi::ErrorBody),
    ))]
async fn delete_article(
    State(state): State<AppState>,
    principal: Principal,
    Path(s): Path<String>,
) -> Result<Response, ApiError> {
    principal.require(Permission::ManageCatalog)?;
    let archived = state.inventory().delete_article(&sku(&s)?).await?;
    state.balances_changed();
    Ok(match archived {
        // It has ledger rows: kept, archived.
        Some(a) => Json(ArticleOut::from(a)).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

#[derive(Serialize, ToSchema)]
struct ValuationOut {
    #[schema(value_type = SkuSchema)]
    sku: String,
    #[schema(value_type = ValuationSchema)]
    valuation: &'static str,
    #[schema(value_type = String, example = "12.5")]
    qty: Decimal,
    #[schema(value_type = String, example = "12.5")]
    value: Decimal,
    warehouses: Vec<WarehouseValuation>,
}

#[derive(Serialize, ToSchema)]
struct WarehouseValuation {
    #[schema(value_type = WarehouseCodeSchema)]
    warehouse: String,
    #[schema(value_type = String, example = "12.5")]
    qty: Decimal,
    #[schema(value_type = String, example = "12.5")]
    rate: Decimal,
    #[schema(value_type = String, example = "12.5")]
    value: Decimal,
    layers: Vec<LayerOut>,
}

#[utoipa::path(get, path = "/api/v1/articles/{sku}/valuation", tag = "articles",
    params(("sku" = SkuSchema, Path)),
    responses(
        (status = 200, body = ValuationOut),
        (status = 404, description = "not_found: no such article", body = super::openapi::ErrorBody),
        (status = 422, description = "the SKU is not a valid SKU", body = super::openapi::ErrorBody),
    ))]
async fn valuation(
    State(state): State<AppState>,
    principal: Principal,
    Path(s): Path<String>,
) -> Result<Json<ValuationOut>, ApiError> {
    principal.require(Permission::Read)?;
    let sku = sku(&s)?;
    let article = state.inventory().article(&sku).await?;
    let filter = BalanceFilter {
        sku: Some(sku),
        ..BalanceFilter::default()
    };
    let rows = state.inventory().balances(&filter).await?;
    Ok(Json(ValuationOut {
        sku: article.sku.to_string(),
        valuation: article.valuation.as_str(),
        qty: rows.iter().map(|b| b.qty).sum::<Decimal>().normalize(),
        value: rows.iter().map(|b| b.value).sum::<Decimal>().normalize(),
        warehouses: rows
            .iter()
            .map(|b| WarehouseValuation {
                warehouse: b.warehouse.to_string(),
                qty: b.qty.normalize(),
                rate: b.rate.normalize(),
                value: b.value.normalize(),
                layers: b.layers.iter().map(LayerOut::from).collect(),
            })
            .collect(),
    }))
}

// ---- warehouses -------------------------------------------------------------------------------

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct WarehouseIn {
    #[schema(value_type = WarehouseCodeSchema)]
    code: String,
    #[schema(value_type = NameSchema)]
    name: String,
}

#[utoipa::path(post, path = "/api/v1/warehouses", tag = "warehouses", request_body = WarehouseIn,
    responses(
        (status = 201, body = WarehouseOut),
        (status = 409, description = "duplicate_warehouse: a warehouse has this code", body = super::openapi::ErrorBody),
    ))]
async fn create_warehouse(
    State(state): State<AppState>,
    principal: Principal,
    body: Result<Json<WarehouseIn>, ApiError>,
) -> Result<Response, ApiError> {
    principal.require(Permission::ManageCatalog)?;
    let Json(w) = body?;
    let code = code(&w.code)?;
    let warehouse = state.inventory().create_warehouse(&code, &w.name).await?;
    Ok((StatusCode::CREATED, Json(WarehouseOut::from(warehouse))).into_response())
}

#[utoipa::path(get, path = "/api/v1/warehouses", tag = "warehouses",
    params(
        ("after" = Option<WarehouseCodeSchema>, Query, description = "the `next` of the previous page"),
        ("limit" = Option<PageLimit>, Query, description = "1 to 1000, default 100"),
        ("archived" = Option<bool>, Query, description = "include archived warehouses"),
        ("q" = Option<TextFilterSchema>, Query, description = "only warehouses whose code starts with this text or whose name holds it (case-insensitive)"),
    ),
    responses(
        (status = 200, body = Page<WarehouseOut>),
        (status = 422, description = "an invalid query parameter (named in `error.field`)", body = super::openapi::ErrorBody),
    ))]
async fn list_warehouses(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Page<WarehouseOut>>, ApiError> {
    principal.require(Permission::Read)?;
    let after = q
        .get("after")
        .map(|c| WarehouseCode::parse_field("after", c))
        .transpose()?;
    let limit = limit(&q, 100, 1000)?;
    let items = state
        .inventory()
        .warehouses(
            after.as_ref(),
            limit,
            flag(&q, "archived")?,
            text_filter(&q, "q")?.as_deref().filter(|t| !t.is_empty()),
        )
        .await?;
    let next = next_cursor(&items, limit, |w| w.code.to_string());
    Ok(Json(Page {
        items: items.into_iter().map(WarehouseOut::from).collect(),
        next,
    }))
}

#[utoipa::path(get, path = "/api/v1/warehouses/{code}", tag = "warehouses",
    params(("code" = WarehouseCodeSchema, Path)),
    responses(
        (status = 200, body = WarehouseOut),
        (status = 404, description = "not_found: no such warehouse", body = super::openapi::ErrorBody),
        (status = 422, description = "the code is not a valid warehouse code", body = super::openapi::ErrorBody),
    ))]
async fn get_warehouse(
    State(state): State<AppState>,
    principal: Principal,
    Path(c): Path<String>,
) -> Result<Json<WarehouseOut>, ApiError> {
    principal.require(Permission::Read)?;
    Ok(Json(state.inventory().warehouse(&code(&c)?).await?.into()))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct WarehousePatchIn {
    #[schema(value_type = Option<NameSchema>)]
    name: Option<String>,
    archived: Option<bool>,
}

#[utoipa::path(patch, path = "/api/v1/warehouses/{code}", tag = "warehouses",
    params(("code" = WarehouseCodeSchema, Path)),
    request_body = WarehousePatchIn,
    responses(
        (status = 200, body = WarehouseOut),
        (status = 404, description = "not_found: no such warehouse", body = super::openapi::ErrorBody),
        (status = 409, description = "a change its state does not allow (archiving a warehouse that holds stock, ...)", body = super::openapi::ErrorBody),
    ))]
async fn patch_warehouse(
    State(state): State<AppState>,
    principal: Principal,
    Path(c): Path<String>,
    body: Result<Json<WarehousePatchIn>, ApiError>,
) -> Result<Json<WarehouseOut>, ApiError> {
    principal.require(Permission::ManageCatalog)?;
    let code = code(&c)?;
    let Json(p) = body?;
    let w = state
        .inventory()
        .update_warehouse(&code, p.name.as_deref(), p.archived)
        .await?;
    Ok(Json(w.into()))
}

// ---- movements --------------------------------------------------------------------------------

#[utoipa::path(post, path = "/api/v1/movements", tag = "movements", request_body = MovementIn,
    params(
        ("Idempotency-Key" = Option<IdempotencyKeySchema>, Header, description = "repeat-safe posting: a key new to each movement; the same request with the same key gets the first answer"),
    ),
    responses(
        (status = 201, body = MovementOut),
        (status = 404, description = "not_found: no such article or warehouse", body = super::openapi::ErrorBody),
        (status = 409, description = "the ledger refuses it: insufficient_stock, article_archived, warehouse_archived, ...; or its Idempotency-Key is in use by a request still running", body = super::openapi::ErrorBody),
        (status = 422, description = "an invalid field (named in `error.field`), out_of_range, or an Idempotency-Key used before for another request", body = super::openapi::ErrorBody),
    ))]
async fn post_movement(
    State(state): State<AppState>,
    principal: Principal,
    key: Option<Extension<IdempotencyKey>>,
    body: Result<Json<MovementIn>, ApiError>,
) -> Result<Response, ApiError> {
    principal.require(Permission::PostMovements)?;
    let Json(m) = body?;
    let m = m.parse(None)?;
    // With a key, the answer is recorded in the posting's own transaction.
    let hook = key.map(|Extension(k)| k.hook(StatusCode::CREATED, movement_body));
    let posted = state
        .inventory()
        .post_batch_with(std::slice::from_ref(&m), &principal.name, None, hook)
        .await
        .map_err(InventoryError::into_root);
    state.balances_changed();
    created(movement_body(&posted?)?)
}

/// A batch's refusal with the field of the refused movement named (`movements[3].qty`,
/// `movements[3].sku`, `movements[3].to_warehouse`), so a client can mark that line.
fn refused_line(e: InventoryError) -> ApiError {
    let InventoryError::InBatch {
        index,
        field,
        source,
    } = e
    else {
        return e.into();
    };
    let mut err = ApiError::from(*source);
    if let Some(f) = field {
        err = err.with_field(f);
    }
    err.in_field(&format!("movements[{index}]"))
}

/// The answer to `POST /movements`: the one movement posted.
fn movement_body(posted: &[Movement]) -> Result<Vec<u8>, InventoryError> {
    let m = posted
        .first()
        .cloned()
        .ok_or_else(|| InventoryError::Corrupt("a posting returned no movement".into()))?;
    Ok(serde_json::to_vec(&MovementOut::from(m))?)
}

/// The answer to `POST /movements/batch`.
fn batch_body(posted: &[Movement]) -> Result<Vec<u8>, InventoryError> {
    Ok(serde_json::to_vec(&BatchOut {
        movements: posted.iter().cloned().map(MovementOut::from).collect(),
    })?)
}

/// 201 with a JSON body already rendered (the same bytes an idempotency record holds).
fn created(body: Vec<u8>) -> Result<Response, ApiError> {
    Ok((
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct BatchIn {
    #[serde(deserialize_with = "crate::input::objects")]
    #[schema(schema_with = super::schema::batch_movements)]
    movements: Vec<MovementIn>,
}

#[derive(Serialize, ToSchema)]
struct BatchOut {
    movements: Vec<MovementOut>,
}

#[utoipa::path(post, path = "/api/v1/movements/batch", tag = "movements", request_body = BatchIn,
    params(
        ("Idempotency-Key" = Option<IdempotencyKeySchema>, Header, description = "repeat-safe posting: a key new to each batch"),
    ),
    responses(
        (status = 201, body = BatchOut),
        (status = 404, description = "not_found: no such article or warehouse (`error.field` names the movement's: `movements[i].sku`)", body = super::openapi::ErrorBody),
        (status = 409, description = "the ledger refuses one of them (nothing is posted; `error.field` names it, `movements[i].qty`): insufficient_stock, ...; or its Idempotency-Key is in use by a request still running", body = super::openapi::ErrorBody),
        (status = 422, description = "an invalid field (`movements[i].field`), or an Idempotency-Key used before for another request", body = super::openapi::ErrorBody),
    ))]
async fn post_batch(
    State(state): State<AppState>,
    principal: Principal,
    key: Option<Extension<IdempotencyKey>>,
    body: Result<Json<BatchIn>, ApiError>,
) -> Result<Response, ApiError> {
    principal.require(Permission::PostMovements)?;
    let Json(b) = body?;
    if b.movements.is_empty() || b.movements.len() > malaka_inventory::MAX_BATCH {
        return Err(ApiError::unprocessable(
            "movements",
            format!(
                "a batch holds 1 to {} movements, not {}",
                malaka_inventory::MAX_BATCH,
                b.movements.len()
            ),
        ));
    }
    // Every line is read, and every unreadable one named, so a person fixes them in one go.
    let mut parsed = Vec::with_capacity(b.movements.len());
    let mut unreadable = Vec::new();
    for (i, m) in b.movements.iter().enumerate() {
        match m.parse(None) {
            Ok(m) => parsed.push(m),
            Err(e) => unreadable.push(ApiError::from(e).in_field(&format!("movements[{i}]"))),
        }
    }
    if let Some(e) = ApiError::all(unreadable) {
        return Err(e);
    }
    let hook = key.map(|Extension(k)| k.hook(StatusCode::CREATED, batch_body));
    let posted = state
        .inventory()
        .post_batch_with(&parsed, &principal.name, None, hook)
        .await;
    state.balances_changed();
    let posted = posted.map_err(refused_line)?;
    created(batch_body(&posted)?)
}

// ---- reads ------------------------------------------------------------------------------------

#[utoipa::path(get, path = "/api/v1/balances", tag = "stock",
    params(
        ("sku" = Option<SkuSchema>, Query),
        ("warehouse" = Option<WarehouseCodeSchema>, Query),
        ("level" = Option<AlertLevelSchema>, Query),
        ("cursor" = Option<BalanceCursorSchema>, Query, description = "the `next` of the previous page"),
        ("limit" = Option<PageLimit>, Query, description = "1 to 1000, default 100"),
    ),
    responses(
        (status = 200, body = Page<BalanceOut>),
        (status = 422, description = "an invalid query parameter (named in `error.field`)", body = super::openapi::ErrorBody),
    ))]
async fn balances(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Page<BalanceOut>>, ApiError> {
    principal.require(Permission::Read)?;
    let filter = BalanceFilter {
        sku: q.get("sku").map(|s| sku(s)).transpose()?,
        warehouse: q
            .get("warehouse")
            .map(|c| WarehouseCode::parse_field("warehouse", c))
            .transpose()?,
        level: q
            .get("level")
            .map(|l| AlertLevel::from_str(&l.to_ascii_uppercase()))
            .transpose()?,
        after: q
            .get("cursor")
            .map(|c| BalanceCursor::parse(c))
            .transpose()?,
        limit: Some(limit(&q, 100, 1000)?),
    };
    let page = filter.limit.unwrap_or(100);
    let inventory = state.inventory().clone();
    let generation = state.balance_generation().await;
    let rows = state
        .balance_cache()
        .try_get_with((generation, filter.clone()), async move {
            inventory.balances(&filter).await.map(Arc::new)
        })
        .await
        .map_err(|e: Arc<InventoryError>| ApiError::internal(e))?;
    let next = next_cursor(&rows, page, |b| {
        BalanceCursor {
            sku: b.sku.clone(),
            warehouse: b.warehouse.clone(),
        }
        .to_string()
    });
    Ok(Json(Page {
        items: rows.iter().map(BalanceOut::from).collect(),
        next,
    }))
}

#[derive(Serialize, ToSchema)]
struct LedgerOut {
    items: Vec<LedgerRowOut>,
    next: Option<String>,
}

fn time(field: &str, s: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| {
            chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc())
        })
        .map_err(|_| {
            ApiError::unprocessable(
                field,
                format!("{field} must be an RFC 3339 time or a YYYY-MM-DD date"),
            )
        })
}

#[utoipa::path(get, path = "/api/v1/ledger", tag = "stock",
    params(
        ("sku" = Option<SkuSchema>, Query),
        ("warehouse" = Option<WarehouseCodeSchema>, Query),
        ("from" = Option<TimeOrDateSchema>, Query, description = "posted at or after: an RFC 3339 time or a YYYY-MM-DD date"),
        ("to" = Option<TimeOrDateSchema>, Query, description = "posted before: an RFC 3339 time or a YYYY-MM-DD date"),
        ("cursor" = Option<CursorSchema>, Query, description = "the `next` of the previous page"),
        ("limit" = Option<PageLimit>, Query, description = "1 to 1000, default 100"),
    ),
    responses(
        (status = 200, body = LedgerOut),
        (status = 422, description = "an invalid query parameter (named in `error.field`)", body = super::openapi::ErrorBody),
    ))]
async fn ledger(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<LedgerOut>, ApiError> {
    principal.require(Permission::Read)?;
    let filter = LedgerFilter {
        sku: q.get("sku").map(|s| sku(s)).transpose()?,
        warehouse: q
            .get("warehouse")
            .map(|c| WarehouseCode::parse_field("warehouse", c))
            .transpose()?,
        from: q.get("from").map(|s| time("from", s)).transpose()?,
        to: q.get("to").map(|s| time("to", s)).transpose()?,
        after: q
            .get("cursor")
            .map(|c| LedgerCursor::parse(c))
            .transpose()?,
        limit: Some(limit(&q, 100, 1000)?),
    };
    let page = state.inventory().ledger(&filter).await?;
    Ok(Json(LedgerOut {
        items: page.rows.into_iter().map(LedgerRowOut::from).collect(),
        next: page.next.map(|c| c.to_string()),
    }))
}

/// The newest ledger rows.
#[derive(Serialize, ToSchema)]
struct RecentOut {
    /// Newest first.
    items: Vec<LedgerRowOut>,
    /// Pass as `before` for the next (older) page; null on the last.
    next: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/ledger/recent", tag = "stock",
    params(
        ("before" = Option<IdCursorSchema>, Query, description = "the `next` of the previous page"),
        ("limit" = Option<PageLimit>, Query, description = "1 to 1000, default 20"),
    ),
    responses(
        (status = 200, body = RecentOut),
        (status = 422, description = "an invalid query parameter (named in `error.field`)", body = super::openapi::ErrorBody),
    ))]
async fn recent_ledger(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<RecentOut>, ApiError> {
    principal.require(Permission::Read)?;
    let limit = limit(&q, 20, 1000)?;
    let rows = state
        .inventory()
        .recent_ledger(id_cursor(&q, "before")?, limit)
        .await?;
    let next = next_cursor(&rows, limit, |r| r.id.to_string());
    Ok(Json(RecentOut {
        items: rows.into_iter().map(LedgerRowOut::from).collect(),
        next,
    }))
}
