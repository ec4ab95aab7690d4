//! reef-run: Reef's minimal container runtime. Runs a command as PID 1 of new net, uts, pid,
//! mount and ipc namespaces, attached to a CNI network through the plugin chain of a
//! conflist (libcni semantics), and detaches it on every exit path.
//!
//! Modules: `cli` (arguments), `run` (one container's life), `spawn` (clone into namespaces
//! and the handshake), `rootfs` (the filesystem view), `netns` (pinning the network
//! namespace), `cni` (conflist, chain, libcni cache, default network), `state` (the state
//! directory), `ps` and `rm` (the other verbs), `paths` and `sys` (helpers).

mod netns;
mod paths;
mod ps;
mod rm;
mod rootfs;
mod run;
mod spawn;
mod state;
mod sys;

use clap::Parser;
// The arguments and the CNI side live in the library (`reef_run::cli`, `reef_run::cni`,
// shared with reef-docgen and the fuzz targets); `crate::` paths resolve through these.
use reef_run::{cli, cni, error, log};

use crate::cli::{Cli, Sub};
use crate::error::EXIT_RUNTIME;

fn main() {
    log::init();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            // --help and --version are not failures; bad usage is reef-run's own failure.
            std::process::exit(if e.use_stderr() { EXIT_RUNTIME } else { 0 });
        }
    };
    let paths = paths::Paths::from_env();
    let res = match cli.command {
        None => run::run(cli.run, &paths),
        Some(Sub::Ps { output }) => ps::ps(&paths, output),
        Some(Sub::Rm { names, force }) => rm::rm(&paths, &names, force),
    };
    // process::exit: no destructor has anything left to do; teardown is explicit.
    match res {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("reef-run: {e}");
            std::process::exit(e.exit_code());
        }
    }
}
