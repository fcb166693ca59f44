//! Man pages and shell completions, generated from the clap definitions in
//! [`crate::cli`] (clap_mangen, clap_complete), so they cannot drift from the
//! CLI. `voxlb gen-docs --out DIR` writes them; `cargo xtask deb` runs it on
//! the binary it packages.
//!
//! Layout under `DIR` (the Debian paths, relative to `/usr/share`):
//! `man/man8/voxlb.8`, `man/man8/voxlb-SUB[-SUB].8` for every visible
//! subcommand, `bash-completion/completions/voxlb`,
//! `zsh/vendor-completions/_voxlb`, `fish/vendor_completions.d/voxlb.fish`.

use std::{
    io,
    path::{Path, PathBuf},
};

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

/// Man section: voxlb lives in /usr/sbin (system administration).
pub const MAN_SECTION: &str = "8";

/// The clap command as the man pages see it (subcommands get their full
/// display names, e.g. `voxlb-backend-add`).
fn command() -> clap::Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// Every man page: (file name, roff text). One for `voxlb`, one per visible
/// subcommand at every depth.
pub fn man_pages() -> io::Result<Vec<(String, Vec<u8>)>> {
    fn walk(cmd: &clap::Command, out: &mut Vec<(String, Vec<u8>)>) -> io::Result<()> {
        let man = clap_mangen::Man::new(cmd.clone())
            .section(MAN_SECTION)
            .manual("voxlb manual")
            .source(format!("voxlb {}", env!("CARGO_PKG_VERSION")));
        let mut text = Vec::new();
        man.render(&mut text)?;
        out.push((man.get_filename(), text));
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub, out)?;
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(&command(), &mut out)?;
    Ok(out)
}

/// The shells completions are generated for, with their install paths
/// (relative to `/usr/share`).
pub const SHELLS: [(Shell, &str); 3] = [
    (Shell::Bash, "bash-completion/completions/voxlb"),
    (Shell::Zsh, "zsh/vendor-completions/_voxlb"),
    (Shell::Fish, "fish/vendor_completions.d/voxlb.fish"),
];

/// The completion script for one shell.
pub fn completion(shell: Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut visible(), "voxlb", &mut out);
    out
}

/// The CLI without its hidden subcommands: clap_complete would offer them.
fn visible() -> clap::Command {
    let full = Cli::command();
    let mut c = clap::Command::new("voxlb").version(env!("CARGO_PKG_VERSION"));
    if let Some(a) = full.get_about() {
        c = c.about(a.clone());
    }
    for a in full.get_arguments() {
        c = c.arg(a.clone());
    }
    for s in full.get_subcommands().filter(|s| !s.is_hide_set()) {
        c = c.subcommand(s.clone());
    }
    c
}

/// Write every man page and completion under `dir` (see the module docs);
/// returns the files written.
pub fn write_all(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let man_dir = dir.join("man").join(format!("man{MAN_SECTION}"));
    std::fs::create_dir_all(&man_dir)?;
    for (name, text) in man_pages()? {
        let p = man_dir.join(name);
        std::fs::write(&p, text)?;
        written.push(p);
    }
    for (shell, rel) in SHELLS {
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, completion(shell))?;
        written.push(p);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every visible command path, e.g. `voxlb-backend-add`.
    fn command_names() -> Vec<String> {
        fn walk(prefix: &str, cmd: &clap::Command, out: &mut Vec<String>) {
            let name = if prefix.is_empty() {
                cmd.get_name().to_string()
            } else {
                format!("{prefix}-{}", cmd.get_name())
            };
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                walk(&name, sub, out);
            }
            out.push(name);
        }
        let mut out = Vec::new();
        walk("", &Cli::command().disable_help_subcommand(true), &mut out);
        out
    }

    #[test]
    fn every_subcommand_has_a_man_page() {
        let pages = man_pages().unwrap();
        let mut names: Vec<String> = pages.iter().map(|(n, _)| n.clone()).collect();
        names.sort();
        let mut want: Vec<String> = command_names()
            .into_iter()
            .map(|n| format!("{n}.{MAN_SECTION}"))
            .collect();
        want.sort();
        assert_eq!(names, want);
        for must in [
            "voxlb.8",
            "voxlb-run.8",
            "voxlb-top.8",
            "voxlb-backend-add.8",
        ] {
            assert!(names.iter().any(|n| n == must), "no {must}");
        }
        // Hidden helpers are not documented.
        assert!(!names.iter().any(|n| n.contains("gen-docs")));
    }

    #[test]
    fn man_pages_say_what_the_cli_says() {
        let pages = man_pages().unwrap();
        let page = |n: &str| {
            String::from_utf8(pages.iter().find(|(f, _)| f == n).unwrap().1.clone()).unwrap()
        };
        let top = page("voxlb.8");
        assert!(top.starts_with(".ie"), "not roff: {}", &top[..40]);
        assert!(top.contains(".TH voxlb 8"), "{top}");
        // Every subcommand's one-line help appears in the top page.
        for sub in Cli::command()
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
        {
            let about = sub.get_about().unwrap().to_string();
            let first = about.split_whitespace().next().unwrap();
            assert!(top.contains(first), "voxlb.8 lacks {:?}", sub.get_name());
        }
        let add = page("voxlb-backend-add.8");
        assert!(add.contains("weight"), "{add}");
        assert!(add.contains("Add a backend"), "{add}");
    }

    #[test]
    fn completions_know_every_subcommand() {
        let bash = String::from_utf8(completion(Shell::Bash)).unwrap();
        let zsh = String::from_utf8(completion(Shell::Zsh)).unwrap();
        let fish = String::from_utf8(completion(Shell::Fish)).unwrap();
        for sub in Cli::command()
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
        {
            let n = sub.get_name();
            assert!(bash.contains(n), "bash lacks {n}");
            assert!(zsh.contains(n), "zsh lacks {n}");
            assert!(fish.contains(n), "fish lacks {n}");
        }
        for script in [&bash, &zsh, &fish] {
            for line in script.lines().filter(|l| l.contains("opts=")) {
                assert!(!line.contains("gen-docs"), "hidden command offered: {line}");
            }
        }
        assert!(!fish.contains("gen-docs"), "hidden command offered by fish");
    }

    #[test]
    fn write_all_lays_out_the_debian_paths() {
        let dir = std::env::temp_dir().join(format!("voxlb-docs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = write_all(&dir).unwrap();
        for rel in [
            "man/man8/voxlb.8",
            "man/man8/voxlb-backend-drain.8",
            "bash-completion/completions/voxlb",
            "zsh/vendor-completions/_voxlb",
            "fish/vendor_completions.d/voxlb.fish",
        ] {
            assert!(files.contains(&dir.join(rel)), "{rel} not written");
            assert!(std::fs::metadata(dir.join(rel)).unwrap().len() > 100);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
