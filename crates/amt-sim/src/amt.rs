//! The device's HTTP side on port-16992 channels: digest authentication the way AMT does it
//! (first request 401, nonces valid across channels and reconnects, stale nonces
//! re-challenged), injected WS-Man faults, and answers in AMT's framing (chunked, upper-case
//! 4-digit chunk sizes, ~0x300-byte chunks); the WS-Man service itself is `crate::wsman`.

use std::time::{Duration, Instant};

use homeport_http1::Head;
use homeport_wsman::digest::{md5_hex, params};

use crate::identity::Identity;
use crate::wsman::model::{Credentials, DeviceModel, Now};
use crate::wsman::{self, render, Effect};
use crate::Fault;

pub const SERVER_HEADER: &str = "Intel(R) Active Management Technology 15.0.23.1706";
const NONCE_TTL: Duration = Duration::from_secs(300);
const MAX_NONCES: usize = 4;
const CHUNK: usize = 0x300;
const UNAUTHORIZED_HTML: &str = "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 4.01 Transitional//EN\" >\n<html><head><link rel=stylesheet href=/styles.css>\n<meta http-equiv=\"Content-Type\" content=\"text/html; charset=utf-8\">\n<title>Intel&reg; Active Management Technology</title></head>\n<body>\n<table class=header>\n<tr><td valign=top nowrap>\n<p class=top1>Intel<font class=r><sup>&reg;</sup></font> Active Management Technology\n</td></tr></table>\n<br>\n<h2 class=warn>Log on failed. Incorrect user name or password, or user account temporarily locked.</h2>\n\n<p>\n<form METHOD=\"GET\" action=\"index.htm\"><h2><input type=submit value=\"Try again\">\n</h2></form>\n<p>\n\n</body>\n</html>\n";

/// The digest side of one device: nonces handed out and when. It lives in the device model,
/// so nonces stay valid across APF channels and reconnects like on real firmware (§1.2).
#[derive(Default)]
pub struct AmtState {
    nonces: Vec<(String, Instant)>,
}

/// What the connection does with one HTTP request.
pub(crate) enum Served {
    /// Send these bytes (after any configured latency), then apply the effect.
    Reply { bytes: Vec<u8>, effect: Effect },
    /// `Fault::VanishMidCall`: reset the TCP connection instead of answering.
    Vanish,
}

/// Answers one complete HTTP request: digest first, then injected WS-Man faults, then the
/// WS-Man service. `peer` is the APF channel's originator address (audit NetAddress).
pub(crate) fn serve(
    id: &Identity,
    model: &mut DeviceModel,
    fault: Fault,
    now: Now,
    peer: &str,
    head: &Head,
    body: &[u8],
) -> Served {
    let reply = |bytes| Served::Reply {
        bytes,
        effect: Effect::None,
    };
    let credentials = model.credentials.as_deref();
    let state = &mut model.digest;
    state
        .nonces
        .retain(|(_, at)| now.mono.duration_since(*at) < NONCE_TTL);
    match authorize(id, state, credentials, head) {
        Auth::Ok => {}
        Auth::Missing => return reply(unauthorized(id, state, now.mono, false)),
        Auth::Stale => return reply(unauthorized(id, state, now.mono, true)),
    }
    match fault {
        Fault::VanishMidCall if !model.vanish_fired => {
            model.vanish_fired = true;
            return Served::Vanish;
        }
        Fault::HostileWsman => {
            let n = model.next_counter();
            let text = String::from_utf8_lossy(body);
            let relates = element_text(&text, "MessageID").unwrap_or_default();
            return reply(ok(&hostile_body(n, relates)));
        }
        _ => {}
    }
    let mut ctx = wsman::Ctx::new(id, model, now, peer);
    let answer = wsman::handle(&mut ctx, body);
    let bytes = if answer.ok {
        ok(&answer.xml)
    } else {
        bad_request(&answer.xml)
    };
    Served::Reply {
        bytes,
        effect: answer.effect,
    }
}

