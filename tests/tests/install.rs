//! scripts/install.sh into a DESTDIR: every file where it belongs (executables executable),
//! man pages that groff and man read without a warning, completions that know the verbs, a
//! unit `systemd-analyze verify` accepts against the installed tree, an operator's conflist
//! and edited env file never overwritten nor removed, and `--uninstall` leaving nothing of
//! Reef's. Needs groff-base, man-db and systemd (.ci/run installs them) and the release
//! binaries, reef-docgen included.

use reef_tests::{assert_success, output_with_timeout, plugin_dir, tempdir, workspace_dir};
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(120);
const PLUGINS: [&str; 4] = ["reef-bridge", "reef-routed", "reef-portmap", "reef-ipam"];
const COMMANDS: [&str; 3] = ["reef-run", "reef-agent", "reefctl"];

fn run(cmd: &mut Command, what: &str) -> Output {
    output_with_timeout(cmd, None, TIMEOUT).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// `scripts/install.sh ARGS` with DESTDIR and PREFIX, taking the binaries the tests use.
fn install_sh(destdir: &Path, prefix: &str, args: &[&str]) -> Output {
    let script = workspace_dir().join("scripts/install.sh");
    run(
        Command::new("bash")
            .arg(script)
            .args(args)
            .env("DESTDIR", destdir)
            .env("PREFIX", prefix)
            .env("REEF_BIN_DIR", plugin_dir())
            .env_remove("SYSTEMD_UNIT_DIR"),
        &format!("install.sh {args:?}"),
    )
}

/// A tool the test cannot do without: a missing one fails the test, naming its package.
fn tool(name: &str, package: &str) -> PathBuf {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} is missing: apt-get install {package} (.ci/run installs it)")
        })
}

