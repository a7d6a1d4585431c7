//! `sluice iptables`: the NAT rules that send a pod's traffic through sluice, installed by an
//! init container with `NET_ADMIN` (the way `istio-iptables` does it for Envoy).
//!
//! Owns: generating the rules from [`Options`] ([`install_commands`], [`cleanup_commands`];
//! pure, golden-tested), running them ([`run`]: shells out to `iptables` / `ip6tables`), and
//! the subcommand's flags ([`Args`], [`main`]; here rather than in `main.rs` so the binary's
//! entry point stays a dispatcher).
//!
//! The rules, in the `nat` table (see `docs/transparent.md` for the walk-through):
//! * `SLUICE_REDIRECT`: `REDIRECT --to-ports <outbound_port>` (15001);
//!   `SLUICE_IN_REDIRECT`: `REDIRECT --to-ports <inbound_port>` (15006).
//! * `PREROUTING → SLUICE_INBOUND`: connections *to* the pod go to the inbound listener,
//!   except sluice's own admin, health and Prometheus ports and the excluded ports.
//! * `OUTPUT → SLUICE_OUTPUT`: connections *from* the pod go to the outbound listener, except
//!   those of the proxy's own UID/GID (1337: this is what prevents a loop), loopback traffic of
//!   the application, and the excluded ports and CIDRs.
//!
//! Invariants:
//! * Idempotent: installing first removes every rule and chain a previous run made (the jumps
//!   from `PREROUTING`/`OUTPUT`, then the `SLUICE_*` chains), so running twice leaves exactly
//!   one copy. `--cleanup` runs only that removal.
//! * Own chain names only: rules of other tools (Istio's `ISTIO_*`, CNI plugins) are never
//!   touched.
//!
//! Why shell out instead of netlink: `iptables` is the interface every cluster's nodes and
//! init images already agree on (legacy or nft backend, chosen by the binary), and its error
//! messages are what operators know how to read.

use std::fmt;
use std::net::IpAddr;
use std::process::Command;

use crate::error::{Classify, Side};
use crate::transparent::Cidr;

/// Chain for connections to the pod (jumped to from `PREROUTING`).
pub const CHAIN_INBOUND: &str = "SLUICE_INBOUND";
/// Chain that redirects to the inbound listener.
pub const CHAIN_IN_REDIRECT: &str = "SLUICE_IN_REDIRECT";
/// Chain for connections from the pod (jumped to from `OUTPUT`).
pub const CHAIN_OUTPUT: &str = "SLUICE_OUTPUT";
/// Chain that redirects to the outbound listener.
pub const CHAIN_REDIRECT: &str = "SLUICE_REDIRECT";
/// The proxy's UID (and GID) by convention: Istio's, so pod security policies carry over.
pub const PROXY_UID_DEFAULT: u32 = 1337;
pub const OUTBOUND_PORT_DEFAULT: u16 = 15001;
pub const INBOUND_PORT_DEFAULT: u16 = 15006;
/// sluice's own ports that inbound redirection always leaves alone: admin, health
/// (`/healthz/ready`), Prometheus (`/stats/prometheus`); the kubelet must reach them directly.
pub const INBOUND_PORTS_ALWAYS_EXCLUDED: &[u16] = &[15000, 15021, 15090];
/// A leftover jump is deleted at most this many times during cleanup (duplicates from a
/// tool that appended without checking).
const CLEANUP_JUMP_DELETES_MAX: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("{0}")]
    BadOption(String),
    #[error("cannot run `{cmd}`: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Failed {
        cmd: String,
        status: String,
        stderr: String,
    },
}

impl Classify for IptablesError {
    fn side(&self) -> Side {
        match self {
            IptablesError::BadOption(_) => Side::Downstream,
            _ => Side::Internal,
        }
    }
    fn status(&self) -> u16 {
        match self {
            IptablesError::BadOption(_) => 400,
            _ => 500,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            IptablesError::BadOption(_) => "iptables_bad_option",
            IptablesError::Spawn { .. } => "iptables_spawn_failed",
            IptablesError::Failed { .. } => "iptables_failed",
        }
    }
}

