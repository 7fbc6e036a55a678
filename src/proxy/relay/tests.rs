use std::time::Duration;

use proptest::prelude::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream, duplex};
use tokio::sync::oneshot;

use super::*;

/// A guard that fires when the returned sender is used (or dropped).
fn guard() -> (oneshot::Sender<()>, Guard) {
    let (tx, rx) = oneshot::channel::<()>();
    (
        tx,
        Box::pin(async move {
            let _ = rx.await;
        }),
    )
}

/// A frame from the upstream (unmasked) with `payload` bytes of `fill`.
fn frame(opcode: u8, payload: usize, fill: u8) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    match payload {
        0..=125 => f.push(payload as u8),
        126..=65_535 => {
            f.push(126);
            f.extend_from_slice(&(payload as u16).to_be_bytes());
        }
        _ => {
            f.push(127);
            f.extend_from_slice(&(payload as u64).to_be_bytes());
        }
    }
    f.extend(std::iter::repeat_n(fill, payload));
    f
}

/// A relay between two in-memory connections: (client's end, upstream's end).
fn spawn_relay(guard: Option<Guard>) -> (DuplexStream, DuplexStream, tokio::task::JoinHandle<()>) {
    let (client_gate, client_peer) = duplex(64 * 1024);
    let (upstream_gate, upstream_peer) = duplex(64 * 1024);
    let task = tokio::spawn(relay(client_gate, upstream_gate, guard));
    (client_peer, upstream_peer, task)
}

async fn finished(task: tokio::task::JoinHandle<()>) {
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the relay ended")
        .unwrap();
}

#[tokio::test]
async fn every_byte_passes_both_ways_and_each_end_is_passed_on() {
    let (client, upstream, task) = spawn_relay(None);
    let up: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let down: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    let (client_rx, mut client_tx) = tokio::io::split(client);
    let (upstream_rx, mut upstream_tx) = tokio::io::split(upstream);
    let send_up = async {
        client_tx.write_all(&up).await.unwrap();
        client_tx.shutdown().await.unwrap();
    };
    let send_down = async {
        upstream_tx.write_all(&down).await.unwrap();
        upstream_tx.shutdown().await.unwrap();
    };
    let read_all = |mut rx: tokio::io::ReadHalf<DuplexStream>| async move {
        let mut got = Vec::new();
        rx.read_to_end(&mut got).await.unwrap();
        got
    };
    let ((), (), at_upstream, at_client) = tokio::join!(
        send_up,
        send_down,
        read_all(upstream_rx),
        read_all(client_rx)
    );
    assert!(
        at_upstream == up,
        "client to upstream: bytes lost or reordered"
    );
    assert!(
        at_client == down,
        "upstream to client: bytes lost or reordered"
    );
    finished(task).await;
}

#[tokio::test]
async fn one_side_ending_leaves_the_other_direction_open() {
    let (mut client, mut upstream, task) = spawn_relay(None);
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    upstream.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "the upstream sees the client's end");
    // The upstream can still answer.
    upstream.write_all(b"last words").await.unwrap();
    let mut got = [0u8; 10];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"last words");
    assert!(!task.is_finished());
    drop(upstream);
    finished(task).await;
}

#[tokio::test]
async fn frames_pass_whole_and_a_close_1008_follows_the_stop() {
    let (stop, guard) = guard();
    let (mut client, mut upstream, task) = spawn_relay(Some(guard));
    // A short text "hi" and a 300-byte binary frame (16-bit length).
    let mut frames = vec![0x81, 0x02, b'h', b'i'];
    frames.extend(frame(2, 300, 7));
    upstream.write_all(&frames).await.unwrap();
    let mut got = vec![0u8; frames.len()];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(got, frames, "frames are relayed unchanged");
    stop.send(()).unwrap();
    let mut close = Vec::new();
    client.read_to_end(&mut close).await.unwrap();
    assert_eq!(close, CLOSE_1008);
    assert_eq!(u16::from_be_bytes([close[2], close[3]]), 1008);
    assert_eq!(usize::from(close[1]), close.len() - 2);
    finished(task).await;
    let mut after = Vec::new();
    upstream.read_to_end(&mut after).await.unwrap();
    assert!(after.is_empty(), "the upstream connection is dropped");
}

