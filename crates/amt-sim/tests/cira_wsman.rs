//! End-to-end: a simulated device connects over TLS + APF to a minimal in-test CIRA server
//! and answers WS-Man over a port-16992 channel — digest, latency, forced disconnect,
//! consent read off the device's screen, Unprovision dropping CIRA until re-provisioned, and
//! the vanish fault.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use homeport_amt_sim::{DeviceHandle, Fault, Fleet, SimConfig};
use homeport_apf::{DisconnectReason, ServerConfig, ServerEvent, ServerSession};
use openssl::asn1::Asn1Time;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::{hash, MessageDigest};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::ssl::{Ssl, SslAcceptor, SslMethod};
use openssl::x509::{X509NameBuilder, X509};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_openssl::SslStream;

const WAIT: Duration = Duration::from_secs(10);

fn acceptor() -> SslAcceptor {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "localhost").unwrap();
    let name = name.build();
    let mut cert = X509::builder().unwrap();
    cert.set_version(2).unwrap();
    cert.set_subject_name(&name).unwrap();
    cert.set_issuer_name(&name).unwrap();
    cert.set_pubkey(&key).unwrap();
    cert.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    cert.set_not_after(&Asn1Time::days_from_now(1).unwrap())
        .unwrap();
    cert.sign(&key, MessageDigest::sha256()).unwrap();
    let cert = cert.build();
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
    b.set_private_key(&key).unwrap();
    b.set_certificate(&cert).unwrap();
    b.build()
}

/// One accepted device connection, driven by the test.
struct Conn {
    stream: SslStream<TcpStream>,
    session: ServerSession,
    events: VecDeque<ServerEvent>,
    eof: bool,
}

impl Conn {
    async fn accept(
        listener: &TcpListener,
        acceptor: &SslAcceptor,
        within: Duration,
    ) -> Option<Conn> {
        let (tcp, _) = tokio::time::timeout(within, listener.accept())
            .await
            .ok()?
            .ok()?;
        let ssl = Ssl::new(acceptor.context()).unwrap();
        let mut stream = SslStream::new(ssl, tcp).unwrap();
        Pin::new(&mut stream).accept().await.unwrap();
        let mut c = Conn {
            stream,
            session: ServerSession::new(ServerConfig::default(), Instant::now()),
            events: VecDeque::new(),
            eof: false,
        };
        c.until(|e| matches!(e, ServerEvent::Ready { .. })).await;
        Some(c)
    }

    /// Next event, pumping I/O; None at EOF or a connection error.
    async fn event(&mut self) -> Option<ServerEvent> {
        loop {
            if let Some(out) = self.session.poll_transmit() {
                let _ = self.stream.write_all(&out).await;
            }
            if let Some(ev) = self.events.pop_front() {
                return Some(ev);
            }
            while let Some(ev) = self.session.poll_event() {
                if let ServerEvent::AuthRequest { .. } = ev {
                    self.session.accept_auth();
                }
                self.events.push_back(ev);
            }
            if !self.events.is_empty() {
                continue;
            }
            if self.eof {
                return None;
            }
            let mut buf = vec![0u8; 16 * 1024];
            match self.stream.read(&mut buf).await {
                Ok(0) | Err(_) => self.eof = true,
                Ok(n) => {
                    let _ = self.session.handle_input(Instant::now(), &buf[..n]);
                }
            }
        }
    }

    async fn until(&mut self, pred: impl Fn(&ServerEvent) -> bool) -> ServerEvent {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.event().await {
                    Some(ev) if pred(&ev) => return ev,
                    Some(_) => {}
                    None => panic!("connection ended while waiting"),
                }
            }
        })
        .await
        .expect("event in time")
    }

    /// One HTTP exchange on a fresh channel (as MPS does per REST call); None if the
    /// connection ends first.
    async fn http(&mut self, request: &[u8]) -> Option<Vec<u8>> {
        let ch = self.session.open_channel(16992).ok()?;
        self.until(|e| matches!(e, ServerEvent::ChannelOpened { id } if *id == ch))
            .await;
        self.session.send_data(ch, request).ok()?;
        let mut buf = Vec::new();
        let resp = tokio::time::timeout(WAIT, async {
            loop {
                match self.event().await? {
                    ServerEvent::ChannelData { id, data } if id == ch => {
                        buf.extend_from_slice(&data);
                        if let Ok(Some(c)) = homeport_http1::complete_response(&buf, false) {
                            return Some(buf[..c.len].to_vec());
                        }
                    }
                    _ => {}
                }
            }
        })
        .await
        .expect("answer in time")?;
        let _ = self.session.close_channel(ch);
        Some(resp)
    }
}

