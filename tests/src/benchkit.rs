//! What the cluster benches share: a reef-etcd client living inside a host namespace
//! ([`Kv`]), TCP accept and connect loops on threads inside namespaces (new-connection
//! rates), and the percentiles they print.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use reef_etcd::{DeleteOptions, Etcd, EtcdConfig, Txn, TxnOp};
use serde_json::Value;
use tokio::runtime::Runtime;

use crate::traffic::in_netns;
use crate::Netns;

/// Puts per etcd transaction when writing records in bulk.
pub const TXN_OPS: usize = 128;

pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---------------------------------------------------------------------------------------
// etcd from the bench: reef-etcd's client on a thread that lives in the host's namespace.

type Job = Box<dyn FnOnce(&Runtime, &mut Etcd) + Send>;

/// A reef-etcd connection owned by a thread inside a host namespace (its socket, and any
/// reconnection, stay there); requests are closures run on that thread.
pub struct Kv {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Kv {
    pub fn start(ns: &Netns, endpoint: &str) -> Kv {
        let file = ns
            .open()
            .unwrap_or_else(|e| panic!("open netns {}: {e}", ns.name()));
        let endpoint = endpoint.to_string();
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready) = mpsc::channel::<Result<(), String>>();
        let thread = std::thread::spawn(move || {
            let setup = || -> Result<(Runtime, Etcd), String> {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("tokio runtime: {e}"))?;
                let cfg = EtcdConfig {
                    endpoints: vec![endpoint],
                    tls: None,
                };
                let etcd = rt
                    .block_on(Etcd::connect(&cfg))
                    .map_err(|e| e.to_string())?;
                Ok((rt, etcd))
            };
            match setup() {
                Ok((rt, mut etcd)) => {
                    let _ = ready_tx.send(Ok(()));
                    for job in rx {
                        job(&rt, &mut etcd);
                    }
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        });
        match ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("etcd client in {}: {e}", ns.name()),
            Err(_) => panic!("etcd client thread in {} died", ns.name()),
        }
        Kv {
            jobs: Some(jobs),
            thread: Some(thread),
        }
    }

    pub fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Runtime, &mut Etcd) -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .as_ref()
            .expect("etcd client running")
            .send(Box::new(move |rt, etcd| {
                let _ = tx.send(f(rt, etcd));
            }))
            .expect("etcd client thread gone");
        rx.recv().expect("etcd client thread died")
    }

    /// One transaction of `ops`; returns the instant right before it was sent and the store
    /// revision after it.
    pub fn txn(&self, ops: Vec<TxnOp>) -> (Instant, i64) {
        self.call(move |rt, etcd| {
            let t0 = Instant::now();
            let r = rt
                .block_on(etcd.txn(Txn::new().and_then(ops)))
                .unwrap_or_else(|e| panic!("etcd txn: {e}"));
            assert!(r.succeeded(), "etcd txn did not succeed");
            (t0, r.header().map(|h| h.revision()).unwrap_or_default())
        })
    }

    /// Every pair, in transactions of [`TXN_OPS`] puts; returns the last revision.
    pub fn put_all(&self, kvs: Vec<(String, String)>) -> i64 {
        let mut rev = 0;
        let mut ops = Vec::with_capacity(TXN_OPS);
        for (k, v) in kvs {
            ops.push(TxnOp::put(k, v, None));
            if ops.len() == TXN_OPS {
                rev = self.txn(std::mem::take(&mut ops)).1;
            }
        }
        if !ops.is_empty() {
            rev = self.txn(ops).1;
        }
        rev
    }

    pub fn put(&self, key: String, value: String) -> (Instant, i64) {
        self.txn(vec![TxnOp::put(key, value, None)])
    }

    pub fn delete(&self, key: String) -> (Instant, i64) {
        self.txn(vec![TxnOp::delete(key, None)])
    }

    /// Deletes the keys in `[from, to)`.
    pub fn delete_range(&self, from: String, to: String) -> i64 {
        self.txn(vec![TxnOp::delete(
            from,
            Some(DeleteOptions::new().with_range(to)),
        )])
        .1
    }

    pub fn get_prefix_json(&self, prefix: String) -> Vec<Value> {
        self.call(move |rt, etcd| {
            rt.block_on(etcd.get_prefix(&prefix))
                .unwrap_or_else(|e| panic!("etcd get {prefix}*: {e}"))
                .iter()
                .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
                .collect()
        })
    }

    pub fn get_json(&self, key: String) -> Option<Value> {
        self.call(move |rt, etcd| {
            rt.block_on(etcd.get(&key))
                .unwrap_or_else(|e| panic!("etcd get {key}: {e}"))
                .and_then(|kv| serde_json::from_slice(kv.value()).ok())
        })
    }
}

