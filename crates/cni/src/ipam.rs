//! The IPAM of an attachment, as a main plugin sees it. An IPAM plugin the caller links in
//! ([`InProcessIpam`]) runs in-process when `ipam.type` names it: the same code as its binary,
//! one process start less on every ADD and DEL. Any other `ipam.type` is executed from
//! CNI_PATH as the spec describes. `REEF_IPAM_EXEC=1` forces the exec path.

use crate::delegate::Ipam;
use crate::{CmdArgs, CniError, CniResult, Command, Plugin};
use std::net::IpAddr;

/// An IPAM plugin that can run inside the main plugin's process. Its plain verbs are its
/// [`Plugin`] impl; these are the ones that also tell the caller what they did.
pub trait InProcessIpam: Plugin {
    /// The `ipam.type` that selects it.
    fn type_name(&self) -> &str;

    /// ADD; `host_interface` is the attachment's host-side interface, when known (a cluster
    /// store records it with the workload).
    fn add_for(&self, args: &CmdArgs, host_interface: Option<&str>) -> Result<CniResult, CniError>;

    /// DEL that returns exactly the addresses this attachment still held, so the caller
    /// cleans up only what is its own.
    fn release(&self, args: &CmdArgs) -> Result<Vec<IpAddr>, CniError>;

    /// GC that returns the addresses it released.
    fn collect_garbage(&self, args: &CmdArgs) -> Result<Vec<IpAddr>, CniError>;
}

pub enum IpamClient<'a> {
    InProcess(&'a dyn InProcessIpam, &'a CmdArgs),
    Exec(Ipam<'a>),
}

impl<'a> IpamClient<'a> {
    /// The IPAM `args` select: `linked` in-process when `ipam.type` is its type (and
    /// `REEF_IPAM_EXEC=1` is not set), else the `ipam.type` plugin from CNI_PATH.
    pub fn for_args(
        args: &'a CmdArgs,
        linked: &'a dyn InProcessIpam,
    ) -> Result<IpamClient<'a>, CniError> {
        let exec = Ipam::from_args(args)?;
        let forced = std::env::var_os("REEF_IPAM_EXEC").is_some_and(|v| v == "1");
        if exec.plugin == linked.type_name() && !forced {
            Ok(IpamClient::InProcess(linked, args))
        } else {
            Ok(IpamClient::Exec(exec))
        }
    }

    /// ADD; `host_interface` goes into the cluster store's workload record.
    pub fn add(&self, host_interface: &str) -> Result<CniResult, CniError> {
        match self {
            IpamClient::InProcess(ipam, args) => ipam.add_for(args, Some(host_interface)),
            IpamClient::Exec(i) => i.add(),
        }
    }

    /// DEL. In-process it returns the addresses that were still held by this attachment;
    /// an exec'd IPAM plugin cannot say, hence None.
    pub fn release(&self) -> Result<Option<Vec<IpAddr>>, CniError> {
        match self {
            IpamClient::InProcess(ipam, args) => ipam.release(args).map(Some),
            IpamClient::Exec(i) => i.run(Command::Del).map(|_| None),
        }
    }

    /// GC; in-process it returns the addresses released.
    pub fn gc(&self) -> Result<Option<Vec<IpAddr>>, CniError> {
        match self {
            IpamClient::InProcess(ipam, args) => ipam.collect_garbage(args).map(Some),
            IpamClient::Exec(i) => i.run(Command::Gc).map(|_| None),
        }
    }

    /// DEL, CHECK, GC or STATUS.
    pub fn run(&self, command: Command) -> Result<(), CniError> {
        match self {
            IpamClient::InProcess(ipam, args) => match command {
                Command::Del => ipam.del(args),
                Command::Check => ipam.check(args),
                Command::Gc => ipam.gc(args),
                Command::Status => ipam.status(args),
                Command::Add => ipam.add(args).map(|_| ()),
                Command::Version => Ok(()),
            },
            IpamClient::Exec(i) => i.run(command),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NetConf;

    /// Holds 10.0.0.5 for every attachment.
    struct Fake;

    impl Plugin for Fake {
        fn add(&self, args: &CmdArgs) -> Result<CniResult, CniError> {
            self.add_for(args, None)
        }
        fn del(&self, args: &CmdArgs) -> Result<(), CniError> {
            self.release(args).map(drop)
        }
        fn check(&self, args: &CmdArgs) -> Result<(), CniError> {
            self.collect_garbage(args).map(drop)
        }
    }

    impl InProcessIpam for Fake {
        fn type_name(&self) -> &str {
            "fake-ipam"
        }
        fn add_for(&self, _: &CmdArgs, _: Option<&str>) -> Result<CniResult, CniError> {
            let ip = "10.0.0.5/24"
                .parse()
                .map_err(|_| CniError::invalid_config("ip"))?;
            Ok(CniResult {
                ips: vec![crate::IpConfig {
                    address: ip,
                    gateway: None,
                    interface: None,
                }],
                ..CniResult::default()
            })
        }
        fn release(&self, _: &CmdArgs) -> Result<Vec<IpAddr>, CniError> {
            Ok(vec![[10, 0, 0, 5].into()])
        }
        fn collect_garbage(&self, args: &CmdArgs) -> Result<Vec<IpAddr>, CniError> {
            self.release(args)
        }
    }

    fn args(ipam_type: &str) -> CmdArgs {
        let conf = format!(
            r#"{{"cniVersion":"1.0.0","name":"n","type":"x","ipam":{{"type":"{ipam_type}"}}}}"#
        );
        CmdArgs {
            command: Command::Del,
            container_id: "c".into(),
            netns: None,
            ifname: "eth0".into(),
            args: Vec::new(),
            path: Vec::new(),
            stdin: conf.clone().into_bytes(),
            conf: NetConf::parse(conf.as_bytes()).expect("valid config"),
        }
    }

    #[test]
    fn the_linked_type_runs_in_process_any_other_is_executed() {
        let a = args("fake-ipam");
        let client = IpamClient::for_args(&a, &Fake).expect("client");
        assert!(matches!(client, IpamClient::InProcess(..)));
        assert_eq!(client.add("veth0").expect("add").ips.len(), 1);
        assert_eq!(
            client.release().expect("release"),
            Some(vec![[10, 0, 0, 5].into()])
        );
        client.run(Command::Check).expect("check");
        let a = args("host-local");
        let client = IpamClient::for_args(&a, &Fake).expect("client");
        assert!(matches!(client, IpamClient::Exec(ref i) if i.plugin == "host-local"));
    }
}
