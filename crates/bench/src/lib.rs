//! Malaka's benchmark suites behind `malaka bench <suite>`: each module runs one suite against the
//! real server (in process, over loopback), queue or runtime and returns its [`Figures`], printed
//! as a table or as one JSON object. Errors are `thiserror` enums (no `anyhow`): `runtime`'s,
//! `jobs`'s, and `movements::MovementsBenchError`, which the server-driving suites share.

pub mod alerts;
pub mod ceiling;
pub mod jobs;
pub mod lists;
pub mod movements;
pub mod notify;
pub mod reports;
pub mod runtime;
pub mod sqs;

/// Named figures, in the order they were measured, and the versions of what was measured
/// (`versions` in the JSON: Malaka's, the database's).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Figures(Vec<(String, f64)>, Vec<(String, String)>);

impl Figures {
    /// Adds a figure.
    pub fn push(&mut self, name: impl Into<String>, value: f64) {
        self.0.push((name.into(), value));
    }

    /// Records the version of something measured or compared (`malaka`, `sqlite`, ...).
    pub fn version(&mut self, name: impl Into<String>, version: impl Into<String>) {
        self.1.push((name.into(), version.into()));
    }

    /// The figure called `name`.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    /// One JSON object mapping names to numbers.
    pub fn to_json(&self) -> serde_json::Value {
        let map: serde_json::Map<String, serde_json::Value> = self
            .0
            .iter()
            .map(|(n, v)| {
                let v = serde_json::Number::from_f64((v * 1000.0).round() / 1000.0)
                    .map_or(serde_json::Value::Null, serde_json::Value::Number);
                (n.clone(), v)
            })
            .collect();
        let mut map = map;
        if !self.1.is_empty() {
            let versions: serde_json::Map<String, serde_json::Value> = self
                .1
                .iter()
                .map(|(n, v)| (n.clone(), serde_json::Value::String(v.clone())))
                .collect();
            map.insert("versions".into(), serde_json::Value::Object(versions));
        }
        serde_json::Value::Object(map)
    }

    /// A readable two-column table.
    pub fn to_table(&self) -> String {
        let width = self.0.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (n, v) in &self.0 {
            let shown = if v.abs() >= 1000.0 {
                format!("{v:>16.0}")
            } else {
                format!("{v:>16.3}")
            };
            out.push_str(&format!("{n:<width$}  {shown}\n"));
        }
        for (n, v) in &self.1 {
            out.push_str(&format!("{:<width$}  {v:>16}\n", format!("{n} version")));
        }
        out
    }
}

/// Adds what every suite reports about where it ran: `cores` (the CPUs this process may use),
/// Malaka's version, and the version of the database it ran on (`sqlite`, the library linked
/// in; `postgresql`, the server at `postgres_url`).
pub async fn environment(figures: &mut Figures, sqlite: bool, postgres_url: Option<&str>) {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    figures.push("cores", cores as f64);
    figures.version("malaka", env!("CARGO_PKG_VERSION"));
    if sqlite {
        use sqlx::Connection;
        if let Ok(mut c) = sqlx::SqliteConnection::connect("sqlite::memory:").await
            && let Ok(v) = sqlx::query_scalar::<_, String>("SELECT sqlite_version()")
                .fetch_one(&mut c)
                .await
        {
            figures.version("sqlite", v);
        }
    }
    if let Some(url) = postgres_url {
        use sqlx::Connection;
        if let Ok(mut c) = sqlx::PgConnection::connect(url).await
            && let Ok(v) = sqlx::query_scalar::<_, String>("SHOW server_version")
                .fetch_one(&mut c)
                .await
        {
            figures.version("postgresql", v);
        }
    }
}