/// Every path under `root`, relative, directories included.
fn tree(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("dir entry").path();
            let rel = path.strip_prefix(root).expect("under root");
            out.insert(rel.to_string_lossy().into_owned());
            if path.is_dir() && !path.is_symlink() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn at(root: &Path, target: &str) -> PathBuf {
    root.join(target.trim_start_matches('/'))
}

fn assert_file(root: &Path, target: &str, executable: bool) {
    let path = at(root, target);
    let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{target}: {e}"));
    assert!(meta.is_file(), "{target} is not a file");
    assert!(meta.len() > 0, "{target} is empty");
    let mode = meta.permissions().mode() & 0o777;
    if executable {
        assert_eq!(mode, 0o755, "{target}: mode {mode:o}");
    } else {
        assert_eq!(mode, 0o644, "{target}: mode {mode:o}");
    }
}

/// What every install puts under PREFIX and /opt/cni/bin, and the man pages it must have.
fn assert_installed(root: &Path, prefix: &str, unit_dir: &str) {
    for p in PLUGINS {
        assert_file(root, &format!("/opt/cni/bin/{p}"), true);
        assert_file(root, &format!("{prefix}/share/man/man8/{p}.8"), false);
    }
    for c in COMMANDS {
        assert_file(root, &format!("{prefix}/bin/{c}"), true);
        assert_file(
            root,
            &format!("{prefix}/share/bash-completion/completions/{c}"),
            false,
        );
        assert_file(
            root,
            &format!("{prefix}/share/zsh/site-functions/_{c}"),
            false,
        );
        assert_file(
            root,
            &format!("{prefix}/share/fish/vendor_completions.d/{c}.fish"),
            false,
        );
    }
    for page in [
        "man1/reefctl.1",
        "man1/reefctl-policy.1",
        "man1/reefctl-policy-show.1",
        "man1/reefctl-trace.1",
        "man1/reefctl-completion.1",
        "man1/reef-run.1",
        "man1/reef-run-ps.1",
        "man8/reef-agent.8",
    ] {
        assert_file(root, &format!("{prefix}/share/man/{page}"), false);
    }
    assert_file(root, &format!("{unit_dir}/reef-agent.service"), false);
    assert_file(
        root,
        &format!("{prefix}/share/reef/install-manifest"),
        false,
    );

    // The manifest lists exactly the files the install wrote, and nothing else is there.
    let manifest = read(&at(root, &format!("{prefix}/share/reef/install-manifest")));
    let mut listed: BTreeSet<String> = manifest
        .lines()
        .filter_map(|l| match l.split(' ').collect::<Vec<_>>()[..] {
            ["file", p] | ["config", _, p] => Some(p.trim_start_matches('/').to_string()),
            ["dir", _] => None,
            _ => panic!("manifest line {l:?}"),
        })
        .collect();
    listed.insert(format!("{}/share/reef/install-manifest", &prefix[1..]));
    let files: BTreeSet<String> = tree(root)
        .into_iter()
        .filter(|p| root.join(p).is_file())
        .filter(|p| !p.starts_with("etc/cni/net.d/99-") && p != "etc/default/reef-agent")
        .collect();
    let listed_files: BTreeSet<String> = listed
        .iter()
        .filter(|p| *p != "etc/default/reef-agent")
        .cloned()
        .collect();
    assert_eq!(files, listed_files, "installed files vs the manifest");
}

/// groff reads every page without a warning, and man renders them.
fn assert_man_pages(root: &Path, prefix: &str) {
    let groff = tool("groff", "groff-base");
    let man = tool("man", "man-db");
    let mut pages = 0;
    for section in ["man1", "man8"] {
        let dir = at(root, &format!("{prefix}/share/man/{section}"));
        for name in reef_tests::store::list_dir(&dir) {
            let page = dir.join(&name);
            let out = run(
                Command::new(&groff)
                    .args(["-man", "-Tutf8", "-z", "-wall"])
                    .arg(&page)
                    .env("LC_ALL", "C.UTF-8"),
                "groff",
            );
            assert_success(&out, &format!("groff {name}"));
            let warnings = String::from_utf8_lossy(&out.stderr);
            assert!(warnings.is_empty(), "groff warns about {name}: {warnings}");
            pages += 1;
        }
    }
    assert!(pages >= 30, "only {pages} man pages");
    for (page, want) in [
        ("man1/reefctl.1", "reefctl - Operate a Reef cluster"),
        ("man1/reefctl-policy.1", "reefctl-policy-show(1)"),
        ("man8/reef-agent.8", "/etc/default/reef-agent"),
        ("man8/reef-bridge.8", "CNI_CONTAINERID"),
        ("man8/reef-bridge.8", "hairpinMode"),
        ("man8/reef-portmap.8", "runtimeConfig.portMappings"),
        ("man8/reef-ipam.8", "nodeName"),
        ("man8/reef-routed.8", "169.254.1.1"),
    ] {
        let path = at(root, &format!("{prefix}/share/man/{page}"));
        let out = run(
            Command::new(&man)
                .arg("-l")
                .arg(&path)
                .env("MANPAGER", "cat")
                .env("MANWIDTH", "200")
                .env("LC_ALL", "C.UTF-8"),
            "man -l",
        );
        let text = assert_success(&out, &format!("man -l {page}"));
        // man hyphenates nothing at this width, but it may use Unicode hyphens for \-.
        let text = text.replace(['\u{2010}', '\u{2212}'], "-");
        assert!(text.contains(want), "man -l {page} lacks {want:?}:\n{text}");
    }
}

fn assert_completions(root: &Path, prefix: &str) {
    let share = at(root, &format!("{prefix}/share"));
    for (shell, file) in [
        ("bash", "bash-completion/completions/reefctl"),
        ("zsh", "zsh/site-functions/_reefctl"),
        ("fish", "fish/vendor_completions.d/reefctl.fish"),
    ] {
        let script = read(&share.join(file));
        for verb in ["policy", "trace", "service", "namespace", "completion"] {
            assert!(script.contains(verb), "{file} lacks {verb}");
        }
        // What is installed is what the kubectl-style verb prints.
        let out = run(
            Command::new(plugin_dir().join("reefctl")).args(["completion", shell]),
            "reefctl completion",
        );
        assert_eq!(
            assert_success(&out, &format!("reefctl completion {shell}")),
            script,
            "reefctl completion {shell} differs from {file}"
        );
    }
    let run_bash = read(&share.join("bash-completion/completions/reef-run"));
    assert!(run_bash.contains("ps") && run_bash.contains("--rootfs"));
    let agent_fish = read(&share.join("fish/vendor_completions.d/reef-agent.fish"));
    assert!(agent_fish.contains("iface") && agent_fish.contains("etcd-ca"));
}

/// `systemd-analyze verify` of the installed unit, on a copy of the DESTDIR as its root (so
/// ExecStart must exist and be executable there, and `man:reef-agent(8)` resolves to the
/// installed page) plus the host's targets the unit's dependencies name.
fn assert_unit_verifies(root: &Path, prefix: &str, scratch: &Path) {
    let analyze = tool("systemd-analyze", "systemd");
    let vroot = scratch.join("verify-root");
    std::fs::create_dir_all(&vroot).expect("verify root");
    let cp = run(
        Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", root.display()))
            .arg(&vroot),
        "cp",
    );
    assert_success(&cp, "copy the DESTDIR");
    let units = vroot.join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units).expect("unit dir");
    for name in reef_tests::store::list_dir(Path::new("/usr/lib/systemd/system")) {
        if name.ends_with(".target") {
            let src = Path::new("/usr/lib/systemd/system").join(&name);
            if src.is_file() {
                std::fs::copy(&src, units.join(&name)).expect("copy a target");
            }
        }
    }
    let verify = |what: &str| {
        run(
            Command::new(&analyze)
                .arg("verify")
                .arg(format!("--root={}", vroot.display()))
                .arg("reef-agent.service")
                .env("MANPATH", at(&vroot, &format!("{prefix}/share/man"))),
            what,
        )
    };
    let out = verify("systemd-analyze verify");
    assert_success(&out, "systemd-analyze verify reef-agent.service");
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(warnings.is_empty(), "systemd-analyze verify: {warnings}");

    // The check is real: without the binary the same verification fails.
    std::fs::remove_file(at(&vroot, &format!("{prefix}/bin/reef-agent"))).expect("rm");
    let out = verify("systemd-analyze verify without reef-agent");
    assert!(
        !out.status.success(),
        "verify accepted a unit whose ExecStart is missing"
    );
}

