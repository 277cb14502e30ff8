//! Every lab scenario (`lab/scenario NAME`) as a test: the scenario runs
//! end to end with this build's ftpgate and ftpgate-ladder, must exit 0
//! (its own checks held), and then the test checks the outcome again from
//! the artefacts alone: checksums against the source's sum, the addresses
//! the server logged, the sockets the ladder says handled each connection,
//! that the diagram (text and SVG) names them, and ftpgate's audit records.
//!
//! One scenario at a time (a lock): each builds its own namespaces, and the
//! machine has two cores. Each run is bounded (timeout(1)). Needs root.

mod common;

use common::scenario_run::{ladder_bin, Run};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;

static ONE_LAB: Mutex<()> = Mutex::new(());

/// Runs `lab/scenario NAME` with a time bound; its artefacts stay in
/// /tmp/ftpgate-lab/test-scenario-NAME when it fails.
fn scenario(name: &'static str, secs: u64) -> Run {
    common::require_root();
    let ladder = ladder_bin();
    let _one = ONE_LAB.lock().unwrap_or_else(|p| p.into_inner());
    let out = PathBuf::from(format!("/tmp/ftpgate-lab/test-scenario-{name}"));
    let _ = std::fs::remove_dir_all(&out);
    let script = common::repo_root().join("lab/scenario");
    let res = Command::new("timeout")
        .args(["-k", "10", &secs.to_string()])
        .arg(&script)
        .args(["--out", &out.to_string_lossy(), name])
        .env("FTPGATE_BIN", common::gateway_bin())
        .env("FTPGATE_LADDER", &ladder)
        .output()
        .expect("run lab/scenario");
    let stdout = format!("{}{}", common::text(&res.stdout), common::text(&res.stderr));
    assert!(res.status.success(), "lab/scenario {name} failed ({}):\n{stdout}", res.status);
    Run { name, out, stdout }
}

fn done(run: Run) {
    let _ = std::fs::remove_dir_all(&run.out);
}

const CLIENT: &str = "192.0.2.10";

#[test]
fn passive_v4() {
    let r = scenario("passive-v4", 90);
    r.assert_same("got.bin", "scen.bin");
    r.assert_same("server-got.bin", "scen.bin");
    assert_eq!(r.server_saw(), [CLIENT]);
    assert_eq!(r.count("ladder.json", "tproxy-redirect"), 1);
    assert_eq!(r.count("ladder.json", "foreign-listener"), 2);
    assert_eq!(r.count("ladder.json", "foreign-connect"), 3);
    // every server-side connection leaves from the client's address
    for c in r.conns("ladder.json").iter().filter(|c| c["leg"] == "server side") {
        assert!(c["initiator"].as_str().unwrap().starts_with("192.0.2.10:"), "{c}");
        assert_eq!(c["opened_by_gateway"], true, "{c}");
    }
    assert_eq!(r.records("ftpgate.json", "transfer", &[("mode", "passive"), ("result", "ok")]), 2);
    r.assert_diagram_names(
        "ladder",
        &["TPROXY", "foreign listener", "foreign connect", "PASV", "227 Entering"],
    );
    done(r);
}

#[test]
fn active_v4() {
    let r = scenario("active-v4", 90);
    r.assert_same("got.bin", "scen.bin");
    r.assert_same("server-got.bin", "scen.bin");
    assert_eq!(r.server_saw(), [CLIENT]);
    let conns = r.conns("ladder.json");
    // the server's data connections meet listeners wearing the client's
    // address; ftpgate's connections to the client come from port 20
    let listeners: Vec<_> = conns.iter().filter(|c| c["socket"] == "foreign-listener").collect();
    assert_eq!(listeners.len(), 2);
    for c in &listeners {
        assert_eq!(c["leg"], "server side", "{c}");
        assert_eq!(c["initiator"], "198.51.100.10:20", "{c}");
        assert!(c["responder"].as_str().unwrap().starts_with("192.0.2.10:"), "{c}");
    }
    let to_client =
        conns.iter().filter(|c| c["socket"] == "foreign-connect" && c["leg"] == "client side").count();
    assert_eq!(to_client, 2);
    assert_eq!(r.records("ftpgate.json", "transfer", &[("mode", "active"), ("result", "ok")]), 2);
    r.assert_diagram_names("ladder", &["TPROXY", "foreign listener", "foreign connect", "PORT 192,0,2,10"]);
    done(r);
}

