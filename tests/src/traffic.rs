//! Traffic between namespaces, never leaving the simulated addresses: pings, TCP streams
//! whose every byte is checked ([`Transfer`]), and iperf3 (Debian's) throughput.
//!
//! Sockets are opened from a short-lived thread that entered the pod's or host's namespace
//! (`in_netns`) and then used from any thread (a socket stays in the namespace it was
//! created in).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use serde_json::Value;

use crate::{ping, wait_until, ChildGuard, Netns};

/// Whether `ns` reaches `dst` by ping within a generous readiness window (a freshly
/// attached port may need a moment; this is not a performance assertion).
pub fn reachable(ns: &Netns, dst: &str) -> bool {
    wait_until(Duration::from_secs(20), || ping(ns, dst, 1))
}

/// Runs `f` on a fresh thread that entered `ns` (network namespace only) and returns its
/// result. Sockets created inside `f` stay in `ns` and may be used from any thread.
pub fn in_netns<T, F>(ns: &Netns, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    let file = ns.open()?;
    std::thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        f()
    })
    .join()
    .map_err(|_| io::Error::other("thread inside the namespace panicked"))?
}

/// A TCP listener on `ip:port` (0: ephemeral) inside `ns`.
fn listen_in(ns: &Netns, ip: Ipv4Addr, port: u16) -> TcpListener {
    in_netns(ns, move || TcpListener::bind((ip, port)))
        .unwrap_or_else(|e| panic!("listen on {ip}:{port} in {}: {e}", ns.name()))
}

/// A TCP connection from inside `ns` to `to`.
pub fn connect_in(ns: &Netns, to: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    in_netns(ns, move || TcpStream::connect_timeout(&to, timeout))
}

/// Byte `i` of every test stream.
fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

/// What the receiving side of a [`Transfer`] saw.
#[derive(Debug, Clone)]
pub struct TransferReport {
    /// The client address as the server saw it.
    pub peer: SocketAddr,
    /// Bytes received intact.
    pub bytes: u64,
    pub elapsed: Duration,
    /// Longest pause between two reads at the server.
    pub max_gap: Duration,
}

/// A TCP stream from a client in one namespace to a server in another (both run by the test
/// process): the client sends a byte pattern, the server checks every byte, then acks the
/// count. Sizes: fixed ([`Transfer::bytes`]) or paced until [`Transfer::finish`].
pub struct Transfer {
    stop: Arc<AtomicBool>,
    client: JoinHandle<Result<u64, String>>,
    server: JoinHandle<Result<TransferReport, String>>,
}

/// Bound on any single read or write (a broken path fails the transfer instead of hanging).
const IO_TIMEOUT: Duration = Duration::from_secs(15);

impl Transfer {
    fn start(
        src: &Netns,
        dst: &Netns,
        dst_ip: Ipv4Addr,
        total: Option<u64>,
        pace: Option<(usize, Duration)>,
    ) -> Transfer {
        let listener = listen_in(dst, dst_ip, 0);
        let addr = listener.local_addr().expect("listener address");
        Transfer::run(src, listener, addr, total, pace)
    }

    /// A paced stream to a server listening on `listen` in `dst`, connected to `via` (a
    /// service VIP and port that leads to it).
    pub fn paced_via(
        src: &Netns,
        dst: &Netns,
        listen: SocketAddr,
        via: SocketAddr,
        chunk: usize,
        every: Duration,
    ) -> Transfer {
        let IpAddr::V4(ip) = listen.ip() else {
            panic!("IPv4 only: {listen}");
        };
        let listener = listen_in(dst, ip, listen.port());
        Transfer::run(src, listener, via, None, Some((chunk, every)))
    }