/// The unit, and the example env file whose flags reef-agent really has.
fn assert_unit_and_env(root: &Path, prefix: &str, unit_dir: &str) {
    let unit = read(&at(root, &format!("{unit_dir}/reef-agent.service")));
    for line in [
        "Restart=always".to_string(),
        "EnvironmentFile=/etc/default/reef-agent".to_string(),
        format!("ExecStart={prefix}/bin/reef-agent $REEF_AGENT_OPTS"),
        "WantedBy=multi-user.target".to_string(),
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "unit lacks {line}:\n{unit}"
        );
    }
    let env = read(&at(root, "/etc/default/reef-agent"));
    let example = env
        .lines()
        .find_map(|l| l.strip_prefix("# REEF_AGENT_OPTS="))
        .expect("an example REEF_AGENT_OPTS line");
    let help = run(
        Command::new(at(root, &format!("{prefix}/bin/reef-agent"))).arg("--help"),
        "reef-agent --help",
    );
    let help = assert_success(&help, "reef-agent --help");
    let flags: Vec<&str> = example
        .trim_matches('"')
        .split_whitespace()
        .filter(|w| w.starts_with("--"))
        .collect();
    for flag in [
        "--etcd",
        "--node",
        "--iface",
        "--etcd-ca",
        "--etcd-cert",
        "--etcd-key",
    ] {
        assert!(flags.contains(&flag), "the example lacks {flag}");
    }
    for flag in flags {
        assert!(
            help.contains(&format!("{flag} ")),
            "reef-agent has no {flag}"
        );
    }
}