const CLIENT6: &str = "2001:db8:1::10";

#[test]
fn passive_v6() {
    let r = scenario("passive-v6", 90);
    r.assert_same("got.bin", "scen.bin");
    r.assert_same("server-got.bin", "scen.bin");
    assert_eq!(r.server_saw(), [CLIENT6]);
    let conns = r.conns("ladder.json");
    assert_eq!(conns.len(), 6, "control and two transfers, two legs each");
    assert_eq!(r.count("ladder.json", "tproxy-redirect"), 1);
    for c in conns.iter().filter(|c| c["socket"] == "foreign-listener") {
        assert_eq!(c["leg"], "client side", "{c}");
        assert!(c["responder"].as_str().unwrap().starts_with("[2001:db8:2::10]:"), "{c}");
    }
    assert_eq!(r.count("ladder.json", "foreign-listener"), 2);
    // every server-side connection leaves from the client's IPv6 address
    let server_side: Vec<_> = conns.iter().filter(|c| c["leg"] == "server side").collect();
    assert_eq!(server_side.len(), 3);
    for c in server_side {
        assert!(c["initiator"].as_str().unwrap().starts_with("[2001:db8:1::10]:"), "{c}");
        assert_eq!(c["socket"], "foreign-connect", "{c}");
    }
    assert_eq!(r.records("ftpgate.json", "transfer", &[("mode", "passive"), ("result", "ok")]), 2);
    // ftpgate's audit trail names the IPv6 endpoints of the session
    let starts: Vec<Value> = r
        .text("ftpgate.json")
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["msg"] == "session start")
        .collect();
    assert_eq!(starts.len(), 1, "{starts:?}");
    assert!(starts[0]["client"].as_str().unwrap().starts_with("[2001:db8:1::10]:"), "{}", starts[0]);
    assert_eq!(starts[0]["server"], "[2001:db8:2::10]:21");
    r.assert_diagram_names(
        "ladder",
        &["TPROXY", "foreign listener", "foreign connect", "EPSV", "229 Entering", "[2001:db8:1::10]:"],
    );
    done(r);
}

#[test]
fn active_v6() {
    let r = scenario("active-v6", 90);
    r.assert_same("got.bin", "scen.bin");
    r.assert_same("server-got.bin", "scen.bin");
    assert_eq!(r.server_saw(), [CLIENT6]);
    // the client's data connections came from the server's port 20
    let got = r.json("client.json");
    let transfers = got["transfers"].as_array().expect("transfers");
    assert_eq!(transfers.len(), 2, "{got}");
    for t in transfers {
        assert_eq!(t["peer"], serde_json::json!(["2001:db8:2::10", 20]), "{t}");
    }
    let conns = r.conns("ladder.json");
    assert_eq!(conns.len(), 6, "control and two transfers, two legs each");
    // the server's data connections meet listeners wearing the client's
    // IPv6 address; ftpgate's connections on to the client leave from
    // [2001:db8:2::10]:20
    let listeners: Vec<_> = conns.iter().filter(|c| c["socket"] == "foreign-listener").collect();
    assert_eq!(listeners.len(), 2);
    for c in &listeners {
        assert_eq!(c["leg"], "server side", "{c}");
        assert_eq!(c["initiator"], "[2001:db8:2::10]:20", "{c}");
        assert!(c["responder"].as_str().unwrap().starts_with("[2001:db8:1::10]:"), "{c}");
    }
    let to_client: Vec<_> =
        conns.iter().filter(|c| c["socket"] == "foreign-connect" && c["leg"] == "client side").collect();
    assert_eq!(to_client.len(), 2);
    for c in &to_client {
        assert_eq!(c["initiator"], "[2001:db8:2::10]:20", "{c}");
    }
    assert_eq!(r.records("ftpgate.json", "transfer", &[("mode", "active"), ("result", "ok")]), 2);
    r.assert_diagram_names(
        "ladder",
        &["TPROXY", "foreign listener", "foreign connect", "EPRT |2|2001:db8:1::10|"],
    );
    done(r);
}

