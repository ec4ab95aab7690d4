//! One man page from a clap command: clap_mangen's sections, then sections of our own
//! (ENVIRONMENT, CONFIGURATION, FILES, SEE ALSO) that a clap command has no place for.

use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;

/// The manual every page belongs to (the centre of the page footer).
const MANUAL: &str = "Reef Manual";

/// A section of our own.
pub struct Section {
    pub heading: &'static str,
    pub items: Vec<Item>,
}

pub enum Item {
    /// A paragraph.
    Para(String),
    /// A term in bold and its description, as man pages list options and variables.
    Tagged(String, String),
    /// References to other pages: `name(section)`, names in bold.
    Refs(Vec<(String, String)>),
}

impl Section {
    pub fn new(heading: &'static str) -> Section {
        Section {
            heading,
            items: Vec::new(),
        }
    }

    pub fn para(mut self, text: impl Into<String>) -> Section {
        self.items.push(Item::Para(text.into()));
        self
    }

    pub fn tagged(mut self, term: impl Into<String>, text: impl Into<String>) -> Section {
        self.items.push(Item::Tagged(term.into(), text.into()));
        self
    }
}

/// Renders `cmd` (already built, so subcommands carry their display names) as a page of
/// `section`, with `extra` after clap's sections and before VERSION.
pub fn render(cmd: &clap::Command, section: &str, extra: &[Section]) -> std::io::Result<Vec<u8>> {
    let man = Man::new(cmd.clone()).section(section);
    let name = cmd.get_display_name().unwrap_or(cmd.get_name());
    let version = cmd.get_version().unwrap_or_default();
    // By hand: clap_mangen drops the empty date argument of .TH (it is not quoted), which
    // shifts the source and manual into the wrong fields. No date keeps the pages the same
    // from one build to the next.
    let mut out =
        format!(".TH {name} {section} \"\" \"{name} {version}\" \"{MANUAL}\"\n").into_bytes();
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut out)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut out)?;
    }
    let mut roff = Roff::new();
    // clap_mangen would title after_help "EXTRA"; it holds notes, and its indented lines
    // (lists) start with a space, which troff keeps on a line of their own.
    if let Some(after) = cmd.get_after_long_help().or_else(|| cmd.get_after_help()) {
        roff.control("SH", ["NOTES"]);
        for line in after.to_string().lines() {
            if line.trim().is_empty() {
                roff.control("PP", []);
            } else {
                roff.text([roman(line)]);
            }
        }
    }
    for s in extra {
        roff.control("SH", [s.heading]);
        for item in &s.items {
            match item {
                Item::Para(text) => {
                    roff.control("PP", []);
                    roff.text([roman(text.as_str())]);
                }
                Item::Tagged(term, text) => {
                    roff.control("TP", []);
                    roff.text([bold(term.as_str())]);
                    roff.text([roman(text.as_str())]);
                }
                Item::Refs(pages) => {
                    let mut line = Vec::new();
                    for (i, (name, sec)) in pages.iter().enumerate() {
                        let sep = if i + 1 < pages.len() { ", " } else { "" };
                        line.push(bold(name.as_str()));
                        line.push(roman(format!("({sec}){sep}")));
                    }
                    roff.text(line);
                }
            }
        }
    }
    roff.to_writer(&mut out)?;
    if cmd.get_version().is_some() {
        man.render_version_section(&mut out)?;
    }
    Ok(out)
}

/// A SEE ALSO section naming `pages` (name, section).
pub fn see_also(pages: &[(&str, &str)]) -> Section {
    let refs = pages
        .iter()
        .map(|(n, s)| (n.to_string(), s.to_string()))
        .collect();
    Section {
        heading: "SEE ALSO",
        items: vec![Item::Refs(refs)],
    }
}
