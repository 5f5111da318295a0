//! `malaka notify test`: a test message through a rule, to a real SMTP server (aiosmtpd); an
//! unknown rule fails with exit code 1.

use crate::common;

use std::time::Duration;

use common::smtp::SmtpServer;
use common::{Backend, TestApp, spawn_app_with};
use malaka_server::config::Config;
use serde_json::{Value, json};

fn with_smtp(smtp: &SmtpServer) -> impl FnOnce(&mut Config) + use<> {
    let port = smtp.port;
    move |c: &mut Config| {
        c.notify.smtp.host = "127.0.0.1".into();
        c.notify.smtp.port = port;
        c.notify.breaker.open_for = Duration::from_millis(500);
        c.notify.breaker.minimum_calls = 2;
        c.api.rate_limit_per_second = 0;
    }
}

async fn post(app: &TestApp, token: &str, path: &str, body: Value) -> (u16, Value) {
    let r = app.post_json(token, path, &body).await;
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn ok(app: &TestApp, token: &str, path: &str, body: Value) -> Value {
    let (s, v) = post(app, token, path, body.clone()).await;
    assert!(s == 200 || s == 201, "{path} {body} -> {s} {v}");
    v
}
async fn email_rule(app: &TestApp, t: &str, address: &str, extra: Value) -> i64 {
    let mut body = json!({"channel": "email", "address": address});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    ok(app, t, "/api/v1/notification-rules", body).await["id"]
        .as_i64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_test_sends_a_test_message_through_a_rule() {
    let Some(smtp) = SmtpServer::start(0) else {
        return;
    };
    let app = spawn_app_with(Backend::Sqlite, with_smtp(&smtp))
        .await
        .unwrap();
    let t = app.admin_token().await;
    let id = email_rule(&app, &t, "check@example.com", json!({"name": "Check"})).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_malaka"))
        .args([
            "notify",
            "test",
            "--rule",
            &id.to_string(),
            "--database-url",
            &app.database_url,
        ])
        .env("MALAKA_NOTIFY__SMTP__HOST", "127.0.0.1")
        .env("MALAKA_NOTIFY__SMTP__PORT", smtp.port.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("test message sent through rule"));
    let mails = smtp.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(mails[0].rcpt, "check@example.com");
    assert!(
        mails[0].subject.starts_with("[test] CRITICAL: TEST-SKU"),
        "{}",
        mails[0].subject
    );
    assert!(
        mails[0]
            .text()
            .contains("test message for the notification rule \"Check\"")
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_malaka"))
        .args([
            "notify",
            "test",
            "--rule",
            "999",
            "--database-url",
            &app.database_url,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("notification rule 999 not found"));
    app.stop().await;
}