#[test]
fn epsv() {
    let r = scenario("epsv", 90);
    r.assert_same("got.bin", "scen.bin");
    r.assert_same("server-got.bin", "scen.bin");
    assert_eq!(r.server_saw(), [CLIENT]);
    assert_eq!(r.count("ladder.json", "tproxy-redirect"), 2);
    assert_eq!(r.count("ladder.json", "foreign-listener"), 2);
    r.assert_diagram_names("ladder", &["EPSV", "229 ", "foreign listener"]);
    done(r);
}

#[test]
fn bounce() {
    let r = scenario("bounce", 90);
    let got = r.json("client.json");
    assert!(got["port_third_host"].as_str().unwrap().starts_with("501"), "{got}");
    assert!(got["noop_after"].as_str().unwrap().starts_with("200"), "{got}");
    // Five refused lines in a row, then a NOOP: one record for the run,
    // named by its first line's rule.
    let run = [("rule", "bounce"), ("attack", "1"), ("count", "5")];
    assert_eq!(r.records("ftpgate.json", "refused lines", &run), 1);
    assert_eq!(r.records("ftpgate.json", "refused", &[]), 0);
    assert!(!r.text("vsftpd.log").contains("\"PORT 203"), "the server saw the bounce");
    assert!(r.conns("ladder.json").iter().all(|c| c["role"] == "control"));
    r.assert_diagram_names("ladder", &["PORT 203,0,113,5,200,10", "rule bounce"]);
    done(r);
}

#[test]
fn port_theft() {
    let r = scenario("port-theft", 90);
    let got = r.json("client.json");
    assert_eq!(got["thief_closed"], true, "{got}");
    assert!(got["retr_final"].as_str().unwrap().starts_with("226"), "{got}");
    // one refusal, of the thief, by a listener that expected the client,
    // named by its rule as docs/audit.md says
    let refused: Vec<Value> = r
        .text("ftpgate.json")
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["msg"] == "data peer refused")
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0]["peer"].as_str().unwrap().starts_with("192.0.2.20:"), "{}", refused[0]);
    assert_eq!(refused[0]["expected"], CLIENT);
    assert_eq!((&refused[0]["rule"], &refused[0]["attack"]), (&Value::from("port-theft"), &Value::from("5")));
    let thief = r
        .conns("ladder.json")
        .into_iter()
        .find(|c| c["initiator"].as_str().unwrap().starts_with("192.0.2.20:"))
        .expect("the thief's connection in the ladder");
    assert_eq!(thief["socket"], "foreign-listener");
    assert_eq!(thief["bytes_to_initiator"], 0, "the thief got bytes: {thief}");
    assert_eq!(r.server_saw(), [CLIENT]);
    r.assert_diagram_names("ladder", &["port theft", "192.0.2.20"]);
    done(r);
}

#[test]
fn hostile_227() {
    let r = scenario("hostile-227", 90);
    let got = r.json("client.json");
    assert!(!got["pasv_hijack"].as_str().unwrap().contains("203,0,113,5"), "{got}");
    assert!(got["told_address"].as_str().unwrap().starts_with("198.51.100.10:"), "{got}");
    assert_eq!(got["bytes"], 100_000);
    assert_eq!(r.records("ftpgate.json", "refused", &[("rule", "privileged-port"), ("attack", "6")]), 1);
    assert_eq!(r.records("ftpgate.json", "data address rewritten", &[]), 1);
    assert!(r
        .conns("ladder.json")
        .iter()
        .all(|c| !c["responder"].as_str().unwrap().starts_with("203.0.113.")));
    r.assert_diagram_names("ladder", &["(203,0,113,5,0,22)", "rule privileged-port", "rewrote"]);
    done(r);
}

