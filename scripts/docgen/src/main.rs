//! reef-docgen: writes Reef's man pages and shell completions into a directory laid out as
//! `$PREFIX/share`, from the clap definitions the binaries themselves parse with (reefctl's,
//! reef-agent's and reef-run's libraries) and the plugins' documentation commands
//! ([`plugins`]). scripts/install.sh runs it and copies the tree.
//!
//! ```text
//! man/man1/reefctl.1, reefctl-<verb>[-<verb>].1, reef-run.1, reef-run-<verb>.1
//! man/man8/reef-agent.8, reef-bridge.8, reef-ipam.8, reef-portmap.8, reef-routed.8
//! bash-completion/completions/{reefctl,reef-agent,reef-run}
//! zsh/site-functions/_{reefctl,reef-agent,reef-run}
//! fish/vendor_completions.d/{reefctl,reef-agent,reef-run}.fish
//! ```
//!
//! Sections: 1 for the commands people type (reefctl, reef-run), 8 for what only the system
//! runs as root: the daemon and the CNI plugins, which runtimes execute (as the daemons and
//! helpers of systemd(8) or nfsd(8)).

mod man;
mod plugins;

use clap::Parser;
use clap_complete::Shell;
use man::{see_also, Section};
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "reef-docgen",
    version,
    about = "Write Reef's man pages and shell completions into DIR (laid out as $PREFIX/share)"
)]
struct Args {
    /// Output directory, created if absent; files already there are overwritten.
    #[arg(value_name = "DIR")]
    out: PathBuf,
}

#[derive(Debug, thiserror::Error)]
enum DocError {
    #[error("cannot create {0}: {1}")]
    CreateDir(PathBuf, #[source] io::Error),
    #[error("cannot write {0}: {1}")]
    Write(PathBuf, #[source] io::Error),
    #[error("cannot render the man page of {0}: {1}")]
    Render(String, #[source] io::Error),
}

/// Every page's SEE ALSO: the suite's other pages.
const SUITE: &[(&str, &str)] = &[
    ("reefctl", "1"),
    ("reef-run", "1"),
    ("reef-agent", "8"),
    ("reef-bridge", "8"),
    ("reef-routed", "8"),
    ("reef-portmap", "8"),
    ("reef-ipam", "8"),
];

fn see_also_but(name: &str) -> Section {
    let others: Vec<(&str, &str)> = SUITE.iter().copied().filter(|(n, _)| *n != name).collect();
    see_also(&others)
}

/// Where the files go, relative to the output directory.
struct Out<'a> {
    root: &'a Path,
    written: Vec<PathBuf>,
}

impl Out<'_> {
    fn write(&mut self, rel: impl AsRef<Path>, bytes: &[u8]) -> Result<(), DocError> {
        let path = self.root.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| DocError::CreateDir(dir.into(), e))?;
        }
        std::fs::write(&path, bytes).map_err(|e| DocError::Write(path.clone(), e))?;
        self.written.push(path);
        Ok(())
    }

    /// The page of `cmd` and, recursively, one per visible subcommand (`reefctl-policy-ls`),
    /// which the parent's SUBCOMMANDS section refers to.
    fn pages(
        &mut self,
        cmd: &clap::Command,
        section: &str,
        extra: &[Section],
    ) -> Result<(), DocError> {
        let name = cmd.get_display_name().unwrap_or(cmd.get_name()).to_string();
        let page =
            man::render(cmd, section, extra).map_err(|e| DocError::Render(name.clone(), e))?;
        self.write(format!("man/man{section}/{name}.{section}"), &page)?;
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            // A subcommand's page refers back to its parent's.
            self.pages(sub, section, &[see_also(&[(name.as_str(), section)])])?;
        }
        Ok(())
    }

    /// bash, zsh and fish completions of `cmd`, in the directories their shells load from.
    fn completions(
        &mut self,
        name: &str,
        script: impl Fn(Shell) -> Vec<u8>,
    ) -> Result<(), DocError> {
        self.write(
            format!("bash-completion/completions/{name}"),
            &script(Shell::Bash),
        )?;
        self.write(format!("zsh/site-functions/_{name}"), &script(Shell::Zsh))?;
        self.write(
            format!("fish/vendor_completions.d/{name}.fish"),
            &script(Shell::Fish),
        )
    }
}

/// The built command (subcommands get their display names, `reefctl-policy`), without the
/// `help` subcommand, which has no page of its own.
fn built(cmd: clap::Command) -> clap::Command {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    cmd
}

fn completion_of(cmd: clap::Command, name: &'static str) -> impl Fn(Shell) -> Vec<u8> {
    move |shell| {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), name, &mut script);
        script
    }
}

fn generate(root: &Path) -> Result<Vec<PathBuf>, DocError> {
    let mut out = Out {
        root,
        written: Vec::new(),
    };

    out.pages(
        &built(reefctl::cli::command()),
        "1",
        &[see_also_but("reefctl")],
    )?;
    out.completions("reefctl", reefctl::cli::completion)?;

    out.pages(
        &built(reef_run::cli::command()),
        "1",
        &[see_also_but("reef-run")],
    )?;
    out.completions(
        "reef-run",
        completion_of(reef_run::cli::command(), "reef-run"),
    )?;

    let files = Section::new("FILES")
        .tagged(
            "/etc/default/reef-agent",
            "REEF_AGENT_OPTS, the flags reef-agent.service starts the agent with \
             (scripts/install.sh installs an example).",
        )
        .tagged(
            "reef-agent.service",
            "The systemd unit: systemctl enable --now reef-agent.",
        );
    out.pages(
        &built(reef_agent::cli::command()),
        "8",
        &[files, see_also_but("reef-agent")],
    )?;
    out.completions(
        "reef-agent",
        completion_of(reef_agent::cli::command(), "reef-agent"),
    )?;

    for p in plugins::all() {
        let mut sections = p.sections;
        sections.push(see_also_but(p.cmd.get_name()));
        out.pages(&built(p.cmd), "8", &sections)?;
    }
    Ok(out.written)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match generate(&args.out) {
        Ok(written) => {
            for path in written {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("reef-docgen: {e}");
            ExitCode::FAILURE
        }
    }
}