/// Malformed XML for `Fault::HostileWsman`, rotating through an unclosed document, 10,000
/// nested elements and an entity bomb, so clients prove their parsers are bounded.
pub(crate) fn hostile_body(n: u32, relates_to: &str) -> String {
    let relates = render::escape(relates_to);
    let head = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><a:Envelope xmlns:a="http://www.w3.org/2003/05/soap-envelope" xmlns:b="http://schemas.xmlsoap.org/ws/2004/08/addressing"><a:Header><b:RelatesTo>{relates}</b:RelatesTo></a:Header><a:Body>"#
    );
    match n % 3 {
        0 => format!("{head}<g:AMT_GeneralSettings><g:DigestRealm>Digest:"),
        1 => format!(
            "{head}{}{}</a:Body></a:Envelope>",
            "<x>".repeat(10_000),
            "</x>".repeat(10_000)
        ),
        _ => {
            let mut dtd = String::from(r#"<!ENTITY lol0 "lolololololololololo">"#);
            for i in 1..10 {
                let refs = format!("&lol{};", i - 1).repeat(10);
                dtd.push_str(&format!(r#"<!ENTITY lol{i} "{refs}">"#));
            }
            format!(
                r#"<?xml version="1.0" encoding="UTF-8"?><!DOCTYPE a:Envelope [{dtd}]><a:Envelope xmlns:a="http://www.w3.org/2003/05/soap-envelope" xmlns:b="http://schemas.xmlsoap.org/ws/2004/08/addressing"><a:Header><b:RelatesTo>{relates}</b:RelatesTo></a:Header><a:Body><x>&lol9;</x></a:Body></a:Envelope>"#
            )
        }
    }
}

enum Auth {
    Ok,
    Missing,
    Stale,
}

fn authorize(
    id: &Identity,
    state: &AmtState,
    credentials: Option<&Credentials>,
    head: &Head,
) -> Auth {
    let Some(value) = head.header("authorization") else {
        return Auth::Missing;
    };
    let Some(raw) = value.strip_prefix("Digest ") else {
        return Auth::Missing;
    };
    let p = params(raw);
    let get = |k: &str| {
        p.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
    };
    let (Some(user), Some(realm), Some(nonce), Some(uri), Some(response)) = (
        get("username"),
        get("realm"),
        get("nonce"),
        get("uri"),
        get("response"),
    ) else {
        return Auth::Missing;
    };
    if realm != id.realm {
        return Auth::Missing;
    }
    let ha1 = match credentials {
        Some(c) if user == c.user => c.ha1.clone(),
        None if user == "admin" => {
            md5_hex(&format!("admin:{}:{}", id.realm, id.amt_password.expose()))
        }
        _ => return Auth::Missing,
    };
    let ha2 = md5_hex(&format!("{}:{uri}", head.first));
    let expected = match (get("qop"), get("nc"), get("cnonce")) {
        (Some(qop), Some(nc), Some(cnonce)) => {
            md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}"))
        }
        _ => md5_hex(&format!("{ha1}:{nonce}:{ha2}")),
    };
    if !openssl::memcmp::eq(expected.as_bytes(), response.as_bytes())
        || expected.len() != response.len()
    {
        return Auth::Missing;
    }
    // Right password but a nonce we no longer know: AMT says stale so clients retry quietly.
    if state.nonces.iter().any(|(n, _)| n == nonce) {
        Auth::Ok
    } else {
        Auth::Stale
    }
}

fn unauthorized(id: &Identity, state: &mut AmtState, now: Instant, stale: bool) -> Vec<u8> {
    let nonce = format!("{:032x}", fastrand::u128(..));
    if state.nonces.len() >= MAX_NONCES {
        state.nonces.remove(0);
    }
    state.nonces.push((nonce.clone(), now));
    format!(
        "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Digest realm=\"{}\", nonce=\"{nonce}\",stale=\"{stale}\",qop=\"auth\"\r\nContent-Type: text/html\r\nServer: {SERVER_HEADER}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{UNAUTHORIZED_HTML}",
        id.realm,
        UNAUTHORIZED_HTML.len()
    )
    .into_bytes()
}

fn ok(xml: &str) -> Vec<u8> {
    chunked("200 OK", xml, "")
}

fn bad_request(xml: &str) -> Vec<u8> {
    chunked("400 Bad Request", xml, "Connection: close\r\n")
}

/// AMT's framing: chunked, chunk sizes as 4 upper-case hex digits, boundaries anywhere.
fn chunked(status: &str, body: &str, extra: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nServer: {SERVER_HEADER}\r\nX-Frame-Options: DENY\r\nContent-Type: application/soap+xml; charset=UTF-8\r\n{extra}Transfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.as_bytes().chunks(CHUNK) {
        out.extend_from_slice(format!("{:04X}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Text of the first element whose local name (prefix ignored) is `local`.
pub fn element_text<'a>(xml: &'a str, local: &str) -> Option<&'a str> {
    let mut rest = xml;
    while let Some(lt) = rest.find('<') {
        rest = &rest[lt + 1..];
        if rest.starts_with('/') {
            continue;
        }
        let end = rest.find(|c: char| c == '>' || c == '/' || c.is_whitespace())?;
        let name = &rest[..end];
        let name = name.rsplit(':').next().unwrap_or(name);
        if name == local {
            let gt = rest.find('>')?;
            if rest[..gt].ends_with('/') {
                return Some("");
            }
            let text = &rest[gt + 1..];
            let stop = text.find('<').unwrap_or(text.len());
            return Some(text[..stop].trim());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET_GS: &str = r#"<?xml version="1.0" encoding="utf-8"?><Envelope xmlns="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"><Header><a:Action>http://schemas.xmlsoap.org/ws/2004/09/transfer/Get</a:Action><a:To>/wsman</a:To><w:ResourceURI>http://intel.com/wbem/wscim/1/amt-schema/1/AMT_GeneralSettings</w:ResourceURI><a:MessageID>7</a:MessageID></Header><Body></Body></Envelope>"#;

    fn respond_with(
        id: &Identity,
        model: &mut DeviceModel,
        fault: Fault,
        now: Instant,
        head: &Head,
        body: &[u8],
    ) -> Option<Vec<u8>> {
        let now = Now {
            mono: now,
            unix: 1_700_000_000,
        };
        match serve(id, model, fault, now, "1.2.3.4", head, body) {
            Served::Reply { bytes, .. } => Some(bytes),
            Served::Vanish => None,
        }
    }

    fn respond(
        id: &Identity,
        model: &mut DeviceModel,
        now: Instant,
        head: &Head,
        body: &[u8],
    ) -> Vec<u8> {
        respond_with(id, model, Fault::None, now, head, body).expect("an answer")
    }

    fn model() -> DeviceModel {
        DeviceModel::new(false, 1_700_000_000)
    }

    fn head(auth: Option<String>) -> Head {
        let mut raw = format!(
            "POST /wsman HTTP/1.1\r\nHost: x:16992\r\nContent-Length: {}\r\n",
            GET_GS.len()
        );
        if let Some(a) = auth {
            raw.push_str(&format!("Authorization: {a}\r\n"));
        }
        raw.push_str("\r\n");
        homeport_http1::parse_head(raw.as_bytes()).unwrap().unwrap()
    }

    fn challenge(resp: &[u8]) -> (String, String) {
        let c = homeport_http1::complete_response(resp, false)
            .unwrap()
            .unwrap();
        assert_eq!(c.head.status(), Some(401));
        let p = params(
            c.head
                .header("www-authenticate")
                .unwrap()
                .strip_prefix("Digest ")
                .unwrap(),
        );
        let get = |k: &str| p.iter().find(|(n, _)| n == k).unwrap().1.clone();
        (get("realm"), get("nonce"))
    }

    fn authorization(
        id: &Identity,
        realm: &str,
        nonce: &str,
        password: &str,
        quoted: bool,
    ) -> String {
        let ha1 = md5_hex(&format!("admin:{realm}:{password}"));
        let ha2 = md5_hex("POST:/wsman");
        let r = md5_hex(&format!("{ha1}:{nonce}:00000001:abc:auth:{ha2}"));
        let _ = id;
        if quoted {
            format!("Digest username=\"admin\",realm=\"{realm}\",nonce=\"{nonce}\",uri=\"/wsman\",qop=\"auth\",response=\"{r}\",nc=\"00000001\",cnonce=\"abc\"")
        } else {
            format!("Digest username=\"admin\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"/wsman\", response=\"{r}\", qop=auth, nc=00000001, cnonce=\"abc\"")
        }
    }

    #[test]
    fn digest_flow_like_amt() {
        let id = Identity::derive(1, 1);
        let mut st = model();
        let now = Instant::now();
        let first = respond(&id, &mut st, now, &head(None), GET_GS.as_bytes());
        let (realm, nonce) = challenge(&first);
        assert_eq!(realm, id.realm);
        assert!(String::from_utf8_lossy(&first).ends_with("</html>\n"));
        for quoted in [true, false] {
            let auth = authorization(&id, &realm, &nonce, id.amt_password.expose(), quoted);
            let resp = respond(&id, &mut st, now, &head(Some(auth)), GET_GS.as_bytes());
            let c = homeport_http1::complete_response(&resp, false)
                .unwrap()
                .unwrap();
            assert_eq!(c.head.status(), Some(200));
            assert_eq!(c.head.header("transfer-encoding"), Some("chunked"));
            let body = String::from_utf8(homeport_http1::body(&resp, &c).unwrap()).unwrap();
            assert_eq!(element_text(&body, "RelatesTo"), Some("7"));
            assert_eq!(element_text(&body, "DigestRealm"), Some(id.realm.as_str()));
            assert!(body.len() > CHUNK, "body spans several chunks");
        }
        // Wrong password: a plain challenge. Expired nonce: stale="true".
        let wrong = authorization(&id, &realm, &nonce, "nope", true);
        let resp = respond(&id, &mut st, now, &head(Some(wrong)), GET_GS.as_bytes());
        assert!(String::from_utf8_lossy(&resp).contains("stale=\"false\""));
        let good = authorization(&id, &realm, &nonce, id.amt_password.expose(), true);
        let later = now + NONCE_TTL + Duration::from_secs(1);
        let resp = respond(&id, &mut st, later, &head(Some(good)), GET_GS.as_bytes());
        assert!(String::from_utf8_lossy(&resp).contains("stale=\"true\""));
    }

    #[test]
    fn unknown_class_is_destination_unreachable() {
        let id = Identity::derive(1, 2);
        let mut st = model();
        let now = Instant::now();
        let (realm, nonce) = challenge(&respond(&id, &mut st, now, &head(None), b""));
        let auth = authorization(&id, &realm, &nonce, id.amt_password.expose(), true);
        let body = GET_GS.replace("AMT_GeneralSettings", "AMT_NoSuchClass");
        let mut h = head(Some(auth));
        h.headers.retain(|(n, _)| n != "Content-Length");
        let resp = respond(&id, &mut st, now, &h, body.as_bytes());
        let c = homeport_http1::complete_response(&resp, false)
            .unwrap()
            .unwrap();
        assert_eq!(c.head.status(), Some(400));
        let text = String::from_utf8(homeport_http1::body(&resp, &c).unwrap()).unwrap();
        assert!(text.contains("b:DestinationUnreachable"));
    }

    /// 401 first, then the digest for the nonce it carried.
    fn login(id: &Identity, st: &mut DeviceModel, now: Instant) -> Head {
        let (realm, nonce) = challenge(&respond(id, st, now, &head(None), b""));
        head(Some(authorization(
            id,
            &realm,
            &nonce,
            id.amt_password.expose(),
            true,
        )))
    }

    #[test]
    fn nonces_survive_in_the_model() {
        // The model outlives connections, so a nonce from one channel works on the next.
        let id = Identity::derive(1, 4);
        let mut st = model();
        let now = Instant::now();
        let h = login(&id, &mut st, now);
        for _ in 0..3 {
            let resp = respond(&id, &mut st, now, &h, GET_GS.as_bytes());
            assert!(String::from_utf8_lossy(&resp).starts_with("HTTP/1.1 200 OK\r\n"));
        }
    }

    #[test]
    fn hostile_fault_sends_malformed_xml_in_200s() {
        let id = Identity::derive(1, 5);
        let mut st = model();
        let now = Instant::now();
        let h = login(&id, &mut st, now);
        for _ in 0..3 {
            let resp = respond_with(
                &id,
                &mut st,
                Fault::HostileWsman,
                now,
                &h,
                GET_GS.as_bytes(),
            )
            .expect("an answer");
            let c = homeport_http1::complete_response(&resp, false)
                .unwrap()
                .unwrap();
            assert_eq!(c.head.status(), Some(200));
            assert_eq!(c.head.header("transfer-encoding"), Some("chunked"));
            let body = String::from_utf8(homeport_http1::body(&resp, &c).unwrap()).unwrap();
            assert!(crate::wsman::xml::Doc::parse(&body).is_err(), "malformed");
        }
        // Without authentication the fault does not show: the 401 comes first.
        let resp = respond_with(&id, &mut st, Fault::HostileWsman, now, &head(None), b"")
            .expect("an answer");
        assert!(String::from_utf8_lossy(&resp).starts_with("HTTP/1.1 401"));
    }

    #[test]
    fn vanish_fault_fires_once_after_authentication() {
        let id = Identity::derive(1, 6);
        let mut st = model();
        let now = Instant::now();
        let unauth = respond_with(&id, &mut st, Fault::VanishMidCall, now, &head(None), b"");
        assert!(unauth.is_some(), "the 401 is still answered");
        let h = login(&id, &mut st, now);
        let gs = GET_GS.as_bytes();
        assert!(respond_with(&id, &mut st, Fault::VanishMidCall, now, &h, gs).is_none());
        assert!(respond_with(&id, &mut st, Fault::VanishMidCall, now, &h, gs).is_some());
    }

    #[test]
    fn element_text_ignores_prefixes() {
        assert_eq!(element_text("<a:X>1</a:X>", "X"), Some("1"));
        assert_eq!(element_text("<Y/><X>2</X>", "X"), Some("2"));
        assert_eq!(element_text("<X/>", "X"), Some(""));
        assert_eq!(element_text("<Z>3</Z>", "X"), None);
    }
}