#[test]
fn kernel_helper() {
    let r = scenario("kernel-helper", 120);
    for phase in ["ftpgate", "kernel"] {
        for mode in ["passive", "active"] {
            r.assert_same(&format!("{phase}-{mode}.bin"), "scen.bin");
            r.assert_same(&format!("uploaded-{phase}-{mode}.bin"), "scen.bin");
        }
    }
    assert_eq!(r.server_saw(), [CLIENT]);
    // the kernel forwards: every connection keeps its ISN, none ends at a socket
    assert_eq!(r.count("ladder.json", "kernel-forwarded"), 6);
    assert_eq!(r.conns("ladder.json").len(), 6);
    // ftpgate terminates: nothing forwarded, two legs per connection
    assert_eq!(r.count("ladder-ftpgate.json", "kernel-forwarded"), 0);
    assert_eq!(r.conns("ladder-ftpgate.json").len(), 12);
    let cmp = r.text("comparison.txt");
    assert!(cmp.contains("12 of 12") && cmp.contains("0 of 6"), "{cmp}");
    r.assert_diagram_names("ladder", &["forwarded", "nf_conntrack_ftp"]);
    r.assert_diagram_names("ladder-ftpgate", &["TPROXY", "foreign listener"]);
    done(r);
}

#[test]
fn router_firewall() {
    let r = scenario("router-firewall", 120);
    for mode in ["passive", "active"] {
        r.assert_same(&format!("{mode}.bin"), "scen.bin");
        r.assert_same(&format!("server-{mode}.bin"), "scen.bin");
    }
    assert_eq!(r.server_saw(), [CLIENT]);
    assert!(r.stdout.contains("INVALID packets dropped by the router's rules: 0"), "{}", r.stdout);
    // active mode: the server's connection and ftpgate's on to the client,
    // both from port 20, never on one tuple within a data channel (a later
    // channel's listener may get the port an earlier channel's client had)
    let conns = r.conns("ladder.json");
    let leg = |leg: &str, data: u64| -> Vec<String> {
        conns
            .iter()
            .filter(|c| c["leg"] == leg && c["initiator"].as_str().is_some_and(|i| i.ends_with(":20")))
            .filter(|c| c["data"].as_u64() == Some(data))
            .map(|c| c["responder"].as_str().unwrap().to_string())
            .collect()
    };
    for data in [0, 1] {
        let (server_side, client_side) = (leg("server side", data), leg("client side", data));
        assert_eq!(
            (server_side.len(), client_side.len()),
            (1, 1),
            "data {data}: {server_side:?} {client_side:?}"
        );
        assert_ne!(server_side, client_side, "data {data}");
    }
    assert_eq!(r.records("ftpgate.json", "transfer", &[("result", "ok")]), 4);
    done(r);
}

#[test]
fn path_mtu() {
    let r = scenario("path-mtu", 120);
    for got in ["v4-passive.bin", "v4-active.bin", "v6-passive.bin", "v6-active.bin", "again.bin"] {
        r.assert_same(got, "big.bin");
    }
    assert_eq!(r.server_saw(), ["192.0.2.77", "2001:db8:1::77"]);
    for v in ["v4", "v6"] {
        let route = r.text(&format!("route-cache-{v}.txt"));
        assert!(route.contains("mtu 1280"), "the gateway learned no path MTU ({v}): {route}");
    }
    let icmp = r.text("icmp.txt");
    assert!(icmp.contains("need to frag (mtu 1280)") && icmp.contains("packet too big, mtu 1280"), "{icmp}");
    // without the ICMP divert: nothing within curl's 10 s
    let blackhole = r.text("blackhole.bin.curl");
    assert!(blackhole.contains("exit 28") && blackhole.contains(" 0 out of "), "{blackhole}");
    assert_eq!(r.records("ftpgate.json", "transfer", &[("result", "ok")]), 5);
    done(r);
}

