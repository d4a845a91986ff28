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
    groups_and_parts(&v, &cell);
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

/// The groups and the server's parts, above the machines (as on the page).
fn groups_and_parts(v: &serde_json::Value, cell: &dyn Fn(&serde_json::Value, &str) -> String) {
    let groups = v["groups"].as_array().map(Vec::as_slice).unwrap_or_default();
    if !groups.is_empty() {
        println!("{:<16} {:<34} {:>6} {:>5}  entry", "group", "selector", "1h", "mid");
        for g in groups {
            let entry = match g["entry"].as_str() {
                Some(_) if g["stale"].as_bool() == Some(true) => format!("{} STALE", cell(g, "entry")),
                Some(_) => cell(g, "entry"),
                None => format!("none: {}", cell(g, "no_entry")),
            };
            let (hour, mid) = (cell(g, "boots_last_hour"), cell(g, "mid_boot"));
            println!("{:<16} {:<34} {hour:>6} {mid:>5}  {entry}", cell(g, "name"), cell(g, "selector"));
        }
    }
    let parts: Vec<String> = v["parts"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|p| match p["up"].as_bool() {
            Some(true) => format!("{} up", cell(p, "name")),
            _ => format!("{} DOWN ({})", cell(p, "name"), cell(p, "why")),
        })
        .collect();
    if !parts.is_empty() {
        let reload = match &v["reload"] {
            serde_json::Value::Null => String::new(),
            r if r["error"].is_null() => "; last reload ok".into(),
            r => format!("; last reload REFUSED: {}", cell(r, "error")),
        };
        println!("parts: {}{reload}\n", parts.join(", "));
    }
}
