//! Tests of the fixtures themselves. Every namespace here is created by the test and removed
//! by its guard; nothing touches the root namespace.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use netns_fixtures::{ping, tempdir, wait_until, ChildGuard, Netns};

fn own_netns_inode() -> String {
    std::fs::read_link("/proc/self/ns/net")
        .expect("readlink /proc/self/ns/net")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn new_namespace_has_only_lo_up() {
    let ns = Netns::new("fx-lo").expect("create netns");
    assert!(ns.name().starts_with("fx-lo-"), "{}", ns.name());
    assert!(ns.name().len() <= 32);
    assert_eq!(ns.path(), Path::new("/run/netns").join(ns.name()));
    assert!(ns.path().exists());

    let links = ns.sh_ok("ip -o link show");
    assert_eq!(links.lines().count(), 1, "expected only lo:\n{links}");
    assert!(links.contains("lo:"), "{links}");
    assert!(links.contains("UP"), "lo should be up:\n{links}");

    let listed = String::from_utf8_lossy(
        &std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns list")
            .stdout,
    )
    .into_owned();
    assert!(listed.contains(ns.name()), "{listed}");
}

#[test]
fn names_are_unique() {
    let all: Vec<Netns> = (0..5)
        .map(|_| Netns::new("fx-uniq").expect("create netns"))
        .collect();
    let names: HashSet<&str> = all.iter().map(Netns::name).collect();
    assert_eq!(names.len(), all.len());
    let pid = std::process::id().to_string();
    for ns in &all {
        assert!(ns.name().contains(&pid), "{}", ns.name());
    }
}

#[test]
fn long_prefix_is_shortened() {
    let ns = Netns::new("a-rather-long-prefix-that-would-not-fit").expect("create netns");
    assert!(ns.name().len() <= 32, "{}", ns.name());
}

#[test]
fn invalid_prefix_is_rejected() {
    let err = Netns::new("bad/prefix").expect_err("slash must be rejected");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn drop_removes_namespace() {
    let ns = Netns::new("fx-drop").expect("create netns");
    let path = ns.path().to_path_buf();
    assert!(path.exists());
    drop(ns);
    assert!(!path.exists(), "{} still exists", path.display());
}

#[test]
fn drop_removes_namespace_when_test_panics() {
    let seen = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let ns = Netns::new("fx-panic").expect("create netns");
        *seen.lock().expect("lock") = Some(ns.path().to_path_buf());
        panic!("deliberate");
    });
    assert!(result.is_err());
    let path = seen
        .into_inner()
        .expect("lock")
        .expect("namespace was created");
    assert!(!path.exists(), "{} survived the panic", path.display());
}

#[test]
fn cmd_runs_child_in_namespace_without_moving_caller() {
    let before = own_netns_inode();
    let ns = Netns::new("fx-cmd").expect("create netns");
    let inside = ns.sh_ok("readlink /proc/self/ns/net");
    assert_ne!(
        inside.trim(),
        before,
        "child should be in the new namespace"
    );
    // Same namespace as the one named by the file.
    let file_ino = std::fs::metadata(ns.path()).expect("stat netns").ino();
    assert_eq!(inside.trim(), format!("net:[{file_ino}]"));
    assert_eq!(own_netns_inode(), before, "calling thread must not move");
}

#[test]
fn links_made_inside_stay_inside() {
    let ns = Netns::new("fx-dummy").expect("create netns");
    ns.sh_ok("ip link add fxdummy0 type veth peer name fxdummy1 && ip link set fxdummy0 up");
    assert!(ns.sh_ok("ip -o link show").contains("fxdummy0"));
    let root = std::process::Command::new("ip")
        .args(["-o", "link", "show", "fxdummy0"])
        .output()
        .expect("ip link show");
    assert!(
        !root.status.success(),
        "fxdummy0 leaked into the root namespace"
    );
}

#[test]
fn cmd_with_sysfs_sees_namespace_links() {
    let ns = Netns::new("fx-sysfs").expect("create netns");
    ns.sh_ok("ip link add fxsys0 type bridge");
    let out = ns
        .cmd_with_sysfs("ls")
        .arg("/sys/class/net")
        .output()
        .expect("run ls");
    assert!(out.status.success(), "{out:?}");
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    names.sort();
    assert_eq!(names, ["fxsys0", "lo"]);
}

#[test]
fn run_reports_failures() {
    let ns = Netns::new("fx-run").expect("create netns");
    let out = ns
        .run("ip", ["link", "show", "nosuchdev"])
        .expect("spawn ip");
    assert!(!out.status.success());
    assert!(!ns.sh("exit 3").status.success());
    assert_eq!(ns.sh("exit 3").status.code(), Some(3));
}

#[test]
fn ping_between_two_namespaces() {
    let a = Netns::new("fx-pa").expect("create netns");
    let b = Netns::new("fx-pb").expect("create netns");
    // veth created inside `a`, peer moved straight into `b`: the root namespace never sees it.
    a.sh_ok(&format!(
        "ip link add va type veth peer name vb netns {b} && \
         ip addr add 10.231.0.1/24 dev va && ip link set va up",
        b = b.name()
    ));
    b.sh_ok("ip addr add 10.231.0.2/24 dev vb && ip link set vb up");
    assert!(ping(&a, "10.231.0.2", 2), "a cannot reach b");
    assert!(ping(&b, "10.231.0.1", 1), "b cannot reach a");
    assert!(!ping(&a, "10.231.0.3", 1), "nobody has 10.231.0.3");
}

#[test]
fn child_guard_kills_on_drop() {
    let ns = Netns::new("fx-child").expect("create netns");
    let guard = ns.spawn("sleep", ["600"]).expect("spawn sleep");
    let pid = guard.pid();
    let proc_dir = format!("/proc/{pid}");
    assert!(Path::new(&proc_dir).exists());
    drop(guard);
    assert!(!Path::new(&proc_dir).exists(), "sleep {pid} survived");
}

#[test]
fn child_guard_after_exit_is_harmless() {
    let ns = Netns::new("fx-exit").expect("create netns");
    let mut guard = ChildGuard::from(ns.cmd("true").spawn().expect("spawn true"));
    assert!(guard.wait().expect("wait").success());
    drop(guard); // already reaped: must not signal anything
}

#[test]
fn wait_until_polls() {
    let start = std::time::Instant::now();
    let mut calls = 0;
    assert!(wait_until(Duration::from_secs(5), || {
        calls += 1;
        calls >= 3
    }));
    assert_eq!(calls, 3);
    assert!(!wait_until(Duration::from_millis(120), || false));
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn tempdir_is_removed() {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    std::fs::write(path.join("f"), b"x").expect("write");
    drop(dir);
    assert!(!path.exists());
}
