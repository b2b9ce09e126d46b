//! Fuzzing every decoder that bytes from the network, a peer or the local API reach, on the
//! stable toolchain: each target replays its committed corpus (`tests/fuzz/corpus/TARGET/`,
//! seeds and every crash found so far), then mutates it for a bounded time.
//!
//! CI runs each target for `TERN_FUZZ_SECS` (default 1 s). A long run:
//! `TERN_FUZZ_SECS=600 cargo test --release -p tern-tests --test fuzz`. A panic writes the
//! input to the target's corpus as `crash-HASH.bin` and fails the test: commit that file, and
//! it stays a regression test. `TERN_FUZZ_SEED` picks the mutation seed (printed on failure);
//! `TERN_FUZZ_WRITE_SEEDS=1` (re)writes the encoder-made seeds into the corpus.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tern_proto::control::{ControlKeys, ControlMessage, ReplayWindow, peek_addresses};
use tern_proto::record::Record;
use tern_proto::{SecretIdentity, api, packet, rendezvous, stream, trust_request};

/// A small, seeded PRNG (xorshift64*): runs are repeatable from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One mutation of `input`, sometimes spliced with another corpus entry.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    const INTERESTING: [u8; 8] = [0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff, 0x20, 0x40];
    for _ in 0..=rng.below(4) {
        let len = input.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let at = rng.below(len + 1);
                let bytes: Vec<u8> = (0..=rng.below(16)).map(|_| rng.next() as u8).collect();
                input.splice(at..at, bytes);
            }
            3 if len > 0 => {
                let at = rng.below(len);
                let end = (at + 1 + rng.below(16)).min(len);
                input.drain(at..end);
            }
            4 => input.truncate(rng.below(len + 1)),
            5 if len >= 2 => {
                // Length fields: make one claim far more (or less) than is there.
                let at = rng.below(len - 1);
                let value = [0u16, 1, 0x7fff, 0xffff][rng.below(4)].to_be_bytes();
                input[at..at + 2].copy_from_slice(&value);
            }
            6 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                let at = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                input.truncate(at);
                input.extend_from_slice(&other[from..]);
            }
            _ => {
                let at = rng.below(len + 1);
                let copy = input[at..(at + rng.below(32)).min(len)].to_vec();
                input.extend_from_slice(&copy);
            }
        }
    }
}

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// Replays `target`'s corpus and the `seeds`, then mutates them for the time budget; every
/// input goes through `decode`, which must not panic.
fn fuzz(target: &str, seeds: Vec<Vec<u8>>, decode: impl Fn(&[u8])) {
    let dir = corpus_dir(target);
    if std::env::var_os("TERN_FUZZ_WRITE_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (n, seed) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{n}.bin")), seed).unwrap();
        }
    }
    let mut corpus = seeds;
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        corpus.extend(files.iter().filter_map(|f| std::fs::read(f).ok()));
    }
    assert!(!corpus.is_empty(), "{target}: no corpus");
    let seconds = std::env::var("TERN_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let seed = std::env::var("TERN_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x7e27_2026_u64 ^ target.len() as u64);
    let run_one = |input: &[u8]| {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode(input))).is_err() {
            std::fs::create_dir_all(&dir).unwrap();
            let hash = short_hash(input);
            let path = dir.join(format!("crash-{hash}.bin"));
            std::fs::write(&path, input).unwrap();
            panic!(
                "{target} panicked on {} (seed {seed}); commit it as a regression input",
                path.display()
            );
        }
    };
    for input in &corpus {
        run_one(input);
    }
    let mut rng = Rng(seed | 1);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut runs = 0u64;
    while Instant::now() < deadline {
        let mut input = corpus[rng.below(corpus.len())].clone();
        mutate(&mut rng, &mut input, &corpus);
        run_one(&input);
        runs += 1;
    }
    eprintln!(
        "{target}: {} corpus inputs, {runs} mutated runs",
        corpus.len()
    );
}

