//! `lvc-ctl filter …`: the global filter's ordered rules and the named
//! prefix sets they refer to (`@name`), and the `CIDR[,CIDR…]` lists that
//! `add-service`/`edit-service` take for a service's client policy.

use crate::{EXIT_IO, EXIT_PROTOCOL, EXIT_USAGE, Show, call, fail};
use clap::{Args, Subcommand};
use lvc_proto::filter::{
    AddrMatch, Cidr, FilterAction, FilterRule, PortRange, check_set_name, cidr_list, parse_proto,
};
use lvc_proto::{RealSpec, Request, Response};
use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Most prefixes sent in one `set-add`/`set-del` request: a large set goes
/// as several requests, each far below `lvc_proto::MAX_REQUEST_BYTES`.
pub const CHUNK_PREFIXES: usize = 20_000;

/// Most bytes of prefixes (as JSON strings) in one request: long IPv6
/// prefixes make a request smaller than `CHUNK_PREFIXES` of them.
pub const CHUNK_BYTES: usize = lvc_proto::MAX_REQUEST_BYTES / 2;

/// `CIDR[,CIDR…]`, at least one, host bits zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CidrList(pub Vec<Cidr>);

/// Parses `CIDR[,CIDR…]` (clap value parser).
pub fn cidrs(s: &str) -> Result<CidrList, String> {
    let l = cidr_list(s)?;
    if l.is_empty() {
        return Err("give at least one CIDR (e.g. 10.0.0.0/8)".into());
    }
    Ok(CidrList(l))
}

/// Every prefix of repeated `CIDR[,CIDR…]` options, in order.
pub fn flatten(lists: Vec<CidrList>) -> Vec<Cidr> {
    lists.into_iter().flat_map(|l| l.0).collect()
}

fn set_name(s: &str) -> Result<String, String> {
    check_set_name(s)?;
    Ok(s.to_owned())
}

/// `lvc-ctl filter …`.
#[derive(Subcommand, Debug)]
pub enum FilterCmd {
    /// Add a rule (its --prio must be free).
    ///
    /// A packet is matched against the rules in prio order, lowest first,
    /// and the first rule that matches decides: drop discards it, accept
    /// ends the filter for it (the service's --allow/--deny lists and
    /// --conn-rate still apply). A rule matches when every option given
    /// matches; an option left out matches everything. At most 64 rules.
    ///
    /// Rules on header fields (--src, --dst, --proto, --dport, --iface)
    /// are evaluated in the XDP program: a drop costs about what an XDP
    /// drop costs. A rule with --real is evaluated when a connection is
    /// scheduled (the real server chosen is what it matches), and adding a
    /// drop rule with --real ends the established connections it matches.
    /// ICMP and ICMPv6 packets to a VIP meet only the rules that name their
    /// protocol (--proto icmp|icmpv6), so a source rule never breaks
    /// neighbour discovery or path MTU errors; a later fragment, which
    /// carries no port, meets port rules as its first fragment did.
    Add {
        /// The rule's place: lower prios are looked at first; also its name
        /// for `filter del`.
        #[arg(long, value_name = "N")]
        prio: u32,
        /// What a matching packet gets: drop, or accept (no later rule is
        /// looked at).
        #[arg(long, value_name = "drop|accept")]
        action: FilterAction,
        /// Client addresses: CIDR[,CIDR…], or @SET for a named set.
        #[arg(long, value_name = "CIDR[,CIDR…]|@SET")]
        src: Option<AddrMatch>,
        /// VIPs: CIDR[,CIDR…], or @SET for a named set.
        #[arg(long, value_name = "CIDR[,CIDR…]|@SET")]
        dst: Option<AddrMatch>,
        /// IP protocol: tcp, udp, icmp, icmpv6 or a number 0..=255.
        #[arg(long, value_name = "PROTO", value_parser = parse_proto)]
        proto: Option<u8>,
        /// VIP port or range, 80 or 1024-2047 (needs --proto tcp or udp).
        #[arg(long, value_name = "PORT[-PORT]")]
        dport: Option<PortRange>,
        /// Interface the packet arrived on.
        #[arg(long, value_name = "IF")]
        iface: Option<String>,
        /// Real server the connection is scheduled to, RIP[:PORT] (matched
        /// when the connection is made; a drop rule ends the established
        /// connections to it).
        #[arg(long, value_name = "RIP[:PORT]")]
        real: Option<RealSpec>,
    },
    /// Delete the rule with this prio.
    Del {
        #[arg(long, value_name = "N")]
        prio: u32,
    },
    /// Delete every rule (the sets stay).
    Flush,
    /// List the rules in prio order, then the sets.
    ///
    /// Long address lists are shortened to their first prefixes and
    /// "(+N more)"; --json prints everything.
    List {
        /// Show the packets and bytes each rule matched.
        #[arg(long)]
        stats: bool,
        /// Numbers in full (not 123K).
        #[arg(long, short = 'X')]
        exact: bool,
        /// Machine-readable output (every prefix of every rule).
        #[arg(long)]
        json: bool,
    },
    /// Named prefix sets that rules use as --src @NAME or --dst @NAME.
    Set {
        #[command(subcommand)]
        cmd: SetCmd,
    },
}

