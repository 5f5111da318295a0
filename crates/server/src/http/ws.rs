//! `/api/v1/ws`: live events over WebSocket, and `POST /api/v1/ws/ticket`, the short-lived ticket
//! a browser (which cannot set headers on a WebSocket) connects with. A client may also send its
//! token as the subprotocol `bearer.<token>` (next to `malaka.v1`), or, outside browsers, the
//! usual `Authorization` header.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message as Frame, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use utoipa::ToSchema;

use super::ApiError;
use super::auth::{Permission, Principal, authenticate_token};
use super::client::ClientAddr;
use super::json::Json;
use crate::app::AppState;
use crate::live::slots::Refusal;
use crate::live::{Message, Subscription, hub::TYPES};

/// The subprotocol the server speaks.
const PROTOCOL: &str = "malaka.v1";
/// Close code of a client that fell behind (it may resume with `since`).
const CLOSE_LAGGED: u16 = 4001;
/// Close code of a client that answered no ping.
const CLOSE_TIMEOUT: u16 = 4002;
/// Close code of a client that sent something the server does not understand.
const CLOSE_PROTOCOL: u16 = 4003;
/// Close code when the server shuts down.
const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code of a connection over its token's limit (policy violation).
const CLOSE_TOO_MANY_FOR_TOKEN: u16 = 1008;
/// Close code of a connection over the node's limit (try again later).
const CLOSE_NODE_FULL: u16 = 1013;

#[derive(utoipa::OpenApi)]
#[openapi(paths(ticket, connect))]
pub(super) struct ApiDoc;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/ws/ticket", post(ticket))
        .route("/ws", get(connect))
}

/// A WebSocket ticket.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct TicketOut {
    /// Pass as `?ticket=` to `/api/v1/ws`.
    ticket: String,
    /// It is refused after this time.
    expires_at: chrono::DateTime<Utc>,
}

/// A short-lived ticket to open `/api/v1/ws` with, for clients that cannot send headers.
#[utoipa::path(post, path = "/api/v1/ws/ticket", tag = "live",
    responses(
        (status = 200, body = TicketOut),
    ))]
pub(super) async fn ticket(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<TicketOut>, ApiError> {
    principal.require(Permission::Read)?;
    let ttl = chrono::Duration::from_std(state.live().config().ws_ticket_ttl)
        .unwrap_or_else(|_| chrono::Duration::seconds(60));
    let expires_at = Utc::now() + ttl;
    Ok(Json(TicketOut {
        ticket: state.live().ticket(principal.id, expires_at.timestamp()),
        expires_at,
    }))
}

#[derive(Debug, Deserialize)]
pub(super) struct ConnectQuery {
    ticket: Option<String>,
    since: Option<String>,
    skus: Option<String>,
    warehouses: Option<String>,
    types: Option<String>,
}

fn list(v: Option<&String>) -> std::collections::HashSet<String> {
    v.map(|s| {
        s.split(',')
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default()
}

/// Who opens the socket: a ticket, a `bearer.<token>` subprotocol, or an `Authorization` header.
/// A bad ticket counts against the client's allowance of failures, as a bad token does.
async fn who(
    state: &AppState,
    q: &ConnectQuery,
    headers: &HeaderMap,
    client: ClientAddr,
) -> Result<Principal, ApiError> {
    if let Some(t) = &q.ticket {
        let failures = &state.auth().failures;
        failures.check(client.0).map_err(ApiError::client_limited)?;
        let Some(id) = state.live().check_ticket(t, Utc::now().timestamp()) else {
            failures.failed(client.0);
            return Err(ApiError::unauthorized("invalid or expired ticket"));
        };
        let principal = state
            .auth()
            .tokens
            .principal(id)
            .await?
            .ok_or_else(|| ApiError::unauthorized("the ticket's token was revoked"))?;
        state
            .auth()
            .rate_limit
            .check(principal.id)
            .map_err(ApiError::rate_limited)?;
        return Ok(principal);
    }
    let offered = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| p.strip_prefix("bearer."));
    if let Some(token) = offered {
        return authenticate_token(state, token, client).await;
    }
    super::auth::authenticate(state, headers, client).await
}

/// Live events. Query: `ticket`, `since` (the last `id` received: what was missed is sent
/// first), and `skus`, `warehouses`, `types` (comma-separated; the subscription until the client
/// sends another).
#[utoipa::path(get, path = "/api/v1/ws", tag = "live",
    params(
        ("ticket" = Option<String>, Query, description = "from `POST /ws/ticket`, for clients that cannot send headers"),
        ("since" = Option<super::schema::SinceSchema>, Query, description = "the last message id received"),
        ("skus" = Option<String>, Query, description = "comma-separated"),
        ("warehouses" = Option<String>, Query, description = "comma-separated"),
        ("types" = Option<super::schema::LiveTypesSchema>, Query, description = "comma-separated message types"),
    ),
    responses(
        (status = 101, description = "switching to WebSocket"),
        (status = 400, description = "websocket_required: not a WebSocket handshake", body = super::openapi::ErrorBody),
        (status = 426, description = "upgrade_required: not a WebSocket handshake", body = super::openapi::ErrorBody),
        (status = 422, description = "an invalid query parameter (named in `error.field`)", body = super::openapi::ErrorBody),
    ))]
