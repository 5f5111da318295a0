//! API tokens, roles, rate limits and `Idempotency-Key`, through the real HTTP API on every
//! backend (the bootstrap token and `malaka token` through the binary: crates/cli/tests/it/auth.rs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use crate::common;
use crate::common::on_both;

use common::{Backend, TestApp, spawn_app_with};
use malaka_server::auth::Role;
use serde_json::{Value, json};

async fn error_of(r: reqwest::Response) -> Value {
    let body: Value = r.json().await.unwrap();
    body["error"].clone()
}

async fn token_count(app: &TestApp, admin: &str) -> usize {
    let r = app.get_as(admin, "/api/v1/tokens").await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    body["tokens"].as_array().unwrap().len()
}

on_both!(requests_without_a_valid_token_get_401);
async fn requests_without_a_valid_token_get_401(app: &TestApp) {
    let r = app.get("/api/v1/tokens").await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(error_of(r).await["code"], "unauthorized");

    let unknown = malaka_server::auth::generate_token();
    for token in ["nope", "mlk_short", unknown.as_str()] {
        let r = app.get_as(token, "/api/v1/tokens").await;
        assert_eq!(r.status(), 401, "{token}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        assert_eq!(error_of(r).await["code"], "unauthorized");
    }
    let admin = app.admin_token().await;
    let r = app
        .client
        .get(app.url("/api/v1/tokens"))
        .header("authorization", format!("Basic {admin}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = app
        .client
        .post(app.url("/api/v1/tokens"))
        .json(&json!({"name": "x", "role": "viewer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Health and metrics stay open.
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.get("/readyz").await.status(), 200);
    assert_eq!(app.get("/metrics").await.status(), 200);
}

on_both!(only_admins_manage_tokens);
async fn only_admins_manage_tokens(app: &TestApp) {
    let admin = app.admin_token().await;
    for role in [Role::Viewer, Role::Clerk, Role::Manager] {
        let token = app.token(role).await;
        let r = app.get_as(&token, "/api/v1/tokens").await;
        assert_eq!(r.status(), 403, "{role}");
        let e = error_of(r).await;
        assert_eq!(e["code"], "forbidden");
        assert!(
            e["message"].as_str().unwrap().contains("manage_tokens"),
            "{e}"
        );
        let r = app
            .post_json(
                &token,
                "/api/v1/tokens",
                &json!({"name": "x", "role": "admin"}),
            )
            .await;
        assert_eq!(r.status(), 403, "{role}");
        let r = app.delete_as(&token, "/api/v1/tokens/1").await;
        assert_eq!(r.status(), 403, "{role}");
    }

    let r = app
        .post_json(
            &admin,
            "/api/v1/tokens",
            &json!({"name": "scanner 7", "role": "clerk"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["name"], "scanner 7");
    assert_eq!(created["role"], "clerk");
    assert!(created["created_at"].is_string());
    let secret = created["token"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("mlk_") && secret.len() == 47, "{secret}");
    let id = created["id"].as_i64().unwrap();

    let r = app.get_as(&admin, "/api/v1/tokens").await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(!text.contains(&secret), "the list shows no secret: {text}");
    let list: Value = serde_json::from_str(&text).unwrap();
    let listed = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .unwrap();
    assert_eq!(listed["name"], "scanner 7");
    assert_eq!(listed["role"], "clerk");
    assert!(listed["revoked_at"].is_null());
    assert!(listed.get("token").is_none() && listed.get("hash").is_none());

    // The new clerk token authenticates (403 is past authentication).
    assert_eq!(app.get_as(&secret, "/api/v1/tokens").await.status(), 403);
    let r = app.delete_as(&admin, &format!("/api/v1/tokens/{id}")).await;
    assert_eq!(r.status(), 204);
    assert_eq!(app.get_as(&secret, "/api/v1/tokens").await.status(), 401);
}

on_both!(a_revoked_token_stops_working_at_once);
async fn a_revoked_token_stops_working_at_once(app: &TestApp) {
    let admin = app.admin_token().await;
    let r = app
        .post_json(
            &admin,
            "/api/v1/tokens",
            &json!({"name": "second admin", "role": "admin"}),
        )
        .await;
    let created: Value = r.json().await.unwrap();
    let second = created["token"].as_str().unwrap().to_owned();
    let id = created["id"].as_i64().unwrap();
    // Used once, so it sits in the lookup cache.
    assert_eq!(app.get_as(&second, "/api/v1/tokens").await.status(), 200);
    assert_eq!(
        app.delete_as(&admin, &format!("/api/v1/tokens/{id}"))
            .await
            .status(),
        204
    );
    let r = app.get_as(&second, "/api/v1/tokens").await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    // Revoking again is harmless; unknown ids are 404.
    assert_eq!(
        app.delete_as(&admin, &format!("/api/v1/tokens/{id}"))
            .await
            .status(),
        204
    );
    let r = app.delete_as(&admin, "/api/v1/tokens/999999").await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_of(r).await["code"], "not_found");
    assert_eq!(
        app.delete_as(&admin, "/api/v1/tokens/abc").await.status(),
        404
    );
    // The list shows it revoked.
    let list: Value = app
        .get_as(&admin, "/api/v1/tokens")
        .await
        .json()
        .await
        .unwrap();
    let revoked = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .unwrap();
    assert!(revoked["revoked_at"].is_string());
}

on_both!(bad_input_is_named);
async fn bad_input_is_named(app: &TestApp) {
    let admin = app.admin_token().await;
    let long = "x".repeat(101);
    for (body, field) in [
        (json!({"name": "", "role": "clerk"}), "name"),
        (json!({"name": "   ", "role": "clerk"}), "name"),
        (json!({"name": long, "role": "clerk"}), "name"),
        (json!({"name": "a", "role": "root"}), "role"),
        (json!({"name": "a", "role": "Admin"}), "role"),
        (json!({"name": "a"}), "role"),
        (json!({"name": 5, "role": "clerk"}), "name"),
    ] {
        let r = app.post_json(&admin, "/api/v1/tokens", &body).await;
        assert_eq!(r.status(), 422, "{body}");
        let e = error_of(r).await;
        assert_eq!(e["code"], "invalid", "{body}");
        assert_eq!(e["field"], field, "{body}: {e}");
    }
    // 100 characters (not bytes) is fine.
    let r = app
        .post_json(
            &admin,
            "/api/v1/tokens",
            &json!({"name": "é".repeat(100), "role": "viewer"}),
        )
        .await;
    assert_eq!(r.status(), 201);

    let r = app
        .client
        .post(app.url("/api/v1/tokens"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_of(r).await["code"], "malformed");

    let r = app
        .client
        .post(app.url("/api/v1/tokens"))
        .bearer_auth(&admin)
        .body("{\"name\": \"a\", \"role\": \"clerk\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(error_of(r).await["code"], "unsupported_media_type");

    let r = app.get_as(&admin, "/api/v1/nope").await;
    assert_eq!(r.status(), 404);
}

async fn rate_limit_on(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| {
        c.api.rate_limit_per_second = 1;
        c.api.rate_limit_burst = 2;
    })
    .await
    else {
        return;
    };
    let admin = app.admin_token().await;
    let other = app.admin_token().await;
    let mut limited = None;
    for _ in 0..4 {
        let r = app.get_as(&admin, "/api/v1/tokens").await;
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status(), 200);
    }
    let r = limited.expect("a 429 within 4 requests at 1/s with a burst of 2");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1, "{retry}");
    assert_eq!(error_of(r).await["code"], "rate_limited");
    // Per token: another token is not limited; health is never limited.
    assert_eq!(app.get_as(&other, "/api/v1/tokens").await.status(), 200);
    assert_eq!(app.get("/healthz").await.status(), 200);
    // Writes count too.
    let r = app
        .post_json(
            &admin,
            "/api/v1/tokens",
            &json!({"name": "x", "role": "viewer"}),
        )
        .await;
    assert_eq!(r.status(), 429);
    app.stop().await;
}

#[tokio::test]
async fn rate_limit_on_sqlite() {
    rate_limit_on(Backend::Sqlite).await;
}

#[tokio::test]
async fn rate_limit_on_postgres() {
    rate_limit_on(Backend::Postgres).await;
}

async fn post_with_key(app: &TestApp, token: &str, key: &str, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/tokens"))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .unwrap()
}

on_both!(idempotency_keys_replay_the_first_answer);
async fn idempotency_keys_replay_the_first_answer(app: &TestApp) {
    let admin = app.admin_token().await;
    let before = token_count(app, &admin).await;
    let body = json!({"name": "importer", "role": "clerk"});
    let first = post_with_key(app, &admin, "key-1", &body).await;
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    let second = post_with_key(app, &admin, "key-1", &body).await;
    assert_eq!(second.status(), 201);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    assert!(
        second.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let mut second: Value = second.json().await.unwrap();
    // The secret is answered once and stored nowhere: the replay is the record without it.
    assert!(first["token"].as_str().unwrap().starts_with("mlk_"));
    assert_eq!(second["token"], Value::Null);
    second["token"] = first["token"].clone();
    assert_eq!(first, second);
    assert_eq!(token_count(app, &admin).await, before + 1);
    let stored: Vec<String> = match app.backend {
        common::Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&app.database_url).await.unwrap();
            sqlx::query_scalar("SELECT CAST(body AS TEXT) FROM malaka_idempotency")
                .fetch_all(&pool)
                .await
                .unwrap()
        }
        common::Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&app.database_url).await.unwrap();
            sqlx::query_scalar("SELECT convert_from(body, 'UTF8') FROM malaka_idempotency")
                .fetch_all(&pool)
                .await
                .unwrap()
        }
    };
    let secret = first["token"].as_str().unwrap();
    assert!(!stored.is_empty() && stored.iter().all(|b| !b.contains(secret)));

    // The same key for another request is refused.
    let r = post_with_key(
        app,
        &admin,
        "key-1",
        &json!({"name": "other", "role": "clerk"}),
    )
    .await;
    assert_eq!(r.status(), 422);
    let e = error_of(r).await;
    assert_eq!(e["code"], "idempotency_key_reused");
    assert_eq!(e["field"], "Idempotency-Key");
    assert_eq!(token_count(app, &admin).await, before + 1);

    // Keys belong to a token: another token's same key is a new request.
    let other = app.admin_token().await;
    let r = post_with_key(app, &other, "key-1", &body).await;
    assert_eq!(r.status(), 201);
    assert!(r.headers().get("idempotent-replayed").is_none());

    // 4xx answers are stored too.
    let bad = json!({"name": "", "role": "clerk"});
    assert_eq!(
        post_with_key(app, &admin, "key-2", &bad).await.status(),
        422
    );
    let r = post_with_key(app, &admin, "key-2", &bad).await;
    assert_eq!(r.status(), 422);
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    assert_eq!(error_of(r).await["field"], "name");

    // Bad keys, and no token before anything else.
    for key in ["has space", &"k".repeat(256)] {
        let r = post_with_key(app, &admin, key, &body).await;
        assert_eq!(r.status(), 422, "{key}");
        assert_eq!(error_of(r).await["field"], "Idempotency-Key");
    }
    let r = post_with_key(app, "mlk_nope", "key-3", &body).await;
    assert_eq!(r.status(), 401);
    // A viewer's keyed request is answered 403, and that is what a retry gets.
    let viewer = app.token(Role::Viewer).await;
    assert_eq!(
        post_with_key(app, &viewer, "key-4", &body).await.status(),
        403
    );
    let r = post_with_key(app, &viewer, "key-4", &body).await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["idempotent-replayed"], "true");
}

on_both!(a_legacy_reservation_does_not_block_its_key);
/// Older versions reserved a key (a row without an answer) before running the request; such a
/// row holds no effect, so a request with that key runs, is recorded and replays afterwards.
async fn a_legacy_reservation_does_not_block_its_key(app: &TestApp) {
    use sha2::Digest;
    let admin = app.admin_token().await;
    let principal = app
        .state
        .auth()
        .tokens
        .authenticate(&admin)
        .await
        .unwrap()
        .unwrap();
    let body = serde_json::to_vec(&json!({"name": "slow", "role": "clerk"})).unwrap();
    let mut h = sha2::Sha256::new();
    h.update(b"POST /tokens\n");
    h.update(&body);
    let hash: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    const SQL: &str = "INSERT INTO malaka_idempotency (token_id, key, request_hash, created_at) \
                       VALUES ($1, 'busy', $2, $3)";
    let now = chrono::Utc::now();
    match app.state.db() {
        malaka_server::db::Database::Sqlite(pool) => {
            sqlx::query(SQL)
                .bind(principal.id)
                .bind(&hash)
                .bind(now)
                .execute(pool)
                .await
                .unwrap();
        }
        malaka_server::db::Database::Postgres(pool) => {
            sqlx::query(SQL)
                .bind(principal.id)
                .bind(&hash)
                .bind(now)
                .execute(pool)
                .await
                .unwrap();
        }
    }
    let before = token_count(app, &admin).await;
    let send = || {
        app.client
            .post(app.url("/api/v1/tokens"))
            .bearer_auth(&admin)
            .header("idempotency-key", "busy")
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
    };
    let r = send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert!(r.headers().get("idempotent-replayed").is_none());
    let r = send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    assert_eq!(token_count(app, &admin).await, before + 1);
    // Old keys are pruned.
    let pruned = malaka_server::http::idempotency::prune(app.state.db())
        .await
        .unwrap();
    assert_eq!(pruned, 0);
}