/// A guarded relay whose guard fired `into` bytes into a 300-byte frame
/// from the upstream, once the client had those: (client's end, upstream's
/// end, the relay, the whole frame).
async fn stopped_mid_frame(
    into: usize,
) -> (
    DuplexStream,
    DuplexStream,
    tokio::task::JoinHandle<()>,
    Vec<u8>,
) {
    let (stop, guard) = guard();
    let (mut client, mut upstream, task) = spawn_relay(Some(guard));
    let first = frame(2, 300, 1);
    upstream.write_all(&first[..into]).await.unwrap();
    client.read_exact(&mut vec![0u8; into]).await.unwrap();
    stop.send(()).unwrap();
    (client, upstream, task, first)
}

#[tokio::test]
async fn a_frame_in_progress_is_finished_before_the_close() {
    let (mut client, mut upstream, task, first) = stopped_mid_frame(104).await;
    let early = tokio::time::timeout(Duration::from_millis(100), client.read(&mut [0u8; 1])).await;
    assert!(early.is_err(), "nothing comes in the middle of a frame");
    // The rest of the frame and a whole next one arrive in one piece.
    let mut more = first[104..].to_vec();
    more.extend(frame(1, 5, b'x'));
    upstream.write_all(&more).await.unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest.len(), first.len() - 104 + CLOSE_1008.len());
    assert_eq!(
        &rest[..first.len() - 104],
        &first[104..],
        "the frame ends whole"
    );
    assert_eq!(
        &rest[first.len() - 104..],
        &CLOSE_1008,
        "then the close, not the next frame"
    );
    finished(task).await;
}

#[tokio::test]
async fn the_client_keeps_sending_until_the_close() {
    let (mut client, mut upstream, task, first) = stopped_mid_frame(50).await;
    tokio::task::yield_now().await;
    client.write_all(b"still talking").await.unwrap();
    let mut got = [0u8; 13];
    upstream.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"still talking");
    upstream.write_all(&first[50..]).await.unwrap();
    finished(task).await;
}

#[tokio::test(start_paused = true)]
async fn a_frame_that_never_finishes_is_cut_at_the_hard_stop() {
    let (mut client, _upstream, task, _) = stopped_mid_frame(10).await;
    tokio::time::sleep(HARD_STOP - Duration::from_millis(100)).await;
    assert!(!task.is_finished(), "the frame has until the hard stop");
    tokio::time::sleep(Duration::from_millis(200)).await;
    finished(task).await;
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "cut, with no close frame inside a frame");
}

#[tokio::test]
async fn the_stop_ends_a_relay_whose_upstream_already_left() {
    let (stop, guard) = guard();
    let (mut client, upstream, task) = spawn_relay(Some(guard));
    drop(upstream);
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    assert!(!task.is_finished(), "the client may still be sending");
    stop.send(()).unwrap();
    finished(task).await;
}

#[tokio::test]
async fn an_idle_relay_holds_no_buffer() {
    let (client_gate, mut client) = duplex(64 * 1024);
    let (upstream_gate, mut upstream) = duplex(64 * 1024);
    let mut relay = relay(client_gate, upstream_gate, None);
    assert!(poll_once(&mut relay).is_pending());
    client.write_all(&[5u8; 20_000]).await.unwrap();
    upstream.write_all(&frame(2, 20_000, 6)).await.unwrap();
    assert!(poll_once(&mut relay).is_pending());
    let mut got = vec![0u8; 20_000];
    upstream.read_exact(&mut got).await.unwrap();
    assert!(got.iter().all(|b| *b == 5));
    let mut got = vec![0u8; 20_004];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(relay.up.bytes.held(), 0, "client to upstream");
    assert_eq!(relay.down.bytes.held(), 0, "upstream to client");
    assert!(relay.frames.at_boundary());
}

#[test]
fn payload_lengths_of_every_form() {
    assert_eq!(payload_len(&[0x81]), None);
    assert_eq!(payload_len(&[0x81, 0x05]), Some(5));
    assert_eq!(payload_len(&[0x81, 0x85, 1, 2, 3]), None, "mask incomplete");
    assert_eq!(payload_len(&[0x81, 0x85, 1, 2, 3, 4]), Some(5));
    assert_eq!(payload_len(&[0x82, 126, 0x01]), None);
    assert_eq!(payload_len(&[0x82, 126, 0x01, 0x2c]), Some(300));
    let long = [0x82, 127, 0, 0, 0, 1, 0, 0, 0, 0];
    assert_eq!(payload_len(&long), Some(1 << 32));
    let masked = [0x82, 0xff, 0, 0, 0, 0, 0, 1, 0, 0, 9, 9, 9];
    assert_eq!(payload_len(&masked), None);
    assert_eq!(payload_len(&[&masked[..], &[9]].concat()), Some(65_536));
}

