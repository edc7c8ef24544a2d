//! Generated protobuf types and gRPC stubs for Homeport's published contracts (`proto/`).
#![allow(clippy::all)]

pub mod events {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/homeport.events.v1.rs"));
    }
}

pub mod device {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/homeport.device.v1.rs"));
    }
}

pub mod audit {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/homeport.audit.v1.rs"));
    }
}

pub mod provisioning {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/homeport.provisioning.v1.rs"));
    }
}
