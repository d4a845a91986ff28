//! The status table written out: `/status`, a plain page that refreshes
//! itself (no JavaScript; readable in a text browser), and `/status.json`.
//! Every value is escaped here, whatever bytes a client claimed.

use super::{now, History, Overview, Reload, Seen, Sort};
use serde::Serialize;
use std::fmt::Write;

/// `/status.json`.
pub(crate) fn json(over: &Overview, rows: &[Seen]) -> String {
    // Written straight from the rows, compact: a 10,000-machine table
    // through a `serde_json::Value` took ~100 ms and ~50 MiB at its peak.
    #[derive(Serialize)]
    struct Page<'a> {
        #[serde(flatten)]
        over: &'a Overview,
        machines: &'a [Seen],
        stuck: usize,
        now: u64,
    }
    let stuck = rows.iter().filter(|r| r.stuck).count();
    serde_json::to_string(&Page { over, machines: rows, stuck, now: now() }).unwrap_or_default()
}

/// The groups and parts tables of the page.
fn html_overview(s: &mut String, over: &Overview) {
    s.push_str(
        "<h2>groups</h2>\n<table>\n<tr><th>group</th><th>selector</th><th>profile</th><th>entry</th>\
                <th>boots in the last hour</th><th>mid-boot</th></tr>\n",
    );
    for g in &over.groups {
        let entry = match (&g.entry, &g.no_entry) {
            (Some(e), _) => format!("{e}{}", if g.stale { " (stale)" } else { "" }),
            (None, why) => format!("none: {}", why.as_deref().unwrap_or("?")),
        };
        let cells = [&g.name, &g.selector, &g.profile, &entry, &g.boots_last_hour.to_string(), &g.mid_boot.to_string()];
        s.push_str(if g.stale || g.entry.is_none() { "<tr class=\"stuck\">" } else { "<tr>" });
        for c in cells {
            let _ = write!(s, "<td>{}</td>", escape(c));
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</table>\n<h2>parts</h2>\n<table>\n<tr><th>part</th><th>state</th><th>restarts</th></tr>\n");
    for p in &over.parts {
        let state = if p.up { "up".to_string() } else { format!("down: {}", p.why.as_deref().unwrap_or("?")) };
        let _ = writeln!(
            s,
            "<tr{}><td>{}</td><td>{}</td><td>{}</td></tr>",
            if p.up { "" } else { " class=\"stuck\"" },
            escape(&p.name),
            escape(&state),
            p.restarts
        );
    }
    let reload = match &over.reload {
        None => "no reload yet".to_string(),
        Some(Reload { at, error: None }) => format!("last reload {} s ago: ok", now().saturating_sub(*at)),
        Some(Reload { at, error: Some(e) }) => {
            format!(
                "last reload {} s ago: refused, the previous configuration is served: {e}",
                now().saturating_sub(*at)
            )
        }
    };
    let _ = writeln!(s, "</table>\n<p>{}</p>\n<h2>machines</h2>", escape(&reload));
}

/// `/status`: a plain table that refreshes itself every 5 s.
pub(crate) fn html(over: &Overview, rows: &[Seen], sort: Sort) -> String {
    let t = now();
    let stuck = rows.iter().filter(|r| r.stuck).count();
    let mut s = String::from(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
         <title>imgd serve: status</title>\n<style>body{font-family:sans-serif}td,th{padding:2px 8px;text-align:left}\
         tr.stuck{background:#fdd}</style></head><body>\n",
    );
    let _ = writeln!(
        s,
        "<h1>imgd serve</h1>\n<p>{} machines, {stuck} stuck. Sorted by {}: <a href=\"?sort=time\">time</a> \
         | <a href=\"?sort=step\">step</a> | <a href=\"status.json\">JSON</a></p>",
        rows.len(),
        if sort == Sort::Step { "step" } else { "time" }
    );
    html_overview(&mut s, over);
    s.push_str(
        "<table>\n<tr><th>machine</th><th>address</th><th>hostname</th><th>labels</th><th>group</th><th>entry</th>\
                <th>step</th><th>this boot</th><th>bytes</th><th>last seen</th><th>refusal</th></tr>\n",
    );
    for r in rows {
        let cells = [
            r.mac.map_or_else(|| "-".into(), |m| m.to_string()),
            r.address.to_string(),
            r.hostname().unwrap_or_default().to_string(),
            r.labels().iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "),
            r.group().unwrap_or_default().to_string(),
            r.entry().unwrap_or_default().to_string(),
            format!("{}{}", r.step.text(), if r.stuck { " (stuck)" } else { "" }),
            steps(&r.history),
            r.bytes.to_string(),
            format!("{} s ago", t.saturating_sub(r.last())),
            r.refusal().unwrap_or_default().to_string(),
        ];
        let _ = write!(s, "<tr{}>", if r.stuck { " class=\"stuck\"" } else { "" });
        for c in cells {
            let _ = write!(s, "<td>{}</td>", escape(&c));
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</table>\n</body></html>\n");
    s
}

/// `offer +0s, loader +1s, script +3s`: each step's time from the first.
fn steps(history: &History) -> String {
    let first = history.steps().next().map_or(0, |h| h.1);
    history.steps().map(|(s, t)| format!("{} +{}s", s.text(), t.saturating_sub(first))).collect::<Vec<_>>().join(", ")
}

/// Text as HTML shows it, inert: markup characters and quotes as entities,
/// control characters dropped.
pub(crate) fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> crate::model::Mac {
        s.parse().unwrap()
    }
    use crate::serve::boot::status::Status;
    use std::collections::BTreeMap;
    use std::net::IpAddr;
    use std::time::Duration;

    fn empty() -> Overview {
        Overview { groups: Vec::new(), parts: Vec::new(), reload: None }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn claimed_values_are_inert_in_the_page() {
        let s = Status::new(10, Duration::from_secs(120));
        let labels = BTreeMap::from([("rack".to_string(), "<script>alert(2)</script>".to_string())]);
        s.script(Some(m("52:54:00:00:00:01")), ip(1), Some("<img src=x onerror=alert(1)>"), &labels, Ok(("lab", "e1")));
        let page = html(&empty(), &s.table(Sort::Time), Sort::Time);
        assert!(!page.contains("<img") && !page.contains("<script"), "{page}");
        assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;"), "{page}");
        assert!(page.contains("rack=&lt;script&gt;alert(2)&lt;/script&gt;"), "{page}");
        let j: serde_json::Value = serde_json::from_str(&json(&empty(), &s.table(Sort::Time))).unwrap();
        assert_eq!(j["machines"][0]["hostname"], "<img src=x onerror=alert(1)>");
    }
}
