//! WS-Management for Intel AMT, sans-IO: request envelopes, a bounded XML reader, responses
//! and SOAP faults as typed errors, HTTP framing, the digest client AMT expects, and typed
//! models of the classes behind each device-management feature. The caller moves the bytes
//! (mps-command sends them through the CIRA tunnel).

pub mod amt;
pub mod digest;
pub mod envelope;
pub mod fuzzing;
pub mod http;
pub mod response;
pub mod xml;

pub use envelope::{Class, Request};
pub use response::{Fault, Response, ResponseError};