/// `lvc-ctl filter set …`.
#[derive(Subcommand, Debug)]
pub enum SetCmd {
    /// Add prefixes to a set, creating it (with none given: an empty set).
    ///
    /// Prefixes come from the command line and/or --file. Large inputs
    /// are sent as several requests of at most 20000 prefixes each; should
    /// one fail, the prefixes of the requests before it stay added.
    Add(SetArgs),
    /// Remove prefixes from a set.
    Del(SetArgs),
    /// Remove a set (no rule may use it).
    Destroy {
        #[arg(value_name = "NAME", value_parser = set_name)]
        name: String,
    },
}

/// A set and the prefixes to add or remove.
#[derive(Args, Debug)]
pub struct SetArgs {
    /// The set: 1 to 64 letters, digits, `-`, `_` or `.`.
    #[arg(value_name = "NAME", value_parser = set_name)]
    name: String,
    /// Prefixes, CIDR or CIDR,CIDR…
    #[arg(value_name = "CIDR", value_parser = cidrs)]
    prefixes: Vec<CidrList>,
    /// Read prefixes from a file (`-`: standard input): one CIDR per line;
    /// blank lines and `#` comments are ignored.
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
}

/// The request of a `filter` command other than `filter set …` (see
/// [`set_plan`]), and how to show its answer.
pub fn request(cmd: FilterCmd) -> Result<(Request, Show), String> {
    Ok(match cmd {
        FilterCmd::Add {
            prio,
            action,
            src,
            dst,
            proto,
            dport,
            iface,
            real,
        } => {
            let rule = FilterRule {
                prio,
                action,
                src,
                dst,
                proto,
                dport,
                iface,
                real,
            };
            rule.validate()?;
            (Request::FilterAdd { rule }, Show::Nothing)
        }
        FilterCmd::Del { prio } => (Request::FilterDel { prio }, Show::Nothing),
        FilterCmd::Flush => (Request::FilterFlush {}, Show::Nothing),
        FilterCmd::List { stats, exact, json } => {
            (Request::FilterList {}, Show::Filter { stats, exact, json })
        }
        FilterCmd::Set { .. } => {
            return Err("filter set: not one request to the daemon".into());
        }
    })
}

/// The requests a `filter set …` command makes, in order, and what to
/// print once all succeeded.
#[derive(Debug)]
pub struct SetPlan {
    pub requests: Vec<Request>,
    pub done: Option<String>,
}

/// The requests of `filter set …`; `stdin` is read for `--file -`. An
/// error carries its exit code.
pub fn set_plan(cmd: SetCmd, stdin: &mut dyn Read) -> Result<SetPlan, (u8, String)> {
    let (args, add) = match cmd {
        SetCmd::Destroy { name } => {
            return Ok(SetPlan {
                requests: vec![Request::SetDestroy { name }],
                done: None,
            });
        }
        SetCmd::Add(args) => (args, true),
        SetCmd::Del(args) => (args, false),
    };
    if !add && args.prefixes.is_empty() && args.file.is_none() {
        return Err((
            EXIT_USAGE,
            format!(
                "filter set del {}: give the prefixes to remove (CIDR… or --file); \
                 `filter set destroy {}` removes the set",
                args.name, args.name
            ),
        ));
    }
    let mut prefixes = flatten(args.prefixes);
    if let Some(path) = &args.file {
        let (source, text) = if path.as_os_str() == "-" {
            let mut s = String::new();
            stdin
                .read_to_string(&mut s)
                .map_err(|e| (EXIT_IO, format!("cannot read standard input: {e}")))?;
            ("standard input".to_owned(), s)
        } else {
            let s = std::fs::read_to_string(path)
                .map_err(|e| (EXIT_IO, format!("cannot read {}: {e}", path.display())))?;
            (path.display().to_string(), s)
        };
        prefixes.extend(parse_prefix_file(&source, &text).map_err(|e| (EXIT_USAGE, e))?);
    }
    let given = prefixes.len();
    let mut seen = HashSet::with_capacity(given);
    prefixes.retain(|c| seen.insert(*c));
    let unique = prefixes.len();
    let requests = chunk(&args.name, prefixes, add);
    let mut done = format!(
        "{} {unique} prefix{} {} set {}",
        if add { "added" } else { "removed" },
        if unique == 1 { "" } else { "es" },
        if add { "to" } else { "from" },
        args.name
    );
    let mut notes = Vec::new();
    if requests.len() > 1 {
        notes.push(format!("{} requests", requests.len()));
    }
    if given > unique {
        notes.push(format!("{} duplicates left out", given - unique));
    }
    if !notes.is_empty() {
        done = format!("{done} ({})", notes.join(", "));
    }
    Ok(SetPlan {
        requests,
        done: Some(done),
    })
}

