//! `mesh-proxy iptables`: transparent interception rules for the current network namespace,
//! as Istio's init container (`istio-iptables`) writes them.
//!
//! In the `nat` table, four chains with Istio's names, so that operators' habits and tools
//! carry over:
//!
//! - `ISTIO_INBOUND` (from `PREROUTING`): TCP arriving for the workload goes to
//!   `ISTIO_IN_REDIRECT` (`REDIRECT` to the inbound capture port, 15006), except the
//!   sidecar's own ports (health 15021, 15020, 15090) and the excluded ports; with
//!   `--include-inbound-ports` other than `*`, only the listed ports.
//! - `ISTIO_OUTPUT` (from `OUTPUT`): TCP the workload opens goes to `ISTIO_REDIRECT`
//!   (`REDIRECT` to the outbound capture port, 15001), except: excluded ports; the proxy's
//!   own traffic (`-m owner --uid-owner`/`--gid-owner`, so the sidecar's upstream connections
//!   are not captured again); loopback, handled as Istio does (traffic from `127.0.0.6`
//!   returns; the proxy talking to a local non-`127.0.0.1` address goes to inbound, i.e. an
//!   app calling itself through its service; other loopback traffic returns); `127.0.0.1`;
//!   excluded ranges; and, with `--include-outbound-ip-ranges` other than `*`, everything
//!   outside the listed ranges.
//!
//! `--apply` first removes what an earlier `--apply` left (so it can run again), then loads
//! the rules in one `iptables-restore --noflush` transaction; `--remove` deletes the two jumps
//! and the four chains, and succeeds when they are already gone. The binaries are found on
//! `PATH` (and `/usr/sbin`, `/sbin`): `iptables-nft` or `iptables-legacy`, the one whose `nat`
//! table already has rules when both do (Istio's detection), else `iptables`.
//!
//! IPv4 only: IPv6 ranges are refused (`ip6tables` rules are not written yet).

use ipnet::Ipv4Net;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The chains this module owns, in the order they are flushed and deleted.
pub const CHAINS: [&str; 4] = [
    "ISTIO_OUTPUT",
    "ISTIO_INBOUND",
    "ISTIO_REDIRECT",
    "ISTIO_IN_REDIRECT",
];

/// The jumps from built-in chains: (chain, rule).
pub const JUMPS: [(&str, &str); 2] = [
    ("PREROUTING", "-p tcp -j ISTIO_INBOUND"),
    ("OUTPUT", "-p tcp -j ISTIO_OUTPUT"),
];

/// Inbound ports never redirected: Envoy/Istio's health (15021), agent (15020) and metrics
/// (15090) ports, which the sidecar's own health listener uses.
pub const SIDECAR_INBOUND_PORTS: [u16; 3] = [15021, 15020, 15090];

/// Which destinations or ports a rule applies to: all (`*`) or a list (possibly empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection<T> {
    /// Everything (`*`).
    All,
    /// Only these.
    Only(Vec<T>),
}

/// What to intercept; see the module docs. Parsed from the annotations' syntax by
/// [`Intercept::parse`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intercept {
    /// The sidecar's user id: its traffic is never captured (Istio: 1337).
    pub proxy_uid: u32,
    /// The sidecar's group id: its traffic is never captured either.
    pub proxy_gid: u32,
    /// The outbound capture port.
    pub outbound_port: u16,
    /// The inbound capture port.
    pub inbound_port: u16,
    /// `traffic.sidecar.istio.io/includeOutboundIPRanges`.
    pub include_outbound_ip_ranges: Selection<Ipv4Net>,
    /// `traffic.sidecar.istio.io/excludeOutboundIPRanges`.
    pub exclude_outbound_ip_ranges: Vec<Ipv4Net>,
    /// `traffic.sidecar.istio.io/excludeOutboundPorts`.
    pub exclude_outbound_ports: Vec<u16>,
    /// `traffic.sidecar.istio.io/includeInboundPorts`.
    pub include_inbound_ports: Selection<u16>,
    /// `traffic.sidecar.istio.io/excludeInboundPorts`.
    pub exclude_inbound_ports: Vec<u16>,
}

