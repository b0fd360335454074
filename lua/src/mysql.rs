//! `mysql.query{host, port, user, password, sql, timeout}`: one connection per call
//! (a check runs every few seconds; a pool would hold connections the server counts),
//! through mysql_async, a real MySQL/MariaDB client. Rows come back as tables keyed by
//! column name; SQL NULL is nil.

use std::time::Duration;

use mlua::{Lua, Value};
use mysql_async::consts::ColumnType;
use mysql_async::prelude::Queryable;
use vigia_api::Dur;

use crate::args::{Args, InCall};
use crate::budget::Budget;

pub async fn query(lua: &Lua, v: Value, budget: &Budget) -> Result<Value, String> {
    let mut a = Args::new(
        "mysql.query",
        v,
        "mysql.query{user = \"monitor\", password = \"…\", sql = \"SELECT 1\"}",
        &[
            "host", "port", "user", "password", "database", "socket", "sql", "timeout",
        ],
    )?;
    let host = a.opt_str("host")?.unwrap_or_else(|| "127.0.0.1".into());
    let port = a.opt_int("port", 1, 65535)?.unwrap_or(3306) as u16;
    let user = a.str("user")?;
    let password = a.opt_str("password")?;
    let database = a.opt_str("database")?;
    let socket = a.opt_str("socket")?;
    let sql = a.str("sql")?;
    let timeout = a
        .opt_dur("timeout", Duration::from_secs(300))?
        .unwrap_or(Duration::from_secs(5));
    let server = match &socket {
        Some(s) => s.clone(),
        None => format!("{host}:{port}"),
    };
    let _call = InCall::new(budget, format!("mysql.query to {server}"));
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(host)
        .tcp_port(port)
        .socket(socket)
        .prefer_socket(false)
        .user(Some(user))
        .pass(password)
        .db_name(database)
        .conn_ttl(None::<Duration>)
        .wait_timeout(None);
    let work = async {
        let mut conn = mysql_async::Conn::new(opts)
            .await
            .map_err(|e| format!("mysql.query: cannot connect to {server}: {}", reason(&e)))?;
        let rows: Result<Vec<mysql_async::Row>, _> = conn.query(sql.as_str()).await;
        let _ = conn.disconnect().await;
        rows.map_err(|e| format!("mysql.query on {server}: {}", reason(&e)))
    };
    let rows = tokio::time::timeout(timeout, work).await.map_err(|_| {
        format!(
            "mysql.query: no answer from {server} within {}",
            Dur(timeout)
        )
    })??;
    let out = lua
        .create_table_with_capacity(rows.len(), 0)
        .map_err(|e| e.to_string())?;
    for (i, row) in rows.iter().enumerate() {
        let t = lua.create_table().map_err(|e| e.to_string())?;
        for (c, col) in row.columns_ref().iter().enumerate() {
            let v = match row.as_ref(c) {
                Some(v) => to_lua(lua, v, col.column_type()).map_err(|e| e.to_string())?,
                None => Value::Nil,
            };
            t.raw_set(col.name_str().as_ref(), v)
                .map_err(|e| e.to_string())?;
        }
        out.raw_set(i + 1, t).map_err(|e| e.to_string())?;
    }
    Ok(Value::Table(out))
}

/// The server's own words where there are some: "Access denied for user ...".
fn reason(e: &mysql_async::Error) -> String {
    match e {
        mysql_async::Error::Server(s) => format!("{} (error {})", s.message, s.code),
        mysql_async::Error::Io(io) => match io {
            mysql_async::IoError::Io(e) => vigia_plugins::tcp::io_reason(e),
            other => other.to_string(),
        },
        other => other.to_string(),
    }
}

/// SQL values to Lua. The text protocol sends every value as text: numeric columns
/// become Lua numbers (integers stay integers; DECIMAL becomes a float), the rest strings.
/// `SHOW STATUS` values are text columns: scripts use `tonumber` on them.
fn to_lua(lua: &Lua, v: &mysql_async::Value, kind: ColumnType) -> mlua::Result<Value> {
    use mysql_async::Value as M;
    Ok(match v {
        M::NULL => Value::Nil,
        M::Bytes(b) => {
            let text = std::str::from_utf8(b).ok();
            let number = match kind {
                ColumnType::MYSQL_TYPE_TINY
                | ColumnType::MYSQL_TYPE_SHORT
                | ColumnType::MYSQL_TYPE_INT24
                | ColumnType::MYSQL_TYPE_LONG
                | ColumnType::MYSQL_TYPE_LONGLONG
                | ColumnType::MYSQL_TYPE_YEAR => text.and_then(|t| {
                    t.parse::<i64>()
                        .map(Value::Integer)
                        .ok()
                        .or_else(|| t.parse::<f64>().ok().map(Value::Number))
                }),
                ColumnType::MYSQL_TYPE_FLOAT
                | ColumnType::MYSQL_TYPE_DOUBLE
                | ColumnType::MYSQL_TYPE_DECIMAL
                | ColumnType::MYSQL_TYPE_NEWDECIMAL => {
                    text.and_then(|t| t.parse::<f64>().ok()).map(Value::Number)
                }
                _ => None,
            };
            match number {
                Some(n) => n,
                None => Value::String(lua.create_string(b)?),
            }
        }
        M::Int(i) => Value::Integer(*i),
        M::UInt(u) => match i64::try_from(*u) {
            Ok(i) => Value::Integer(i),
            Err(_) => Value::Number(*u as f64),
        },
        M::Float(f) => Value::Number(f64::from(*f)),
        M::Double(d) => Value::Number(*d),
        M::Date(y, mo, d, h, mi, s, us) => Value::String(lua.create_string(format!(
            "{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}{}",
            if *us > 0 {
                format!(".{us:06}")
            } else {
                String::new()
            }
        ))?),
        M::Time(neg, d, h, mi, s, us) => Value::String(lua.create_string(format!(
            "{}{:02}:{mi:02}:{s:02}{}",
            if *neg { "-" } else { "" },
            u32::from(*h) + d * 24,
            if *us > 0 {
                format!(".{us:06}")
            } else {
                String::new()
            }
        ))?),
    })
}
