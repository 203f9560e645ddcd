//! Responses the proxy makes itself: RFC 9457 problem documents that say what happened
//! without leaking internal addresses or stack traces.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use super::body::ProxyBody;

pub fn full(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

/// No body. `Empty` has no size, so boxing it allocates nothing.
pub fn empty() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

pub fn problem(
    status: StatusCode,
    detail: &str,
    request_id: Option<&HeaderValue>,
) -> Response<ProxyBody> {
    let mut body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    if let Some(id) = request_id.and_then(|v| v.to_str().ok()) {
        body["requestId"] = serde_json::Value::String(id.to_string());
    }
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Some(id) = request_id {
        resp.headers_mut()
            .insert(super::headers::X_REQUEST_ID, id.clone());
    }
    resp
}