impl Drop for Kv {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Connections: an accept loop and a connect loop, on threads inside namespaces.

/// Puts the calling thread on CPU 0. The accept and connect loops both run there, so a rate
/// measures what the path costs, not how long this VM takes to wake an idle vCPU: with the
/// two threads on different vCPUs every hand-off waited for one (about 0.5 ms here), and
/// rates jumped between ~16,000/s and ~1,800/s, ~900/s or ~480/s from round to round.
fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity(0) act on it and
    // on the calling thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Closes with RST (SO_LINGER 0): no TIME_WAIT on either side, whatever the loop count.
pub fn close_with_reset(s: TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a descriptor owned by `s`, with a correctly sized struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Accepts every connection on `0.0.0.0:port` inside a namespace until dropped, and closes
/// it once the client has (the client resets it; a server closing first would race the
/// client's connect() to its reset, and a FIN would leave TIME_WAIT behind).
pub struct AcceptLoop {
    listener: TcpListener,
    thread: Option<JoinHandle<u64>>,
}

impl AcceptLoop {
    pub fn start(ns: &Netns, port: u16) -> AcceptLoop {
        let listener = in_netns(ns, move || TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
            .unwrap_or_else(|e| panic!("listen on :{port} in {}: {e}", ns.name()));
        let l = listener.try_clone().expect("dup listener");
        let thread = std::thread::spawn(move || {
            pin_to_cpu0();
            let mut n = 0u64;
            // accept(2) fails once Drop shuts the socket down.
            while let Ok((mut s, _)) = l.accept() {
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                let _ = s.read(&mut [0u8; 64]);
                close_with_reset(s);
                n += 1;
            }
            n
        });
        AcceptLoop {
            listener,
            thread: Some(thread),
        }
    }
}

impl Drop for AcceptLoop {
    fn drop(&mut self) {
        // SAFETY: shutdown(2) on a descriptor we own; wakes the thread blocked in accept().
        unsafe {
            libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a [`connect_loop`] saw.
pub struct Connects {
    /// Successful connections per second.
    pub rate: f64,
    pub failed: usize,
    /// The errors of the failed attempts, by kind.
    pub errors: BTreeMap<String, usize>,
}

/// `n` sequential connections from inside `ns` to `to`, each reset at once.
pub fn connect_loop(ns: &Netns, to: SocketAddr, n: usize) -> Connects {
    in_netns(ns, move || {
        pin_to_cpu0();
        let mut errors: BTreeMap<String, usize> = BTreeMap::new();
        let mut failed = 0;
        let start = Instant::now();
        for _ in 0..n {
            match TcpStream::connect_timeout(&to, Duration::from_secs(1)) {
                Ok(s) => close_with_reset(s),
                Err(e) => {
                    failed += 1;
                    *errors.entry(e.to_string()).or_default() += 1;
                }
            }
        }
        let rate = (n - failed) as f64 / start.elapsed().as_secs_f64();
        Ok(Connects {
            rate,
            failed,
            errors,
        })
    })
    .unwrap_or_else(|e: io::Error| panic!("connect loop in {}: {e}", ns.name()))
}

/// A rate measurement: 100 warm-up connections, then `n` timed ones. Panics if more than 1%
/// fail (the path is broken, not slow).
pub fn rate(ns: &Netns, to: SocketAddr, n: usize, what: &str) -> f64 {
    rate_or(ns, to, n, what, String::new)
}

/// [`rate`], with `context()` appended to the failure message.
pub fn rate_or(
    ns: &Netns,
    to: SocketAddr,
    n: usize,
    what: &str,
    context: impl FnOnce() -> String,
) -> f64 {
    connect_loop(ns, to, 100.min(n));
    let c = connect_loop(ns, to, n);
    assert!(
        c.failed * 100 <= n,
        "{what}: {} of {n} connections to {to} failed: {:?}\n{}",
        c.failed,
        c.errors,
        context()
    );
    c.rate
}

/// Waits until one connection from `ns` to `to` succeeds.
pub fn reachable(ns: &Netns, to: SocketAddr, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    loop {
        if connect_loop(ns, to, 1).failed == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no connection to {to} within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
