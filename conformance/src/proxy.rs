//! The fault proxy between the server and the runtime under test: a
//! loopback TCP proxy that forwards, and on the kit's word cuts every link
//! (and refuses new ones), black-holes the open links (the sockets stay
//! open, nothing moves: a half-open connection) or the new ones (a
//! connection that opens and never answers), slows every write, resets
//! a link in the middle of a bundle's message, alters bytes of the next
//! bundle, replays an old message, or forwards to another upstream.
//!
//! The server-to-runtime direction is read as HTTP/2 frames (RFC 9113
//! §4.1: a 9-byte header, then the payload), so that a bundle is altered,
//! cut or replayed inside one DATA frame and the stream around it stays
//! well-formed: what the runtime sees is a valid gRPC message with wrong
//! contents, not a broken connection. Bytes that are not HTTP/2 (an SSE
//! stream over HTTP/1.1) are forwarded and altered as they come.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::watch,
};

/// How the next bundle is altered, its length kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// One character of the signed payload: the body no longer matches the
    /// signature.
    Body,
    /// One character of the signature.
    Signature,
    /// The key id, rewritten to one no JWKS holds.
    UnknownKey,
    /// The protected header replaced by one saying `"alg": "none"`.
    AlgNone,
    /// One hexadecimal digit of the bundle's stated digest.
    Digest,
    /// The whole JWS replaced by the last other bundle's of the link, when
    /// of the same length: another policy's bundle, validly signed, in
    /// this one's place.
    Subject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Links {
    Forward,
    /// Open links closed, new ones refused.
    Cut,
}

/// HTTP/2 frame header length.
const FRAME_HEADER: usize = 9;
/// The frame type of DATA.
const DATA: u8 = 0;

/// The proxy, shared by the kit and its links. Dropped (its last clone),
/// it stops listening and closes every open link.
#[derive(Clone)]
pub struct FaultProxy {
    address: SocketAddr,
    shared: Arc<Shared>,
    /// Held by the kit's clones alone: the listener and the links end
    /// when it is gone (their receivers see it dropped).
    _alive: Arc<watch::Sender<()>>,
}

