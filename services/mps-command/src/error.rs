//! Why a device command failed, and the one place that maps it to a gRPC status.

use homeport_contracts::tunnel::{TunnelCallError, TunnelError};
use homeport_wsman::amt::return_value_text;
use homeport_wsman::{Fault, ResponseError};
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("device {0} not found")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("device {0} is not connected")]
    NotConnected(String),
    #[error("device {0} did not answer in time")]
    Timeout(String),
    #[error("device {0} dropped its connection during the call")]
    Dropped(String),
    #[error("device {0} is busy: too many requests in flight")]
    Busy(String),
    #[error("device {0} rejected Homeport's AMT credentials")]
    AuthFailed(String),
    #[error("device {0} has no AMT credentials in the secret store")]
    NoCredentials(String),
    #[error("device answered with a WS-Man {0}")]
    Fault(Fault),
    #[error("{method} returned {value} ({})", return_value_text(*.value))]
    ReturnValue { method: String, value: u32 },
    #[error("device's answer could not be understood: {0}")]
    BadReply(String),
    #[error("dependency unavailable: {0}")]
    Unavailable(String),
    #[error("the caller went away before the command on {0} finished")]
    Cancelled(String),
}

impl CommandError {
    pub fn code(&self) -> Code {
        match self {
            CommandError::NotFound(_) => Code::NotFound,
            CommandError::InvalidArgument(_) => Code::InvalidArgument,
            CommandError::NotConnected(_) | CommandError::Unavailable(_) => Code::Unavailable,
            CommandError::Timeout(_) => Code::DeadlineExceeded,
            CommandError::Dropped(_) => Code::Aborted,
            CommandError::Busy(_) => Code::ResourceExhausted,
            CommandError::AuthFailed(_) => Code::PermissionDenied,
            CommandError::NoCredentials(_)
            | CommandError::Fault(_)
            | CommandError::ReturnValue { .. } => Code::FailedPrecondition,
            CommandError::BadReply(_) => Code::Internal,
            CommandError::Cancelled(_) => Code::Cancelled,
        }
    }

    pub fn to_status(&self) -> Status {
        Status::new(self.code(), self.to_string())
    }

    /// From a tunnel failure of a call to `guid`.
    pub fn from_tunnel(guid: &str, e: TunnelCallError) -> CommandError {
        let g = guid.to_string();
        match e {
            TunnelCallError::NotConnected(_) => CommandError::NotConnected(g),
            TunnelCallError::Timeout(_) => CommandError::Timeout(g),
            TunnelCallError::Nats(m) => CommandError::Unavailable(format!("NATS: {m}")),
            TunnelCallError::Failed { error, detail, .. } => match error {
                TunnelError::NotConnected => CommandError::NotConnected(g),
                TunnelError::Timeout => CommandError::Timeout(g),
                TunnelError::DeviceDropped => CommandError::Dropped(g),
                TunnelError::Busy => CommandError::Busy(g),
                TunnelError::ChannelRefused => {
                    CommandError::Unavailable(format!("device {g} refused the channel: {detail}"))
                }
                TunnelError::BadResponse => CommandError::BadReply(detail),
                TunnelError::BadRequest => {
                    CommandError::BadReply(format!("ingress refused the request: {detail}"))
                }
            },
        }
    }
}

impl From<ResponseError> for CommandError {
    fn from(e: ResponseError) -> Self {
        match e {
            ResponseError::Fault(f) => CommandError::Fault(f),
            other => CommandError::BadReply(other.to_string()),
        }
    }
}

/// gRPC code name for bulk results and events ("UNAVAILABLE", ...).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::NotFound => "NOT_FOUND",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::Unavailable => "UNAVAILABLE",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::Aborted => "ABORTED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Internal => "INTERNAL",
        Code::Unauthenticated => "UNAUTHENTICATED",
        Code::Cancelled => "CANCELLED",
        _ => "UNKNOWN",
    }
}

impl From<CommandError> for Status {
    fn from(e: CommandError) -> Self {
        e.to_status()
    }
}