impl Default for Intercept {
    fn default() -> Self {
        Self {
            proxy_uid: 1337,
            proxy_gid: 1337,
            outbound_port: 15001,
            inbound_port: 15006,
            include_outbound_ip_ranges: Selection::All,
            exclude_outbound_ip_ranges: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            include_inbound_ports: Selection::All,
            exclude_inbound_ports: Vec::new(),
        }
    }
}

/// A bad option value: the flag, the value and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("--{flag} {value:?}: {reason}")]
pub struct InvalidOption {
    /// The flag, without dashes.
    pub flag: &'static str,
    /// The offending value (one item of a list).
    pub value: String,
    /// What is wrong.
    pub reason: String,
}

/// The options as given on the command line (Istio's annotation syntax: comma-separated
/// lists, `*` for all).
#[derive(Clone, Debug, Default)]
pub struct RawOptions<'a> {
    /// `--proxy-uid`.
    pub proxy_uid: u32,
    /// `--proxy-gid` (the uid when `None`).
    pub proxy_gid: Option<u32>,
    /// `--outbound-port`.
    pub outbound_port: u16,
    /// `--inbound-port`.
    pub inbound_port: u16,
    /// `--include-outbound-ip-ranges`.
    pub include_outbound_ip_ranges: &'a str,
    /// `--exclude-outbound-ip-ranges`.
    pub exclude_outbound_ip_ranges: &'a str,
    /// `--exclude-outbound-ports`.
    pub exclude_outbound_ports: &'a str,
    /// `--include-inbound-ports`.
    pub include_inbound_ports: &'a str,
    /// `--exclude-inbound-ports`.
    pub exclude_inbound_ports: &'a str,
}