pub(super) async fn connect(
    State(state): State<AppState>,
    Query(q): Query<ConnectQuery>,
    headers: HeaderMap,
    client: ClientAddr,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let principal = who(&state, &q, &headers, client).await?;
    principal.require(Permission::Read)?;
    let since = q
        .since
        .as_deref()
        .map(|s| {
            s.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                ApiError::unprocessable("since", "since must be a message id (a whole number >= 0)")
            })
        })
        .transpose()?;
    let subscription = Subscription {
        skus: list(q.skus.as_ref()),
        warehouses: list(q.warehouses.as_ref()),
        types: list(q.types.as_ref()),
    };
    if let Some(t) = subscription.unknown_type() {
        return Err(ApiError::unprocessable(
            "types",
            format!("unknown message type {t:?}: use {}", TYPES.join(", ")),
        ));
    }
    // Checked once the caller is known: a request that is no handshake gets a JSON answer.
    let upgrade = upgrade.map_err(|r| {
        let code = if r.status() == StatusCode::UPGRADE_REQUIRED {
            "upgrade_required"
        } else {
            "websocket_required"
        };
        ApiError::new(r.status(), code, r.body_text())
    })?;
    tracing::debug!(token = principal.id, "WebSocket client connecting");
    let slot = state.live().slots().acquire(principal.id);
    Ok(upgrade
        .protocols([PROTOCOL])
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| async move {
            let session = Session::new(state, socket);
            match slot {
                Ok(_slot) => session.run(subscription, since).await,
                Err(refusal) => session.refuse(principal.id, refusal).await,
            }
        }))
}

/// What a client may send.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientMessage {
    subscribe: Subscription,
}

struct Session {
    state: AppState,
    socket: WebSocket,
    ping_every: Duration,
}