/// A set of ports or CIDRs: `*` (all) or a list (possibly empty: none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Set<T> {
    All,
    List(Vec<T>),
}

impl<T> Set<T> {
    fn is_empty(&self) -> bool {
        matches!(self, Set::List(v) if v.is_empty())
    }
}

/// Parse `*`, an empty string, or a comma-separated list of ports.
pub fn parse_ports(s: &str) -> Result<Set<u16>, IptablesError> {
    let s = s.trim();
    if s == "*" {
        return Ok(Set::All);
    }
    let mut v = Vec::new();
    for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let n: u16 =
            p.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                IptablesError::BadOption(format!("`{p}` is not a port (1-65535)"))
            })?;
        if !v.contains(&n) {
            v.push(n);
        }
    }
    Ok(Set::List(v))
}

/// Parse `*`, an empty string, or a comma-separated list of CIDRs / addresses.
pub fn parse_cidrs(s: &str) -> Result<Set<Cidr>, IptablesError> {
    let s = s.trim();
    if s == "*" {
        return Ok(Set::All);
    }
    let mut v = Vec::new();
    for c in s.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        v.push(c.parse::<Cidr>().map_err(IptablesError::BadOption)?);
    }
    Ok(Set::List(v))
}

/// What to intercept. Defaults are Istio's.
#[derive(Debug, Clone)]
pub struct Options {
    pub proxy_uid: u32,
    pub proxy_gid: u32,
    pub outbound_port: u16,
    pub inbound_port: u16,
    /// Outbound destinations redirected (`*`: all).
    pub include_outbound_cidrs: Set<Cidr>,
    pub exclude_outbound_cidrs: Vec<Cidr>,
    /// Outbound ports always redirected, even to excluded CIDRs.
    pub include_outbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    /// Inbound ports redirected (`*`: all; empty: inbound interception off).
    pub include_inbound_ports: Set<u16>,
    pub exclude_inbound_ports: Vec<u16>,
    /// Also program `ip6tables`.
    pub ipv6: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            proxy_uid: PROXY_UID_DEFAULT,
            proxy_gid: PROXY_UID_DEFAULT,
            outbound_port: OUTBOUND_PORT_DEFAULT,
            inbound_port: INBOUND_PORT_DEFAULT,
            include_outbound_cidrs: Set::All,
            exclude_outbound_cidrs: Vec::new(),
            include_outbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            include_inbound_ports: Set::All,
            exclude_inbound_ports: Vec::new(),
            ipv6: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// One `iptables` (or `ip6tables`) invocation on the `nat` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    pub family: Family,
    pub args: Vec<String>,
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bin = match self.family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        write!(f, "{bin} -w -t nat {}", self.args.join(" "))
    }
}

struct Builder {
    family: Family,
    out: Vec<Cmd>,
}

impl Builder {
    fn add(&mut self, args: &[&str]) {
        self.out.push(Cmd {
            family: self.family,
            args: args.iter().map(|s| s.to_string()).collect(),
        });
    }

    /// `-A chain -p tcp --dport port -j target`.
    fn port_rule(&mut self, chain: &str, port: u16, target: &str) {
        let p = port.to_string();
        self.add(&["-A", chain, "-p", "tcp", "--dport", &p, "-j", target]);
    }
}

fn in_family(c: &Cidr, f: Family) -> bool {
    matches!(
        (c.addr, f),
        (IpAddr::V4(_), Family::V4) | (IpAddr::V6(_), Family::V6)
    )
}