fn items(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn ports(flag: &'static str, list: &str) -> Result<Vec<u16>, InvalidOption> {
    items(list)
        .map(|p| match p.parse::<u16>() {
            Ok(port) if port != 0 => Ok(port),
            _ => Err(InvalidOption {
                flag,
                value: p.to_owned(),
                reason: "not a port in 1..=65535".into(),
            }),
        })
        .collect()
}

fn ranges(flag: &'static str, list: &str) -> Result<Vec<Ipv4Net>, InvalidOption> {
    items(list)
        .map(|r| {
            let bad = |reason: &str| InvalidOption {
                flag,
                value: r.to_owned(),
                reason: reason.to_owned(),
            };
            if r.contains(':') {
                return Err(bad(
                    "IPv6 ranges are not supported (only IPv4 rules are written)",
                ));
            }
            r.parse::<Ipv4Net>()
                .or_else(|_| r.parse::<std::net::Ipv4Addr>().map(Ipv4Net::from))
                .map(|n| n.trunc())
                .map_err(|_| bad("not an IPv4 address or CIDR range"))
        })
        .collect()
}

fn selection<T>(
    list: &str,
    parse: impl FnOnce(&str) -> Result<Vec<T>, InvalidOption>,
) -> Result<Selection<T>, InvalidOption> {
    if list.trim() == "*" {
        Ok(Selection::All)
    } else {
        parse(list).map(Selection::Only)
    }
}

impl Intercept {
    /// Parses the command line's values; every error names the flag and the item.
    pub fn parse(raw: &RawOptions<'_>) -> Result<Self, InvalidOption> {
        for (flag, port) in [
            ("outbound-port", raw.outbound_port),
            ("inbound-port", raw.inbound_port),
        ] {
            if port == 0 {
                return Err(InvalidOption {
                    flag,
                    value: "0".into(),
                    reason: "a capture port must be in 1..=65535".into(),
                });
            }
        }
        Ok(Self {
            proxy_uid: raw.proxy_uid,
            proxy_gid: raw.proxy_gid.unwrap_or(raw.proxy_uid),
            outbound_port: raw.outbound_port,
            inbound_port: raw.inbound_port,
            include_outbound_ip_ranges: selection(raw.include_outbound_ip_ranges, |l| {
                ranges("include-outbound-ip-ranges", l)
            })?,
            exclude_outbound_ip_ranges: ranges(
                "exclude-outbound-ip-ranges",
                raw.exclude_outbound_ip_ranges,
            )?,
            exclude_outbound_ports: ports("exclude-outbound-ports", raw.exclude_outbound_ports)?,
            include_inbound_ports: selection(raw.include_inbound_ports, |l| {
                ports("include-inbound-ports", l)
            })?,
            exclude_inbound_ports: ports("exclude-inbound-ports", raw.exclude_inbound_ports)?,
        })
    }

    /// Whether any inbound traffic is captured.
    fn captures_inbound(&self) -> bool {
        !matches!(&self.include_inbound_ports, Selection::Only(p) if p.is_empty())
    }

    /// The rules, as `iptables-restore` input for the `nat` table.
    pub fn rules(&self) -> String {
        let mut out = String::from("*nat\n");
        for chain in CHAINS {
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        let mut rule = |chain: &str, spec: String| {
            let _ = writeln!(out, "-A {chain} {spec}");
        };
        // Inbound.
        match &self.include_inbound_ports {
            Selection::All => {
                let mut skipped: Vec<u16> = SIDECAR_INBOUND_PORTS.to_vec();
                for port in &self.exclude_inbound_ports {
                    if !skipped.contains(port) {
                        skipped.push(*port);
                    }
                }
                for port in skipped {
                    rule("ISTIO_INBOUND", format!("-p tcp --dport {port} -j RETURN"));
                }
                rule("ISTIO_INBOUND", "-p tcp -j ISTIO_IN_REDIRECT".into());
            }
            Selection::Only(list) => {
                for port in list
                    .iter()
                    .filter(|p| !self.exclude_inbound_ports.contains(p))
                {
                    rule(
                        "ISTIO_INBOUND",
                        format!("-p tcp --dport {port} -j ISTIO_IN_REDIRECT"),
                    );
                }
            }
        }
        rule(
            "ISTIO_IN_REDIRECT",
            format!("-p tcp -j REDIRECT --to-ports {}", self.inbound_port),
        );
        rule(
            "ISTIO_REDIRECT",
            format!("-p tcp -j REDIRECT --to-ports {}", self.outbound_port),
        );
        // Outbound.
        for port in &self.exclude_outbound_ports {
            rule("ISTIO_OUTPUT", format!("-p tcp --dport {port} -j RETURN"));
        }
        rule("ISTIO_OUTPUT", "-o lo -s 127.0.0.6/32 -j RETURN".into());
        for (kind, id) in [("uid", self.proxy_uid), ("gid", self.proxy_gid)] {
            if self.captures_inbound() {
                // The proxy calling a local non-loopback address: the app calling itself
                // through its service, served by the inbound side.
                rule(
                    "ISTIO_OUTPUT",
                    format!(
                        "! -d 127.0.0.1/32 -o lo -p tcp -m owner --{kind}-owner {id} -j ISTIO_IN_REDIRECT"
                    ),
                );
            }
            rule(
                "ISTIO_OUTPUT",
                format!("-o lo -m owner ! --{kind}-owner {id} -j RETURN"),
            );
            rule(
                "ISTIO_OUTPUT",
                format!("-m owner --{kind}-owner {id} -j RETURN"),
            );
        }
        rule("ISTIO_OUTPUT", "-d 127.0.0.1/32 -j RETURN".into());
        for net in &self.exclude_outbound_ip_ranges {
            rule("ISTIO_OUTPUT", format!("-d {net} -j RETURN"));
        }
        match &self.include_outbound_ip_ranges {
            Selection::All => rule("ISTIO_OUTPUT", "-j ISTIO_REDIRECT".into()),
            Selection::Only(nets) => {
                for net in nets {
                    rule("ISTIO_OUTPUT", format!("-d {net} -j ISTIO_REDIRECT"));
                }
            }
        }
        for (chain, spec) in JUMPS {
            rule(chain, spec.to_owned());
        }
        out.push_str("COMMIT\n");
        out
    }
}

/// The `iptables` binaries to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// `iptables`, `iptables-nft` or `iptables-legacy`.
    pub iptables: PathBuf,
    /// The matching `*-restore`.
    pub restore: PathBuf,
}

/// Which iptables variant to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Detect (see the module docs).
    Auto,
    /// `iptables-nft`.
    Nft,
    /// `iptables-legacy`.
    Legacy,
}