fn close(code: u16, reason: &'static str) -> Frame {
    Frame::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

fn text(m: &Message) -> Frame {
    Frame::Text(m.json.clone().into())
}

fn control(kind: &'static str, data: &serde_json::Value) -> Frame {
    text(&Message::new(None, kind, Utc::now(), data))
}

impl Session {
    fn new(state: AppState, socket: WebSocket) -> Self {
        let ping_every = state.live().config().ws_ping_interval;
        Self {
            state,
            socket,
            ping_every,
        }
    }

    /// Sends `frame`, giving up (the client is gone or stuck) after two ping intervals.
    async fn send(&mut self, frame: Frame) -> bool {
        match tokio::time::timeout(self.ping_every * 2, self.socket.send(frame)).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                metrics::counter!("malaka_ws_dropped_total", "reason" => "send_timeout")
                    .increment(1);
                false
            }
        }
    }

    /// Closes a connection that got no slot, saying why.
    async fn refuse(mut self, token: i64, refusal: Refusal) {
        tracing::info!(
            token,
            reason = refusal.as_str(),
            "WebSocket connection refused: over its limit"
        );
        let frame = match refusal {
            Refusal::PerToken(_) => close(
                CLOSE_TOO_MANY_FOR_TOKEN,
                "too many connections for this token (live.ws_max_per_token)",
            ),
            Refusal::PerNode(_) => close(
                CLOSE_NODE_FULL,
                "this server holds its most connections (live.ws_max_connections); retry later",
            ),
        };
        let _sent = self.send(frame).await;
    }

    async fn run(mut self, subscription: Subscription, since: Option<i64>) {
        let hub = self.state.live().hub().clone();
        let stopping = self.state.live().stopping();
        let mut client = hub.register(subscription);
        let id = client.id;
        metrics::counter!("malaka_ws_connections_total").increment(1);
        let subscription = Arc::clone(&client.subscription);
        if let Some(since) = since
            && !self.replay(since, client.cursor, &subscription).await
        {
            hub.unregister(id);
            return;
        }
        let mut ping = tokio::time::interval_at(Instant::now() + self.ping_every, self.ping_every);
        let mut heard = Instant::now();
        loop {
            tokio::select! {
                biased;
                () = client.lagged.cancelled() => {
                    let _sent = self.send(close(CLOSE_LAGGED, "lagged")).await;
                    break;
                }
                () = stopping.cancelled() => {
                    let _sent = self.send(close(CLOSE_GOING_AWAY, "server shutting down")).await;
                    break;
                }
                m = client.rx.recv() => {
                    let Some(m) = m else { break };
                    if !self.send(text(&m)).await {
                        break;
                    }
                    metrics::counter!("malaka_ws_messages_sent_total").increment(1);
                }
                frame = self.socket.recv() => {
                    heard = Instant::now();
                    match frame {
                        Some(Ok(Frame::Text(t))) => {
                            match serde_json::from_str::<ClientMessage>(t.as_str()) {
                                Ok(ClientMessage { subscribe }) => {
                                    if let Some(t) = subscribe.unknown_type() {
                                        let err = serde_json::json!({"message": format!("unknown message type {t:?}"), "field": "subscribe.types"});
                                        if !self.send(control("error", &err)).await { break; }
                                        continue;
                                    }
                                    let echo = serde_json::json!({
                                        "skus": subscribe.skus, "warehouses": subscribe.warehouses, "types": subscribe.types,
                                    });
                                    *subscription.write().unwrap_or_else(std::sync::PoisonError::into_inner) = subscribe;
                                    if !self.send(control("subscribed", &echo)).await { break; }
                                }
                                Err(e) => {
                                    let err = serde_json::json!({"message": format!("expected {{\"subscribe\": {{\"skus\", \"warehouses\", \"types\"}}}}: {e}")});
                                    if !self.send(control("error", &err)).await { break; }
                                }
                            }
                        }
                        Some(Ok(Frame::Binary(_))) => {
                            let _sent = self.send(close(CLOSE_PROTOCOL, "binary messages are not understood")).await;
                            break;
                        }
                        Some(Ok(Frame::Close(_))) | None | Some(Err(_)) => break,
                        Some(Ok(_)) => {} // ping (answered by axum) or pong
                    }
                }
                _ = ping.tick() => {
                    if heard.elapsed() > self.ping_every * 2 {
                        metrics::counter!("malaka_ws_dropped_total", "reason" => "no_pong").increment(1);
                        let _sent = self.send(close(CLOSE_TIMEOUT, "no pong")).await;
                        break;
                    }
                    if !self.send(Frame::Ping(Default::default())).await {
                        break;
                    }
                }
            }
        }
        hub.unregister(id);
    }

    /// Sends what was published after `since` up to `until` (where live delivery starts), or a
    /// `resync` when that is no longer kept. Returns whether the connection is still good.
    async fn replay(
        &mut self,
        since: i64,
        until: i64,
        subscription: &std::sync::RwLock<Subscription>,
    ) -> bool {
        let outbox = self.state.live().hub().outbox().clone();
        let first = match outbox.first_seq().await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "WebSocket replay: cannot read the outbox");
                return self
                    .send(control(
                        "resync",
                        &serde_json::json!({"reason": "replay unavailable"}),
                    ))
                    .await;
            }
        };
        let gone = since > until
            || first.is_some_and(|f| since + 1 < f)
            || (first.is_none() && since < until);
        if gone {
            metrics::counter!("malaka_ws_resyncs_total").increment(1);
            let data = serde_json::json!({
                "reason": "the events after `since` are no longer kept; reload and continue from the next message",
                "since": since, "oldest": first, "latest": until,
            });
            return self.send(control("resync", &data)).await;
        }
        let mut after = since;
        while after < until {
            let page = match outbox.published_after(after, 500).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "WebSocket replay failed");
                    return self
                        .send(control(
                            "resync",
                            &serde_json::json!({"reason": "replay failed"}),
                        ))
                        .await;
                }
            };
            if page.is_empty() {
                break;
            }
            for p in &page {
                if p.seq > until {
                    return true;
                }
                after = p.seq;
                let Some(m) = Message::of_event(p) else {
                    continue;
                };
                let wanted = subscription
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .wants(&m);
                if wanted && !self.send(text(&m)).await {
                    return false;
                }
            }
        }
        true
    }
}
