//! One pooled connection to one server: many requests in flight, told apart by request id.
//!
//! A writer task owns the socket's write half and writes whole frames handed to it through a
//! bounded channel, coalescing those that queue up into one write; a caller that gives up
//! halfway (a timeout, a dropped future) can therefore never leave half a frame on the wire.
//! A reader task owns the read half, decodes responses and hands each to the oneshot channel
//! registered under its request id. A semaphore bounds the requests in flight: a caller waits
//! for a slot before sending, which is the back-pressure a full server would otherwise have to
//! answer with `Busy`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::wire::{
    self, ClientLimits, ErrorStatus, PrefaceCode, Request, RequestFrame, Response, ResponseDecoder,
    SERVER_PREFACE_BYTES, ServerPreface,
};

/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Most bytes of queued frames the writer coalesces into one write.
const WRITE_BATCH_BYTES_MAX: usize = 256 * 1024;

type Reply = Result<Result<Response, ErrorStatus>>;

/// What the caller, the reader and the writer share.
struct Shared {
    endpoint: String,
    /// Requests sent and not yet answered, by request id; once the connection broke, `Err`
    /// with the reason.
    pending: Mutex<Result<HashMap<u64, oneshot::Sender<Reply>>, String>>,
}

impl Shared {
    fn lost(&self, reason: &str) -> Error {
        Error::ConnectionLost {
            endpoint: self.endpoint.clone(),
            reason: reason.to_owned(),
        }
    }

    /// Marks the connection broken and fails every pending request.
    fn fail(&self, reason: String) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if let Ok(map) = std::mem::replace(&mut *pending, Err(reason.clone())) {
            for (_, tx) in map {
                let _ = tx.send(Err(self.lost(&reason)));
            }
        }
    }

    fn take(&self, id: u64) -> Option<oneshot::Sender<Reply>> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.as_mut().ok()?.remove(&id)
    }
}

/// A connection to one server.
pub(crate) struct Connection {
    shared: Arc<Shared>,
    frames: mpsc::Sender<Vec<u8>>,
    slots: Arc<Semaphore>,
    limits: ClientLimits,
    next_id: AtomicU64,
    reader: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        // The writer ends when `frames` is dropped; the reader would wait for the server.
        self.reader.abort();
    }
}

impl Connection {
    /// Connects to `endpoint`, exchanges prefaces and starts the reader and writer tasks.
    /// The limits in use are the tighter of ours and the server's.
    pub(crate) async fn open(
        endpoint: &str,
        limits: &ClientLimits,
        connect_timeout: Duration,
    ) -> Result<Connection> {
        let handshake = |reason: String| Error::Handshake {
            endpoint: endpoint.to_owned(),
            reason,
        };
        let connect = async {
            let mut stream =
                TcpStream::connect(endpoint)
                    .await
                    .map_err(|source| Error::Connect {
                        endpoint: endpoint.to_owned(),
                        source,
                    })?;
            // Requests are small and latency matters more than packet count; the writer
            // already coalesces what queues up.
            let _ = stream.set_nodelay(true);
            stream
                .write_all(&wire::client_preface())
                .await
                .map_err(|e| handshake(format!("sending the preface: {e}")))?;
            let mut preface = [0u8; SERVER_PREFACE_BYTES];
            stream
                .read_exact(&mut preface)
                .await
                .map_err(|e| handshake(format!("reading the server's preface: {e}")))?;
            let preface = ServerPreface::decode(&preface).map_err(|e| handshake(e.to_string()))?;
            Ok::<_, Error>((stream, preface))
        };
        let (stream, preface) = tokio::time::timeout(connect_timeout, connect)
            .await
            .map_err(|_| Error::Timeout {
                endpoint: endpoint.to_owned(),
                after: connect_timeout,
            })??;
        match preface.code {
            PrefaceCode::Accepted if preface.version == wire::VERSION => {}
            PrefaceCode::Accepted | PrefaceCode::VersionUnsupported => {
                return Err(handshake(format!(
                    "the server speaks protocol version {}, this client {}",
                    preface.version,
                    wire::VERSION
                )));
            }
            PrefaceCode::Busy => {
                return Err(handshake("the server takes no more connections".into()));
            }
        }
        let mut limits = limits.clone();
        if preface.request_bytes_max > 0 {
            limits.request_bytes_max = limits.request_bytes_max.min(preface.request_bytes_max);
        }
        if preface.in_flight_per_connection_max > 0 {
            limits.in_flight_per_connection_max = limits
                .in_flight_per_connection_max
                .min(preface.in_flight_per_connection_max);
        }
        let in_flight = limits.in_flight_per_connection_max as usize;
        let shared = Arc::new(Shared {
            endpoint: endpoint.to_owned(),
            pending: Mutex::new(Ok(HashMap::new())),
        });
        let (read, write) = stream.into_split();
        let (frames, queued) = mpsc::channel(in_flight);
        tokio::spawn(write_frames(write, queued, Arc::clone(&shared)));
        let reader = tokio::spawn(read_frames(read, limits.clone(), Arc::clone(&shared)));
        Ok(Connection {
            shared,
            frames,
            slots: Arc::new(Semaphore::new(in_flight)),
            limits,
            next_id: AtomicU64::new(1),
            reader,
        })
    }

