//! Error bodies in the reference's shapes: MPS's `ErrorResponse` (`error` + `errorDescription`),
//! express-validator's `errors` array, and RPS's `error` + `message`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// The reference's 404 text for a device that is unknown or not connected.
pub const DEVICE_NOT_FOUND: &str = "Device not found/connected. Please connect again using CIRA.";
pub const BAD_REQUEST: &str = "Incorrect URI or Bad Request";

/// One failed check, as express-validator reports it.
#[derive(Clone, Debug)]
pub struct FieldError {
    pub path: String,
    /// "body", "params" or "query".
    pub location: &'static str,
    pub msg: String,
    /// The value given; absent when the field was missing.
    pub value: Option<Value>,
}

impl FieldError {
    pub fn new(
        location: &'static str,
        path: &str,
        msg: impl Into<String>,
        value: Option<&Value>,
    ) -> Self {
        FieldError {
            path: path.to_owned(),
            location,
            msg: msg.into(),
            value: value.cloned(),
        }
    }
}

#[derive(Debug)]
pub enum ApiError {
    /// 400 with the `errors` array.
    Validation(Vec<FieldError>),
    /// 400 `{"error":"Incorrect URI or Bad Request","errorDescription":…}` (also malformed JSON).
    BadRequest(String),
    /// 413: a body over the limit.
    TooLarge(usize),
    /// 401 `{"error":"Unauthorized",…}` (no or a bad bearer token).
    Unauthorized(String),
    /// 404 with the reference's device text.
    DeviceNotFound(String),
    /// 404 with an empty body (the registry routes of MPS).
    NotFoundEmpty,
    /// 404 `{"error":"NOT FOUND","message":…}` (MPS device delete and update).
    NotFoundMessage(String),
    /// 404 `{"error":"Not Found","message":…}` (RPS).
    RpsNotFound(String),
    /// 400 `{"error":<name>,"message":…}` (RPS: "Unique key violation", "Foreign key violation").
    RpsError(&'static str, String),
    /// 409: an update with a stale version.
    Conflict(String),
    /// 408 `{"error":"Timeout Error",…}`: the device did not answer in time.
    Timeout(String),
    /// 503: a dependency is down or the replica is busy.
    Unavailable(String),
    /// 500 `{"error":"Internal Server Error",…}`.
    Internal(String),
    /// Another status with an ErrorResponse body.
    Other(StatusCode, String),
}

pub type ApiResult<T = Response> = Result<T, ApiError>;

fn error_response(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "errorDescription": description})),
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Validation(errors) => {
                let errors: Vec<Value> = errors
                    .into_iter()
                    .map(|e| {
                        let mut o = json!({"type": "field", "msg": e.msg, "path": e.path, "location": e.location});
                        if let Some(v) = e.value {
                            o["value"] = v;
                        }
                        o
                    })
                    .collect();
                (StatusCode::BAD_REQUEST, Json(json!({ "errors": errors }))).into_response()
            }
            ApiError::BadRequest(d) => error_response(StatusCode::BAD_REQUEST, BAD_REQUEST, &d),
            ApiError::TooLarge(limit) => error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Payload Too Large",
                &format!("request body larger than {limit} bytes"),
            ),
            ApiError::Unauthorized(d) => {
                let mut r = error_response(StatusCode::UNAUTHORIZED, "Unauthorized", &d);
                r.headers_mut().insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Bearer"),
                );
                r
            }
            ApiError::DeviceNotFound(guid) => error_response(
                StatusCode::NOT_FOUND,
                DEVICE_NOT_FOUND,
                &format!("guid : {guid}"),
            ),
            ApiError::NotFoundEmpty => StatusCode::NOT_FOUND.into_response(),
            ApiError::NotFoundMessage(m) => (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "NOT FOUND", "message": m})),
            )
                .into_response(),
            ApiError::RpsNotFound(m) => (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "Not Found", "message": m})),
            )
                .into_response(),
            ApiError::RpsError(name, m) => (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": name, "message": m})),
            )
                .into_response(),
            ApiError::Conflict(m) => (
                StatusCode::CONFLICT,
                Json(json!({"error": "Conflict", "message": m})),
            )
                .into_response(),
            ApiError::Timeout(d) => {
                error_response(StatusCode::REQUEST_TIMEOUT, "Timeout Error", &d)
            }
            ApiError::Unavailable(d) => {
                error_response(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable", &d)
            }
            ApiError::Internal(d) => error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Server Error",
                &d,
            ),
            ApiError::Other(status, d) => {
                error_response(status, status.canonical_reason().unwrap_or("Error"), &d)
            }
        }
    }
}

/// How a failed device call answers (the MPS routes). `guid` names the device in 404s.
pub fn device_status(s: tonic::Status, guid: &str) -> ApiError {
    use tonic::Code;
    let m = s.message().to_owned();
    match s.code() {
        Code::NotFound => ApiError::DeviceNotFound(guid.to_owned()),
        // Not connected is answered at once by mps-command; other unavailability (NATS, a
        // replica going away) is the service's, not the device's.
        Code::Unavailable if m.ends_with(" is not connected") && m.starts_with("device ") => {
            ApiError::DeviceNotFound(guid.to_owned())
        }
        // MPS does not check an AMT route's guid: one that is no UUID is an unknown device.
        Code::InvalidArgument if !crate::mps::is_uuid(guid) => {
            ApiError::DeviceNotFound(guid.to_owned())
        }
        Code::Unavailable => ApiError::Unavailable(m),
        Code::DeadlineExceeded => {
            ApiError::Timeout(format!("device {guid} did not answer in time: {m}"))
        }
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            ApiError::BadRequest(m)
        }
        Code::Unauthenticated => ApiError::Unauthorized(m),
        Code::PermissionDenied => ApiError::Internal(format!(
            "the device refused Homeport's AMT credentials: {m}"
        )),
        Code::Aborted => ApiError::Internal(format!(
            "device {guid} dropped its connection during the call: {m}"
        )),
        Code::ResourceExhausted => ApiError::Other(StatusCode::TOO_MANY_REQUESTS, m),
        _ => ApiError::Internal(m),
    }
}

/// How a failed registry or audit call answers.
pub fn service_status(s: tonic::Status) -> ApiError {
    use tonic::Code;
    let m = s.message().to_owned();
    match s.code() {
        Code::NotFound => ApiError::NotFoundEmpty,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            ApiError::BadRequest(m)
        }
        Code::Unauthenticated => ApiError::Unauthorized(m),
        Code::Unavailable => ApiError::Unavailable(m),
        Code::DeadlineExceeded => ApiError::Timeout(m),
        Code::ResourceExhausted => ApiError::Other(StatusCode::TOO_MANY_REQUESTS, m),
        _ => ApiError::Internal(m),
    }
}
