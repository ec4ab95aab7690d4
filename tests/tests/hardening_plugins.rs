//! Hostile inputs to the main plugins (reef-bridge over the shared reef-attach/reef-cni code):
//! delegation loops, FIFOs named as files, and the plugin's own namespace named as a pod's.
//! Each case must end quickly with a CNI error (or, for DEL, leave strangers' links alone).

use std::path::Path;
use std::time::{Duration, Instant};

use reef_tests::expect::*;
use reef_tests::inspect::*;
use reef_tests::netconf::*;
use reef_tests::*;
use serde_json::{json, Value};

const IFNAME: &str = "eth0";
/// Far beyond what any refusal takes; the unfixed plugins never returned at all.
const QUICK: Duration = Duration::from_secs(20);

fn conf(env: &HostWithPods, net: &str, bridge: &str, octet: u8) -> Value {
    bridge_conf(
        "1.0.0",
        net,
        bridge,
        json!([[{ "subnet": format!("10.{octet}.0.0/24") }]]),
        &env.data_dir().join(net),
        json!({}),
    )
}

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .unwrap_or_else(|e| panic!("mkfifo {}: {e}", path.display()));
}

/// `ipam.type` naming the plugin itself was a fork bomb; it is refused outright.
#[test]
fn delegation_to_itself_is_refused() {
    let env = HostWithPods::new(1);
    let mut conf = conf(&env, "hdself", "hdself0", 61);
    conf["ipam"]["type"] = json!("reef-bridge");
    let start = Instant::now();
    let add = bridge_call("ADD", env.pods[0].path(), "self-1", IFNAME, &conf)
        .timeout(QUICK)
        .run(&env.host);
    let msg = expect_error(&add, 7, "ADD delegating to itself");
    assert!(msg.contains("own type"), "{add}");
    assert!(start.elapsed() < QUICK, "took {:?}", start.elapsed());
    assert!(
        links_of_kind(&env.host, "veth").is_empty(),
        "ADD left a veth"
    );
}

/// A loop the name check cannot see (a wrapper that execs the plugin) ends at the depth bound.
#[test]
fn delegation_loop_through_a_wrapper_is_bounded() {
    let env = HostWithPods::new(1);
    let bin = env.dir.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let wrapper = bin.join("loop-ipam");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec {} \"$@\"\n",
            plugin("reef-bridge").display()
        ),
    )
    .expect("write wrapper");
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod wrapper");
    let mut conf = conf(&env, "hdloop", "hdloop0", 62);
    conf["ipam"]["type"] = json!("loop-ipam");
    let start = Instant::now();
    let add = CniCall::plugin("reef-bridge")
        .command("ADD")
        .runtime(env.pods[0].path(), "loop-1", IFNAME)
        .path(&format!("{}:{}", bin.display(), cni_path()))
        .config(&conf)
        .timeout(QUICK)
        .run(&env.host);
    let msg = expect_error(&add, 103, "ADD through a delegation loop");
    assert!(msg.contains("delegation depth"), "{add}");
    assert!(start.elapsed() < QUICK, "took {:?}", start.elapsed());
    assert!(
        links_of_kind(&env.host, "veth").is_empty(),
        "ADD left a veth"
    );
}

/// A FIFO as CNI_NETNS blocked ADD and DEL in open() forever.
#[test]
fn fifo_as_netns_is_refused_without_blocking() {
    let env = HostWithPods::new(0);
    let fifo = env.dir.path().join("netns-fifo");
    mkfifo(&fifo);
    let conf = conf(&env, "hdfifo", "hdfifo0", 63);
    let add = bridge_call("ADD", &fifo, "fifo-1", IFNAME, &conf)
        .timeout(QUICK)
        .run(&env.host);
    let msg = expect_error(&add, 5, "ADD with a FIFO as netns");
    assert!(add.stdout.contains("FIFO"), "{msg}:\n{add}");
    let del = bridge_call("DEL", &fifo, "fifo-1", IFNAME, &conf)
        .timeout(QUICK)
        .run(&env.host);
    expect_ok(&del, "DEL with a FIFO as netns");
    let dev_null = bridge_call("ADD", Path::new("/dev/null"), "fifo-2", IFNAME, &conf)
        .timeout(QUICK)
        .run(&env.host);
    expect_error(&dev_null, 5, "ADD with /dev/null as netns");
}

/// A FIFO as ipam.resolvConf blocked ADD in open() forever.
#[test]
fn fifo_as_resolv_conf_is_refused_without_blocking() {
    let env = HostWithPods::new(1);
    let fifo = env.dir.path().join("resolv-fifo");
    mkfifo(&fifo);
    let mut conf = conf(&env, "hdresolv", "hdresolv0", 64);
    conf["ipam"]["resolvConf"] = json!(fifo);
    let add = bridge_call("ADD", env.pods[0].path(), "resolv-1", IFNAME, &conf)
        .timeout(QUICK)
        .run(&env.host);
    expect_error(&add, 5, "ADD with a FIFO as resolvConf");
    assert!(add.stdout.contains("FIFO"), "{add}");
    assert!(!has_link(&env.pods[0], IFNAME), "ADD left the pod end");
    conf["ipam"]["resolvConf"] = json!("/dev/zero");
    let add = bridge_call("ADD", env.pods[0].path(), "resolv-2", IFNAME, &conf)
        .timeout(QUICK)
        .run(&env.host);
    expect_error(&add, 5, "ADD with /dev/zero as resolvConf");
}

