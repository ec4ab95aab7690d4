//! reef-run's command line as a library, so reef-docgen renders its man page and completions
//! from the one definition the binary parses with. Everything else is the binary's.

pub mod cli;
