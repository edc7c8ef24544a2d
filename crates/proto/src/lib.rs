//! Generated protobuf types for Homeport's published contracts (`proto/`).
#![allow(clippy::all)]

pub mod events {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/homeport.events.v1.rs"));
    }
}
