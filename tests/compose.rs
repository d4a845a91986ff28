//! `imgd compose`: compositions of hello VMs under real qemu on imgd's own
//! switch: the example passes (with its partition and heal), a failing step
//! names its node and leaves no qemu, `up`/`exec`/`down` from other
//! processes, bad files exit 2, and `deploy` output boots from `imgd serve`.

use crate::common::*;
use crate::serve::{curl, Serve};
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

const EXAMPLE: &str = "profiles/hello.compose.toml";

fn compose(store: &Path, args: &[&str]) -> Output {
    imgd(store).arg("compose").args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn the_example_passes_partition_and_heal_and_stops_every_vm() {
    let h = hello();
    let out = compose(&h.store, &["test", EXAMPLE, "--json", "--pcap"]);
    assert!(out.status.success(), "{}", text(&out));
    let report = json(&out);
    let machines: Vec<&str> = report["machines"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    assert_eq!(machines, ["server", "node1", "node2", "node3"]);
    let steps = report["steps"].as_array().unwrap();
    let what: Vec<&str> = steps.iter().map(|s| s["what"].as_str().unwrap()).collect();
    assert_eq!(steps.len(), 8, "{what:?}");
    // After the partition node1 cannot reach the server (step 5 `fail`) while
    // node2 and node3 still do (step 6 `run`, expect "server").
    assert!(what[3].starts_with("partition") && what[4].starts_with("fail") && what[5].starts_with("run"), "{what:?}");
    assert_eq!(steps[5]["nodes"], serde_json::json!(["node2", "node3"]));
    assert!(what[6] == "heal" && what[7].starts_with("until"), "{what:?}");
    // Every machine netbooted from imgd serve (by default): its own script
    // (its group, by its boot NIC's MAC) and its role's kernel and initrd.
    assert_eq!(report["netboot"]["scripts"], 4, "{report}");
    assert_eq!(report["netboot"]["artifacts"], 8, "{report}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let logs =
        stderr.split("consoles kept in ").nth(1).and_then(|s| s.lines().next()).expect("--pcap keeps the folder");
    assert_no_process_mentions(Path::new(logs));
    // The capture, read by tcpdump: the nodes' HTTP requests to the server.
    let cap = Path::new(logs).join("lan.pcap");
    let http = tool("tcpdump", &["-nn", "-r", cap.to_str().unwrap(), "tcp dst port 8080 and dst host 10.77.0.1"]);
    for node in ["10.77.0.2", "10.77.0.3", "10.77.0.4"] {
        assert!(http.contains(&format!("IP {node}.")), "{node} asked the server: {http}");
    }
    std::fs::remove_dir_all(logs).unwrap();
}

#[test]
fn a_step_that_cannot_pass_names_its_node_and_tail_and_leaves_no_qemu() {
    let h = hello();
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("t.compose.toml");
    let example = std::fs::read_to_string(repo().join(EXAMPLE)).unwrap();
    let first_steps = example.split("[[step]]").take(2).collect::<Vec<_>>().join("[[step]]");
    let mine = format!("{first_steps}\n[[step]]\non = \"node1\"\nuntil = \"test -e /never\"\ntimeout = \"4s\"\n");
    std::fs::write(&file, mine).unwrap();
    // (Booted the other way, `--boot kernel`: the role's kernel and initrd
    // handed to qemu, no server.)
    let out = compose(&h.store, &["test", file.to_str().unwrap(), "--variant", "small", "--boot", "kernel"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(!all.contains("netbooted from imgd serve"), "{all}");
    assert!(all.contains("2 machines (server, node1)"), "--variant small starts two VMs: {all}");
    assert!(all.contains("step 2 (line 29) on node1: ") && all.contains("`test -e /never` exited 1"), "{all}");
    assert!(all.contains("still failing after 4s"), "{all}");
    let kept = all.split("consoles kept in ").nth(1).and_then(|s| s.split(')').next()).expect("logs kept");
    let log = std::fs::read_to_string(Path::new(kept).join("node1.log")).unwrap();
    assert!(log.contains("IMGD-HELLO-READY"), "{log}");
    let last = log.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    assert!(all.contains("--- last lines of ") && all.contains(last), "the console's tail ({last}): {all}");
    assert_no_process_mentions(Path::new(kept));
    std::fs::remove_dir_all(kept).unwrap();
}

/// Stops `imgd compose up` as Ctrl-C does when a test ends before its
/// `down` (a failed assert): its machines would run on after the suite.
struct StopOnDrop(std::process::Child);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(None)) {
            return;
        }
        let _ = std::process::Command::new("kill").args(["-INT", &self.0.id().to_string()]).status();
        let end = Instant::now() + Duration::from_secs(30);
        while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn up_exec_and_down_reach_the_machines_from_other_processes() {
    let h = hello();
    let d = tempfile::tempdir().unwrap();
    // A file of its own: `up` state is per composition file.
    let file = d.path().join("up.compose.toml");
    std::fs::copy(repo().join(EXAMPLE), &file).unwrap();
    let f = file.to_str().unwrap();
    let cache = scratch_cache(&d.path().join("cache"));
    let run = |args: &[&str]| imgd(&h.store).env("IMGD_CACHE", &cache).arg("compose").args(args).output().unwrap();
    // Booted by their kernels: the example's test above netboots, and up
    // starts machines the same way whatever boots them.
    let mut up = StopOnDrop(
        imgd(&h.store)
            .env("IMGD_CACHE", &cache)
            .args(["compose", "up", f, "--variant", "small", "--boot", "kernel"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let log = wait_for_console(&mut up.0, "Ctrl-C or `imgd compose down", Duration::from_secs(120));
    let dir = log.split("consoles in ").nth(1).and_then(|s| s.lines().next()).unwrap().to_string();
    // exec waits for the node stage; the name and address come from the command line.
    let out = run(&["exec", f, "node1", "hostname; ip -4 addr; grep server /etc/hosts", "--timeout", "120"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.starts_with("node1\n") && t.contains("inet 10.77.0.2/24") && t.contains("10.77.0.1\tserver"), "{t}");
    assert_eq!(run(&["exec", f, "server", "exit 3"]).status.code(), Some(3));
    let t = text(&run(&["exec", f, "node9", "true"]));
    assert!(t.contains("no machine `node9`") && t.contains("server, node1"), "{t}");
    connect_gives_a_shell_pane_per_machine(&h.store, &cache, f);
    let again = run(&["up", f]);
    assert!(text(&again).contains("is already up"), "{}", text(&again));
    let down = run(&["down", f]);
    assert!(down.status.success(), "{}", text(&down));
    let end = Instant::now() + Duration::from_secs(30);
    while up.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < end, "up did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_no_process_mentions(Path::new(&dir));
    assert!(!Path::new(&dir).exists(), "a stopped composition leaves no folder behind: {dir}");
    assert!(text(&run(&["exec", f, "server", "true"])).contains("is not up"));
}

#[test]
fn bad_composition_files_exit_2_with_file_line_and_column() {
    let h = hello();
    let d = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(repo().join(EXAMPLE)).unwrap();
    for (extra, want) in [
        ("[role.extra]\nprofile = \"nosuch\"", "nosuch"),
        ("[network.b]\nsubnet = \"10.77.0.0/16\"", "overlaps network"),
        ("[role.extra]\nprofile = \"hello\"\ncount = 0", "from 1 to 250"),
        ("[[step]]\non = \"db1\"\nrun = \"true\"", "names no machine"),
        ("[role.node2]\nprofile = \"hello\"", "is also a machine of role"),
        ("[role.extra]\nprofile = \"hello\"\nssh = { user = \"root\", key = \"no-such-key\" }", "no such key file"),
        ("[role.extra]\nprofile = \"hello\"\nssh = { user = \"-oProxyCommand=x\", key = \"k\" }", "a login name"),
    ] {
        let file = d.path().join("bad.compose.toml");
        std::fs::write(&file, format!("{example}\n{extra}\n")).unwrap();
        let out = compose(&h.store, &["build", file.to_str().unwrap()]);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{extra}: {t}");
        // file:line:col, at a line of the addition.
        let at = t.split(&format!("{}:", file.display())).nth(1).unwrap_or_else(|| panic!("{extra}: {t}"));
        let mut pos = at.splitn(3, ':').map(|n| n.parse::<usize>());
        let (line, col) = (pos.next().unwrap(), pos.next().unwrap());
        assert!(line.unwrap_or_else(|_| panic!("{t}")) > example.lines().count() && col.is_ok(), "{extra}: {t}");
        assert!(t.contains(want), "{extra}: {t}");
    }
}

/// A role with `ssh`: its steps run through the image's own sshd (the
/// builder profile's dropbear, its DHCP on the netboot link), not the node
/// stage's command port; the exit status and output come back as they do
/// through the port.
#[test]
fn a_role_with_ssh_is_reached_through_the_images_own_sshd() {
    let h = hello();
    let d = tempfile::tempdir().unwrap();
    let key = d.path().join("id_test");
    tool("ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-C", "imgd-test", "-f", key.to_str().unwrap()]);
    let public = std::fs::read_to_string(d.path().join("id_test.pub")).unwrap();
    let file = d.path().join("ssh.compose.toml");
    std::fs::write(
        &file,
        format!(
            r#"[role.builder]
profile = "builder"
set = {{ users = [{{ name = "builder", shell = "/bin/sh", ssh_authorized_keys = ["{}"] }}] }}
ssh = {{ user = "builder", key = "id_test" }}

[[step]]
on = "builder"
console = "IMGD-BUILDER-READY"
timeout = "240s"
[[step]]
on = "builder"
run = "echo via=${{SSH_CONNECTION%% *}} user=$(id -un) host=$(hostname); echo to-stderr >&2"
expect = "via=10.0.2.2 user=builder host=builder"
timeout = "60s"
[[step]]
on = "builder"
fail = "exit 4"
"#,
            public.trim()
        ),
    )
    .unwrap();
    let out = compose(&h.store, &["test", file.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let report = json(&out);
    assert_eq!(report["steps"].as_array().unwrap().len(), 3, "{report}");
    let t = text(&out);
    assert!(!t.contains("consoles kept in "), "{t}");
}

#[test]
fn deploy_writes_groups_that_imgd_serve_boots_with_each_nodes_identity() {
    let h = hello();
    let d = tempfile::tempdir().unwrap();
    let nodes = d.path().join("NODES");
    let macs = ["0c:c4:7a:00:00:10", "0c:c4:7a:00:00:11", "0c:c4:7a:00:00:12", "0c:c4:7a:00:00:13"];
    let list: String =
        macs.iter().enumerate().map(|(i, m)| format!("gros-{i}.nancy.grid5000.fr {m}  # rack 3\n")).collect();
    std::fs::write(&nodes, format!("# reserved\n{list}")).unwrap();
    let out_dir = d.path().join("site");
    let args = ["deploy", EXAMPLE, "--nodes", nodes.to_str().unwrap(), "--out", out_dir.to_str().unwrap()];
    let out = compose(&h.store, &args);
    assert!(out.status.success(), "{}", text(&out));
    for f in ["server.tar.zst", "server.env.yaml", "node.tar.zst", "node.env.yaml"] {
        assert!(out_dir.join(f).exists(), "{f}");
    }
    let env = std::fs::read_to_string(out_dir.join("node.env.yaml")).unwrap();
    assert!(env.contains("kind: tar") && env.contains("file: node.tar.zst"), "{env}");
    let conf = out_dir.join("machines.toml");
    let s = Serve::start(&h.store, &["--config", conf.to_str().unwrap()]);
    let entry = h.manifest["name"].as_str().unwrap();
    let (status, _, body) = curl(&[&format!("{}/ipxe?mac=0c-c4-7a-00-00-12", s.base)]);
    let script = String::from_utf8(body).unwrap();
    assert_eq!(status, 200, "{script}");
    assert!(script.contains(&format!("/{entry}/vmlinuz")), "{script}");
    for arg in [
        "rdinit=/lib/imgd/node-init",
        "imgd.node=node2",
        "imgd.net=0c:c4:7a:00:00:12,10.77.0.3/24",
        "imgd.hosts=10.77.0.1,server,node*3",
    ] {
        assert!(script.contains(arg), "{arg}: {script}");
    }
    // A machine not listed gets no node's identity.
    let (_, _, other) = curl(&[&format!("{}/ipxe?mac=0c-c4-7a-00-00-99", s.base)]);
    assert!(!String::from_utf8_lossy(&other).contains("imgd.node="));
    // One machine too few is the NODES file's mistake.
    std::fs::write(&nodes, list.lines().take(3).collect::<Vec<_>>().join("\n")).unwrap();
    let short = compose(&h.store, &args);
    assert_eq!(short.status.code(), Some(2), "{}", text(&short));
    assert!(text(&short).contains("3 machines listed, but") && text(&short).contains("4 nodes"), "{}", text(&short));
}

/// Stops a private tmux server however the test ends.
struct Tmux(tempfile::TempDir);

impl Tmux {
    fn cmd(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("tmux")
            .env("TMUX_TMPDIR", self.0.path())
            .env_remove("TMUX")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux").env("TMUX_TMPDIR", self.0.path()).arg("kill-server").status();
    }
}

/// `connect` opens one pane per machine, each a shell on that machine.
fn connect_gives_a_shell_pane_per_machine(store: &Path, cache: &Path, f: &str) {
    let tmux = Tmux(tempfile::tempdir().unwrap());
    let out = imgd(store)
        .env("IMGD_CACHE", cache)
        .env("TMUX_TMPDIR", tmux.0.path())
        .env_remove("TMUX")
        .args(["compose", "connect", f, "--no-attach"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let session = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let panes: Vec<String> =
        tmux.cmd(&["list-panes", "-t", &session, "-F", "#{pane_id}"]).lines().map(str::to_string).collect();
    assert_eq!(panes.len(), 2, "one pane per machine");
    let end = Instant::now() + Duration::from_secs(60);
    // Keys sent before a shell's first prompt are echoed ahead of it: type
    // once each pane shows its prompt.
    for p in &panes {
        loop {
            let shown = tmux.cmd(&["capture-pane", "-p", "-t", p]);
            if shown.lines().any(|l| l.trim_end().ends_with('$')) {
                break;
            }
            assert!(Instant::now() < end, "no prompt in pane {p}:\n{shown}");
            std::thread::sleep(Duration::from_millis(200));
        }
        tmux.cmd(&["send-keys", "-t", p, "hostname", "Enter"]);
    }
    for name in ["server", "node1"] {
        loop {
            let shown: String = panes.iter().map(|p| tmux.cmd(&["capture-pane", "-p", "-t", p])).collect();
            if shown.contains(&format!("{name}$ hostname\n{name}\n")) {
                break;
            }
            assert!(Instant::now() < end, "no pane ran hostname on {name}:\n{shown}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
