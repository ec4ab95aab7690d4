//! reef-run with `--rootfs`: a root filesystem made of Debian's busybox-static (bin/busybox
//! plus one symlink per applet) becomes the container's `/`, with its own hostname, only its
//! own processes, and /etc/hosts and /etc/resolv.conf written from the CNI result.

use std::path::{Path, PathBuf};

use reef_tests::run::*;

/// Debian's busybox-static installs a statically linked busybox here.
const BUSYBOX: &str = "/usr/bin/busybox";

/// `<dir>/rootfs` with bin/busybox and its applets; nothing else (no etc, proc or dev: reef-run
/// creates what it needs).
fn busybox_rootfs(dir: &Path) -> PathBuf {
    assert!(
        Path::new(BUSYBOX).is_file(),
        "{BUSYBOX} missing: install the Debian package busybox-static"
    );
    let root = dir.join("rootfs");
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).expect("create rootfs/bin");
    std::fs::copy(BUSYBOX, bin.join("busybox")).expect("copy busybox");
    let list = std::process::Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.contains('/') && !applet.is_empty() {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("applet symlink");
        }
    }
    root
}

#[test]
fn busybox_rootfs_is_the_containers_root() {
    let h = RunHost::new();
    let root = busybox_rootfs(h.dir.path());
    let script = "hostname; echo ---; cat /etc/hosts; echo ---; cat /etc/resolv.conf; echo ---; \
                  ps -o pid,comm; echo ---; \
                  test -e /usr/bin/python3 && echo host-visible || echo host-hidden; \
                  ip -4 -o addr show dev eth0; \
                  for i in 1 2 3 4 5 6 7 8 9 10; do ping -c 1 -W 1 10.88.0.1 >/dev/null && echo gw-ok && break; done";
    let out = h.run_ok(&[
        "--rootfs",
        root.to_str().unwrap_or_default(),
        "--hostname",
        "bb",
        "--name",
        "bbox",
        "--",
        "/bin/sh",
        "-c",
        script,
    ]);
    let parts: Vec<&str> = out.split("---\n").collect();
    assert_eq!(parts.len(), 5, "{out}");
    assert_eq!(parts[0].trim(), "bb", "hostname: {out}");

    let hosts = parts[1];
    assert!(
        hosts.contains("127.0.0.1\tlocalhost"),
        "hosts has localhost: {hosts}"
    );
    let ip = hosts
        .lines()
        .find(|l| l.ends_with("\tbb"))
        .and_then(|l| l.split('\t').next())
        .unwrap_or_else(|| panic!("hosts names the container's address: {hosts}"));
    assert!(ip.starts_with("10.88."), "{hosts}");
    assert!(
        parts[4].contains(&format!("inet {ip}/")),
        "hosts matches eth0: {out}"
    );
    assert!(
        parts[4].contains("gw-ok"),
        "the gateway answers from inside the rootfs: {out}"
    );

    // The default network has no DNS: the host's resolvers, loopback ones dropped.
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    for l in host_resolv.lines().filter(|l| l.starts_with("nameserver")) {
        let loopback = l.contains(" 127.") || l.contains(" ::1");
        assert_eq!(
            parts[2].contains(l),
            !loopback,
            "resolv.conf and {l:?}: {}",
            parts[2]
        );
    }

    let ps: Vec<&str> = parts[3].lines().skip(1).collect();
    assert!(
        ps.first()
            .is_some_and(|l| l.split_whitespace().eq(["1", "sh"])),
        "PID 1 is the command: {}",
        parts[3]
    );
    assert!(ps.len() <= 2, "only sh and ps itself: {}", parts[3]);
    assert!(
        parts[4].contains("host-hidden"),
        "the host's files are out of reach: {out}"
    );

    // The /etc files are mounts: the image's own files are untouched (created empty).
    assert_eq!(
        std::fs::read_to_string(root.join("etc/hosts")).unwrap_or_default(),
        ""
    );
    h.assert_clean("after the rootfs container");
}

#[test]
fn rootfs_can_be_joined_and_exit_status_propagates() {
    let h = RunHost::new();
    let root = busybox_rootfs(h.dir.path());
    let r = root.to_str().unwrap_or_default();
    let mut owner = h.spawn(&[
        "--rootfs",
        r,
        "--name",
        "bbpod",
        "--",
        "/bin/sh",
        "-c",
        "echo up; exec nc -l -p 7002 -e echo from-pod",
    ]);
    let out = lines(owner.stdout.take());
    expect_line(&out, "up");
    h.wait_running("bbpod");
    let joined = h.run(&[
        "--rootfs",
        r,
        "--join",
        "bbpod",
        "--",
        "/bin/sh",
        "-c",
        "for i in $(seq 100); do nc 127.0.0.1 7002 </dev/null 2>/dev/null && exit 5; sleep 0.1; done; exit 1",
    ]);
    assert_eq!(code(&joined), 5, "{}", describe(&joined));
    assert!(
        String::from_utf8_lossy(&joined.stdout).contains("from-pod"),
        "{}",
        describe(&joined)
    );
    assert_eq!(wait_exit(&mut owner), 0);
    h.assert_clean("after the busybox pod");
}
