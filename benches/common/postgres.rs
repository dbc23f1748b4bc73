//! The benchmarks' PostgreSQL: a schema of their own on `MPLINK_TEST_POSTGRES_URL` (default the
//! local `test` database), dropped afterwards, so a run leaves nothing behind and two runs never
//! meet.

use mplink::config::DatabaseUrl;
use sqlx::Connection;

/// The PostgreSQL server to use; None when `MPLINK_TEST_POSTGRES_URL=off`.
pub fn server() -> Option<String> {
    let server = std::env::var("MPLINK_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    (server != "off").then_some(server)
}

/// A fresh schema on the server; [`BenchSchema::drop`] removes it and everything in it.
pub struct BenchSchema {
    admin: sqlx::PgConnection,
    name: String,
    /// The database URL whose connections work in the schema.
    pub url: DatabaseUrl,
}

impl BenchSchema {
    /// Creates `mplink_bench_<label>_<pid>` on `server`.
    pub async fn create(server: &str, label: &str) -> BenchSchema {
        let name = format!("mplink_bench_{label}_{}", std::process::id());
        let mut admin = sqlx::PgConnection::connect(server).await.expect("postgres");
        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(&mut admin)
            .await
            .expect("schema");
        let sep = if server.contains('?') { '&' } else { '?' };
        let url = DatabaseUrl::new(format!("{server}{sep}options=-c%20search_path%3D{name}"));
        BenchSchema { admin, name, url }
    }

    /// Drops the schema (close the stores on it first).
    pub async fn drop(mut self) {
        sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.name))
            .execute(&mut self.admin)
            .await
            .expect("drop schema");
    }
}
