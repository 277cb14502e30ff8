//! ftpgate-ladder: a ladder diagram of FTP sessions through one or more
//! gateways, from tcpdump captures of each gateway's two interfaces and the
//! gateway's `--log-format json` log. Writes an SVG picture, a text version
//! for the terminal and a JSON form for tests (lab/scenario calls it).
//!
//! ```text
//! ftpgate-ladder --gateway ftpgate,gw-c.pcap,02:..:01,gw-s.pcap,02:..:02,ftpgate.json \
//!     --svg ladder.svg --text ladder.txt --json ladder.json --title "passive-v4"
//! ```

use ftpgate_ladder::{capture, gatelog, model, render};

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(name = "ftpgate-ladder", about = "Ladder diagram of FTP sessions from the lab's captures")]
struct Args {
    /// NAME,CLIENT_PCAP,CLIENT_MAC,SERVER_PCAP,SERVER_MAC[,JSON_LOG]: one
    /// gateway lifeline; the MACs are those of the gateway's own interfaces
    /// the captures ran on. Repeat for more gateways, left to right.
    #[arg(long = "gateway", required = true)]
    gateways: Vec<String>,
    #[arg(long, default_value = "FTP session")]
    title: String,
    /// A line of explanation under the title (repeatable).
    #[arg(long = "caption")]
    captions: Vec<String>,
    #[arg(long, default_value = "client side")]
    client_label: String,
    #[arg(long, default_value = "server side")]
    server_label: String,
    #[arg(long, default_value_t = 21)]
    control_port: u16,
    /// ftpgate's listener port (the TPROXY rule's target).
    #[arg(long, default_value_t = 2121)]
    tproxy_port: u16,
    #[arg(long)]
    svg: Option<PathBuf>,
    #[arg(long)]
    text: Option<PathBuf>,
    #[arg(long)]
    json: Option<PathBuf>,
}

fn gateway(spec: &str) -> Result<model::GatewayInput, String> {
    let parts: Vec<&str> = spec.split(',').collect();
    if !(5..=6).contains(&parts.len()) {
        return Err(format!(
            "--gateway {spec:?}: want NAME,CLIENT_PCAP,CLIENT_MAC,SERVER_PCAP,SERVER_MAC[,JSON_LOG]"
        ));
    }
    let mac =
        |s: &str| capture::parse_mac(s).ok_or_else(|| format!("--gateway {spec:?}: {s:?} is not a MAC"));
    let read =
        |p: &str, m: [u8; 6]| capture::read_segments(p.as_ref(), m).map_err(|e| format!("capture {p}: {e}"));
    let log = match parts.get(5) {
        Some(p) => gatelog::read(p.as_ref()).map_err(|e| format!("gateway log {p}: {e}"))?,
        None => Vec::new(),
    };
    Ok(model::GatewayInput {
        name: parts[0].to_owned(),
        client_side: read(parts[1], mac(parts[2])?)?,
        server_side: read(parts[3], mac(parts[4])?)?,
        log,
    })
}

fn run(args: Args) -> Result<(), String> {
    let gateways = args.gateways.iter().map(|g| gateway(g)).collect::<Result<Vec<_>, _>>()?;
    let opts = model::Options {
        control_port: args.control_port,
        tproxy_port: args.tproxy_port,
        client_label: args.client_label,
        server_label: args.server_label,
        title: args.title,
    };
    let ladder = model::build(gateways, &opts);
    let text = render::text(&ladder, &args.captions);
    let write =
        |p: &PathBuf, body: &str| std::fs::write(p, body).map_err(|e| format!("{}: {e}", p.display()));
    match &args.text {
        Some(p) => write(p, &text)?,
        None => print!("{text}"),
    }
    if let Some(p) = &args.svg {
        write(p, &render::svg(&ladder, &args.captions))?;
    }
    if let Some(p) = &args.json {
        let body = serde_json::to_string_pretty(&render::json(&ladder)).map_err(|e| e.to_string())?;
        write(p, &body)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ftpgate-ladder: {e}");
            ExitCode::FAILURE
        }
    }
}