/// Why the rules could not be applied or removed.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    /// No usable iptables binary.
    #[error(
        "no {wanted} binary found on PATH, /usr/sbin or /sbin (Debian: apt-get install iptables)"
    )]
    NotFound {
        /// What was looked for.
        wanted: &'static str,
    },
    /// A command could not be started.
    #[error("running {command}: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A command failed.
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
}

fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The number of rules in `iptables`' `nat` table (`-save` output lines starting `-A`).
fn nat_rule_count(save: &Path) -> usize {
    Command::new(save)
        .args(["-t", "nat"])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.starts_with("-A "))
                .count()
        })
        .unwrap_or(0)
}

impl Backend {
    /// Finds the binaries for `variant`.
    pub fn detect(variant: Variant) -> Result<Self, IptablesError> {
        let pair = |base: &str| {
            Some(Self {
                iptables: find(base)?,
                restore: find(&format!("{base}-restore"))?,
            })
        };
        match variant {
            Variant::Nft => pair("iptables-nft").ok_or(IptablesError::NotFound {
                wanted: "iptables-nft",
            }),
            Variant::Legacy => pair("iptables-legacy").ok_or(IptablesError::NotFound {
                wanted: "iptables-legacy",
            }),
            Variant::Auto => {
                let nft = pair("iptables-nft");
                let legacy = pair("iptables-legacy");
                let count =
                    |base: &str| find(&format!("{base}-save")).map_or(0, |p| nat_rule_count(&p));
                match (nft, legacy) {
                    (Some(nft), Some(legacy)) => {
                        // The variant already in use wins (Istio's detection); nft on a tie.
                        if count("iptables-legacy") > count("iptables-nft") {
                            Ok(legacy)
                        } else {
                            Ok(nft)
                        }
                    }
                    (Some(one), None) | (None, Some(one)) => Ok(one),
                    (None, None) => {
                        pair("iptables").ok_or(IptablesError::NotFound { wanted: "iptables" })
                    }
                }
            }
        }
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<(), IptablesError> {
        let (program, args) = match stdin {
            Some(_) => (&self.restore, args),
            None => (&self.iptables, args),
        };
        let command = format!("{} {}", program.display(), args.join(" "));
        let mut child = Command::new(program)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| IptablesError::Spawn {
                command: command.clone(),
                source,
            })?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())
                .map_err(|source| IptablesError::Spawn {
                    command: command.clone(),
                    source,
                })?;
        }
        let output = child
            .wait_with_output()
            .map_err(|source| IptablesError::Spawn {
                command: command.clone(),
                source,
            })?;
        if output.status.success() {
            Ok(())
        } else {
            Err(IptablesError::Failed {
                command,
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            })
        }
    }

    /// Removes the rules, then loads `intercept`'s in one transaction.
    pub fn apply(&self, intercept: &Intercept) -> Result<(), IptablesError> {
        self.remove()?;
        self.run(&["--noflush"], Some(&intercept.rules()))
    }

    /// Deletes the jumps and the chains; what is already gone is skipped.
    pub fn remove(&self) -> Result<(), IptablesError> {
        for (chain, spec) in JUMPS {
            let mut args = vec!["-t", "nat", "-D", chain];
            args.extend(spec.split(' '));
            // A jump added twice (by hand) is deleted as often; bounded.
            for _ in 0..16 {
                if self.run(&args, None).is_err() {
                    break;
                }
            }
        }
        let exists = |chain: &str| self.run(&["-t", "nat", "-n", "-L", chain], None).is_ok();
        let present: Vec<&str> = CHAINS.into_iter().filter(|c| exists(c)).collect();
        for chain in &present {
            self.run(&["-t", "nat", "-F", chain], None)?;
        }
        for chain in &present {
            self.run(&["-t", "nat", "-X", chain], None)?;
        }
        Ok(())
    }
}