fn short_hash(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex_of(&sha2::Sha256::digest(bytes)[..8])
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn ids() -> &'static (SecretIdentity, SecretIdentity) {
    static IDS: std::sync::OnceLock<(SecretIdentity, SecretIdentity)> = std::sync::OnceLock::new();
    IDS.get_or_init(|| {
        (
            SecretIdentity::from_seed([61; 32]),
            SecretIdentity::from_seed([62; 32]),
        )
    })
}

fn a_record() -> Record {
    let endpoints: Vec<SocketAddr> = vec![
        "203.0.113.9:7440".parse().unwrap(),
        "[2001:db8::1]:9".parse().unwrap(),
    ];
    Record::sign(
        &ids().0,
        &endpoints,
        Some(&"alpha".parse().unwrap()),
        7,
        900,
    )
    .unwrap()
}

#[test]
fn demux_and_relay_frames() {
    let relay = packet::RelayHeader {
        source: ids().0.address(),
        destination: ids().1.address(),
    };
    let mut frame = relay.encode().to_vec();
    frame.extend_from_slice(&[0x40; 40]);
    let stun = tern_daemon::transport::stun::binding_request([3; 12], true).1;
    fuzz(
        "demux",
        vec![frame, stun, vec![0xc0; 60], vec![0x20; 30]],
        sort_datagram,
    );
}

/// What the socket reads of every datagram before quinn or the node see it.
fn sort_datagram(bytes: &[u8]) {
    let _ = packet::classify(bytes);
    let _ = packet::RelayHeader::decode(bytes);
}

#[test]
fn tcp_link_framing() {
    use tern_daemon::transport::socket::read_link_datagram;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let framed = |datagrams: &[&[u8]]| {
        let mut stream = Vec::new();
        for datagram in datagrams {
            stream.extend_from_slice(&(datagram.len() as u16).to_be_bytes());
            stream.extend_from_slice(datagram);
        }
        stream
    };
    let seeds = vec![
        framed(&[&[0x40; 40], &[0x20; 30]]),
        framed(&[&[0xc0; 1200]]),
        vec![0xff, 0xff, 1, 2, 3],
    ];
    let mut buf = vec![0u8; u16::MAX as usize];
    let buf = std::cell::RefCell::new(&mut buf);
    fuzz("link", seeds, |bytes| {
        let mut stream = bytes;
        let mut buf = buf.borrow_mut();
        runtime.block_on(async {
            while let Ok(len) = read_link_datagram(&mut stream, &mut buf[..]).await {
                sort_datagram(&buf[..len]);
            }
        });
    });
}

#[test]
fn sealed_control_packets() {
    let (me, peer) = ids();
    let sender = ControlKeys::new(peer, me.public());
    let receiver = ControlKeys::new(me, peer.public());
    let ping = sender.seal(1, &ControlMessage::Ping { txid: 9 });
    let pong = sender.seal(
        2,
        &ControlMessage::Pong {
            txid: 9,
            observed: "198.51.100.2:1".parse().unwrap(),
        },
    );
    fuzz("control", vec![ping, pong], |bytes| {
        let _ = peek_addresses(bytes);
        let _ = receiver.open(bytes, &mut ReplayWindow::default());
    });
}

#[test]
fn stream_preambles_hellos_and_datagrams() {
    let preamble = stream::Preamble {
        destination_port: 7,
        source_port: 50000,
    };
    let mut datagram = stream::encode_datagram_header(2000, 3000).to_vec();
    datagram.extend_from_slice(b"payload");
    let seeds = vec![
        preamble.encode().to_vec(),
        stream::encode_hello(42).to_vec(),
        datagram,
    ];
    fuzz("stream", seeds, |bytes| {
        if let Ok(fixed) = <&[u8; stream::PREAMBLE_LEN]>::try_from(bytes) {
            let _ = stream::Preamble::decode(fixed);
        }
        let _ = stream::decode_hello(bytes);
        let _ = stream::decode_datagram(bytes);
    });
}

#[test]
fn endpoint_records() {
    fuzz("record", vec![a_record().as_bytes().to_vec()], |bytes| {
        let _ = Record::decode(bytes);
    });
}

