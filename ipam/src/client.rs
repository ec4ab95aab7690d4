//! The IPAM of an attachment. `reef-ipam` runs in-process (the same code as the `reef-ipam`
//! binary, one process start less on every ADD and DEL); any other `ipam.type` is executed
//! from CNI_PATH as the spec describes. `REEF_IPAM_EXEC=1` forces the exec path.

use crate::plugin::{ReefIpam, PLUGIN_TYPE};
use reef_cni::delegate::Ipam;
use reef_cni::{CmdArgs, CniError, CniResult, Command, Plugin};

pub enum IpamClient<'a> {
    InProcess(&'a CmdArgs),
    Exec(Ipam<'a>),
}

impl<'a> IpamClient<'a> {
    pub fn for_args(args: &'a CmdArgs) -> Result<IpamClient<'a>, CniError> {
        let exec = Ipam::from_args(args)?;
        let forced = std::env::var_os("REEF_IPAM_EXEC").is_some_and(|v| v == "1");
        if exec.plugin == PLUGIN_TYPE && !forced {
            Ok(IpamClient::InProcess(args))
        } else {
            Ok(IpamClient::Exec(exec))
        }
    }

    /// ADD; `host_interface` goes into the cluster store's workload record.
    pub fn add(&self, host_interface: &str) -> Result<CniResult, CniError> {
        match self {
            IpamClient::InProcess(args) => ReefIpam.add_for(args, Some(host_interface)),
            IpamClient::Exec(i) => i.add(),
        }
    }

    /// DEL. In-process it returns the addresses that were still held by this attachment;
    /// an exec'd IPAM plugin cannot say, hence None.
    pub fn release(&self) -> Result<Option<Vec<std::net::IpAddr>>, CniError> {
        match self {
            IpamClient::InProcess(args) => ReefIpam.release(args).map(Some),
            IpamClient::Exec(i) => i.run(Command::Del).map(|_| None),
        }
    }

    /// GC; in-process it returns the addresses released.
    pub fn gc(&self) -> Result<Option<Vec<std::net::IpAddr>>, CniError> {
        match self {
            IpamClient::InProcess(args) => ReefIpam.collect_garbage(args).map(Some),
            IpamClient::Exec(i) => i.run(Command::Gc).map(|_| None),
        }
    }

    /// DEL, CHECK, GC or STATUS.
    pub fn run(&self, command: Command) -> Result<(), CniError> {
        match self {
            IpamClient::InProcess(args) => match command {
                Command::Del => ReefIpam.del(args),
                Command::Check => ReefIpam.check(args),
                Command::Gc => ReefIpam.gc(args),
                Command::Status => ReefIpam.status(args),
                Command::Add => ReefIpam.add(args).map(|_| ()),
                Command::Version => Ok(()),
            },
            IpamClient::Exec(i) => i.run(command),
        }
    }
}