/// What `--remove` runs, as shell lines (for `--dry-run`).
pub fn removal_commands() -> String {
    let mut out = String::new();
    for (chain, spec) in JUMPS {
        let _ = writeln!(out, "iptables -t nat -D {chain} {spec}");
    }
    for chain in CHAINS {
        let _ = writeln!(out, "iptables -t nat -F {chain}");
    }
    for chain in CHAINS {
        let _ = writeln!(out, "iptables -t nat -X {chain}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawOptions<'static> {
        RawOptions {
            proxy_uid: 1337,
            proxy_gid: None,
            outbound_port: 15001,
            inbound_port: 15006,
            include_outbound_ip_ranges: "*",
            include_inbound_ports: "*",
            ..RawOptions::default()
        }
    }

    fn lines(intercept: &Intercept) -> Vec<String> {
        intercept.rules().lines().map(str::to_owned).collect()
    }

    #[test]
    fn default_rules_are_istios() {
        let rules = Intercept::parse(&raw()).unwrap().rules();
        let want = "\
*nat
:ISTIO_OUTPUT - [0:0]
:ISTIO_INBOUND - [0:0]
:ISTIO_REDIRECT - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A OUTPUT -p tcp -j ISTIO_OUTPUT
COMMIT
";
        assert_eq!(rules, want);
    }

    #[test]
    fn annotations_shape_the_rules() {
        let intercept = Intercept::parse(&RawOptions {
            proxy_uid: 2000,
            proxy_gid: Some(3000),
            include_outbound_ip_ranges: "10.0.0.0/8, 192.168.1.7",
            exclude_outbound_ip_ranges: "10.96.0.1/32,10.1.2.3/16",
            exclude_outbound_ports: "5432,6379",
            include_inbound_ports: "8080,9000,9090",
            exclude_inbound_ports: "9090",
            ..raw()
        })
        .unwrap();
        let rules = lines(&intercept);
        let pos = |rule: &str| {
            rules
                .iter()
                .position(|l| l == rule)
                .unwrap_or_else(|| panic!("missing {rule:?} in {rules:#?}"))
        };
        // Excluded ports come first in ISTIO_OUTPUT, before the owner matches.
        assert!(
            pos("-A ISTIO_OUTPUT -p tcp --dport 5432 -j RETURN")
                < pos("-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN")
        );
        pos("-A ISTIO_OUTPUT -p tcp --dport 6379 -j RETURN");
        pos("-A ISTIO_OUTPUT -m owner --uid-owner 2000 -j RETURN");
        pos("-A ISTIO_OUTPUT -m owner --gid-owner 3000 -j RETURN");
        // Excluded ranges (normalized to their network) return before the included ones.
        assert!(
            pos("-A ISTIO_OUTPUT -d 10.1.0.0/16 -j RETURN")
                < pos("-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT")
        );
        pos("-A ISTIO_OUTPUT -d 10.96.0.1/32 -j RETURN");
        pos("-A ISTIO_OUTPUT -d 192.168.1.7/32 -j ISTIO_REDIRECT");
        assert!(!rules.contains(&"-A ISTIO_OUTPUT -j ISTIO_REDIRECT".to_owned()));
        // Only the included inbound ports, less the excluded one.
        pos("-A ISTIO_INBOUND -p tcp --dport 8080 -j ISTIO_IN_REDIRECT");
        pos("-A ISTIO_INBOUND -p tcp --dport 9000 -j ISTIO_IN_REDIRECT");
        assert!(
            !rules.iter().any(|l| l.contains("--dport 9090")),
            "{rules:#?}"
        );
        assert!(!rules.contains(&"-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT".to_owned()));
    }

    #[test]
    fn excluded_inbound_ports_return_under_star() {
        let intercept = Intercept::parse(&RawOptions {
            exclude_inbound_ports: "22, 15021",
            ..raw()
        })
        .unwrap();
        let rules = lines(&intercept);
        let at = |r: &str| rules.iter().position(|l| l == r).unwrap();
        assert!(
            at("-A ISTIO_INBOUND -p tcp --dport 22 -j RETURN")
                < at("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT")
        );
        // 15021 once, not twice.
        assert_eq!(
            rules.iter().filter(|l| l.contains("--dport 15021")).count(),
            1
        );
    }

    #[test]
    fn no_inbound_capture_and_no_outbound_capture() {
        let intercept = Intercept::parse(&RawOptions {
            include_outbound_ip_ranges: "",
            include_inbound_ports: "",
            ..raw()
        })
        .unwrap();
        let rules = intercept.rules();
        assert!(!rules.contains("-j ISTIO_IN_REDIRECT\n"), "{rules}");
        assert!(
            !rules.contains("-A ISTIO_OUTPUT -j ISTIO_REDIRECT"),
            "{rules}"
        );
        // The chains and jumps are still there, so --remove finds what --apply made.
        assert!(rules.contains("-A OUTPUT -p tcp -j ISTIO_OUTPUT"));
    }

    #[test]
    fn bad_values_name_the_flag_and_item() {
        let err = Intercept::parse(&RawOptions {
            exclude_outbound_ports: "80,http",
            ..raw()
        })
        .unwrap_err();
        assert_eq!(err.flag, "exclude-outbound-ports");
        assert_eq!(err.value, "http");
        let err = Intercept::parse(&RawOptions {
            include_inbound_ports: "0",
            ..raw()
        })
        .unwrap_err();
        assert_eq!(err.flag, "include-inbound-ports");
        let err = Intercept::parse(&RawOptions {
            include_outbound_ip_ranges: "10.0.0.0/33",
            ..raw()
        })
        .unwrap_err();
        assert_eq!(err.flag, "include-outbound-ip-ranges");
        let err = Intercept::parse(&RawOptions {
            exclude_outbound_ip_ranges: "fd00::/8",
            ..raw()
        })
        .unwrap_err();
        assert!(err.reason.contains("IPv6"), "{err}");
        assert_eq!(
            err.to_string(),
            "--exclude-outbound-ip-ranges \"fd00::/8\": IPv6 ranges are not supported (only IPv4 rules are written)"
        );
        let err = Intercept::parse(&RawOptions {
            inbound_port: 0,
            ..raw()
        })
        .unwrap_err();
        assert_eq!(err.flag, "inbound-port");
    }

    #[test]
    fn removal_undoes_every_chain_and_jump() {
        let text = removal_commands();
        let rules = Intercept::parse(&raw()).unwrap().rules();
        for (chain, spec) in JUMPS {
            assert!(rules.contains(&format!("-A {chain} {spec}\n")));
            assert!(text.contains(&format!("-D {chain} {spec}\n")));
        }
        for chain in CHAINS {
            assert!(rules.contains(&format!(":{chain} - [0:0]\n")));
            assert!(text.contains(&format!("-X {chain}\n")));
        }
    }
}
