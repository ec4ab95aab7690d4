//! Shared by the iptables guard and policy tests: named network namespaces (a "host" the
//! driver runs in, "pods" behind veths), removed on drop, and traffic between them. Every
//! firewall command runs on a thread inside the test's host namespace.

#![allow(dead_code)]

use nix::sched::{setns, CloneFlags};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Ns {
    pub name: String,
}

impl Ns {
    pub fn new(tag: &str) -> Ns {
        let name = format!(
            "rg-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        sh(&["ip", "netns", "add", &name]);
        let ns = Ns { name };
        ns.exec("ip link set lo up");
        ns
    }

    /// Runs `cmd` (a shell line) inside the namespace; whether it succeeded.
    pub fn try_exec(&self, cmd: &str) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", cmd])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    pub fn exec(&self, cmd: &str) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", cmd])
            .output()
            .expect("run ip netns exec");
        assert!(
            out.status.success(),
            "{}: {cmd}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `f` on a thread inside the namespace (its child processes inherit it).
    pub fn run<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path).expect("open the namespace");
                setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .expect("thread in the namespace panicked")
        })
    }

    /// Whether `dst` answers a ping within 2 s (one echo every 0.2 s: neighbour entries
    /// that failed while a path was blocked take a moment to resolve again).
    pub fn ping(&self, dst: &str) -> bool {
        self.try_exec(&format!("ping -c1 -w2 -i0.2 -q {dst} >/dev/null"))
    }

    pub fn ping_from(&self, src: &str, dst: &str) -> bool {
        self.try_exec(&format!("ping -c1 -w2 -i0.2 -q -I {src} {dst} >/dev/null"))
    }

    /// Whether a TCP connection from this namespace to `dst` completes within a second.
    pub fn connects(&self, dst: &str) -> bool {
        let addr: SocketAddr = dst.parse().expect("socket address");
        self.run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok())
    }

    /// Accepts (and closes) connections on `ports` until the returned guard drops.
    pub fn listen(&self, ports: &[u16]) -> Listener {
        let stop = Arc::new(AtomicBool::new(false));
        let listeners: Vec<TcpListener> = self.run(|| {
            ports
                .iter()
                .map(|p| TcpListener::bind(("0.0.0.0", *p)).expect("bind"))
                .collect()
        });
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            for l in &listeners {
                l.set_nonblocking(true).expect("nonblocking");
            }
            while !flag.load(Ordering::Relaxed) {
                for l in &listeners {
                    while let Ok((c, _)) = l.accept() {
                        drop(c);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Listener {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

pub struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run a command");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A routed pod: `pod` behind host veth `iface`, address `ip`/24 with the host at `.1`.
pub fn routed_pod(host: &Ns, pod: &Ns, iface: &str, ip: &str) {
    let gw = gateway(ip);
    host.exec(&format!(
        "ip link add {iface} type veth peer name eth0 netns {p} && ip link set {iface} up && \
         ip addr add {gw}/24 dev {iface} && sysctl -qw net.ipv4.ip_forward=1",
        p = pod.name
    ));
    pod.exec(&format!(
        "ip link set eth0 up && ip addr add {ip}/24 dev eth0 && ip route add default via {gw}"
    ));
}

/// A bridge `br` with address `gw`/24 in `host`.
pub fn bridge(host: &Ns, br: &str, gw: &str) {
    host.exec(&format!(
        "ip link add {br} type bridge && ip addr add {gw}/24 dev {br} && ip link set {br} up && \
         sysctl -qw net.ipv4.ip_forward=1"
    ));
}

/// A bridged pod on `br` (gateway `.1`).
pub fn bridged_pod(host: &Ns, pod: &Ns, br: &str, iface: &str, ip: &str) {
    host.exec(&format!(
        "ip link add {iface} type veth peer name eth0 netns {p} && \
         ip link set {iface} master {br} up",
        p = pod.name
    ));
    pod.exec(&format!(
        "ip link set eth0 up && ip addr add {ip}/24 dev eth0 && ip route add default via {}",
        gateway(ip)
    ));
}

fn gateway(ip: &str) -> String {
    let (net, _) = ip.rsplit_once('.').expect("an IPv4 address");
    format!("{net}.1")
}