    fn run(
        src: &Netns,
        listener: TcpListener,
        addr: SocketAddr,
        total: Option<u64>,
        pace: Option<(usize, Duration)>,
    ) -> Transfer {
        let server = std::thread::spawn(move || -> Result<TransferReport, String> {
            listener.set_nonblocking(true).map_err(|e| e.to_string())?;
            let deadline = Instant::now() + IO_TIMEOUT;
            let (mut s, peer) = loop {
                match listener.accept() {
                    Ok(c) => break c,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if Instant::now() >= deadline {
                            return Err(format!("no connection to {addr} within {IO_TIMEOUT:?}"));
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(format!("accept on {addr}: {e}")),
                }
            };
            s.set_nonblocking(false).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(IO_TIMEOUT))
                .map_err(|e| e.to_string())?;
            let start = Instant::now();
            let mut last = start;
            let mut max_gap = Duration::ZERO;
            let mut n: u64 = 0;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let r = s
                    .read(&mut buf)
                    .map_err(|e| format!("read from {peer} after {n} bytes: {e}"))?;
                let now = Instant::now();
                max_gap = max_gap.max(now - last);
                last = now;
                if r == 0 {
                    break;
                }
                for (k, b) in buf[..r].iter().enumerate() {
                    if *b != pattern(n + k as u64) {
                        return Err(format!("corrupt byte at offset {}", n + k as u64));
                    }
                }
                n += r as u64;
            }
            s.write_all(&n.to_be_bytes())
                .map_err(|e| format!("ack to {peer}: {e}"))?;
            Ok(TransferReport {
                peer,
                bytes: n,
                elapsed: start.elapsed(),
                max_gap,
            })
        });
        let stream = connect_in(src, addr, Duration::from_secs(5));
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let client = std::thread::spawn(move || -> Result<u64, String> {
            let mut s = stream.map_err(|e| format!("connect to {addr}: {e}"))?;
            s.set_write_timeout(Some(IO_TIMEOUT))
                .map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(IO_TIMEOUT))
                .map_err(|e| e.to_string())?;
            let chunk = pace.map(|(c, _)| c).unwrap_or(64 * 1024);
            let mut sent: u64 = 0;
            let mut buf = vec![0u8; chunk];
            loop {
                let len = match total {
                    Some(t) if sent >= t => break,
                    Some(t) => (t - sent).min(chunk as u64) as usize,
                    None if stop2.load(Ordering::Relaxed) => break,
                    None => chunk,
                };
                for (k, b) in buf[..len].iter_mut().enumerate() {
                    *b = pattern(sent + k as u64);
                }
                s.write_all(&buf[..len])
                    .map_err(|e| format!("write to {addr} after {sent} bytes: {e}"))?;
                sent += len as u64;
                if let Some((_, every)) = pace {
                    std::thread::sleep(every);
                }
            }
            s.shutdown(std::net::Shutdown::Write)
                .map_err(|e| e.to_string())?;
            let mut ack = [0u8; 8];
            s.read_exact(&mut ack)
                .map_err(|e| format!("read the ack from {addr}: {e}"))?;
            let got = u64::from_be_bytes(ack);
            if got != sent {
                return Err(format!("sent {sent} bytes, the server acked {got}"));
            }
            Ok(sent)
        });
        Transfer {
            stop,
            client,
            server,
        }
    }

    /// Sends `total` bytes as fast as TCP allows.
    pub fn bytes(src: &Netns, dst: &Netns, dst_ip: Ipv4Addr, total: u64) -> Transfer {
        Transfer::start(src, dst, dst_ip, Some(total), None)
    }

    /// Sends `chunk` bytes every `every` until [`Transfer::finish`].
    pub fn paced(
        src: &Netns,
        dst: &Netns,
        dst_ip: Ipv4Addr,
        chunk: usize,
        every: Duration,
    ) -> Transfer {
        Transfer::start(src, dst, dst_ip, None, Some((chunk, every)))
    }

    /// Stops a paced stream (no-op for a sized one) and waits for both ends.
    pub fn finish(self) -> Result<TransferReport, String> {
        self.stop.store(true, Ordering::Relaxed);
        let client = self
            .client
            .join()
            .map_err(|_| "client thread panicked".to_owned())?;
        let server = self
            .server
            .join()
            .map_err(|_| "server thread panicked".to_owned())?;
        let sent = client?;
        let report = server?;
        if report.bytes != sent {
            return Err(format!(
                "client sent {sent} bytes, server got {}",
                report.bytes
            ));
        }
        Ok(report)
    }
}

/// `ping -c1 -W WAIT DST` inside `ns` (WAIT in seconds, fractions allowed).
pub fn ping1(ns: &Netns, dst: Ipv4Addr, wait: &str) -> bool {
    ns.cmd("ping")
        .args(["-c", "1", "-W", wait, "-n", "-q", &dst.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Pings until one answer or `timeout`.
pub fn ping_within(ns: &Netns, dst: Ipv4Addr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ping1(ns, dst, "0.5") {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The port of [`iperf_server`].
pub const PORT: u16 = 5201;

/// Starts `iperf3 -s -B ip` inside `ns` and waits until it listens.
pub fn iperf_server(ns: &Netns, ip: Ipv4Addr) -> ChildGuard {
    let guard = ns
        .spawn(
            "iperf3",
            ["-s", "-B", &ip.to_string(), "-p", &PORT.to_string()],
        )
        .expect("spawn iperf3 -s");
    let ok = wait_until(Duration::from_secs(10), || {
        let out = ns.sh(&format!("ss -Hltn 'sport = :{PORT}'"));
        !String::from_utf8_lossy(&out.stdout).trim().is_empty()
    });
    assert!(ok, "iperf3 server on {ip} in {} not listening", ns.name());
    guard
}

/// `iperf3 -c DST -t SECS -J` inside `ns`: received Gbit/s.
pub fn iperf(ns: &Netns, dst: Ipv4Addr, secs: usize) -> f64 {
    let out = ns
        .cmd("iperf3")
        .args(["-c", &dst.to_string(), "-p", &PORT.to_string()])
        .args(["-t", &secs.to_string(), "-J"])
        .stdin(Stdio::null())
        .output()
        .expect("run iperf3 -c");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| {
            panic!(
                "iperf3 -c {dst} in {} failed ({}): {}\n{}",
                ns.name(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
    bps / 1e9
}

/// Measures every path `rounds` times (first path rotated each round); returns the samples.
pub fn rotated(paths: &[(&Netns, Ipv4Addr)], rounds: usize, secs: usize) -> Vec<Vec<f64>> {
    for (ns, dst) in paths {
        iperf(ns, *dst, 1); // warm-up
    }
    let mut out = vec![Vec::new(); paths.len()];
    for r in 0..rounds {
        for k in 0..paths.len() {
            let i = (r + k) % paths.len();
            out[i].push(iperf(paths[i].0, paths[i].1, secs));
        }
    }
    out
}