fn md5(s: &str) -> String {
    hash(MessageDigest::md5(), s.as_bytes())
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Builds WS-Man requests and digest headers like MPS (nonce cached per device, nc counting).
struct Client {
    realm: String,
    nonce: Option<String>,
    nc: u32,
    message_id: u32,
    password: String,
}

impl Client {
    fn envelope(&mut self, resource: &str, action: &str, body: &str) -> String {
        self.message_id += 1;
        format!(
            r#"<?xml version="1.0" encoding="utf-8"?><Envelope xmlns="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"><Header><a:Action>{action}</a:Action><a:To>/wsman</a:To><w:ResourceURI>{resource}</w:ResourceURI><a:MessageID>{}</a:MessageID><a:ReplyTo><a:Address>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:Address></a:ReplyTo><w:OperationTimeout>PT60S</w:OperationTimeout></Header><Body>{body}</Body></Envelope>"#,
            self.message_id
        )
    }

    fn request(&mut self, xml: &str) -> Vec<u8> {
        let auth = match &self.nonce {
            None => String::new(),
            Some(nonce) => {
                self.nc += 1;
                let nc = format!("{:08x}", self.nc);
                let ha1 = md5(&format!("admin:{}:{}", self.realm, self.password));
                let ha2 = md5("POST:/wsman");
                let r = md5(&format!("{ha1}:{nonce}:{nc}:cn:auth:{ha2}"));
                format!(
                    "Authorization: Digest username=\"admin\",realm=\"{}\",nonce=\"{nonce}\",uri=\"/wsman\",qop=\"auth\",response=\"{r}\",nc=\"{nc}\",cnonce=\"cn\"\r\n",
                    self.realm
                )
            }
        };
        format!(
            "POST /wsman HTTP/1.1\r\n{auth}Host: dev:16992\r\nContent-Length: {}\r\n\r\n{xml}",
            xml.len()
        )
        .into_bytes()
    }

    /// Learns realm and nonce from a 401.
    fn challenged(&mut self, resp: &[u8]) {
        let text = String::from_utf8_lossy(resp);
        let value = |key: &str| {
            let start = text.find(&format!("{key}=\""))? + key.len() + 2;
            let end = text[start..].find('"')? + start;
            Some(text[start..end].to_string())
        };
        self.realm = value("realm").expect("realm");
        self.nonce = value("nonce");
    }
}

/// Sends one WS-Man call, authenticating on a 401 like MPS; returns status and body.
async fn call(
    conn: &mut Conn,
    client: &mut Client,
    resource: &str,
    action: &str,
    body: &str,
) -> Option<(u16, String)> {
    let xml = client.envelope(resource, action, body);
    for _ in 0..2 {
        let resp = conn.http(&client.request(&xml)).await?;
        let c = homeport_http1::complete_response(&resp, false)
            .unwrap()
            .unwrap();
        let status = c.head.status().unwrap();
        if status == 401 {
            client.challenged(&resp);
            continue;
        }
        assert_eq!(c.head.header("transfer-encoding"), Some("chunked"));
        let body = String::from_utf8(homeport_http1::body(&resp, &c).unwrap()).unwrap();
        return Some((status, body));
    }
    panic!("still 401 after authenticating");
}

fn text<'a>(xml: &'a str, local: &str) -> Option<&'a str> {
    homeport_amt_sim::amt::element_text(xml, local)
}

async fn setup(
    faults: Vec<(Fault, f64)>,
    latency: Duration,
) -> (TcpListener, SslAcceptor, Fleet, DeviceHandle, Client) {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let mut cfg = SimConfig::new(listener.local_addr().unwrap(), 1);
    cfg.seed = 77;
    cfg.reconnect_min = Duration::from_millis(100);
    cfg.reconnect_max = Duration::from_millis(400);
    cfg.wsman_latency = latency;
    cfg.faults = faults;
    let fleet = Fleet::start(cfg).unwrap();
    let id = fleet.identities()[0].clone();
    let handle = fleet.device(&id.guid).expect("device handle");
    let client = Client {
        realm: String::new(),
        nonce: None,
        nc: 0,
        message_id: 0,
        password: id.amt_password.expose().to_string(),
    };
    (listener, acceptor(), fleet, handle, client)
}

