//! A small client of the admin API, for `splitgate weights`.

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::collections::BTreeMap;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The gateway could not be reached.
    #[error("cannot reach the admin API at {url}: {reason}")]
    Unreachable {
        /// The URL tried.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The gateway refused the call.
    #[error("{status}: {message}{}", field.as_deref().map(|f| format!(" (field: {f})")).unwrap_or_default())]
    Refused {
        /// HTTP status.
        status: StatusCode,
        /// The `error` text.
        message: String,
        /// The `field` at fault.
        field: Option<String>,
    },
}

/// Talks to one gateway's admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: String,
    token: Option<String>,
}

impl AdminClient {
    /// A client for `base` (e.g. `http://127.0.0.1:15000`), with an optional bearer token.
    pub fn new(base: &str, token: Option<String>) -> Self {
        AdminClient {
            base: base.trim_end_matches('/').to_string(),
            token,
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let unreachable = |reason: String| ClientError::Unreachable {
            url: url.clone(),
            reason,
        };
        let mut req = Request::builder().method(method).uri(&url);
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        if !payload.is_empty() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| unreachable(e.to_string()))?;
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let resp = client
            .request(req)
            .await
            .map_err(|e| unreachable(format!("{e:#}")))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        Err(ClientError::Refused {
            status,
            message: value["error"].as_str().map_or_else(
                || String::from_utf8_lossy(&bytes).into_owned(),
                str::to_string,
            ),
            field: value["field"].as_str().map(str::to_string),
        })
    }

    /// `GET /v1/state`.
    pub async fn state(&self) -> Result<Value, ClientError> {
        self.call(Method::GET, "/v1/state", None).await
    }

    /// `PUT /v1/routes/{route}/weights`; returns the new generation.
    pub async fn set_weights(
        &self,
        route: &str,
        rule: Option<&str>,
        weights: &BTreeMap<String, u32>,
    ) -> Result<u64, ClientError> {
        let mut body = serde_json::json!({ "weights": weights });
        if let Some(r) = rule {
            body["rule"] = Value::from(r);
        }
        let v = self
            .call(
                Method::PUT,
                &format!("/v1/routes/{route}/weights"),
                Some(body),
            )
            .await?;
        Ok(v["generation"].as_u64().unwrap_or(0))
    }
}

/// Renders one route of a `/v1/state` answer for people: a line per rule with its weights.
pub fn describe_route(state: &Value, route: &str) -> Option<String> {
    let r = state["routes"].get(route)?;
    let mut out = format!("route {route} (generation {})\n", state["generation"]);
    let fmt_weights = |w: &Value| -> String {
        w.as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    for rule in r["rules"].as_array().into_iter().flatten() {
        let mut line = format!(
            "  {:<28} {}",
            rule["name"].as_str().unwrap_or("?"),
            fmt_weights(&rule["weights"])
        );
        line.push_str(&format!("  [{}", rule["source"].as_str().unwrap_or("?")));
        if !rule["file_weights"].is_null() {
            line.push_str(&format!("; file: {}", fmt_weights(&rule["file_weights"])));
        }
        if let Some(m) = rule["mirror"].as_object() {
            line.push_str(&format!(
                "; mirror {}% to {}",
                m["percentage"],
                m["subset"].as_str().unwrap_or("?")
            ));
        }
        line.push_str("]\n");
        out.push_str(&line);
    }
    Some(out)
}