    /// Whether the connection broke; a broken connection is replaced, never reused.
    pub(crate) fn is_broken(&self) -> bool {
        let pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        pending.is_err() || self.frames.is_closed()
    }

    /// Sends `request` for `group` and waits for its response. The slot, the pending entry
    /// and the frame are released on every path, including when the caller stops waiting.
    pub(crate) async fn call(&self, group: u32, request: Request) -> Reply {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| self.shared.lost("closed"))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::new();
        wire::encode_request(
            &RequestFrame { id, group, request },
            &self.limits,
            &mut frame,
        )?;
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match pending.as_mut() {
                Ok(map) => map.insert(id, tx),
                Err(reason) => return Err(self.shared.lost(reason)),
            };
        }
        let _unregister = Unregister {
            shared: &self.shared,
            id,
        };
        if self.frames.send(frame).await.is_err() {
            return Err(self.shared.lost("the writer stopped"));
        }
        rx.await.map_err(|_| self.shared.lost("closed"))?
    }
}

/// Forgets a pending request when its caller stops waiting.
struct Unregister<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.shared.take(self.id);
    }
}

async fn write_frames(
    mut write: OwnedWriteHalf,
    mut queued: mpsc::Receiver<Vec<u8>>,
    shared: Arc<Shared>,
) {
    while let Some(mut batch) = queued.recv().await {
        while batch.len() < WRITE_BATCH_BYTES_MAX {
            match queued.try_recv() {
                Ok(frame) => batch.extend_from_slice(&frame),
                Err(_) => break,
            }
        }
        if let Err(e) = write.write_all(&batch).await {
            shared.fail(format!("write failed: {e}"));
            return;
        }
    }
    let _ = write.shutdown().await;
}

async fn read_frames(mut read: OwnedReadHalf, limits: ClientLimits, shared: Arc<Shared>) {
    let mut decoder = ResponseDecoder::new(limits);
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    loop {
        let n = match read.read(&mut chunk).await {
            Ok(0) => return shared.fail("closed by the server".into()),
            Ok(n) => n,
            Err(e) => return shared.fail(format!("read failed: {e}")),
        };
        decoder.extend(&chunk[..n]);
        loop {
            match decoder.next_frame() {
                Ok(None) => break,
                Ok(Some(frame)) => {
                    if let Some(tx) = shared.take(frame.id) {
                        let _ = tx.send(Ok(frame.result));
                    }
                }
                Err(e) => match e.request_id() {
                    Some(id) if !e.is_fatal() => {
                        if let Some(tx) = shared.take(id) {
                            let _ = tx.send(Err(Error::Protocol {
                                endpoint: shared.endpoint.clone(),
                                source: e,
                            }));
                        }
                    }
                    _ => return shared.fail(format!("undecodable response stream: {e}")),
                },
            }
        }
    }
}