struct Shared {
    upstream: Mutex<SocketAddr>,
    links: watch::Sender<Links>,
    /// The open links' black-hole switches.
    open: Mutex<Vec<Arc<AtomicBool>>>,
    /// New links are black holes from their first byte.
    swallow: AtomicBool,
    delay: Mutex<Duration>,
    tamper: Mutex<Option<Tamper>>,
    reset: AtomicBool,
    /// Replays asked for, counted: a link busy with a frame when one is
    /// asked sees it once it looks again, rather than missing it.
    replay: watch::Sender<u64>,
    /// Bundle frames sent again.
    replayed: AtomicUsize,
    /// Frames (or, off HTTP/2, reads) that carried a bundle to a runtime,
    /// replays aside.
    bundles: AtomicUsize,
    accepts: Mutex<Vec<Instant>>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let (links, _) = watch::channel(Links::Forward);
        let (alive, dropped) = watch::channel(());
        let proxy = FaultProxy {
            _alive: Arc::new(alive),
            address: listener.local_addr()?,
            shared: Arc::new(Shared {
                upstream: Mutex::new(upstream),
                links,
                open: Mutex::default(),
                swallow: AtomicBool::new(false),
                delay: Mutex::default(),
                tamper: Mutex::default(),
                reset: AtomicBool::new(false),
                replay: watch::Sender::new(0),
                replayed: AtomicUsize::new(0),
                bundles: AtomicUsize::new(0),
                accepts: Mutex::default(),
            }),
        };
        let shared = proxy.shared.clone();
        tokio::spawn(async move {
            let mut gone = dropped.clone();
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = gone.changed() => return,
                };
                let Ok((client, _)) = accepted else {
                    return;
                };
                if *shared.links.borrow() == Links::Cut {
                    continue;
                }
                shared.accepts.lock().unwrap().push(Instant::now());
                tokio::spawn(link(client, shared.clone(), dropped.clone()));
            }
        });
        Ok(proxy)
    }

    /// The loopback address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The address runtimes are given: `http://127.0.0.1:port`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// When each link was accepted, oldest first.
    pub fn accepts(&self) -> Vec<Instant> {
        self.shared.accepts.lock().unwrap().clone()
    }

    /// Closes every open link and refuses new ones until [`Self::heal`].
    pub fn cut(&self) {
        self.shared.links.send_replace(Links::Cut);
    }

    /// Forwards again, without delay, and forgets an alteration or reset
    /// still waiting for a bundle; new links forward (a link black-holed
    /// stays so).
    pub fn heal(&self) {
        *self.shared.delay.lock().unwrap() = Duration::ZERO;
        self.shared.swallow.store(false, Ordering::SeqCst);
        *self.shared.tamper.lock().unwrap() = None;
        self.shared.reset.store(false, Ordering::SeqCst);
        self.shared.links.send_if_modified(|links| {
            let was_cut = *links == Links::Cut;
            *links = Links::Forward;
            was_cut
        });
    }

    /// The open links stop forwarding and stay open; new links forward.
    pub fn black_hole(&self) {
        for open in self.shared.open.lock().unwrap().drain(..) {
            open.store(true, Ordering::SeqCst);
        }
    }

    /// New links are accepted and forward nothing, either way, until
    /// [`Self::heal`]: a connection that opens and never answers.
    pub fn black_hole_new_links(&self) {
        self.shared.swallow.store(true, Ordering::SeqCst);
    }

    /// Holds every write back by `delay`.
    pub fn slow(&self, delay: Duration) {
        *self.shared.delay.lock().unwrap() = delay;
    }

    /// Alters the next bundle that passes.
    pub fn tamper(&self, how: Tamper) {
        *self.shared.tamper.lock().unwrap() = Some(how);
    }

    /// Whether a tamper asked for is still waiting for a bundle.
    pub fn tamper_pending(&self) -> bool {
        self.shared.tamper.lock().unwrap().is_some()
    }

    /// Forwards half of the next bundle's frame, then resets the link.
    pub fn reset_mid_message(&self) {
        self.shared.reset.store(true, Ordering::SeqCst);
    }

    /// Whether a reset asked for is still waiting for a bundle.
    pub fn reset_pending(&self) -> bool {
        self.shared.reset.load(Ordering::SeqCst)
    }

    /// Sends each open link's oldest bundle frame to its runtime again,
    /// without the signed checkpoint it carried: an old checkpoint would be
    /// refused as a history wound back before the runtime looked at the
    /// revision, which is what the replay tests.
    pub fn replay(&self) {
        self.shared.replay.send_modify(|asked| *asked += 1);
    }

    /// How many bundle frames were sent again.
    pub fn replayed(&self) -> usize {
        self.shared.replayed.load(Ordering::SeqCst)
    }

    /// How many frames carrying a bundle passed to runtimes (replays
    /// aside): a runtime that resumes from the revision it holds, while
    /// nothing changed, is sent none.
    pub fn bundles_forwarded(&self) -> usize {
        self.shared.bundles.load(Ordering::SeqCst)
    }

    /// New links go to `upstream`; open ones to another upstream close.
    pub fn redirect(&self, upstream: SocketAddr) {
        *self.shared.upstream.lock().unwrap() = upstream;
        // Any change of the links ends every open one.
        self.shared.links.send_modify(|_| {});
    }
}

/// One link, until it ends, is cut, or the proxy is dropped (`gone`
/// changes).
async fn link(client: TcpStream, shared: Arc<Shared>, mut gone: watch::Receiver<()>) {
    let upstream = *shared.upstream.lock().unwrap();
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    client.set_nodelay(true).ok();
    server.set_nodelay(true).ok();
    let black_holed = Arc::new(AtomicBool::new(shared.swallow.load(Ordering::SeqCst)));
    shared.open.lock().unwrap().push(black_holed.clone());
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let links = shared.links.subscribe();
    tokio::select! {
        () = upstream_pipe(client_read, server_write, &shared, &black_holed) => {}
        () = downstream_pipe(server_read, client_write, &shared, &black_holed) => {}
        _ = cut(links) => {}
        _ = gone.changed() => {}
    }
}