/// The commands that install the rules (after a cleanup), per family.
pub fn install_commands(o: &Options) -> Vec<Cmd> {
    let mut all = Vec::new();
    let families: &[Family] = if o.ipv6 {
        &[Family::V4, Family::V6]
    } else {
        &[Family::V4]
    };
    for &fam in families {
        let mut b = Builder {
            family: fam,
            out: Vec::new(),
        };
        let (lo_ip, lo_net) = match fam {
            Family::V4 => ("127.0.0.1/32", "127.0.0.1/32"),
            Family::V6 => ("::1/128", "::1/128"),
        };
        let uid = o.proxy_uid.to_string();
        let gid = o.proxy_gid.to_string();
        let out_port = o.outbound_port.to_string();
        let in_port = o.inbound_port.to_string();
        for c in [
            CHAIN_INBOUND,
            CHAIN_REDIRECT,
            CHAIN_IN_REDIRECT,
            CHAIN_OUTPUT,
        ] {
            b.add(&["-N", c]);
        }
        b.add(&[
            "-A",
            CHAIN_REDIRECT,
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &out_port,
        ]);
        b.add(&[
            "-A",
            CHAIN_IN_REDIRECT,
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &in_port,
        ]);

        // Inbound: connections to the pod.
        let inbound = !o.include_inbound_ports.is_empty();
        if inbound {
            b.add(&["-A", "PREROUTING", "-p", "tcp", "-j", CHAIN_INBOUND]);
            match &o.include_inbound_ports {
                Set::All => {
                    let mut skip: Vec<u16> = INBOUND_PORTS_ALWAYS_EXCLUDED.to_vec();
                    for p in &o.exclude_inbound_ports {
                        if !skip.contains(p) {
                            skip.push(*p);
                        }
                    }
                    for p in skip {
                        b.port_rule(CHAIN_INBOUND, p, "RETURN");
                    }
                    b.add(&["-A", CHAIN_INBOUND, "-p", "tcp", "-j", CHAIN_IN_REDIRECT]);
                }
                Set::List(ports) => {
                    for p in ports {
                        if o.exclude_inbound_ports.contains(p)
                            || INBOUND_PORTS_ALWAYS_EXCLUDED.contains(p)
                        {
                            continue;
                        }
                        b.port_rule(CHAIN_INBOUND, *p, CHAIN_IN_REDIRECT);
                    }
                }
            }
        }

        // Outbound: connections from the pod.
        b.add(&["-A", "OUTPUT", "-p", "tcp", "-j", CHAIN_OUTPUT]);
        for p in &o.exclude_outbound_ports {
            b.port_rule(CHAIN_OUTPUT, *p, "RETURN");
        }
        for (m, id) in [("--uid-owner", &uid), ("--gid-owner", &gid)] {
            if inbound {
                // The proxy calling the pod's own address over loopback (an application
                // calling its own Service): that is inbound traffic, inspect it as such.
                b.add(&[
                    "-A",
                    CHAIN_OUTPUT,
                    "-o",
                    "lo",
                    "!",
                    "-d",
                    lo_ip,
                    "-m",
                    "owner",
                    m,
                    id,
                    "-j",
                    CHAIN_IN_REDIRECT,
                ]);
            }
            // The application's own loopback traffic is not intercepted.
            b.add(&[
                "-A",
                CHAIN_OUTPUT,
                "-o",
                "lo",
                "-m",
                "owner",
                "!",
                m,
                id,
                "-j",
                "RETURN",
            ]);
            // The proxy's own connections: never redirected (no loop).
            b.add(&["-A", CHAIN_OUTPUT, "-m", "owner", m, id, "-j", "RETURN"]);
        }
        b.add(&["-A", CHAIN_OUTPUT, "-d", lo_net, "-j", "RETURN"]);
        for p in &o.include_outbound_ports {
            b.port_rule(CHAIN_OUTPUT, *p, CHAIN_REDIRECT);
        }
        for c in o
            .exclude_outbound_cidrs
            .iter()
            .filter(|c| in_family(c, fam))
        {
            let c = c.to_string();
            b.add(&["-A", CHAIN_OUTPUT, "-d", &c, "-j", "RETURN"]);
        }
        match &o.include_outbound_cidrs {
            Set::All => b.add(&["-A", CHAIN_OUTPUT, "-j", CHAIN_REDIRECT]),
            Set::List(cidrs) => {
                for c in cidrs.iter().filter(|c| in_family(c, fam)) {
                    let c = c.to_string();
                    b.add(&["-A", CHAIN_OUTPUT, "-d", &c, "-j", CHAIN_REDIRECT]);
                }
                b.add(&["-A", CHAIN_OUTPUT, "-j", "RETURN"]);
            }
        }
        all.extend(b.out);
    }
    all
}

