//! The command's one error type and the single line (and exit code) each kind becomes.

use tonic::{Code, Status};

#[derive(Debug)]
pub enum CliError {
    /// The API answered with an error status.
    Status(Status),
    /// No connection to the API could be made.
    Connect { endpoint: String, reason: String },
    /// The command line asks for something we refuse (exit 2, like clap's own usage errors).
    Usage(String),
    /// Anything else: unreadable files, stdout errors, partial bulk failures.
    Other(anyhow::Error),
}

impl From<Status> for CliError {
    fn from(status: Status) -> Self {
        CliError::Status(status)
    }
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        CliError::Other(e)
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::Other(e.into())
    }
}

impl CliError {
    /// The message after `homeportctl: `, on one line.
    pub fn line(&self) -> String {
        let text = match self {
            CliError::Status(s) if s.message().is_empty() => code_name(s.code()).to_string(),
            CliError::Status(s) => format!("{}: {}", code_name(s.code()), s.message()),
            CliError::Connect { endpoint, reason } => {
                format!("UNAVAILABLE: cannot connect to {endpoint}: {reason}")
            }
            CliError::Usage(text) => text.clone(),
            CliError::Other(e) => one_line(e.chain().map(|c| c.to_string())),
        };
        text.replace(['\n', '\r'], " ")
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            _ => 1,
        }
    }

    /// Whether stdout was closed by the reader (`homeportctl devices list | head`), which is
    /// not a failure worth reporting.
    pub fn is_broken_pipe(&self) -> bool {
        let CliError::Other(e) = self else {
            return false;
        };
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// An error and its causes joined by `: `, skipping causes whose text is already there
/// (library errors often repeat their source in their own message).
pub fn one_line(mut messages: impl Iterator<Item = String>) -> String {
    let mut line = messages.next().unwrap_or_default();
    for text in messages {
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

/// The canonical name of a gRPC status code, as in the API's documentation.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_name_the_code() {
        let e = CliError::from(Status::not_found("device abc is not registered"));
        assert_eq!(e.line(), "NOT_FOUND: device abc is not registered");
        assert_eq!(e.exit_code(), 1);
        assert_eq!(
            CliError::from(Status::unavailable("")).line(),
            "UNAVAILABLE"
        );
        assert_eq!(
            CliError::from(Status::internal("bad\nanswer")).line(),
            "INTERNAL: bad answer"
        );
    }

    #[test]
    fn every_code_has_its_grpc_name() {
        for i in 0..=16 {
            let code = Code::from_i32(i);
            assert_eq!(
                code_name(code).replace('_', "").to_lowercase(),
                format!("{code:?}").to_lowercase()
            );
        }
    }

    #[test]
    fn causes_are_not_repeated() {
        let e = anyhow::anyhow!("inner")
            .context("outer: inner")
            .context("reading f");
        assert_eq!(CliError::from(e).line(), "reading f: outer: inner");
    }

    #[test]
    fn usage_errors_exit_2() {
        assert_eq!(CliError::Usage("x".into()).exit_code(), 2);
    }
}