/// Until a cut after the link opened. Every change is a cut or the heal
/// after one: a link does not outlive a cut healed before it looked.
async fn cut(mut links: watch::Receiver<Links>) {
    links.changed().await.ok();
}

/// Runtime to server: forwarded as it comes.
async fn upstream_pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: &Shared,
    black_holed: &AtomicBool,
) {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let Ok(read @ 1..) = from.read(&mut buffer).await else {
            return;
        };
        if black_holed.load(Ordering::SeqCst) {
            continue;
        }
        delay(shared).await;
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

async fn delay(shared: &Shared) {
    let delay = *shared.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

/// Server to runtime: frame by frame, where the faults on bundles happen.
async fn downstream_pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: &Shared,
    black_holed: &AtomicBool,
) {
    let mut buffer = vec![0; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    // None until the first bytes tell whether this is HTTP/2.
    let mut framed: Option<bool> = None;
    // The first bundle frame seen, for a replay.
    let mut first_bundle: Option<Vec<u8>> = None;
    // The last bundle's JWS seen, for another bundle's place.
    let mut last_jws: Option<Vec<u8>> = None;
    // Replays asked for from now on.
    let mut replays = shared.replay.subscribe();
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            Ok(()) = replays.changed() => {
                if let Some(frame) = &first_bundle
                    && !black_holed.load(Ordering::SeqCst)
                {
                    if to.write_all(frame).await.is_err() {
                        return;
                    }
                    shared.replayed.fetch_add(1, Ordering::SeqCst);
                }
                continue;
            }
        };
        let Ok(read @ 1..) = read else { return };
        if black_holed.load(Ordering::SeqCst) {
            continue;
        }
        pending.extend_from_slice(&buffer[..read]);
        let is_framed = *framed.get_or_insert_with(|| {
            // A server's first frame is SETTINGS (type 4) on stream 0.
            pending.len() >= FRAME_HEADER
                && pending[3] == 4
                && pending[5..FRAME_HEADER] == [0, 0, 0, 0]
        });
        while let Some(length) = next_unit(&pending, is_framed) {
            let mut unit: Vec<u8> = pending.drain(..length).collect();
            let bundle_at = if is_framed {
                (unit[3] == DATA && bundle_jws(&unit[FRAME_HEADER..]).is_some())
                    .then_some(FRAME_HEADER)
            } else {
                bundle_jws(&unit).map(|_| 0)
            };
            if let Some(at) = bundle_at {
                shared.bundles.fetch_add(1, Ordering::SeqCst);
                if first_bundle.is_none() && is_framed {
                    first_bundle = Some(without_checkpoint(&unit).unwrap_or_else(|| unit.clone()));
                }
                let seen = bundle_jws(&unit[at..])
                    .map(|(start, length)| unit[at + start..at + start + length].to_vec());
                let how = *shared.tamper.lock().unwrap();
                let altered = match how {
                    Some(Tamper::Subject) => last_jws
                        .as_deref()
                        .is_some_and(|other| replace_jws(&mut unit[at..], other)),
                    Some(how) => alter(&mut unit[at..], how),
                    None => false,
                };
                if altered {
                    shared.tamper.lock().unwrap().take();
                }
                last_jws = seen.or(last_jws);
                if shared.reset.swap(false, Ordering::SeqCst) {
                    let half = unit.len() / 2;
                    to.write_all(&unit[..half]).await.ok();
                    // SO_LINGER 0: the close is a TCP reset.
                    let _ = to.as_ref().set_zero_linger();
                    return;
                }
            }
            delay(shared).await;
            if to.write_all(&unit).await.is_err() {
                return;
            }
        }
    }
}