#[test]
fn routed_neighbours() {
    let r = scenario("routed-neighbours", 120);
    for i in 1..=4 {
        r.assert_same(&format!("active{i}.bin"), "scen.bin");
    }
    assert_eq!(r.server_saw(), [CLIENT]);
    // every active listener sat on a routed flow's port, and no flow broke
    let flows: Value = serde_json::from_str(r.text("flows.json").trim()).unwrap();
    assert_eq!(flows["broken"], serde_json::json!({}), "{flows}");
    assert!(flows["rounds"].as_u64().unwrap() > 100, "{flows}");
    let log = r.text("ftpgate.json");
    let ports: Vec<String> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["msg"] == "transfer")
        .map(|v| v["server_data_local"].as_str().unwrap().rsplit(':').next().unwrap().to_string())
        .collect();
    assert_eq!(ports.len(), 4, "{ports:?}");
    assert!(ports.iter().all(|p| ["40000", "40001", "40002", "40003"].contains(&p.as_str())), "{ports:?}");
    // the routed connection to port 2121 reached the echo, not ftpgate
    let to_2121: Value = serde_json::from_str(r.text("flows2121.json").trim()).unwrap();
    assert_eq!(to_2121["broken"], serde_json::json!({}), "{to_2121}");
    assert!(!log.contains("not redirected by TPROXY"), "ftpgate took the connection to port 2121");
    // the ICMP refusal: a reset, at once, and ftpgate's record of it
    let refused: Value = serde_json::from_str(r.text("refused.json").trim()).unwrap();
    assert_eq!(refused["reset"], true, "{refused}");
    assert!(refused["seconds"].as_f64().unwrap() < 3.0, "{refused}");
    assert!(log.contains("server refused the connection"), "no record of the refusal");
    // conntrack: the routed flows carry the forward mark
    let ct = r.text("conntrack.txt");
    assert!(ct.lines().any(|l| l.contains("dport=9999 ") && l.contains(" mark=2 ")), "{ct}");
    done(r);
}

#[test]
fn scale_out() {
    let r = scenario("scale-out", 150);
    r.assert_same("low.bin", "small.bin");
    r.assert_same("high.bin", "small.bin");
    // the design: each half's session entirely on its own gateway
    let conns = r.conns("ladder.json");
    assert_eq!(conns.len(), 8, "two sessions of four connections each");
    for c in &conns {
        let low =
            [&c["initiator"], &c["responder"]].iter().any(|a| a.as_str().unwrap().starts_with("192.0.2.10:"));
        let gw = c["gateway"].as_str().unwrap();
        assert!(gw.starts_with(if low { "g1" } else { "g2" }), "{c}");
    }
    let saw = r.server_saw();
    assert!(saw.contains(&"192.0.2.10".to_owned()) && saw.contains(&"192.0.2.138".to_owned()), "{saw:?}");
    // both gateways carried transfers
    assert!(r.records("ftpgate-g1.json", "transfer", &[("result", "ok")]) >= 5);
    assert!(r.records("ftpgate-g2.json", "transfer", &[("result", "ok")]) >= 5);
    // naive ECMP: something landed where no socket was
    let broken = r
        .conns("ladder-ecmp.json")
        .iter()
        .filter(|c| c["socket"] == "no-socket" || c["socket"] == "stray")
        .count();
    assert!(broken >= 1);
    let m = r.text("measurements.txt");
    assert!(m.contains("one gateway") && m.contains("two gateways"), "{m}");
    r.assert_diagram_names("ladder", &["g1 (ftpgate)", "g2 (ftpgate)", "TPROXY"]);
    r.assert_diagram_names("ladder-ecmp", &["no socket on"]);
    done(r);
}

