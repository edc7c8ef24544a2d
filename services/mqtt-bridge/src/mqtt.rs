//! The small part of MQTT 3.1.1 a publisher needs: CONNECT/CONNACK, PUBLISH at QoS 1 with its
//! PUBACK, PINGREQ/PINGRESP, DISCONNECT. Packet sizes are bounded; anything unexpected from
//! the broker ends the connection (the bridge reconnects).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest packet accepted from the broker (acks are 4 bytes).
const MAX_INBOUND: usize = 64 * 1024;
/// Largest remaining length MQTT can express.
const MAX_REMAINING: usize = 268_435_455;

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("broker connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("broker refused the connection (CONNACK return code {0})")]
    Refused(u8),
    #[error("broker sent an unexpected packet type {0:#04x}")]
    Unexpected(u8),
    #[error("broker did not answer in time")]
    Timeout,
    #[error("packet too large")]
    TooLarge,
}

fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return;
        }
    }
}

fn string(s: &str, out: &mut Vec<u8>) {
    let b = s.as_bytes();
    out.extend_from_slice(&u16::try_from(b.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(&b[..b.len().min(usize::from(u16::MAX))]);
}

fn packet(first: u8, body: &[u8]) -> Result<Vec<u8>, MqttError> {
    if body.len() > MAX_REMAINING {
        return Err(MqttError::TooLarge);
    }
    let mut out = vec![first];
    remaining_length(body.len(), &mut out);
    out.extend_from_slice(body);
    Ok(out)
}

pub struct Client {
    stream: TcpStream,
    next_id: u16,
    timeout: Duration,
}

impl Client {
    /// Connects with a clean session.
    pub async fn connect(
        addr: &str,
        client_id: &str,
        keepalive: Duration,
        timeout: Duration,
    ) -> Result<Client, MqttError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| MqttError::Timeout)??;
        stream.set_nodelay(true)?;
        let mut c = Client {
            stream,
            next_id: 0,
            timeout,
        };
        let mut body = Vec::new();
        string("MQTT", &mut body);
        body.push(4); // protocol level 3.1.1
        body.push(0x02); // clean session
        body.extend_from_slice(
            &u16::try_from(keepalive.as_secs())
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        string(client_id, &mut body);
        c.stream.write_all(&packet(0x10, &body)?).await?;
        let (kind, ack) = c.read_packet().await?;
        match (kind >> 4, ack.as_slice()) {
            (2, [_, 0]) => Ok(c),
            (2, [_, rc]) => Err(MqttError::Refused(*rc)),
            _ => Err(MqttError::Unexpected(kind)),
        }
    }

    async fn read_packet(&mut self) -> Result<(u8, Vec<u8>), MqttError> {
        tokio::time::timeout(self.timeout, async {
            let first = self.stream.read_u8().await?;
            let mut len = 0usize;
            let mut shift = 0;
            loop {
                let b = self.stream.read_u8().await?;
                len |= usize::from(b & 0x7f) << shift;
                if b & 0x80 == 0 {
                    break;
                }
                shift += 7;
                if shift > 21 {
                    return Err(MqttError::TooLarge);
                }
            }
            if len > MAX_INBOUND {
                return Err(MqttError::TooLarge);
            }
            let mut body = vec![0; len];
            self.stream.read_exact(&mut body).await?;
            Ok((first, body))
        })
        .await
        .map_err(|_| MqttError::Timeout)?
    }

    /// Publishes at QoS 1 and waits for the broker's PUBACK.
    pub async fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<(), MqttError> {
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        let id = self.next_id;
        let mut body = Vec::with_capacity(topic.len() + payload.len() + 4);
        string(topic, &mut body);
        body.extend_from_slice(&id.to_be_bytes());
        body.extend_from_slice(payload);
        self.stream.write_all(&packet(0x32, &body)?).await?;
        loop {
            let (kind, b) = self.read_packet().await?;
            match kind >> 4 {
                4 if b.len() == 2 && u16::from_be_bytes([b[0], b[1]]) == id => return Ok(()),
                4 | 13 => {} // an older PUBACK or a PINGRESP
                _ => return Err(MqttError::Unexpected(kind)),
            }
        }
    }

    /// Keeps the session alive when there is nothing to publish.
    pub async fn ping(&mut self) -> Result<(), MqttError> {
        self.stream.write_all(&[0xC0, 0x00]).await?;
        let (kind, _) = self.read_packet().await?;
        if kind >> 4 != 13 {
            return Err(MqttError::Unexpected(kind));
        }
        Ok(())
    }

    pub async fn disconnect(mut self) {
        let _ = self.stream.write_all(&[0xE0, 0x00]).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_length_encoding() {
        for (n, want) in [
            (0, vec![0]),
            (127, vec![0x7f]),
            (128, vec![0x80, 0x01]),
            (16_383, vec![0xff, 0x7f]),
            (2_097_152, vec![0x80, 0x80, 0x80, 0x01]),
        ] {
            let mut out = Vec::new();
            remaining_length(n, &mut out);
            assert_eq!(out, want, "{n}");
        }
    }
}