/// `frame`, an HTTP/2 DATA frame holding one whole gRPC message, with the
/// message's field 6 (`WatchActiveResponse.checkpoint`) left out and the
/// lengths of the message and the frame made to match; `None` for a frame
/// of another shape (padded, a message in parts).
fn without_checkpoint(frame: &[u8]) -> Option<Vec<u8>> {
    const PADDED: u8 = 0x8;
    const CHECKPOINT: u64 = 6;
    let payload = frame.get(FRAME_HEADER..)?;
    let declared = u32::from_be_bytes(payload.get(1..5)?.try_into().ok()?) as usize;
    if frame[4] & PADDED != 0 || payload[0] != 0 || payload.len() != 5 + declared {
        return None;
    }
    let mut message = &payload[5..];
    let mut kept = Vec::with_capacity(message.len());
    while !message.is_empty() {
        let field = message;
        let tag = varint(&mut message)?;
        match tag & 7 {
            0 => {
                varint(&mut message)?;
            }
            1 => message = message.get(8..)?,
            2 => {
                let length = usize::try_from(varint(&mut message)?).ok()?;
                message = message.get(length..)?;
            }
            5 => message = message.get(4..)?,
            _ => return None,
        }
        if tag >> 3 != CHECKPOINT {
            kept.extend_from_slice(&field[..field.len() - message.len()]);
        }
    }
    let mut out = Vec::with_capacity(FRAME_HEADER + 5 + kept.len());
    out.extend_from_slice(&u32::try_from(5 + kept.len()).ok()?.to_be_bytes()[1..]);
    out.extend_from_slice(&frame[3..FRAME_HEADER]);
    out.push(0);
    out.extend_from_slice(&u32::try_from(kept.len()).ok()?.to_be_bytes());
    out.extend_from_slice(&kept);
    Some(out)
}

/// Reads a protobuf varint off the front of `bytes`.
fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (n, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * n);
        if byte & 0x80 == 0 {
            *bytes = &bytes[n + 1..];
            return Some(value);
        }
    }
    None
}

