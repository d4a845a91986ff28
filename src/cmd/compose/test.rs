//! `imgd compose test`: every machine up, the steps run, every machine
//! stopped however it ends.

use super::args::TestArgs;
use super::images::{build, names, private_dir, Built};
use anyhow::Result;
use imgd::compose::Running;

pub fn test(t: &TestArgs) -> Result<()> {
    let Built { comp, images, accel } = build(&t.common)?;
    let logs = private_dir("imgd-compose.")?;
    eprintln!(
        "imgd compose: {} machines ({}), {} steps, {accel:?}; consoles in {}",
        comp.nodes.len(),
        names(&comp),
        comp.steps.len(),
        logs.path().display()
    );
    let started = std::time::Instant::now();
    let (outcome, netbooted) = {
        // Every VM stops when `running` drops, whatever the outcome.
        let store = t.common.store.dir();
        let boot = t.common.boot(&store);
        let mut running = Running::up(&comp, &images, accel, boot, logs.path(), t.common.pcap)?;
        let outcome = running.run_steps(&mut |r| {
            eprintln!(
                "imgd compose: step {} (line {}) passed in {:.1}s: {} on {}",
                r.step,
                r.line,
                r.seconds,
                r.what,
                r.nodes.join(",")
            )
        });
        (outcome, running.netbooted())
    };
    if let Some((scripts, artifacts)) = netbooted {
        eprintln!("imgd compose: netbooted from imgd serve: {scripts} machine scripts, {artifacts} artifacts");
    }
    let netboot = netbooted.map(|(scripts, artifacts)| serde_json::json!({"scripts": scripts, "artifacts": artifacts}));
    let seconds = started.elapsed().as_secs_f64();
    match outcome {
        Ok(reports) => {
            if t.json {
                let out = serde_json::json!({
                    "file": comp.path, "machines": comp.nodes.iter().map(|n| &n.name).collect::<Vec<_>>(),
                    "accel": format!("{accel:?}"), "seconds": seconds, "steps": reports, "netboot": netboot,
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            }
            eprintln!("imgd compose: {} steps passed on {} machines in {seconds:.1}s", reports.len(), comp.nodes.len());
            if t.keep_logs || t.common.pcap {
                eprintln!("imgd compose: consoles kept in {}", logs.keep().display());
            }
            Ok(())
        }
        Err(failed) => {
            let kept = logs.keep();
            Err(anyhow::Error::new(failed).context(format!(
                "{}: composition failed after {seconds:.1}s (consoles kept in {})",
                comp.path.display(),
                kept.display()
            )))
        }
    }
}