/// The commands that remove everything [`install_commands`] adds. Each may fail harmlessly
/// (nothing to remove); the jump deletions are repeated until they fail.
pub fn cleanup_commands(ipv6: bool) -> Vec<Cmd> {
    let mut out = Vec::new();
    let families: &[Family] = if ipv6 {
        &[Family::V4, Family::V6]
    } else {
        &[Family::V4]
    };
    for &fam in families {
        let mut b = Builder {
            family: fam,
            out: Vec::new(),
        };
        b.add(&["-D", "PREROUTING", "-p", "tcp", "-j", CHAIN_INBOUND]);
        b.add(&["-D", "OUTPUT", "-p", "tcp", "-j", CHAIN_OUTPUT]);
        for c in [
            CHAIN_INBOUND,
            CHAIN_OUTPUT,
            CHAIN_REDIRECT,
            CHAIN_IN_REDIRECT,
        ] {
            b.add(&["-F", c]);
        }
        for c in [
            CHAIN_INBOUND,
            CHAIN_OUTPUT,
            CHAIN_REDIRECT,
            CHAIN_IN_REDIRECT,
        ] {
            b.add(&["-X", c]);
        }
        out.extend(b.out);
    }
    out
}

/// Binaries to run for each family.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub iptables: String,
    pub ip6tables: String,
}

impl Default for Binaries {
    fn default() -> Self {
        Binaries {
            iptables: "iptables".into(),
            ip6tables: "ip6tables".into(),
        }
    }
}