#[test]
fn install_into_destdir_then_uninstall_leaves_nothing() {
    let dir = tempdir();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).expect("destdir");
    let prefix = "/usr/local";
    let unit_dir = "/usr/local/lib/systemd/system";

    let out = install_sh(&root, prefix, &[]);
    let said = assert_success(&out, "install.sh");
    assert!(said.contains("10-reef.conflist"), "{said}");
    assert_installed(&root, prefix, unit_dir);
    assert_file(&root, "/etc/cni/net.d/10-reef.conflist", false);
    assert_file(&root, "/etc/default/reef-agent", false);
    let conflist: serde_json::Value =
        serde_json::from_str(&read(&at(&root, "/etc/cni/net.d/10-reef.conflist")))
            .expect("the example conflist is JSON");
    assert_eq!(conflist["plugins"][0]["type"], "reef-bridge");
    assert_unit_and_env(&root, prefix, unit_dir);
    assert_man_pages(&root, prefix);
    assert_completions(&root, prefix);
    assert_unit_verifies(&root, prefix, dir.path());

    let out = install_sh(&root, prefix, &["--uninstall"]);
    assert_success(&out, "install.sh --uninstall");
    let left = tree(&root);
    assert!(left.is_empty(), "left behind: {left:?}");
    let out = install_sh(&root, prefix, &["--uninstall"]);
    assert!(!out.status.success(), "a second uninstall has no manifest");
}

#[test]
fn operator_config_is_never_overwritten_nor_removed() {
    let dir = tempdir();
    let root = dir.path().join("root");
    let operator_conf = root.join("etc/cni/net.d/99-operator.conflist");
    std::fs::create_dir_all(operator_conf.parent().expect("parent")).expect("net.d");
    std::fs::create_dir_all(root.join("etc/default")).expect("etc/default");
    let theirs = r#"{"cniVersion": "1.0.0", "name": "theirs", "plugins": [{"type": "bridge"}]}"#;
    std::fs::write(&operator_conf, theirs).expect("operator conflist");
    let before = tree(&root);
    // Outside systemd's search path, the unit goes to /etc/systemd/system.
    let prefix = "/opt/reef";
    let unit_dir = "/etc/systemd/system";

    let out = install_sh(&root, prefix, &[]);
    let said = assert_success(&out, "install.sh");
    assert!(said.contains("kept /etc/cni/net.d"), "{said}");
    assert!(!root.join("etc/cni/net.d/10-reef.conflist").exists());
    assert_eq!(read(&operator_conf), theirs);
    assert_installed(&root, prefix, unit_dir);
    assert_unit_and_env(&root, prefix, unit_dir);
    assert_unit_verifies(&root, prefix, dir.path());

    // The operator sets the flags; a reinstall keeps them.
    let env_file = root.join("etc/default/reef-agent");
    let edited = read(&env_file).replace(
        "REEF_AGENT_OPTS=\"\"",
        "REEF_AGENT_OPTS=\"--etcd http://192.0.2.1:2379 --node n1 --iface eth0\"",
    );
    std::fs::write(&env_file, &edited).expect("edit the env file");
    let out = install_sh(&root, prefix, &[]);
    let said = assert_success(&out, "second install.sh");
    assert!(said.contains("kept /etc/default/reef-agent"), "{said}");
    assert_eq!(read(&env_file), edited);

    let out = install_sh(&root, prefix, &["--uninstall"]);
    let said = assert_success(&out, "install.sh --uninstall");
    assert!(said.contains("kept /etc/default/reef-agent"), "{said}");
    let mut want = before;
    want.insert("etc/default/reef-agent".into());
    assert_eq!(tree(&root), want, "after uninstall");
    assert_eq!(read(&env_file), edited);
    assert_eq!(read(&operator_conf), theirs);
}

#[test]
fn missing_binaries_stop_the_install_before_it_writes() {
    let dir = tempdir();
    let root = dir.path().join("root");
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&root).expect("destdir");
    std::fs::create_dir_all(&empty).expect("bin dir");
    let script = workspace_dir().join("scripts/install.sh");
    let out = run(
        Command::new("bash")
            .arg(script)
            .env("DESTDIR", &root)
            .env("REEF_BIN_DIR", &empty),
        "install.sh",
    );
    assert!(!out.status.success(), "install without binaries succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("reef-bridge") && err.contains("cargo build --release"),
        "{err}"
    );
    assert!(tree(&root).is_empty(), "wrote {:?}", tree(&root));
}
