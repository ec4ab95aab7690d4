//! Hostile inputs to the main plugins (reef-bridge over the shared reef-attach/reef-cni code):
//! delegation loops, FIFOs named as files. Each case must end quickly with a CNI error.

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

