//! The real etcd server (Debian's 3.4) in a simulated host, plain and with TLS.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use std::time::Duration;

use netns_fixtures::{wait_until, Cluster, EtcdHost, TlsMaterial, Underlay};

/// True if `pid` is gone, or is now some other process (not an etcd using `data_dir`).
fn etcd_gone(pid: u32, data_dir: &Path) -> bool {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Err(_) => true,
        Ok(cmdline) => !String::from_utf8_lossy(&cmdline).contains(&*data_dir.to_string_lossy()),
    }
}

#[test]
fn put_get_stop_start_again() {
    let mut cluster = Cluster::new(2, true).expect("cluster");
    let h1 = &cluster.hosts[0];
    let h2 = &cluster.hosts[1];
    let etcd = cluster.etcd.as_mut().expect("etcd");
    eprintln!("etcd healthy after {:?}", etcd.startup_time());
    assert_eq!(etcd.addr(), Ipv4Addr::new(198, 18, 1, 3), "after h1, h2");
    assert_eq!(etcd.endpoint(), "http://198.18.1.3:2379");
    assert_eq!(etcd.host().name(), "etcd");

    etcd.ctl(h1.ns(), ["put", "/reef/test", "v1"]).expect("put");
    let got = etcd
        .ctl(h2.ns(), ["get", "/reef/test", "--print-value-only"])
        .expect("get");
    assert_eq!(got.trim(), "v1");
    // Also on 127.0.0.1 inside its own namespace, and the peer port on the underlay.
    let local = etcd
        .host()
        .cmd("etcdctl")
        .args([
            "--endpoints",
            &etcd.local_endpoint(),
            "get",
            "/reef/test",
            "--print-value-only",
        ])
        .output()
        .expect("etcdctl");
    assert_eq!(
        String::from_utf8_lossy(&local.stdout).trim(),
        "v1",
        "{local:?}"
    );
    let listeners = etcd.host().ns().sh_ok("ss -Hltn");
    assert!(listeners.contains("198.18.1.3:2380"), "{listeners}");
    assert!(listeners.contains("127.0.0.1:2379"), "{listeners}");

    // Graceful stop: the process is gone and clients fail.
    let pid = etcd.pid().expect("running");
    etcd.stop().expect("stop");
    assert!(etcd.pid().is_none());
    assert!(etcd_gone(pid, &etcd.data_dir()));
    let err = etcd
        .ctl(
            h1.ns(),
            [
                "get",
                "/reef/test",
                "--dial-timeout=300ms",
                "--command-timeout=1s",
            ],
        )
        .expect_err("get with etcd stopped");
    eprintln!("stopped: {err}");

    etcd.start_again().expect("start again");
    eprintln!("etcd healthy again after {:?}", etcd.startup_time());
    assert_ne!(etcd.pid(), Some(pid));
    let got = etcd
        .ctl(h1.ns(), ["get", "/reef/test", "--print-value-only"])
        .expect("get");
    assert_eq!(got.trim(), "v1", "data survived the restart");
    assert!(etcd.start_again().is_err(), "already running");

    // A crash (SIGKILL) with --unsafe-no-fsync loses nothing either: the page cache survives.
    etcd.ctl(h2.ns(), ["put", "/reef/test2", "v2"])
        .expect("put");
    etcd.kill().expect("kill");
    etcd.start_again().expect("start after crash");
    let got = etcd
        .ctl(h1.ns(), ["get", "/reef/test2", "--print-value-only"])
        .expect("get");
    assert_eq!(got.trim(), "v2");
}