const AMT: &str = "http://intel.com/wbem/wscim/1/amt-schema/1/";
const IPS: &str = "http://intel.com/wbem/wscim/1/ips-schema/1/";
const GET: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/Get";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wsman_over_cira_with_control() {
    let latency = Duration::from_millis(250);
    let (listener, acceptor, fleet, device, mut client) = setup(Vec::new(), latency).await;
    let mut conn = Conn::accept(&listener, &acceptor, WAIT)
        .await
        .expect("device connects");

    // Digest, then an answer that waited for the configured latency.
    let gs = format!("{AMT}AMT_GeneralSettings");
    let started = Instant::now();
    let (status, body) = call(&mut conn, &mut client, &gs, GET, "").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        started.elapsed() >= latency * 2,
        "401 and 200 were both delayed"
    );
    assert_eq!(text(&body, "DigestRealm"), Some(client.realm.as_str()));
    assert_eq!(text(&body, "RelatesTo"), Some("1"));

    // A forced disconnect: APF DISCONNECT by application, then a normal reconnect.
    device.disconnect();
    let ev = conn
        .until(|e| matches!(e, ServerEvent::PeerDisconnected { .. }))
        .await;
    assert_eq!(
        ev,
        ServerEvent::PeerDisconnected {
            reason: DisconnectReason::BY_APPLICATION
        }
    );
    let mut conn = Conn::accept(&listener, &acceptor, WAIT)
        .await
        .expect("device reconnects");

    // The nonce from the first connection still works (the model outlived it): no 401.
    let optin = format!("{IPS}IPS_OptInService");
    let nc_before = client.nc;
    let start = format!(r#"<h:StartOptIn_INPUT xmlns:h="{optin}"></h:StartOptIn_INPUT>"#);
    let (status, body) = call(
        &mut conn,
        &mut client,
        &optin,
        &format!("{optin}/StartOptIn"),
        &start,
    )
    .await
    .unwrap();
    assert_eq!((status, text(&body, "ReturnValue")), (200, Some("0")));
    assert_eq!(client.nc, nc_before + 1, "authenticated pre-emptively");
    let code = device.consent_code().expect("code on screen");
    let send = format!(
        r#"<h:SendOptInCode_INPUT xmlns:h="{optin}"><h:OptInCode>{code}</h:OptInCode></h:SendOptInCode_INPUT>"#
    );
    let (_, body) = call(
        &mut conn,
        &mut client,
        &optin,
        &format!("{optin}/SendOptInCode"),
        &send,
    )
    .await
    .unwrap();
    assert_eq!(text(&body, "ReturnValue"), Some("0"));
    assert_eq!(device.opt_in_state(), 3);

    // Unprovision: ReturnValue 0, CIRA dropped about a second later, no reconnect.
    let scs = format!("{AMT}AMT_SetupAndConfigurationService");
    let input = format!(
        r#"<h:Unprovision_INPUT xmlns:h="{scs}"><h:ProvisioningMode>1</h:ProvisioningMode></h:Unprovision_INPUT>"#
    );
    let audits = device.audit_len();
    let (_, body) = call(
        &mut conn,
        &mut client,
        &scs,
        &format!("{scs}/Unprovision"),
        &input,
    )
    .await
    .unwrap();
    assert_eq!(text(&body, "ReturnValue"), Some("0"));
    let answered = Instant::now();
    let ev = conn
        .until(|e| matches!(e, ServerEvent::PeerDisconnected { .. }))
        .await;
    assert_eq!(
        ev,
        ServerEvent::PeerDisconnected {
            reason: DisconnectReason::BY_APPLICATION
        }
    );
    assert!(
        answered.elapsed() >= Duration::from_millis(500),
        "after a grace period"
    );
    assert!(!device.is_provisioned());
    assert_eq!(device.audit_len(), audits + 1, "1619 audited");
    assert!(
        Conn::accept(&listener, &acceptor, Duration::from_millis(1500))
            .await
            .is_none(),
        "stays away"
    );

    // Re-provisioned through the control interface: it comes back.
    device.reprovision();
    let _back = Conn::accept(&listener, &acceptor, WAIT)
        .await
        .expect("device comes back");
    assert_eq!(fleet.wait_connected(1, WAIT).await, 1);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanish_resets_instead_of_answering() {
    let (listener, acceptor, fleet, _device, mut client) =
        setup(vec![(Fault::VanishMidCall, 1.0)], Duration::ZERO).await;
    let mut conn = Conn::accept(&listener, &acceptor, WAIT)
        .await
        .expect("device connects");
    let gs = format!("{AMT}AMT_GeneralSettings");
    // The 401 is answered; the authenticated retry gets a reset instead of an answer.
    assert!(call(&mut conn, &mut client, &gs, GET, "").await.is_none());
    assert_eq!(conn.event().await, None, "connection is gone");
    assert!(
        Conn::accept(&listener, &acceptor, Duration::from_millis(1500))
            .await
            .is_none(),
        "stays away"
    );
    assert_eq!(
        fleet
            .stats()
            .injected_faults
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    fleet.stop().await;
}