#[test]
fn failover() {
    let r = scenario("failover", 150);
    // a new session after the failure worked through the standby
    r.assert_same("after.bin", "small.bin");
    assert!(r.records("ftpgate-g2.json", "transfer", &[("result", "ok")]) >= 1);
    let secs: f64 = r.text("failover-seconds.txt").trim().parse().expect("seconds");
    assert!(secs <= 10.0, "the standby took {secs} s");
    // the running one was lost: short of the whole file
    let running = std::fs::metadata(r.path("running.bin")).map_or(0, |m| m.len());
    assert!(running < 32 * 1024 * 1024, "the running download completed ({running} bytes)");
    assert_eq!(r.server_saw(), [CLIENT]);
    let conns = r.conns("ladder.json");
    // g1 held the first session's sockets; g2 had none for it afterwards,
    // and intercepted the new session itself
    assert!(conns.iter().any(|c| c["gateway"] == "g1 (ftpgate)" && c["socket"] == "tproxy-redirect"));
    assert!(conns.iter().any(|c| c["gateway"] == "g2 (ftpgate)" && c["socket"] == "tproxy-redirect"));
    assert!(conns
        .iter()
        .any(|c| c["gateway"] == "g2 (ftpgate)" && (c["socket"] == "stray" || c["socket"] == "no-socket")));
    r.assert_diagram_names("ladder", &["g1 (ftpgate)", "g2 (ftpgate)", "no socket"]);
    done(r);
}

/// Ctrl-C in the middle of a scenario (SIGINT to its process group, as a
/// terminal sends it): the scenario exits and removes every namespace it
/// made and stops every process it started.
#[test]
fn interrupted_scenario_tears_down() {
    use std::os::unix::process::CommandExt;
    use std::time::{Duration, Instant};
    common::require_root();
    let ladder = ladder_bin();
    let _one = ONE_LAB.lock().unwrap_or_else(|p| p.into_inner());
    let out = PathBuf::from("/tmp/ftpgate-lab/test-scenario-interrupted");
    let _ = std::fs::remove_dir_all(&out);
    let mut child = Command::new(common::repo_root().join("lab/scenario"))
        .args(["--out", &out.to_string_lossy(), "failover"])
        .env("FTPGATE_BIN", common::gateway_bin())
        .env("FTPGATE_LADDER", &ladder)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start lab/scenario");
    let lab = format!("sc{}", child.id());
    // wait (bounded) until the lab's namespaces exist and keepalived runs
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !Path::new(&format!("/run/netns/{lab}-g2")).exists() {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    let namespaces = || -> Vec<String> {
        std::fs::read_dir("/run/netns")
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&format!("{lab}-")))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(namespaces().len() >= 6, "the scenario did not build its lab: {:?}", namespaces());
    let pidfiles: Vec<String> = std::fs::read_dir(format!("/tmp/ftpgate-lab/{lab}"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let pids: Vec<u32> = pidfiles
        .iter()
        .filter(|p| p.ends_with(".pid"))
        .filter_map(|p| std::fs::read_to_string(p).ok()?.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(pids.len() >= 4, "pidfiles: {pidfiles:?}");
    let st = Command::new("kill").args(["-INT", "--", &format!("-{}", child.id())]).status().unwrap();
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let status = status.expect("lab/scenario still ran 40 s after SIGINT");
    assert!(!status.success(), "an interrupted scenario must not report success");
    assert_eq!(namespaces(), Vec::<String>::new(), "namespaces left behind");
    assert!(!Path::new(&format!("/tmp/ftpgate-lab/{lab}")).exists(), "run directory left behind");
    for pid in pids {
        // (a zombie has exited: whoever was its parent reaps it)
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let running =
            !state.is_empty() && state.rsplit(") ").next().is_some_and(|rest| !rest.starts_with('Z'));
        let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(!running, "process {pid} still runs: {state} {cmd:?}");
    }
    let _ = std::fs::remove_dir_all(&out);
}