#[test]
fn tls_requires_a_client_certificate() {
    let cluster = Cluster::with_tls_etcd(1).expect("cluster");
    let h1 = cluster.host(0);
    let etcd = cluster.etcd();
    eprintln!("TLS etcd healthy after {:?}", etcd.startup_time());
    assert_eq!(etcd.endpoint(), "https://198.18.1.2:2379");

    etcd.ctl(h1.ns(), ["put", "k", "secret"])
        .expect("put with client cert");
    let got = etcd
        .ctl(h1.ns(), ["get", "k", "--print-value-only"])
        .expect("get");
    assert_eq!(got.trim(), "secret");

    let tls = etcd.tls().expect("tls files");
    let no_cert = etcd
        .etcdctl_bare(h1.ns())
        .arg("--cacert")
        .arg(&tls.ca)
        .args(["get", "k", "--dial-timeout=500ms", "--command-timeout=1s"])
        .output()
        .expect("etcdctl");
    assert!(
        !no_cert.status.success(),
        "accepted a client without a certificate"
    );
    eprintln!(
        "no client cert: {}",
        String::from_utf8_lossy(&no_cert.stderr).trim()
    );
    // ... and it was the TLS handshake that failed, as etcd's log says.
    assert!(
        wait_until(Duration::from_secs(2), || etcd
            .log_tail(50)
            .contains("client didn't provide a certificate")),
        "{}",
        etcd.log_tail(20)
    );

    // A certificate from another CA is rejected too.
    let other = TlsMaterial::generate(&[]).expect("other CA");
    let foreign = etcd
        .etcdctl_bare(h1.ns())
        .arg("--cacert")
        .arg(&tls.ca)
        .arg("--cert")
        .arg(&other.cert)
        .arg("--key")
        .arg(&other.key)
        .args(["get", "k", "--dial-timeout=500ms", "--command-timeout=1s"])
        .output()
        .expect("etcdctl");
    assert!(
        !foreign.status.success(),
        "accepted a foreign client certificate"
    );
    assert!(
        wait_until(Duration::from_secs(2), || etcd
            .log_tail(50)
            .contains("unknown authority")),
        "{}",
        etcd.log_tail(20)
    );

    // Plain HTTP to the TLS port fails.
    let plain = h1
        .cmd("etcdctl")
        .args([
            "--endpoints=http://198.18.1.2:2379",
            "--dial-timeout=500ms",
            "--command-timeout=1s",
            "get",
            "k",
        ])
        .output()
        .expect("etcdctl");
    assert!(!plain.status.success());
}

#[test]
fn tls_material_for_a_known_address_and_dropped_early() {
    let mut ul = Underlay::new("198.18.1.0/24").expect("underlay");
    // The etcd host will be the first host: .1, covered by the material's own server cert.
    let tls = TlsMaterial::generate(&[Ipv4Addr::new(198, 18, 1, 1)]).expect("tls");
    assert!(tls.covers(Ipv4Addr::new(198, 18, 1, 1)));
    let server_cert = std::fs::read(&tls.server_cert).expect("read");
    let etcd = EtcdHost::start(&mut ul, Some(&tls)).expect("etcd");
    assert_eq!(etcd.addr(), Ipv4Addr::new(198, 18, 1, 1));
    let used = std::fs::read(&etcd.tls().unwrap().server_cert).expect("read");
    assert_eq!(
        used, server_cert,
        "the material's server certificate is used"
    );
    drop(tls); // etcd has its own copies
    let client = ul.add_host("fx-client").expect("client");
    etcd.ctl(client.ns(), ["put", "a", "b"])
        .expect("put after the material is gone");
    let san = client.ns().sh_ok(&format!(
        "openssl x509 -noout -ext subjectAltName -in {}",
        etcd.tls().unwrap().server_cert.display()
    ));
    assert!(
        san.contains("IP Address:198.18.1.1") && san.contains("IP Address:127.0.0.1"),
        "{san}"
    );
}

#[test]
fn etcd_is_reachable_across_the_router() {
    let mut cluster = Cluster::two_subnets(1).expect("cluster");
    cluster.start_etcd(false).expect("etcd");
    let far = cluster.host(1);
    assert_eq!(far.subnet(), "198.18.2.0/24");
    let etcd = cluster.etcd();
    etcd.ctl(far.ns(), ["put", "x", "y"])
        .expect("put from the other subnet");
    assert_eq!(
        etcd.ctl(cluster.host(0).ns(), ["get", "x", "--print-value-only"])
            .unwrap()
            .trim(),
        "y"
    );
}

