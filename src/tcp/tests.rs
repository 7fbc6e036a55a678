use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Wake, Waker};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use super::*;

/// A connected loopback pair: the first end as a [`Tcp`], the other plain.
async fn pair() -> (Tcp, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (Tcp::new(connected.unwrap()), accepted.unwrap().0)
}

/// One read into an initialised buffer of `size` bytes (the direct path).
async fn read_some(tcp: &mut Tcp, size: usize) -> Vec<u8> {
    let mut buf = vec![0u8; size];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("bytes were there to read")
        .unwrap();
    buf.truncate(n);
    buf
}

struct Counter(AtomicUsize);

impl Wake for Counter {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn counting_waker() -> (Waker, Arc<Counter>) {
    let counter = Arc::new(Counter(AtomicUsize::new(0)));
    (Waker::from(counter.clone()), counter)
}

/// Waits until `counter` has counted a wake-up (or fails after 5 s).
async fn woken(counter: &Counter) {
    for _ in 0..500 {
        if counter.0.load(Ordering::SeqCst) > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the reader was never woken");
}

#[tokio::test]
async fn bytes_go_both_ways_and_the_end_is_read_as_nothing() {
    let (mut tcp, mut peer) = pair().await;
    tcp.write_all(b"hello, upstream").await.unwrap();
    let mut got = [0u8; 15];
    peer.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"hello, upstream");

    peer.write_all(b"hello, client").await.unwrap();
    assert_eq!(read_some(&mut tcp, 64).await, b"hello, client");

    tcp.shutdown().await.unwrap();
    assert_eq!(
        peer.read(&mut [0u8; 8]).await.unwrap(),
        0,
        "shut down: the peer reads its end"
    );
    drop(peer);
    assert!(
        read_some(&mut tcp, 64).await.is_empty(),
        "the peer's end reads as nothing"
    );
}

#[tokio::test]
async fn a_read_that_fills_the_buffer_leaves_the_rest_to_the_next() {
    let (mut tcp, mut peer) = pair().await;
    peer.write_all(b"0123456789").await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(read_some(&mut tcp, 4).await, b"0123");
    assert_eq!(read_some(&mut tcp, 4).await, b"4567");
    assert_eq!(read_some(&mut tcp, 4).await, b"89");
}

/// A short read drains the socket and clears its readiness without
/// another system call; what arrives later must still wake the reader.
#[tokio::test]
async fn after_a_short_read_the_next_bytes_wake_the_reader() {
    let (mut tcp, mut peer) = pair().await;
    for round in 0..3u8 {
        peer.write_all(&[round; 10]).await.unwrap();
        assert_eq!(read_some(&mut tcp, 64).await, [round; 10], "a short read");

        let (waker, counter) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let mut buf = [0u8; 64];
        let mut rb = ReadBuf::new(&mut buf);
        assert!(
            Pin::new(&mut tcp).poll_read(&mut cx, &mut rb).is_pending(),
            "drained: the next read waits"
        );
        peer.write_all(&[round + 100; 3]).await.unwrap();
        woken(&counter).await;
        let mut rb = ReadBuf::new(&mut buf);
        assert!(matches!(
            Pin::new(&mut tcp).poll_read(&mut cx, &mut rb),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(rb.filled(), [round + 100; 3]);
    }
}

/// A peer that does not read: writes stop at a full socket buffer and wait,
/// and go on, every byte in order, once the peer reads.
#[tokio::test]
async fn a_full_socket_makes_writes_wait_until_the_peer_reads() {
    let (mut tcp, mut peer) = pair().await;
    let chunk: Vec<u8> = (0..=255u8).cycle().take(64 * 1024).collect();
    let (waker, counter) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    let mut sent = 0usize;
    let mut pending = false;
    for _ in 0..10_000 {
        let from = sent % chunk.len();
        match Pin::new(&mut tcp).poll_write(&mut cx, &chunk[from..]) {
            Poll::Ready(Ok(n)) => {
                assert!(n > 0);
                sent += n;
            }
            Poll::Ready(Err(e)) => panic!("write failed: {e}"),
            Poll::Pending => {
                pending = true;
                break;
            }
        }
    }
    assert!(
        pending,
        "a peer that does not read fills the socket ({sent} bytes sent)"
    );
    assert!(sent > 0);

    let reader = tokio::spawn(async move {
        let mut got = vec![0u8; sent];
        peer.read_exact(&mut got).await.unwrap();
        got
    });
    woken(&counter).await;
    let got = reader.await.unwrap();
    let want: Vec<u8> = chunk.iter().copied().cycle().take(sent).collect();
    assert!(got == want, "every byte, in order");
    tokio::time::timeout(Duration::from_secs(5), tcp.write_all(b"and more"))
        .await
        .expect("the socket has room again")
        .unwrap();
}

#[tokio::test]
async fn a_vectored_write_sends_every_slice_in_order() {
    let (mut tcp, mut peer) = pair().await;
    assert!(tcp.is_write_vectored());
    let slices = [
        IoSlice::new(b"GET / HTTP/1.1\r\n"),
        IoSlice::new(b""),
        IoSlice::new(b"host: upstream\r\n\r\n"),
    ];
    let n = poll_fn(|cx| Pin::new(&mut tcp).poll_write_vectored(cx, &slices))
        .await
        .unwrap();
    assert_eq!(n, 34);
    let mut got = [0u8; 34];
    peer.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"GET / HTTP/1.1\r\nhost: upstream\r\n\r\n");
}

/// Memory not yet initialised is read through tokio's own stream.
#[tokio::test]
async fn a_read_into_uninitialised_memory_reads_the_same_bytes() {
    let (mut tcp, mut peer) = pair().await;
    peer.write_all(b"not zeroed first").await.unwrap();
    let mut storage = [MaybeUninit::<u8>::uninit(); 64];
    let mut rb = ReadBuf::uninit(&mut storage);
    poll_fn(|cx| Pin::new(&mut tcp).poll_read(cx, &mut rb))
        .await
        .unwrap();
    assert_eq!(rb.filled(), b"not zeroed first");
    assert!(
        rb.initialized().len() < rb.capacity(),
        "it did not zero the rest"
    );
}
