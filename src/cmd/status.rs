//! `imgd status --server URL`: `imgd serve`'s status table in the terminal
//! (for ssh sessions), from its `/status.json`.

use anyhow::{bail, Context};
use clap::Args;

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The server, e.g. http://127.0.0.1:8080 (it must list this host in --status-allow).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Sort by step (least far first) instead of last seen.
    #[arg(long)]
    pub by_step: bool,
    /// Print the server's JSON as it is.
    #[arg(long)]
    pub json: bool,
}

/// The most a status answer may hold (10,000 machines fit several times).
const MAX_BODY: u64 = 64 << 20;

pub fn run(a: &StatusArgs) -> anyhow::Result<()> {
    let url = format!("{}/status.json{}", a.server.trim_end_matches('/'), if a.by_step { "?sort=step" } else { "" });
    let mut resp = ureq::get(&url).call().with_context(|| format!("asking {url}"))?;
    let body = resp.body_mut().with_config().limit(MAX_BODY).read_to_string().context("reading the answer")?;
    let v: serde_json::Value = serde_json::from_str(&body).with_context(|| format!("{url}: not a status answer"))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let Some(rows) = v["machines"].as_array() else { bail!("{url}: not a status answer") };
    let now = v["now"].as_u64().unwrap_or(0);
    // Values come from the server (and, before it, from clients): no control characters.
    let cell = |r: &serde_json::Value, k: &str| -> String {
        let s = match &r[k] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => "-".into(),
            other => other.to_string(),
        };
        s.chars().filter(|c| !c.is_control()).take(60).collect()
    };
    println!(
        "{:<18} {:<16} {:<14} {:<16} {:<9} {:>12} {:>8}  refusal",
        "machine", "address", "group", "hostname", "step", "bytes", "seen"
    );
    for r in rows {
        let step =
            if r["stuck"].as_bool() == Some(true) { format!("{} STUCK", cell(r, "step")) } else { cell(r, "step") };
        let ago = now.saturating_sub(r["last"].as_u64().unwrap_or(0));
        println!(
            "{:<18} {:<16} {:<14} {:<16} {:<9} {:>12} {:>7}s  {}",
            cell(r, "mac"),
            cell(r, "address"),
            cell(r, "group"),
            cell(r, "hostname"),
            step,
            cell(r, "bytes"),
            ago,
            cell(r, "refusal")
        );
    }
    println!("{} machines, {} stuck", rows.len(), v["stuck"].as_u64().unwrap_or(0));
    Ok(())
}
