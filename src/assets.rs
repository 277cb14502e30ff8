//! The man pages and the shell completions, written from the same clap
//! definitions that parse the command line: `ftpgate --generate-assets DIR`
//! (lab/package runs it on the built binary and packages the result).
//!
//! Why the binary and not a build script: a build script would have to
//! compile cli.rs on its own, but cli.rs uses types of the rest of the
//! crate (the `rules` subcommand's). Asking the real `Command` picks up
//! every flag and subcommand added later, with nothing to keep in step.
//!
//! The flag is read before clap parses, like clap_complete's `CompleteEnv`,
//! so it neither shows in `--help` nor in the pages it writes.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::{Generator, Shell};

use crate::cli::Args;

pub(crate) const FLAG: &str = "--generate-assets";

/// The completion scripts written, and where each shell looks for them
/// (lab/package and Cargo.toml's `[package.metadata.deb]` use these names).
const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// A file that could not be written, and why.
#[derive(Debug)]
pub(crate) struct AssetError {
    path: PathBuf,
    error: io::Error,
}

impl fmt::Display for AssetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot write {}: {} (is the directory writable?)", self.path.display(), self.error)
    }
}

/// `Some(exit status)` when the command line is `ftpgate --generate-assets
/// DIR`: the assets are written and ftpgate exits. `None` otherwise.
pub(crate) fn generate_if_asked() -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != FLAG {
        return None;
    }
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: ftpgate {FLAG} DIR");
        return Some(ExitCode::from(2));
    };
    Some(match write(Path::new(&dir)) {
        Ok(files) => {
            for file in files {
                println!("{}", file.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ftpgate {FLAG}: {e}");
            ExitCode::from(1)
        }
    })
}

/// Writes `DIR/man1/ftpgate.1` and a page per subcommand
/// (`ftpgate-NAME.1`), and `DIR/completions/` `ftpgate.bash`, `_ftpgate`
/// (zsh) and `ftpgate.fish`. Returns the files written.
pub(crate) fn write(dir: &Path) -> Result<Vec<PathBuf>, AssetError> {
    let man = dir.join("man1");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).map_err(|error| AssetError { path: d.clone(), error })?;
    }
    clap_mangen::generate_to(Args::command(), &man)
        .map_err(|error| AssetError { path: man.clone(), error })?;
    let mut written = files_in(&man)?;
    for shell in SHELLS {
        let mut cmd = Args::command();
        let file = clap_complete::generate_to(shell, &mut cmd, "ftpgate", &completions)
            .map_err(|error| AssetError { path: completions.join(shell.file_name("ftpgate")), error })?;
        written.push(file);
    }
    Ok(written)
}

fn files_in(dir: &Path) -> Result<Vec<PathBuf>, AssetError> {
    let read = |error| AssetError { path: dir.to_path_buf(), error };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read)? {
        files.push(entry.map_err(read)?.path());
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use clap::Parser;

    use super::*;

    /// A fresh directory under the system's temporary directory, removed
    /// when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("ftpgate-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn write_empty_dir_man_page_and_completions_name_every_visible_flag() {
        let tmp = TempDir::new("assets");
        let files = write(&tmp.0).unwrap();
        let man = std::fs::read_to_string(tmp.0.join("man1/ftpgate.1")).unwrap();
        let bash = std::fs::read_to_string(tmp.0.join("completions/ftpgate.bash")).unwrap();
        for name in ["completions/_ftpgate", "completions/ftpgate.fish"] {
            assert!(files.contains(&tmp.0.join(name)), "{name} not written: {files:?}");
        }
        let cmd = Args::command();
        let longs: Vec<&str> =
            cmd.get_arguments().filter(|a| !a.is_hide_set()).filter_map(|a| a.get_long()).collect();
        assert!(longs.contains(&"listen"), "{longs:?}");
        for long in longs {
            // roff escapes the dashes of an option: \-\-listen
            assert!(man.contains(&format!("\\-\\-{}", long.replace('-', "\\-"))), "man page lacks --{long}");
            assert!(bash.contains(&format!("--{long}")), "bash completion lacks --{long}");
        }
        assert!(!man.contains("generate\\-assets"), "the packaging flag is not the operator's business");
        // one page per visible subcommand, found by the same walk
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let page = tmp.0.join(format!("man1/ftpgate-{}.1", sub.get_name()));
            assert!(files.contains(&page), "no page for subcommand {}: {files:?}", sub.get_name());
        }
    }

    #[test]
    fn write_unwritable_path_names_the_path() {
        let tmp = TempDir::new("assets-unwritable");
        let file = tmp.0.join("a-file");
        std::fs::write(&file, b"").unwrap();
        let e = write(&file).unwrap_err();
        assert!(e.to_string().contains("a-file/man1"), "{e}");
    }

    #[test]
    fn flag_is_not_a_clap_argument() {
        // read before clap parses: clap itself must refuse it
        let argv = [OsString::from("ftpgate"), OsString::from(FLAG), OsString::from("/tmp")];
        assert!(Args::try_parse_from(argv).is_err());
    }
}
