//! The fuzz target's body over the recorded responses, each truncated at every 97th byte and
//! with bytes flipped, wrapped in chunked HTTP like AMT sends it.

use std::path::Path;

fn walk(dir: &Path, out: &mut Vec<Vec<u8>>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "xml") {
            out.extend(std::fs::read(&p));
        }
    }
}

fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for c in body.chunks(0x300) {
        out.extend_from_slice(format!("{:04X}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[test]
fn recorded_responses_and_mutations_never_panic() {
    let mut docs = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data/amt-responses"),
        &mut docs,
    );
    assert!(docs.len() > 200);
    let mut rng = fastrand::Rng::with_seed(7);
    for doc in &docs {
        homeport_wsman::fuzzing::parse_reply(&chunked(doc));
        for cut in (0..doc.len()).step_by(97) {
            homeport_wsman::fuzzing::parse_reply(&doc[..cut]);
        }
        for _ in 0..20 {
            let mut m = doc.clone();
            for _ in 0..rng.usize(1..8) {
                let i = rng.usize(..m.len());
                m[i] = rng.u8(..);
            }
            homeport_wsman::fuzzing::parse_reply(&chunked(&m));
        }
    }
}