/// The length of the first whole unit in `pending`: an HTTP/2 frame, or
/// everything when the bytes are not framed.
fn next_unit(pending: &[u8], framed: bool) -> Option<usize> {
    if !framed {
        return (!pending.is_empty()).then_some(pending.len());
    }
    if pending.len() < FRAME_HEADER {
        return None;
    }
    let length = u32::from_be_bytes([0, pending[0], pending[1], pending[2]]) as usize;
    (pending.len() >= FRAME_HEADER + length).then_some(FRAME_HEADER + length)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Where the first bundle's JWS in `bytes` starts, and its length. A
/// checkpoint is a JWS too (`typ` `policyhub-checkpoint+jwt`), in the
/// same messages or in heartbeats of its own: altered, it would make the
/// runtime refuse the server's history instead of a bundle.
fn bundle_jws(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(found) = find(&bytes[from..], b"eyJ") {
        let start = from + found;
        let length = bytes[start..]
            .iter()
            .position(|byte| !(byte.is_ascii_alphanumeric() || b"-_.".contains(byte)))
            .unwrap_or(bytes.len() - start);
        let jws = &bytes[start..start + length];
        let header_end = jws.iter().position(|byte| *byte == b'.').unwrap_or(length);
        let is_bundle = URL_SAFE_NO_PAD
            .decode(&jws[..header_end])
            .ok()
            .and_then(|header| serde_json::from_slice::<serde_json::Value>(&header).ok())
            .is_some_and(|header| header["typ"] == BUNDLE_TYPE);
        if is_bundle {
            return Some((start, length));
        }
        from = start + length.max(1);
    }
    None
}

/// The `typ` of a bundle's JWS header.
const BUNDLE_TYPE: &str = "policyhub-bundle+jwt";

/// Alters the first bundle's JWS (or, for [`Tamper::Digest`], the first
/// stated digest of a message with a bundle) in `bytes` in place, its
/// length kept; whether it did.
pub fn alter(bytes: &mut [u8], how: Tamper) -> bool {
    let Some((start, jws_length)) = bundle_jws(bytes) else {
        return false;
    };
    if how == Tamper::Digest {
        let Some(at) = find(bytes, b"sha256:") else {
            return false;
        };
        let digit = at + 7;
        if digit >= bytes.len() {
            return false;
        }
        bytes[digit] = if bytes[digit] == b'0' { b'1' } else { b'0' };
        return true;
    }
    let jws = &mut bytes[start..start + jws_length];
    let dots: Vec<usize> = jws
        .iter()
        .enumerate()
        .filter(|(_, byte)| **byte == b'.')
        .map(|(at, _)| at)
        .collect();
    let [header_end, payload_end] = dots[..] else {
        return false;
    };
    match how {
        Tamper::Body => flip(&mut jws[header_end + 1..payload_end]),
        Tamper::Signature => flip(&mut jws[payload_end + 1..]),
        Tamper::UnknownKey | Tamper::AlgNone => {
            let Ok(header) = URL_SAFE_NO_PAD.decode(&jws[..header_end]) else {
                return false;
            };
            let Ok(mut header) = serde_json::from_slice::<serde_json::Value>(&header) else {
                return false;
            };
            let replaced = if how == Tamper::UnknownKey {
                let kid = header["kid"].as_str().unwrap_or_default().to_owned();
                header["kid"] = serde_json::json!("X".repeat(kid.len()));
                serde_json::to_vec(&header).ok()
            } else {
                none_header(&header, header.to_string().len())
            };
            let Some(replaced) = replaced else {
                return false;
            };
            let encoded = URL_SAFE_NO_PAD.encode(replaced);
            if encoded.len() != header_end {
                return false;
            }
            jws[..header_end].copy_from_slice(encoded.as_bytes());
            true
        }
        Tamper::Digest | Tamper::Subject => false,
    }
}

/// Puts `other` in place of the first bundle's JWS in `bytes`, when it is
/// another JWS of the same length; whether it did.
fn replace_jws(bytes: &mut [u8], other: &[u8]) -> bool {
    let Some((start, length)) = bundle_jws(bytes) else {
        return false;
    };
    let jws = &mut bytes[start..start + length];
    if jws.len() != other.len() || jws == other {
        return false;
    }
    jws.copy_from_slice(other);
    true
}

/// A header saying `"alg": "none"` with the key id kept, padded to
/// `length` bytes of JSON.
fn none_header(header: &serde_json::Value, length: usize) -> Option<Vec<u8>> {
    let kid = header["kid"].as_str().unwrap_or_default();
    let bare = format!(r#"{{"alg":"none","kid":"{kid}","x":""}}"#);
    let padding = length.checked_sub(bare.len())?;
    Some(
        format!(
            r#"{{"alg":"none","kid":"{kid}","x":"{}"}}"#,
            "x".repeat(padding)
        )
        .into_bytes(),
    )
}

/// Changes one base64url character in the middle of `part`.
fn flip(part: &mut [u8]) -> bool {
    if part.len() < 4 {
        return false;
    }
    let at = part.len() / 2;
    part[at] = if part[at] == b'A' { b'B' } else { b'A' };
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jws(header: &serde_json::Value, payload: &str) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode([7u8; 64])
        )
    }

    #[test]
    fn each_tamper_keeps_the_length_and_changes_what_it_names_in_the_bundle_alone() {
        let header = serde_json::json!({
            "alg": "EdDSA", "kid": "k1-0123456789abcdef", "typ": BUNDLE_TYPE,
        });
        let checkpoint = jws(
            &serde_json::json!({
                "alg": "EdDSA", "kid": "k1-0123456789abcdef", "typ": "policyhub-checkpoint+jwt",
            }),
            r#"{"size":3}"#,
        );
        let original = format!(
            "\x1a\x7f{checkpoint}\x0a\x7f{}\x12sha256:00ff",
            jws(&header, r#"{"body":{"limit":10}}"#)
        );
        for how in [
            Tamper::Body,
            Tamper::Signature,
            Tamper::UnknownKey,
            Tamper::AlgNone,
            Tamper::Digest,
        ] {
            let mut bytes = original.clone().into_bytes();
            assert!(alter(&mut bytes, how), "{how:?}");
            assert_eq!(bytes.len(), original.len(), "{how:?}");
            assert_ne!(bytes, original.as_bytes(), "{how:?}");
            let text = String::from_utf8(bytes).unwrap();
            assert_eq!(text[2..2 + checkpoint.len()], checkpoint, "{how:?}");
            let start = text.find('\x0a').unwrap() + 2;
            let jws = &text[start..text.find('\x12').unwrap()];
            let header_part = jws.split('.').next().unwrap();
            let decoded: serde_json::Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header_part).unwrap()).unwrap();
            match how {
                Tamper::AlgNone => assert_eq!(decoded["alg"], "none"),
                Tamper::UnknownKey => assert_eq!(decoded["kid"], "X".repeat(19)),
                _ => assert_eq!(decoded, header, "{how:?}"),
            }
        }
        let mut only_a_checkpoint = format!("\x1a\x7f{checkpoint}").into_bytes();
        assert!(!alter(&mut only_a_checkpoint, Tamper::Signature));
    }

    /// Dropped, the proxy refuses new links and closes the open ones.
    #[tokio::test]
    async fn a_dropped_proxy_stops_listening_and_closes_its_links() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = FaultProxy::start(upstream.local_addr().unwrap())
            .await
            .unwrap();
        let address = proxy.address;
        let mut client = TcpStream::connect(address).await.unwrap();
        // The link is open once the upstream took its connection.
        let (_server, _) = upstream.accept().await.unwrap();
        drop(proxy);
        let mut byte = [0; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut byte))
            .await
            .expect("the open link is closed");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(address).await.is_ok() {
            assert!(Instant::now() < deadline, "the proxy still listens");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// One gRPC message in one DATA frame, of `fields`.
    fn data_frame(fields: &[&[u8]]) -> Vec<u8> {
        let message = fields.concat();
        let mut frame = u32::try_from(5 + message.len()).unwrap().to_be_bytes()[1..].to_vec();
        frame.extend_from_slice(&[DATA, 0, 0, 0, 0, 3, 0]);
        frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(&message);
        frame
    }

    #[test]
    fn a_replayed_message_loses_its_checkpoint_and_nothing_else() {
        let kind: &[u8] = &[0x08, 0x02];
        let revision: &[u8] = &[0x10, 0xac, 0x02];
        let bundle: &[u8] = &[0x22, 0x03, b'j', b'w', b's'];
        let checkpoint: &[u8] = &[0x32, 0x02, 0x0a, 0x00];
        let complete: &[u8] = &[0x28, 0x01];
        let frame = data_frame(&[kind, revision, bundle, checkpoint, complete]);
        assert_eq!(
            without_checkpoint(&frame),
            Some(data_frame(&[kind, revision, bundle, complete]))
        );
        // A message in parts, or a frame cut short, is left as it is.
        let mut in_parts = frame.clone();
        in_parts[FRAME_HEADER + 4] += 1;
        assert_eq!(without_checkpoint(&in_parts), None);
        assert_eq!(without_checkpoint(&frame[..frame.len() - 1]), None);
    }

    #[test]
    fn frames_are_cut_at_their_stated_length() {
        let mut frame = vec![0, 0, 3, DATA, 0, 0, 0, 0, 1, b'a', b'b', b'c'];
        assert_eq!(next_unit(&frame, true), Some(12));
        assert_eq!(next_unit(&frame[..11], true), None);
        frame.extend_from_slice(&[0, 0]);
        assert_eq!(next_unit(&frame, true), Some(12));
        assert_eq!(next_unit(b"data: x", false), Some(7));
    }
}
