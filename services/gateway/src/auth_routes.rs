//! Sign-in, the service routes, and the redirection token.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult, FieldError};
use crate::{json, status_json, AppState, Authed, JsonBody};

/// How long a sign-in waits for a hashing slot before it is told to come back.
const SIGN_IN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Lifetime of a redirection token (MPS's `redirection_expiration_time`).
const REDIRECTION_TTL_SECS: i64 = 300;
/// The audience of redirection tokens: not the API's, so one cannot be used as an API token.
const REDIRECTION_AUDIENCE: &str = "homeport-redirection";

fn issuer(s: &AppState) -> &str {
    s.config.jwt.issuer.as_deref().unwrap_or("homeport")
}

/// POST /authorize: `{username, password}` → `{token}`.
pub async fn authorize(State(s): State<AppState>, JsonBody(body): JsonBody) -> ApiResult {
    let mut errors = Vec::new();
    for (k, missing) in [
        ("username", "User name is required"),
        ("password", "Password is required"),
    ] {
        match body.get(k) {
            Some(Value::String(v)) if !v.is_empty() => {}
            v => {
                errors.push(FieldError::new("body", k, "Invalid value", v));
                errors.push(FieldError::new("body", k, missing, v));
            }
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let (Some(hash), Some(secret)) = (&s.admin_password, &s.signing_secret) else {
        return Ok(status_json(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"message": "Authentication disabled on MPS"}),
        ));
    };
    let user = body["username"].as_str().unwrap_or_default();
    let password = body["password"].as_str().unwrap_or_default().to_owned();
    let refused = || {
        s.metrics.sign_in_failures.inc();
        status_json(
            StatusCode::UNAUTHORIZED,
            json!({"message": "Incorrect Username and/or Password!"}),
        )
    };
    // The hash is checked even for a wrong user name, so timing does not tell them apart.
    let _slot = match tokio::time::timeout(SIGN_IN_WAIT, s.sign_in_slots.acquire()).await {
        Ok(Ok(slot)) => slot,
        Ok(Err(_)) => return Err(ApiError::Unavailable("shutting down".into())),
        Err(_) => {
            return Err(ApiError::Other(
                StatusCode::TOO_MANY_REQUESTS,
                "too many sign-ins at once; try again in a moment".into(),
            ))
        }
    };
    let hash = hash.clone();
    let ok = tokio::task::spawn_blocking(move || hash.verify(&password))
        .await
        .unwrap_or(false);
    if !ok || !user.eq_ignore_ascii_case(&s.config.admin_user) {
        return Ok(refused());
    }
    let token = crate::auth::sign(
        secret,
        &crate::auth::Claims {
            subject: &s.config.admin_user,
            tenant: &s.config.admin_tenant,
            device_id: "*",
            ttl_secs: i64::try_from(s.config.token_ttl().as_secs()).unwrap_or(86_400),
            audience: s.config.jwt.audience.as_deref().filter(|a| !a.is_empty()),
            issuer: issuer(&s),
        },
    )
    .map_err(|e| ApiError::Internal(format!("signing the token: {e}")))?;
    s.metrics.sign_ins.inc();
    Ok(json(json!({ "token": token })))
}

/// GET /authorize/redirection/{guid}: MPS's relay token for one device of the caller.
pub async fn redirection(
    State(s): State<AppState>,
    a: Authed,
    Path(guid): Path<String>,
) -> ApiResult {
    if !crate::mps::is_uuid(&guid) {
        return Err(ApiError::Validation(vec![FieldError::new(
            "params",
            "guid",
            "Invalid value",
            Some(&json!(guid)),
        )]));
    }
    // The device must be the caller's (MPS does not check the tenant here; Homeport does).
    crate::mps::get(&s, &a, &guid)
        .await?
        .ok_or(ApiError::NotFoundEmpty)?;
    let Some(secret) = &s.signing_secret else {
        return Err(ApiError::Other(
            StatusCode::METHOD_NOT_ALLOWED,
            "this gateway signs no tokens (no HS256 secret)".into(),
        ));
    };
    // Signed with a key derived from the secret: no API verifier accepts it, even one
    // configured without an audience check.
    let key = crate::auth::derived_key(secret, REDIRECTION_AUDIENCE)
        .map_err(|e| ApiError::Internal(format!("deriving the relay key: {e}")))?;
    let token = crate::auth::sign(
        &key,
        &crate::auth::Claims {
            subject: &a.caller.subject,
            tenant: &a.caller.tenant,
            device_id: &guid.to_ascii_lowercase(),
            ttl_secs: REDIRECTION_TTL_SECS,
            audience: Some(REDIRECTION_AUDIENCE),
            issuer: issuer(&s),
        },
    )
    .map_err(|e| ApiError::Internal(format!("signing the token: {e}")))?;
    Ok(json(json!({ "token": token })))
}

/// GET /version
pub async fn version() -> ApiResult {
    Ok(json(
        json!({"serviceVersion": env!("CARGO_PKG_VERSION"), "protocolVersion": "4.0.0"}),
    ))
}

/// GET /health: each upstream's gRPC health over the gateway's own connections; 503 unless
/// all serve.
pub async fn health(State(s): State<AppState>) -> ApiResult {
    let check = |ch: tonic::transport::Channel| async move {
        let mut h = tonic_health_client(ch);
        match tokio::time::timeout(
            std::time::Duration::from_secs(3),
            h.check(tonic::Request::new(Default::default())),
        )
        .await
        {
            Ok(Ok(r)) if r.get_ref().status == 1 => "OK",
            Ok(Ok(_)) => "NOT_SERVING",
            Ok(Err(_)) => "UNREACHABLE",
            Err(_) => "TIMEOUT",
        }
    };
    let (d, a, r) = tokio::join!(
        check(s.channels.0.clone()),
        check(s.channels.1.clone()),
        check(s.channels.2.clone())
    );
    let ok = [d, a, r].iter().all(|x| *x == "OK");
    let body = json!({
        "deviceApi": {"name": "mps-command", "status": d},
        "auditApi": {"name": "audit", "status": a},
        "provisioningApi": {"name": "rps", "status": r},
    });
    Ok(if ok {
        json(body)
    } else {
        status_json(StatusCode::SERVICE_UNAVAILABLE, body)
    })
}

fn tonic_health_client(
    ch: tonic::transport::Channel,
) -> tonic_health::pb::health_client::HealthClient<tonic::transport::Channel> {
    tonic_health::pb::health_client::HealthClient::new(ch)
}

/// GET /ciracert: the CIRA ingress's root certificate (PEM), which devices trust, sent as
/// MPS sends it (text/html).
pub async fn cira_cert(State(s): State<AppState>, a: Authed) -> ApiResult {
    use axum::response::IntoResponse as _;
    match s
        .admin
        .clone()
        .get_cira_root_certificate(a.call(&s, homeport_proto::provisioning::v1::CiraRootRequest {}))
        .await
    {
        Ok(r) => Ok((
            [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
            r.into_inner().pem,
        )
            .into_response()),
        Err(e) if e.code() == tonic::Code::NotFound => Err(ApiError::Internal(
            "MPS root certificate does not exist".into(),
        )),
        Err(e) => Err(crate::error::service_status(e)),
    }
}