#[test]
fn start_failure_reports_etcd_output_and_cleans_up() {
    let mut ul = Underlay::new("198.18.1.0/24").expect("underlay");
    let before = ul.add_host("fx-probe").expect("probe host"); // takes .1
    let err = EtcdHost::start_with_args(&mut ul, None, &["--no-such-flag"]).expect_err("bad flag");
    let msg = err.to_string();
    assert!(msg.contains("exited during start-up"), "{msg}");
    assert!(
        msg.contains("no-such-flag"),
        "etcd's stderr is in the error: {msg}"
    );
    // The failed etcd host's namespace is gone, and with it its veth: only the probe's
    // port is left on the switch (namespace teardown is asynchronous in the kernel).
    let ports = || ul.ns().sh_ok("ip -o link show master br0").lines().count();
    assert!(
        wait_until(Duration::from_secs(5), || ports() == 1),
        "{} ports",
        ports()
    );
    drop(before);
}

#[test]
fn drop_kills_etcd_and_removes_everything() {
    let cluster = Cluster::new(1, true).expect("cluster");
    let etcd = cluster.etcd();
    let pid = etcd.pid().expect("pid");
    let data_dir = etcd.data_dir();
    let paths = cluster.netns_paths();
    assert_eq!(paths.len(), 3, "underlay, h1, etcd");
    assert!(!etcd_gone(pid, &data_dir));
    assert!(data_dir.exists());
    drop(cluster);
    assert!(etcd_gone(pid, &data_dir), "etcd {pid} survived");
    assert!(!data_dir.exists());
    for p in &paths {
        assert!(!p.exists(), "{} survived", p.display());
    }
}

#[test]
fn drop_kills_etcd_when_a_test_panics() {
    let seen: Mutex<Option<(u32, PathBuf, Vec<PathBuf>)>> = Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let cluster = Cluster::new(1, true).expect("cluster");
        let etcd = cluster.etcd();
        *seen.lock().unwrap() = Some((etcd.pid().unwrap(), etcd.data_dir(), cluster.netns_paths()));
        panic!("deliberate");
    });
    assert!(result.is_err());
    let (pid, data_dir, paths) = seen.into_inner().unwrap().expect("cluster was built");
    assert!(etcd_gone(pid, &data_dir), "etcd {pid} survived the panic");
    assert!(!data_dir.exists());
    for p in &paths {
        assert!(!p.exists(), "{} survived", p.display());
    }
}

/// Start-up timing, by hand: `cargo test -p netns-fixtures --test etcd startup_timing --
/// --ignored --nocapture` (best run alone: parallel tests share the CPUs).
#[test]
#[ignore]
fn startup_timing() {
    for tls in [false, true] {
        let material = TlsMaterial::generate(&[]).expect("tls");
        let mut ul = Underlay::new("198.18.1.0/24").expect("underlay");
        let mut times = Vec::new();
        let mut restarts = Vec::new();
        let mut stops = Vec::new();
        for _ in 0..10 {
            let t = std::time::Instant::now();
            let mut etcd = EtcdHost::start(&mut ul, tls.then_some(&material)).expect("etcd");
            times.push((t.elapsed(), etcd.startup_time()));
            let t = std::time::Instant::now();
            etcd.stop().expect("stop");
            stops.push(t.elapsed());
            etcd.start_again().expect("start again");
            restarts.push(etcd.startup_time());
        }
        times.sort();
        restarts.sort();
        stops.sort();
        eprintln!(
            "tls={tls}: EtcdHost::start total (incl. host setup, cert) min {:?} median {:?} max {:?}; \
             spawn→healthy median {:?}; start_again median {:?}; stop (SIGTERM) median {:?}",
            times[0].0,
            times[5].0,
            times[9].0,
            times[5].1,
            restarts[5],
            stops[5]
        );
    }
}