fn arbitrary_frame() -> impl Strategy<Value = Vec<u8>> {
    let len = prop_oneof![
        0usize..=2,
        124usize..=127,
        65_534usize..=65_537,
        0usize..3_000,
    ];
    (len, any::<bool>()).prop_map(|(len, masked)| {
        let mut f = frame(2, len, 3);
        if masked {
            let at = f.len() - len;
            f[1] |= 0x80;
            f.splice(at..at, [1, 2, 3, 4]);
        }
        f
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Fed in arbitrary pieces, the count knows exactly where every frame
    /// ends, and how far the next end is.
    #[test]
    fn frame_boundaries_are_found_wherever_the_reads_split(
        frames in prop::collection::vec(arbitrary_frame(), 1..12),
        cuts in prop::collection::vec(1usize..5_000, 1..40),
    ) {
        let stream = frames.concat();
        let mut boundaries = vec![0];
        for f in &frames {
            boundaries.push(boundaries.last().unwrap() + f.len());
        }
        let mut count = Frames::default();
        let mut pos = 0;
        let mut cut = cuts.iter().cycle();
        while pos < stream.len() {
            let end = (pos + cut.next().unwrap()).min(stream.len());
            let piece = &stream[pos..end];
            let next = *boundaries.iter().find(|b| **b >= pos).unwrap();
            prop_assert_eq!(count.until_boundary(piece), (next - pos).min(piece.len()));
            count.advance(piece);
            pos = end;
            prop_assert_eq!(count.at_boundary(), boundaries.contains(&pos), "at {}", pos);
        }
    }
}

/// A stream that counts the reads asked of it.
struct Counted {
    inner: DuplexStream,
    reads: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn a_quiet_side_is_not_read_while_the_other_talks() {
    let (client_gate, mut client) = duplex(64 * 1024);
    let (upstream_gate, mut upstream) = duplex(64 * 1024);
    let reads = std::sync::Arc::default();
    let counted = Counted {
        inner: client_gate,
        reads: std::sync::Arc::clone(&reads),
    };
    let task = tokio::spawn(relay(counted, upstream_gate, None));
    let message = frame(1, 20, b'm');
    for _ in 0..50 {
        upstream.write_all(&message).await.unwrap();
        let mut got = vec![0u8; message.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, message);
    }
    let quiet = reads.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        quiet <= 2,
        "the client sent nothing, yet was read {quiet} times over 50 messages"
    );
    client.write_all(b"now").await.unwrap();
    let mut got = [0u8; 3];
    upstream.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"now", "and is read as soon as it sends");
    drop((client, upstream));
    finished(task).await;
}

fn poll_once<R: Future<Output = ()> + Unpin>(relay: &mut R) -> Poll<()> {
    futures_util::FutureExt::now_or_never(std::future::poll_fn(|cx| {
        Poll::Ready(Pin::new(&mut *relay).poll(cx))
    }))
    .unwrap()
}

#[tokio::test]
async fn a_slow_reader_holds_one_buffer_only_until_it_has_caught_up() {
    let (client_gate, mut client) = duplex(64 * 1024);
    // The upstream takes at most 1000 bytes until it reads.
    let (upstream_gate, mut upstream) = duplex(1000);
    let mut relay = relay(client_gate, upstream_gate, None);
    let sent: Vec<u8> = (0..5000u32).map(|i| (i % 253) as u8).collect();
    client.write_all(&sent).await.unwrap();
    assert!(poll_once(&mut relay).is_pending());
    assert_eq!(
        relay.up.bytes.held(),
        crate::proxy::lazy_buf::CAPACITY,
        "what the upstream did not take is kept"
    );
    assert_eq!(relay.up.bytes.pending().len(), 4000);
    let mut got = Vec::new();
    while got.len() < sent.len() {
        let mut chunk = [0u8; 700];
        let n = upstream.read(&mut chunk).await.unwrap();
        got.extend_from_slice(&chunk[..n]);
        assert!(poll_once(&mut relay).is_pending());
    }
    assert_eq!(got, sent, "in order, nothing lost");
    assert_eq!(relay.up.bytes.held(), 0, "given back once written");
}
