//! The test tools `scripts/test-tools.sh` installs (smtp-sink, dnsmasq, the
//! virtualenv with aiosmtpd, the Helm SDK and schemathesis), the Python
//! scripts the tests run in that virtualenv (`tests/support/python/`), and
//! dnsmasq as a DNS server on loopback.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::process::{Killed, root, text, wait_every};

/// A path that `scripts/test-tools.sh` prints (`export NAME=PATH`): the
/// script installs the test tools on its first run, once per test process.
pub fn test_tool(name: &str) -> PathBuf {
    static ENV: OnceLock<String> = OnceLock::new();
    let env = ENV.get_or_init(|| {
        let out = Command::new("bash")
            .arg(root().join("scripts/test-tools.sh"))
            .output()
            .expect("scripts/test-tools.sh runs");
        assert!(
            out.status.success(),
            "scripts/test-tools.sh failed:\n{}",
            text(&out.stderr)
        );
        text(&out.stdout)
    });
    env.lines()
        .find_map(|l| l.strip_prefix(&format!("export {name}=")))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("scripts/test-tools.sh printed no {name}:\n{env}"))
}

/// Paths of the test tools.
pub struct Tools {
    /// The virtualenv's python (aiosmtpd, helm-python-sdk).
    pub python: PathBuf,
    /// The virtualenv's schemathesis.
    pub schemathesis: PathBuf,
    pub smtp_sink: PathBuf,
    pub dnsmasq: PathBuf,
}

/// Installs (first call) and locates the tools.
pub fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Tools> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let venv = test_tool("IDPLANE_VENV");
        Tools {
            python: venv.join("bin/python"),
            schemathesis: venv.join("bin/schemathesis"),
            smtp_sink: test_tool("IDPLANE_SMTP_SINK"),
            dnsmasq: test_tool("IDPLANE_DNSMASQ"),
        }
    })
}

/// A script of `tests/support/python/`, for [`Tools::python`] to run.
pub fn python_script(name: &str) -> PathBuf {
    root().join("tests/support/python").join(name)
}

/// A record dnsmasq answers with.
pub enum DnsRecord<'a> {
    /// A TXT record: name, value.
    Txt(&'a str, &'a str),
    /// An A record: name, IPv4 address.
    Address(&'a str, &'a str),
}

/// dnsmasq on loopback answering the given records and nothing else,
/// killed on drop.
pub struct Dns {
    child: Killed,
    pub port: u16,
}

impl Dns {
    /// Listens on 127.0.0.1:`port` and answers for names under the `local`
    /// domain itself (NXDOMAIN when it has no record).
    pub fn start(port: u16, local: &str, records: &[DnsRecord]) -> Dns {
        let mut cmd = Command::new(&tools().dnsmasq);
        cmd.args([
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--user=root",
        ])
        .arg("--listen-address=127.0.0.1")
        .arg(format!("--port={port}"))
        .arg("--conf-file=/dev/null")
        .arg(format!("--local=/{local}/"));
        for record in records {
            cmd.arg(match record {
                DnsRecord::Txt(name, value) => format!("--txt-record={name},{value}"),
                DnsRecord::Address(name, ip) => format!("--address=/{name}/{ip}"),
            });
        }
        let child = Killed(
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("dnsmasq starts"),
        );
        wait_every(
            "dnsmasq listening",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
        );
        Dns { child, port }
    }

    /// Its address, as the nameserver flags take it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}