fn exec(bins: &Binaries, c: &Cmd) -> Result<(), IptablesError> {
    let bin = match c.family {
        Family::V4 => &bins.iptables,
        Family::V6 => &bins.ip6tables,
    };
    let out = Command::new(bin)
        .arg("-w")
        .arg("-t")
        .arg("nat")
        .args(&c.args)
        .output()
        .map_err(|source| IptablesError::Spawn {
            cmd: c.to_string(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(IptablesError::Failed {
            cmd: c.to_string(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Remove the rules; a missing rule or chain is not an error.
pub fn cleanup(bins: &Binaries, ipv6: bool) {
    for c in cleanup_commands(ipv6) {
        if c.args[0] == "-D" {
            for _ in 0..CLEANUP_JUMP_DELETES_MAX {
                if exec(bins, &c).is_err() {
                    break;
                }
            }
        } else {
            let _ = exec(bins, &c);
        }
    }
}

/// What `sluice iptables` does: print (`dry_run`), remove (`cleanup_only`), or (re)install.
pub fn run(
    o: &Options,
    bins: &Binaries,
    dry_run: bool,
    cleanup_only: bool,
    out: &mut dyn std::io::Write,
) -> Result<(), IptablesError> {
    let cmds = if cleanup_only {
        cleanup_commands(o.ipv6)
    } else {
        install_commands(o)
    };
    if dry_run {
        for c in &cmds {
            let _ = writeln!(out, "{c}");
        }
        return Ok(());
    }
    cleanup(bins, o.ipv6);
    if cleanup_only {
        let _ = writeln!(out, "sluice iptables: rules removed");
        return Ok(());
    }
    for c in &cmds {
        if let Err(e) = exec(bins, c) {
            // Leave nothing half-installed: a pod without rules fails open and visibly
            // (no interception), never with a partial redirect.
            cleanup(bins, o.ipv6);
            return Err(e);
        }
    }
    let _ = writeln!(
        out,
        "sluice iptables: {} rules installed (outbound → {}, inbound → {}, proxy uid {})",
        cmds.len(),
        o.outbound_port,
        o.inbound_port,
        o.proxy_uid
    );
    Ok(())
}

/// `sluice iptables` flags (names and short flags as `istio-iptables`).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// UID of the sluice process: its own connections are never redirected.
    #[arg(long, short = 'u', default_value_t = PROXY_UID_DEFAULT)]
    proxy_uid: u32,
    /// GID of the sluice process: its own connections are never redirected.
    #[arg(long, short = 'g', default_value_t = PROXY_UID_DEFAULT)]
    proxy_gid: u32,
    /// Port of the transparent outbound listener.
    #[arg(long, short = 'p', default_value_t = OUTBOUND_PORT_DEFAULT)]
    outbound_port: u16,
    /// Port of the transparent inbound listener.
    #[arg(long, short = 'z', default_value_t = INBOUND_PORT_DEFAULT)]
    inbound_port: u16,
    /// Outbound destinations to redirect: `*` or comma-separated CIDRs.
    #[arg(long, short = 'i', default_value = "*")]
    include_outbound_cidrs: String,
    /// Outbound destinations never redirected (comma-separated CIDRs).
    #[arg(long, short = 'x', default_value = "")]
    exclude_outbound_cidrs: String,
    /// Outbound ports always redirected (comma-separated).
    #[arg(long, short = 'q', default_value = "")]
    include_outbound_ports: String,
    /// Outbound ports never redirected (comma-separated), e.g. server-first protocols.
    #[arg(long, short = 'o', default_value = "")]
    exclude_outbound_ports: String,
    /// Inbound ports to redirect: `*`, comma-separated ports, or empty (no inbound rules).
    #[arg(long, short = 'b', default_value = "*")]
    include_inbound_ports: String,
    /// Inbound ports never redirected (15000, 15021 and 15090 never are).
    #[arg(long, short = 'd', default_value = "")]
    exclude_inbound_ports: String,
    /// Also program ip6tables.
    #[arg(long)]
    ipv6: bool,
    /// Print the commands instead of running them.
    #[arg(long)]
    dry_run: bool,
    /// Remove the rules instead of installing them.
    #[arg(long)]
    cleanup: bool,
    /// The iptables binary (e.g. iptables-legacy).
    #[arg(long, default_value = "iptables")]
    iptables: String,
    /// The ip6tables binary.
    #[arg(long, default_value = "ip6tables")]
    ip6tables: String,
}

/// Run `sluice iptables`: exit status 0 done, 1 an iptables command failed, 2 a bad option.
pub fn main(a: Args) -> std::process::ExitCode {
    use std::process::ExitCode;
    let list = |s: Set<u16>| match s {
        Set::All => Vec::new(),
        Set::List(v) => v,
    };
    let parsed = (|| {
        let exclude_outbound_cidrs = match parse_cidrs(&a.exclude_outbound_cidrs)? {
            Set::All => {
                return Err(IptablesError::BadOption(
                    "--exclude-outbound-cidrs takes CIDRs, not `*`".into(),
                ))
            }
            Set::List(v) => v,
        };
        Ok(Options {
            proxy_uid: a.proxy_uid,
            proxy_gid: a.proxy_gid,
            outbound_port: a.outbound_port,
            inbound_port: a.inbound_port,
            include_outbound_cidrs: parse_cidrs(&a.include_outbound_cidrs)?,
            exclude_outbound_cidrs,
            include_outbound_ports: list(parse_ports(&a.include_outbound_ports)?),
            exclude_outbound_ports: list(parse_ports(&a.exclude_outbound_ports)?),
            include_inbound_ports: parse_ports(&a.include_inbound_ports)?,
            exclude_inbound_ports: list(parse_ports(&a.exclude_inbound_ports)?),
            ipv6: a.ipv6,
        })
    })();
    let opts = match parsed {
        Ok(o) => o,
        Err(e) => {
            eprintln!("sluice iptables: {e}");
            return ExitCode::from(2);
        }
    };
    let bins = Binaries {
        iptables: a.iptables,
        ip6tables: a.ip6tables,
    };
    let mut out = std::io::stdout();
    match run(&opts, &bins, a.dry_run, a.cleanup, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice iptables: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(cmds: &[Cmd]) -> String {
        let mut s = String::new();
        for c in cmds {
            s.push_str(&c.to_string());
            s.push('\n');
        }
        s
    }

    /// Compare with `tests/fixtures/iptables/<name>`; `UPDATE_GOLDEN=1` rewrites it.
    fn golden(name: &str, got: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/iptables")
            .join(name);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, got).unwrap();
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
        assert_eq!(got, want, "golden file {} differs", path.display());
    }

    #[test]
    fn default_rules_golden() {
        golden(
            "default.txt",
            &render(&install_commands(&Options::default())),
        );
    }

    #[test]
    fn custom_rules_golden() {
        let o = Options {
            proxy_uid: 2000,
            proxy_gid: 2001,
            include_outbound_cidrs: parse_cidrs("10.0.0.0/8, fd00::/8").unwrap(),
            exclude_outbound_cidrs: match parse_cidrs("10.96.0.1,fd00::1").unwrap() {
                Set::List(v) => v,
                Set::All => unreachable!(),
            },
            include_outbound_ports: vec![443],
            exclude_outbound_ports: vec![5432, 6379],
            include_inbound_ports: parse_ports("8000,15021,9000").unwrap(),
            exclude_inbound_ports: vec![9000],
            ipv6: true,
            ..Default::default()
        };
        golden("custom.txt", &render(&install_commands(&o)));
    }

    #[test]
    fn no_inbound_ports_means_no_inbound_rules() {
        let o = Options {
            include_inbound_ports: parse_ports("").unwrap(),
            ..Default::default()
        };
        let s = render(&install_commands(&o));
        assert!(!s.contains("PREROUTING"), "{s}");
        assert!(!s.contains(&format!("-j {CHAIN_IN_REDIRECT}")), "{s}");
    }

    #[test]
    fn cleanup_golden() {
        golden("cleanup.txt", &render(&cleanup_commands(true)));
    }

    #[test]
    fn the_proxy_uid_is_excluded_before_any_redirect() {
        let cmds = install_commands(&Options::default());
        let pos = |needle: &str| {
            cmds.iter()
                .position(|c| c.to_string().ends_with(needle))
                .unwrap_or_else(|| panic!("missing {needle}"))
        };
        let uid_return = pos("-A SLUICE_OUTPUT -m owner --uid-owner 1337 -j RETURN");
        let redirect = pos("-A SLUICE_OUTPUT -j SLUICE_REDIRECT");
        assert!(uid_return < redirect);
    }

    #[test]
    fn option_parsing() {
        assert_eq!(parse_ports("*").unwrap(), Set::All);
        assert_eq!(parse_ports("").unwrap(), Set::List(vec![]));
        assert_eq!(parse_ports("80, 443,80").unwrap(), Set::List(vec![80, 443]));
        assert!(parse_ports("0").is_err());
        assert!(parse_ports("http").is_err());
        assert!(parse_ports("70000").is_err());
        assert_eq!(parse_cidrs("*").unwrap(), Set::All);
        assert!(parse_cidrs("10.0.0.0/40").is_err());
        assert!(matches!(parse_cidrs("10.0.0.0/8,::1").unwrap(), Set::List(v) if v.len() == 2));
    }
}