#[test]
fn dht_announcements() {
    let server = tern_proto::dht::Reachable {
        server: ids().1.address(),
        at: "203.0.113.1:7440".parse().unwrap(),
    };
    let announcement =
        tern_proto::dht::Announcement::sign(&ids().0, a_record(), &[server]).unwrap();
    fuzz("dht", vec![announcement.as_bytes().to_vec()], |bytes| {
        let _ = tern_proto::dht::Announcement::decode(bytes);
    });
}

#[test]
fn rendezvous_messages() {
    use rendezvous::{Answer, Request};
    let seeds = vec![
        Request::Register(Box::new(a_record())).encode(),
        Request::Lookup(ids().1.address()).encode(),
        Request::Introduce {
            target: ids().1.address(),
            record: Box::new(a_record()),
        }
        .encode(),
        Request::LookupName("alpha".parse().unwrap()).encode(),
        Answer::Registered {
            observed: "203.0.113.1:4".parse().unwrap(),
        }
        .encode(),
        Answer::Found(Box::new(a_record())).encode(),
        Answer::Refused("no".into()).encode(),
        Answer::NameTaken {
            name: "alpha".parse().unwrap(),
            holder: ids().0.address(),
        }
        .encode(),
    ];
    fuzz("rendezvous", seeds, |bytes| {
        let _ = Request::decode(bytes);
        let _ = Answer::decode(bytes);
    });
}

#[test]
fn trust_requests() {
    use trust_request::{Answer, Message, SignedRequest};
    let request = SignedRequest::sign(&ids().0, ids().1.address(), 1000, "billing agent").unwrap();
    let seeds = vec![
        request.as_bytes().to_vec(),
        Message::Request(Box::new(request)).encode(),
        Message::Approved.encode(),
        Answer::Refused("later".into()).encode(),
    ];
    fuzz("trust_request", seeds, |bytes| {
        let _ = SignedRequest::decode(bytes);
        let _ = Message::decode(bytes);
        let _ = Answer::decode(bytes);
    });
}

#[test]
fn local_api_frames() {
    let seeds = vec![
        api::encode(&api::Request::Dial {
            target: "a1b2:c3d4:e5f6".into(),
            port: 7,
            attach: false,
        })
        .unwrap(),
        br#"{"op":"peers","after":"0000:0000:0001"}"#.to_vec(),
        br#"{"ok":true,"data":{"peers":[],"next":null}}"#.to_vec(),
        br#"{"op":"send_datagram","target":"x","port":1,"source_port":2,"data":"00ff"}"#.to_vec(),
    ];
    fuzz("api", seeds, |bytes| {
        if let Ok(header) = <[u8; 4]>::try_from(bytes.get(..4).unwrap_or_default()) {
            let _ = api::body_len(header);
        }
        let _ = api::decode::<api::Request>(bytes);
        let _ = api::decode::<api::Response>(bytes);
        let _ = api::decode::<api::DatagramFrame>(bytes);
    });
}

#[test]
fn config_files() {
    let seeds = vec![
        b"listen = \"0.0.0.0:7440\"\nrendezvous = [\"a:1\"]\nhostname = \"alpha\"\n[limits]\nconnections = 5\n".to_vec(),
        b"name_grace_days = 7\nlog_format = \"json\"\n".to_vec(),
    ];
    fuzz("config", seeds, |bytes| {
        let _ = tern_daemon::config::ConfigFile::parse(&String::from_utf8_lossy(bytes));
    });
}

#[test]
fn stun_messages() {
    use tern_daemon::transport::stun;
    let (_, request) = stun::binding_request([3; 12], false);
    let (_, change) = stun::binding_request([4; 12], true);
    let from: SocketAddr = "198.51.100.7:3478".parse().unwrap();
    let other = Some("198.51.100.1:3479".parse().unwrap());
    let response = stun::answer_binding_request(&request, from, other).expect("an answer");
    fuzz("stun", vec![request, change, response.bytes], |bytes| {
        let _ = stun::parse_binding_response(bytes);
        let _ = stun::answer_binding_request(bytes, from, other);
    });
}

#[test]
fn key_files() {
    fuzz("key_file", vec![ids().0.to_key_file()], |bytes| {
        let _ = SecretIdentity::from_key_file(bytes);
    });
}
