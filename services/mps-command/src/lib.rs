//! mps-command: the device-management gRPC API.
