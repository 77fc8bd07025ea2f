//! The twin's Places side: it moves bytes and events for the same sans-IO
//! [`Client`](herd::places::client::Client) the mio reactor drives, so pooling, the single retry,
//! the DNS cache, TLS and response reading are one code; only the sockets are tokio's. Each
//! connection is a local task that writes what the client has to send and hands it what it
//! reads; names are resolved with `tokio::net::lookup_host` (tokio's blocking pool, never the
//! runtime thread). The node's deadline aborts the task waiting in [`Upstream::ask`], which
//! cancels the request in the client.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use herd::core::QueryId;
use herd::driver::{read_some, write_some};
use herd::places::Query;
use herd::places::client::{Client, ConnId, Event, Failure, Target};
use herd::places::response::Response;
use tokio::net::TcpStream;
use tokio::sync::{Notify, oneshot};
use tokio::task::{AbortHandle, spawn_local};

/// Bytes read from a Places socket per call.
const PLACES_READ: usize = 16 << 10;

/// All Places connections of one twin.
pub(super) struct Upstream {
    inner: Rc<Inner>,
}

struct Inner {
    client: RefCell<Client>,
    /// Each open connection's task, and how to wake it when the client has bytes for it.
    tasks: RefCell<HashMap<ConnId, (AbortHandle, Rc<Notify>)>>,
    /// Who waits for each request's answer.
    waiters: RefCell<HashMap<QueryId, oneshot::Sender<Result<Response, Failure>>>>,
}

impl Upstream {
    pub(super) fn new(target: Target) -> Self {
        let inner = Inner {
            client: RefCell::new(Client::new(target)),
            tasks: RefCell::new(HashMap::new()),
            waiters: RefCell::new(HashMap::new()),
        };
        Self { inner: Rc::new(inner) }
    }

    /// Asks Places `query` for the node's request `id`; the answer, or why there is none
    /// (never containing the key). Dropping the future (the node's deadline aborts its task)
    /// cancels the request.
    pub(super) async fn ask(&self, id: QueryId, query: &Query) -> Result<Response, Failure> {
        let (tx, rx) = oneshot::channel();
        self.inner.waiters.borrow_mut().insert(id, tx);
        let guard = Cancel { inner: Rc::clone(&self.inner), id };
        self.inner.client.borrow_mut().start(Instant::now(), id, query);
        pump(&self.inner);
        let result = rx.await.unwrap_or_else(|_| Err(Failure::Io("the twin's Places client stopped".into())));
        std::mem::forget(guard);
        result
    }
}

/// Cancels request `id` in the client if its [`Upstream::ask`] is dropped before the answer.
struct Cancel {
    inner: Rc<Inner>,
    id: QueryId,
}

impl Drop for Cancel {
    fn drop(&mut self) {
        self.inner.waiters.borrow_mut().remove(&self.id);
        self.inner.client.borrow_mut().cancel(self.id);
        pump(&self.inner);
    }
}

/// Carries out the client's events, hands finished requests to their waiters, and wakes every
/// connection task (one may have bytes to send now).
fn pump(inner: &Rc<Inner>) {
    loop {
        let Some(event) = inner.client.borrow_mut().poll_event() else { break };
        match event {
            Event::Resolve { host, port } => {
                let inner = Rc::clone(inner);
                spawn_local(async move {
                    let result = match tokio::net::lookup_host((host.as_str(), port)).await {
                        Ok(addrs) => Ok(addrs.collect::<Vec<SocketAddr>>()),
                        Err(e) => Err(format!("cannot resolve {host}: {e}")),
                    };
                    inner.client.borrow_mut().handle_resolved(Instant::now(), result);
                    pump(&inner);
                });
            }
            Event::Connect { conn, addr } => {
                let notify = Rc::new(Notify::new());
                let task = spawn_local(serve(Rc::clone(inner), conn, addr, Rc::clone(&notify)));
                inner.tasks.borrow_mut().insert(conn, (task.abort_handle(), notify));
            }
            Event::Close(conn) => {
                if let Some((task, _)) = inner.tasks.borrow_mut().remove(&conn) {
                    task.abort();
                }
            }
        }
    }
    loop {
        let Some((id, result)) = inner.client.borrow_mut().poll_done() else { break };
        if let Some(tx) = inner.waiters.borrow_mut().remove(&id) {
            let _ = tx.send(result);
        }
    }
    for (_, notify) in inner.tasks.borrow().values() {
        notify.notify_one();
    }
}

/// One Places connection: connects, then writes what the client has to send and hands it what
/// the socket reads, until the client closes it (which aborts this task).
async fn serve(inner: Rc<Inner>, conn: ConnId, addr: SocketAddr, notify: Rc<Notify>) {
    let stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => {
            let failure = Failure::Connect(format!("connect to {addr}: {e}"));
            inner.client.borrow_mut().handle_failed(Instant::now(), conn, failure);
            return pump(&inner);
        }
    };
    let _ = stream.set_nodelay(true);
    inner.client.borrow_mut().handle_connected(conn);
    let mut buf = vec![0u8; PLACES_READ];
    loop {
        if let Err(failure) = write(&inner, &stream, conn).await {
            inner.client.borrow_mut().handle_failed(Instant::now(), conn, failure);
            return pump(&inner);
        }
        tokio::select! {
            ready = stream.readable() => {
                let now = Instant::now();
                let read = ready.map_err(|e| format!("read error: {e}")).and_then(|()| read_some(|b| stream.try_read(b), &mut buf));
                let mut client = inner.client.borrow_mut();
                match read {
                    Ok(Some(0)) => client.handle_eof(now, conn),
                    Ok(Some(n)) => client.handle_data(now, conn, &buf[..n]),
                    Ok(None) => continue,
                    Err(cause) => client.handle_failed(now, conn, Failure::Io(cause)),
                }
                drop(client);
                pump(&inner);
                if !inner.client.borrow().is_open(conn) {
                    return;
                }
            }
            () = notify.notified() => {}
        }
    }
}

/// Writes what the client has for `conn` until it has nothing more or the socket would block
/// (then waits for it to be writable).
async fn write(inner: &Rc<Inner>, stream: &TcpStream, conn: ConnId) -> Result<(), Failure> {
    loop {
        let data = inner.client.borrow_mut().transmit(conn).to_vec();
        if data.is_empty() {
            return Ok(());
        }
        match write_some(|d| stream.try_write(d), &data).map_err(Failure::Io)? {
            Some(n) => inner.client.borrow_mut().handle_sent(conn, n),
            None => stream.writable().await.map_err(|e| Failure::Io(format!("write error: {e}")))?,
        }
    }
}