/// A FIFO planted in the IPAM dataDir under a store file's name hung ADD in open(): under
/// the first free address's record name it is refused as not a regular file, under the
/// round-robin hint's name it is ignored like any unreadable hint.
#[test]
fn fifo_in_the_ipam_data_dir_is_refused_without_blocking() {
    let env = HostWithPods::new(2);
    let conf = conf(&env, "hdstore", "hdstore0", 67);
    let store = env.data_dir().join("hdstore").join("hdstore");
    std::fs::create_dir_all(&store).expect("store dir");
    mkfifo(&store.join("10.67.0.2"));
    let add = bridge_call("ADD", env.pods[0].path(), "store-1", IFNAME, &conf)
        .timeout(QUICK)
        .run(&env.host);
    expect_failure(&add, "ADD with a FIFO as the first free address's record");
    assert!(add.stdout.contains("FIFO"), "{add}");
    assert!(!has_link(&env.pods[0], IFNAME), "ADD left the pod end");

    std::fs::remove_file(store.join("10.67.0.2")).expect("remove the FIFO");
    mkfifo(&store.join("last_reserved_ip.0"));
    let add = bridge_call("ADD", env.pods[1].path(), "store-2", IFNAME, &conf)
        .timeout(QUICK)
        .run(&env.host);
    expect_ok(&add, "ADD with a FIFO as the round-robin hint");
}

/// CNI_NETNS naming the plugin's own namespace put the "pod" end among the host's links.
#[test]
fn own_netns_is_refused_on_add() {
    let env = HostWithPods::new(0);
    let conf = conf(&env, "hdown", "hdown0", 65);
    let before = link_names(&env.host);
    let add = bridge_call("ADD", env.host.path(), "own-1", IFNAME, &conf)
        .timeout(QUICK)
        .run(&env.host);
    let msg = expect_error(&add, 4, "ADD into the plugin's own netns");
    assert!(msg.contains("own network namespace"), "{add}");
    assert!(
        links_of_kind(&env.host, "veth").is_empty(),
        "ADD left a veth in the host (before {before:?}, now {:?})",
        link_names(&env.host)
    );
}

/// DEL by a stranger naming a victim's interfaces (the victim's host veth in the host's own
/// namespace, or its pod end in its namespace) deleted them; DEL of another network's
/// attachment with the same container id and ifname deleted that attachment's veth.
#[test]
fn del_removes_only_what_the_attachment_owns() {
    let env = HostWithPods::new(1);
    let pod = &env.pods[0];
    let conf_a = conf(&env, "hdvictim", "hdvictim0", 66);
    let add = bridge_call("ADD", pod.path(), "victim", IFNAME, &conf_a)
        .timeout(QUICK)
        .run(&env.host);
    let veth = result_host_veth(expect_ok(&add, "ADD victim").result());
    let victim_alive = |what: &str| {
        assert!(
            has_link(&env.host, &veth),
            "{what} deleted the victim's host veth {veth}"
        );
        assert!(has_link(pod, IFNAME), "{what} deleted the victim's pod end");
    };

    let del = bridge_call("DEL", env.host.path(), "attacker", &veth, &conf_a)
        .timeout(QUICK)
        .run(&env.host);
    expect_ok(&del, "DEL naming the host's own netns");
    victim_alive("DEL with CNI_NETNS = host and CNI_IFNAME = the victim's host veth");

    let del = bridge_call("DEL", pod.path(), "attacker", IFNAME, &conf_a)
        .timeout(QUICK)
        .run(&env.host);
    expect_ok(&del, "DEL of an attachment that never existed");
    victim_alive("DEL of a stranger's container id in the victim's netns");

    // Same container id and ifname, another network: the host veth name is the same, the
    // alias is not this network's.
    let conf_b = conf(&env, "hdother", "hdvictim0", 67);
    let del = bridge_call("DEL", pod.path(), "victim", IFNAME, &conf_b)
        .timeout(QUICK)
        .run(&env.host);
    expect_ok(&del, "DEL of the same attachment ids in another network");
    victim_alive("DEL in another network");

    let del = bridge_call("DEL", pod.path(), "victim", IFNAME, &conf_a)
        .timeout(QUICK)
        .run(&env.host);
    expect_ok(&del, "DEL victim");
    assert!(!has_link(&env.host, &veth), "the owner's DEL left {veth}");
    assert!(!has_link(pod, IFNAME), "the owner's DEL left the pod end");
}
