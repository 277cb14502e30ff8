//! What a `lab/scenario` run leaves behind (sums, logs, the ladder's JSON,
//! text and SVG), read the same way by tests/scenarios.rs (namespaces) and
//! tests/machines.rs (machines over ssh).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;

/// ftpgate-ladder, built once by cargo (a workspace member, so not among
/// this package's CARGO_BIN_EXE_*), in the target directory of this test.
pub fn ladder_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
            let out = super::run_bounded(
                600,
                &[
                    &cargo,
                    "build",
                    "-q",
                    "--manifest-path",
                    &super::repo_root().join("Cargo.toml").to_string_lossy(),
                    "-p",
                    "ftpgate-ladder",
                ],
            );
            assert!(out.status.success(), "building ftpgate-ladder failed:\n{}", super::text(&out.stderr));
            // target/debug/deps/scenarios-HASH -> target/debug/ftpgate-ladder
            let exe = std::env::current_exe().expect("test binary path");
            let bin = exe.parent().and_then(Path::parent).expect("target dir").join("ftpgate-ladder");
            assert!(bin.is_file(), "no {} after cargo build", bin.display());
            bin
        })
        .clone()
}

/// One scenario run: its name, its artefact directory and what it printed.
pub struct Run {
    pub name: &'static str,
    pub out: PathBuf,
    pub stdout: String,
}

impl Run {
    pub fn path(&self, file: &str) -> PathBuf {
        self.out.join(file)
    }
    pub fn text(&self, file: &str) -> String {
        std::fs::read_to_string(self.path(file))
            .unwrap_or_else(|e| panic!("{}: {file}: {e}\n{}", self.name, self.stdout))
    }
    pub fn json(&self, file: &str) -> Value {
        serde_json::from_str(&self.text(file)).unwrap_or_else(|e| panic!("{}: {file}: {e}", self.name))
    }
    pub fn conns(&self, ladder: &str) -> Vec<Value> {
        self.json(ladder)["connections"].as_array().cloned().unwrap_or_default()
    }
    pub fn count(&self, ladder: &str, socket: &str) -> usize {
        self.conns(ladder).iter().filter(|c| c["socket"] == socket).count()
    }
    /// The sum of a file the scenario's server offered, as written then.
    pub fn source_sum(&self, name: &str) -> String {
        self.text(&format!("{name}.sha256")).trim().to_owned()
    }
    pub fn assert_same(&self, got: &str, source: &str) {
        assert_eq!(
            super::sha256(&self.path(got)),
            self.source_sum(source),
            "{}: {got} differs from the server's {source}",
            self.name
        );
    }
    /// The client addresses vsftpd logged (CONNECT lines). vsftpd listens
    /// dual-stack and logs an IPv4 client as `::ffff:192.0.2.10`: that is
    /// the IPv4 client (super::unmapped); other addresses stay as logged.
    pub fn server_saw(&self) -> Vec<String> {
        let mut seen: Vec<String> = self
            .text("vsftpd.log")
            .lines()
            .filter_map(|l| l.split("CONNECT: Client \"").nth(1))
            .filter_map(|rest| rest.split('"').next())
            .map(super::unmapped)
            .collect();
        seen.sort();
        seen.dedup();
        seen
    }
    /// ftpgate's audit records with message `msg` and the given key values.
    pub fn records(&self, log: &str, msg: &str, keys: &[(&str, &str)]) -> usize {
        self.text(log)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|r| r["msg"] == msg)
            .filter(|r| {
                keys.iter().all(|(k, v)| match &r[*k] {
                    Value::String(s) => s == v,
                    other => other.to_string().as_str() == *v,
                })
            })
            .count()
    }
    /// The diagram names each socket kind the ladder found, in both forms.
    pub fn assert_diagram_names(&self, base: &str, phrases: &[&str]) {
        let text = self.text(&format!("{base}.txt"));
        let svg = self.text(&format!("{base}.svg"));
        assert!(svg.starts_with("<svg"), "{}: {base}.svg is no SVG", self.name);
        for p in phrases {
            assert!(text.contains(p), "{}: {base}.txt does not name {p:?}:\n{text}", self.name);
            assert!(svg.contains(p), "{}: {base}.svg does not name {p:?}", self.name);
        }
    }
}