/// The prefixes of a file's text: one CIDR per line, blank lines and `#`
/// comments ignored; an error names `source` and the line.
pub fn parse_prefix_file(source: &str, text: &str) -> Result<Vec<Cidr>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.split('#').next().unwrap_or_default().trim();
        if l.is_empty() {
            continue;
        }
        match l.parse::<Cidr>() {
            Ok(c) => out.push(c),
            // The parser's messages mostly start by quoting the text.
            Err(e) if e.starts_with(&format!("`{l}`")) => {
                return Err(format!("{source} line {}: {e}", i + 1));
            }
            Err(e) => return Err(format!("{source} line {}: `{l}`: {e}", i + 1)),
        }
    }
    Ok(out)
}

/// `set-add` (or `set-del`) requests for `prefixes`, each with at most
/// [`CHUNK_PREFIXES`] of them and [`CHUNK_BYTES`] of their text; one
/// request (which creates the set) when there are none.
pub fn chunk(name: &str, prefixes: Vec<Cidr>, add: bool) -> Vec<Request> {
    let make = |prefixes: Vec<Cidr>| {
        let name = name.to_owned();
        if add {
            Request::SetAdd { name, prefixes }
        } else {
            Request::SetDel { name, prefixes }
        }
    };
    let mut out = Vec::new();
    let mut cur: Vec<Cidr> = Vec::new();
    let mut bytes = 0;
    for c in prefixes {
        // `"10.0.0.0/8",`: the text, its quotes and a comma.
        let len = c.to_string().len() + 3;
        if cur.len() == CHUNK_PREFIXES || bytes + len > CHUNK_BYTES {
            out.push(make(std::mem::take(&mut cur)));
            bytes = 0;
        }
        cur.push(c);
        bytes += len;
    }
    if !cur.is_empty() || out.is_empty() {
        out.push(make(cur));
    }
    out
}

/// `filter set …`: reads the prefixes, sends the requests in order and
/// stops at the first error, saying how much was done before it.
pub fn run_set(socket: &Path, cmd: SetCmd) -> ExitCode {
    let plan = match set_plan(cmd, &mut std::io::stdin().lock()) {
        Ok(p) => p,
        Err((code, msg)) => return fail(code, msg),
    };
    let total = plan.requests.len();
    let mut applied = 0;
    for (i, req) in plan.requests.iter().enumerate() {
        let (prefixes, verb) = match req {
            Request::SetAdd { prefixes, .. } => (prefixes.len(), "added"),
            Request::SetDel { prefixes, .. } => (prefixes.len(), "removed"),
            _ => (0, ""),
        };
        let partial = |msg: String| {
            if i == 0 {
                msg
            } else {
                format!(
                    "{msg} (request {} of {total}; the {applied} prefixes of the requests \
                     before it were {verb})",
                    i + 1
                )
            }
        };
        match call(socket, req) {
            Ok(r) => match r.result {
                Response::Ok => applied += prefixes,
                Response::Error(e) => return fail(e.code.exit_code() as u8, partial(e.message)),
                other => {
                    return fail(
                        EXIT_PROTOCOL,
                        partial(format!("unexpected answer from lvc-dataplane: {other:?}")),
                    );
                }
            },
            Err((code, msg)) => return fail(code, partial(msg)),
        }
    }
    if let Some(done) = plan.done {
        println!("{done}");
    }
    ExitCode::SUCCESS
}
