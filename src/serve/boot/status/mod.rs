//! Which machine got what, and where each boot stopped: `/status` (a plain
//! page that refreshes itself) and `/status.json`, the same table in both.
//!
//! Each machine seen (by MAC once it sent one, else by address) keeps its
//! group, entry, the last step reached (DHCP offer -> TFTP loader -> script
//! -> kernel -> initrd -> done, or offer -> uki -> done), the steps of its
//! current boot with their times, bytes sent, when, its labels and the last
//! refusal. A machine that started a boot and made no progress for longer
//! than the stuck threshold comes first. At most `cap` machines are kept: a
//! full table drops its least recently seen sixteenth (a machine costs about
//! 105 bytes with its index, 20 more once it has an address); nothing is
//! written to disk.
//!
//! Every value a client claimed (MAC, hostname) was checked to iPXE's
//! shapes where it entered, and is escaped again for HTML by [`page`],
//! which writes the table as the page and as JSON.

mod addresses;
mod index;
use index::Keyed as _;
pub mod page;

use crate::model::Mac;
use crate::serve::http::shards::Sharded;
use hashbrown::HashMap;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How far a boot got, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Step {
    Refused,
    /// proxyDHCP answered it (offer on 67 or ack on 4011).
    Offer,
    /// TFTP sent it a loader.
    Loader,
    Script,
    Kernel,
    Initrd,
    Uki,
    Done,
}

impl Step {
    fn text(self) -> &'static str {
        match self {
            Step::Refused => "refused",
            Step::Offer => "offer",
            Step::Loader => "loader",
            Step::Script => "script",
            Step::Kernel => "kernel",
            Step::Initrd => "initrd",
            Step::Uki => "uki",
            Step::Done => "done",
        }
    }
}

/// One machine, as the table keeps and shows it. Kept small (a
/// 10,000-machine table is one of a netboot server's larger allocations,
/// and a proxyDHCP storm fills it): a [`Mac`] not its text, one shared
/// group-and-entry pair for all rows of a group, the history inline with
/// 16-bit times, and what few machines carry (hostname, labels, a refusal)
/// boxed apart: 96 bytes a row (it was 241, and an ordered index beside it;
/// 120 while it kept a copy of its key).
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub mac: Option<Mac>,
    pub address: IpAddr,
    pub step: Step,
    /// Started a boot and made no progress for longer than the threshold.
    pub stuck: bool,
    /// The group it was put in and the entry that boots it.
    target: Option<Arc<Target>>,
    pub bytes: u64,
    /// Seconds since the epoch of the last thing it did (`u32`: good
    /// until 2106, as the history's).
    last: u32,
    /// The steps of its current boot, each with when; at most `HISTORY`,
    /// the first kept.
    pub history: History,
    extra: Option<Box<Extra>>,
    /// When it was last touched (for dropping the least recently seen).
    seq: u64,
}

/// How the table knows it: made from its MAC and address, not kept (a row
/// keyed by address never gets a MAC: one that says its MAC is another row).
impl index::Keyed for Seen {
    type Key = Key;
    fn key(&self) -> Key {
        self.mac.map_or(Key::Address(self.address), Key::Mac)
    }
}

/// A group and the entry it boots, shared by the rows of its machines.
#[derive(Debug)]
struct Target {
    group: Box<str>,
    entry: Box<str>,
}

/// What most machines lack.
#[derive(Debug, Clone, Default)]
struct Extra {
    hostname: Option<Box<str>>,
    refusal: Option<Box<str>>,
    /// The labels its last script request carried (`?rack=7`), at most
    /// `LABELS`, values cut to `LABEL_CHARS`.
    labels: BTreeMap<String, String>,
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

impl Seen {
    /// Seconds since the epoch of the last thing it did.
    pub(crate) fn last(&self) -> u64 {
        u64::from(self.last)
    }

    pub(crate) fn group(&self) -> Option<&str> {
        self.target.as_deref().map(|t| &*t.group)
    }

    pub(crate) fn entry(&self) -> Option<&str> {
        self.target.as_deref().map(|t| &*t.entry)
    }

    pub(crate) fn hostname(&self) -> Option<&str> {
        self.extra.as_deref().and_then(|x| x.hostname.as_deref())
    }

    /// Why its last request was refused.
    pub(crate) fn refusal(&self) -> Option<&str> {
        self.extra.as_deref().and_then(|x| x.refusal.as_deref())
    }

    pub(crate) fn labels(&self) -> &BTreeMap<String, String> {
        self.extra.as_deref().map_or(&NO_LABELS, |x| &x.labels)
    }

    /// Its extras, made when first needed and dropped when empty again.
    fn extra(&mut self, f: impl FnOnce(&mut Extra)) {
        let x = self.extra.get_or_insert_with(Box::default);
        f(x);
        if x.hostname.is_none() && x.refusal.is_none() && x.labels.is_empty() {
            self.extra = None;
        }
    }
}

/// The row as `/status.json` has always written it.
impl Serialize for Seen {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut r = s.serialize_struct("Seen", 12)?;
        r.serialize_field("mac", &self.mac)?;
        r.serialize_field("address", &self.address)?;
        r.serialize_field("hostname", &self.hostname())?;
        r.serialize_field("group", &self.group())?;
        r.serialize_field("entry", &self.entry())?;
        r.serialize_field("step", &self.step)?;
        r.serialize_field("bytes", &self.bytes)?;
        r.serialize_field("last", &self.last())?;
        r.serialize_field("refusal", &self.refusal())?;
        r.serialize_field("history", &self.history)?;
        r.serialize_field("labels", self.labels())?;
        r.serialize_field("stuck", &self.stuck)?;
        r.end()
    }
}

/// A group, as the page's first table shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct GroupRow {
    pub name: String,
    /// Its selector in short (`mac 52:54:00:00:00:01 (+2)`, `default`).
    pub selector: String,
    pub profile: String,
    /// The entry it boots, or else why there is none (`no_entry`).
    pub entry: Option<String>,
    pub no_entry: Option<String>,
    /// Not the profile's current build.
    pub stale: bool,
    /// Boots in this group in the last hour (scripts sent, and UKIs asked
    /// for without a script), however many machines made them.
    pub boots_last_hour: usize,
    /// Machines of the table in this group between their first step and
    /// `done` (stuck ones included).
    pub mid_boot: usize,
}

/// A part of the server and whether it runs.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PartRow {
    pub name: String,
    pub up: bool,
    /// Why it is down (it is being started again).
    pub why: Option<String>,
    pub restarts: u64,
}

/// The last reload (SIGHUP, or a changed machines file): when, and its error.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Reload {
    pub at: u64,
    pub error: Option<String>,
}

/// What the page shows above the machines.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Overview {
    pub groups: Vec<GroupRow>,
    pub parts: Vec<PartRow>,
    pub reload: Option<Reload>,
}

pub struct Status {
    cap: usize,
    stuck_after: Duration,
    inner: Mutex<Inner>,
    reload: Mutex<Option<Reload>>,
    /// Group -> when each of its boots in the last hour started (at most
    /// `BOOTS_KEPT` a group: a fleet booting faster than that in an hour
    /// shows that many). Written by every script: one copy per thread (see
    /// shards.rs), each keeping at most `BOOTS_KEPT` a group.
    boots: Sharded<HashMap<String, VecDeque<u64>>>,
}

const BOOTS_KEPT: usize = 100_000;

/// How the table knows a machine: by its MAC once it said one, else by its
/// address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Mac(Mac),
    Address(IpAddr),
}

#[derive(Default)]
struct Inner {
    /// The machines, in no order (a slab: a row's index changes only when
    /// another row is removed).
    rows: Vec<Seen>,
    index: index::Index,
    /// MAC of the machine last seen at an address (artifact requests carry
    /// no MAC: the script request before them did). An address not here is
    /// its own key.
    at: addresses::Addresses,
    seq: u64,
    /// Group -> its current target, one copy for all rows (bounded: cleared
    /// past `NAMES`, rows keep theirs).
    targets: HashMap<Arc<str>, Arc<Target>>,
}

/// Steps kept per boot: a whole boot has at most 6 distinct ones.
const HISTORY: usize = 8;
const NAMES: usize = 4096;

/// A boot's steps with when each was reached, inline: seconds since the
/// epoch of the first (`u32`: good until 2106), and of each step after it
/// (`u16`: a step more than 18 hours after the first shows as 18 hours).
#[derive(Debug, Clone, Copy)]
pub(crate) struct History {
    len: u8,
    steps: [Step; HISTORY],
    after: [u16; HISTORY],
    start: u32,
}

impl Default for History {
    fn default() -> History {
        History { len: 0, steps: [Step::Refused; HISTORY], after: [0; HISTORY], start: 0 }
    }
}

impl History {
    pub(crate) fn steps(&self) -> impl Iterator<Item = (Step, u64)> + '_ {
        let n = usize::from(self.len);
        let start = u64::from(self.start);
        self.steps[..n].iter().zip(&self.after[..n]).map(move |(&s, &t)| (s, start + u64::from(t)))
    }

    fn last(&self) -> Option<Step> {
        self.len.checked_sub(1).map(|i| self.steps[usize::from(i)])
    }

    fn push(&mut self, step: Step, at: u64) {
        let n = usize::from(self.len);
        if n == 0 {
            self.start = u32::try_from(at).unwrap_or(u32::MAX);
        }
        if n < HISTORY {
            self.steps[n] = step;
            self.after[n] = u16::try_from(at.saturating_sub(u64::from(self.start))).unwrap_or(u16::MAX);
            self.len += 1;
        }
    }

    fn clear(&mut self) {
        self.len = 0;
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// As a list of `[step, seconds]` pairs.
impl Serialize for History {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.steps())
    }
}
/// Labels kept per machine, and characters per value: with these, a
/// machine costs under 1 KiB however its requests are made up.
const LABELS: usize = 4;
const LABEL_CHARS: usize = 64;

pub(super) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Status {
    pub(crate) fn new(cap: usize, stuck_after: Duration) -> Status {
        Status {
            cap: cap.max(1),
            stuck_after,
            inner: Mutex::default(),
            reload: Mutex::default(),
            boots: Sharded::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A reload ended: `error` is why it was refused (the previous
    /// configuration is still served).
    pub fn reloaded(&self, error: Option<String>) {
        *self.reload.lock().unwrap_or_else(|p| p.into_inner()) = Some(Reload { at: now(), error });
    }

    pub(crate) fn last_reload(&self) -> Option<Reload> {
        self.reload.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A boot in `group` started now.
    fn boot_started(&self, group: &str) {
        let t = now();
        let mut boots = self.boots.mine();
        let q = match boots.get_mut(group) {
            Some(q) => q,
            None => boots.entry(group.to_string()).or_default(),
        };
        while q.front().is_some_and(|b| *b + 3600 < t) || q.len() >= BOOTS_KEPT {
            q.pop_front();
        }
        q.push_back(t);
    }

    /// Per group: (boots in the last hour, machines of `rows` mid-boot).
    pub(crate) fn group_counts(&self, rows: &[Seen]) -> HashMap<String, (usize, usize)> {
        let hour_ago = now().saturating_sub(3600);
        let mut counts: HashMap<String, (usize, usize)> = HashMap::new();
        self.boots.each(|boots| {
            for (g, q) in boots {
                let c = &mut counts.entry(g.clone()).or_default().0;
                *c = (*c + q.iter().filter(|b| **b >= hour_ago).count()).min(BOOTS_KEPT);
            }
        });
        for r in rows {
            if let (Some(g), false) = (r.group(), matches!(r.step, Step::Done | Step::Refused)) {
                counts.entry(g.to_string()).or_default().1 += 1;
            }
        }
        counts
    }

    /// A boot script was sent (`group`/`entry`), or refused (`refusal`).
    pub(crate) fn script(
        &self,
        mac: Option<Mac>,
        address: IpAddr,
        hostname: Option<&str>,
        labels: &BTreeMap<String, String>,
        to: Result<(&str, &str), &str>,
    ) {
        let key = mac.map_or(Key::Address(address), Key::Mac);
        let mut inner = self.lock();
        // What this address did before it said its MAC (a TFTP loader) was
        // this machine.
        let earlier = match mac {
            Some(_) => inner.forget(Key::Address(address)),
            None => None,
        };
        inner.point(address, key, self.cap);
        // A machine asking again for the same target keeps its `Arc`: each
        // clone and drop wrote the count's cache line, which every core's
        // requests for that group share.
        // Found once: this is every render's path.
        let known = |t: &Arc<Target>| to.is_ok_and(|(g, e)| *t.group == *g && *t.entry == *e);
        let i = inner.touch_at(key, address, self.cap);
        let same = inner.rows[i].target.as_ref().is_some_and(known);
        let target = to.ok().filter(|_| !same).map(|(g, e)| inner.target(g, e));
        let seen = &mut inner.rows[i];
        if let Some(e) = earlier {
            if seen.history.is_empty() {
                seen.history = e.history;
                seen.step = e.step;
            }
        }
        seen.address = address;
        // Most machines send neither: no box made and dropped for them.
        if hostname.is_some() || !labels.is_empty() || seen.extra.is_some() {
            seen.extra(|x| {
                x.hostname = hostname.map(Box::from).or(x.hostname.take());
                x.labels = labels
                    .iter()
                    .take(LABELS)
                    .map(|(k, v)| (k.chars().take(LABEL_CHARS).collect(), v.chars().take(LABEL_CHARS).collect()))
                    .collect();
            });
        }
        match to {
            Ok((group, _)) => {
                if let Some(t) = target {
                    seen.target = Some(t);
                }
                // A script after the loader is the same boot; one after a
                // finished or refused boot (iPXE's ROM) starts a new one.
                if seen.step > Step::Script || seen.step == Step::Refused {
                    seen.history.clear();
                }
                seen.advance(Step::Script, true);
                seen.bytes = 0;
                if seen.extra.is_some() {
                    seen.extra(|x| x.refusal = None);
                }
                drop(inner);
                self.boot_started(group);
            }
            Err(_) => {
                seen.advance(Step::Refused, true);
                seen.extra(|x| x.refusal = to.err().map(Box::from));
            }
        }
    }

    /// proxyDHCP answered `mac` (from `address` once it has one). A
    /// firmware's request starts a new boot; iPXE's, after its loader, is
    /// part of the one under way.
    pub(crate) fn offer(&self, mac: Mac, address: Option<IpAddr>, firmware: bool) {
        let mut inner = self.lock();
        if let Some(a) = address {
            inner.point(a, Key::Mac(mac), self.cap);
        }
        let seen = inner.touch(Key::Mac(mac), address.unwrap_or(IpAddr::from([0, 0, 0, 0])), self.cap);
        if let Some(a) = address {
            seen.address = a;
        }
        let new_boot = firmware || seen.step >= Step::Script || seen.step == Step::Refused;
        if new_boot {
            seen.history.clear();
            seen.bytes = 0;
            seen.extra(|x| x.refusal = None);
        }
        seen.advance(Step::Offer, new_boot);
    }

    /// `mac`, already answered, will boot from `address` (what its DHCP
    /// REQUEST asked for). Other machines on the LAN are not noted.
    pub(crate) fn address(&self, mac: Mac, address: IpAddr) {
        let mut inner = self.lock();
        if let Some(seen) = inner.get_mut(Key::Mac(mac)) {
            seen.address = address;
            inner.point(address, Key::Mac(mac), self.cap);
        }
    }

    /// TFTP sent `address` a loader.
    pub(crate) fn loader(&self, address: IpAddr) {
        let mut inner = self.lock();
        let key = inner.key_at(address);
        inner.point(address, key, self.cap);
        let seen = inner.touch(key, address, self.cap);
        seen.advance(Step::Loader, false);
    }

    /// A boot file was asked for from `address`: `step` is what it is.
    pub(crate) fn file(&self, address: IpAddr, group: &str, entry: &str, step: Step) {
        let mut inner = self.lock();
        let key = inner.key_at(address);
        // A UKI-only machine (UEFI HTTP boot) asks for nothing else: its
        // download's end is found by this address.
        inner.point(address, key, self.cap);
        let target = inner.target(group, entry);
        let seen = inner.touch(key, address, self.cap);
        seen.target = Some(target);
        if seen.step == Step::Done {
            seen.history.clear();
            seen.bytes = 0;
        }
        // A UKI asked for with no script before it is a boot of its own.
        let uki_boot = step == Step::Uki && seen.step < Step::Script;
        seen.advance(step, false);
        drop(inner);
        if uki_boot {
            self.boot_started(group);
        }
    }

    /// A boot file's download ended: `bytes` sent, `whole` if all of it.
    /// The last file of a boot (initrd, or a UKI) sent whole is `done`.
    pub(crate) fn sent(&self, address: IpAddr, step: Step, bytes: u64, whole: bool) {
        let mut inner = self.lock();
        let key = inner.key_at(address);
        if inner.index.get(&key, &inner.rows).is_none() {
            return;
        }
        let seen = inner.touch(key, address, self.cap);
        seen.bytes += bytes;
        if whole && matches!(step, Step::Initrd | Step::Uki) && seen.step == step {
            seen.advance(Step::Done, false);
        }
    }

    /// The table: stuck machines first, then by `sort` ("step": least far
    /// first; else most recently seen first).
    pub(crate) fn table(&self, sort: Sort) -> Vec<Seen> {
        let t = now();
        let inner = self.lock();
        let mut rows: Vec<Seen> = inner
            .rows
            .iter()
            .map(|s| {
                let mut s = s.clone();
                s.stuck = !matches!(s.step, Step::Done | Step::Refused)
                    && t.saturating_sub(s.last()) > self.stuck_after.as_secs();
                s
            })
            .collect();
        drop(inner);
        rows.sort_by(|a, b| {
            b.stuck.cmp(&a.stuck).then_with(|| match sort {
                Sort::Step => a.step.cmp(&b.step).then(b.last.cmp(&a.last)),
                Sort::Time => b.last.cmp(&a.last),
            })
        });
        rows
    }
}

impl Seen {
    /// Moves to `step` (only forward unless `any`), noted in the history.
    fn advance(&mut self, step: Step, any: bool) {
        if !any && step < self.step && self.step != Step::Done {
            return;
        }
        self.step = step;
        if self.history.last() != Some(step) {
            self.history.push(step, self.last());
        }
    }
}

impl Inner {
    fn get_mut(&mut self, key: Key) -> Option<&mut Seen> {
        let i = self.index.get(&key, &self.rows)?;
        self.rows.get_mut(i)
    }

    /// Notes that `address` is `key`'s now. Addresses come from clients
    /// (a DHCP REQUEST names any it likes): past twice the table's size the
    /// map is rebuilt from the rows, so it stays bounded whatever they send.
    fn point(&mut self, address: IpAddr, key: Key, cap: usize) {
        let Key::Mac(mac) = key else {
            self.at.remove(&address);
            return;
        };
        // Read first: a machine seen again at its address writes nothing.
        if self.at.get(&address) == Some(&mac) {
            return;
        }
        self.at.insert(address, mac);
        if self.at.len() > 2 * cap + 16 {
            self.at = self.rows.iter().filter_map(|s| Some((s.address, s.mac?))).collect();
            self.at.insert(address, mac);
        }
    }

    /// The key of the machine last seen at `address`.
    fn key_at(&self, address: IpAddr) -> Key {
        self.at.get(&address).map_or(Key::Address(address), |&m| Key::Mac(m))
    }

    /// Removes the machine under `key`, if any.
    fn forget(&mut self, key: Key) -> Option<Seen> {
        let i = self.index.get(&key, &self.rows)?;
        Some(self.remove_at(i))
    }

    /// Removes row `i`; the last row takes its place.
    fn remove_at(&mut self, i: usize) -> Seen {
        let last = self.rows.len() - 1;
        let gone = self.rows.swap_remove(i);
        self.index.moved(&gone.key(), i, None);
        if let Some(moved) = self.rows.get(i) {
            self.index.moved(&moved.key(), last, Some(i));
        }
        gone
    }

    /// Drops the `n` least recently seen machines. Done a sixteenth of the
    /// table at a time, so a full table costs one pass over its rows every
    /// `cap / 16` new machines, not an ordered index kept for each row.
    fn drop_oldest(&mut self, n: usize) {
        let mut seqs: Vec<u64> = self.rows.iter().map(|r| r.seq).collect();
        let Some(k) = n.min(seqs.len()).checked_sub(1) else { return };
        let (_, &mut cut, _) = seqs.select_nth_unstable(k);
        // From the back: the row swapped into a removed one's place was
        // looked at already.
        for i in (0..self.rows.len()).rev() {
            if self.rows[i].seq <= cut {
                let gone = self.remove_at(i);
                if gone.mac.is_some() && self.at.get(&gone.address) == gone.mac.as_ref() {
                    self.at.remove(&gone.address);
                }
            }
        }
    }

    /// The one shared copy of a group and the entry it boots.
    fn target(&mut self, group: &str, entry: &str) -> Arc<Target> {
        if let Some(t) = self.targets.get(group).filter(|t| &*t.entry == entry) {
            return t.clone();
        }
        if self.targets.len() >= NAMES {
            self.targets.clear();
        }
        let t = Arc::new(Target { group: group.into(), entry: entry.into() });
        self.targets.insert(Arc::from(group), t.clone());
        t
    }

    /// The machine under `key`, made if new and marked most recently seen;
    /// the least recently seen go when there are more than `cap`.
    fn touch(&mut self, key: Key, address: IpAddr, cap: usize) -> &mut Seen {
        let i = self.touch_at(key, address, cap);
        &mut self.rows[i]
    }

    /// [`Self::touch`], giving the row's place.
    fn touch_at(&mut self, key: Key, address: IpAddr, cap: usize) -> usize {
        self.seq += 1;
        let seq = self.seq;
        let i = match self.index.get(&key, &self.rows) {
            Some(i) => i,
            None => {
                if self.rows.len() >= cap {
                    self.drop_oldest((cap / 16).max(1));
                }
                // Its key says what it is known by; the caller says the rest.
                let (mac, address) = match key {
                    Key::Mac(m) => (Some(m), address),
                    Key::Address(a) => (None, a),
                };
                self.rows.push(Seen {
                    mac,
                    address,
                    step: Step::Script,
                    stuck: false,
                    target: None,
                    bytes: 0,
                    last: 0,
                    history: History::default(),
                    extra: None,
                    seq,
                });
                let i = self.rows.len() - 1;
                self.index.insert(i, &self.rows);
                i
            }
        };
        let seen = &mut self.rows[i];
        seen.seq = seq;
        seen.last = u32::try_from(now()).unwrap_or(u32::MAX);
        i
    }
}

/// The table's order (`?sort=step` or `?sort=time`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Sort {
    Step,
    #[default]
    Time,
}

impl Sort {
    pub(crate) fn parse(v: &str) -> Option<Sort> {
        match v {
            "step" => Some(Sort::Step),
            "time" => Some(Sort::Time),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Mac {
        s.parse().unwrap()
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn a_boot_moves_through_its_steps_and_is_done_when_its_initrd_is_sent_whole() {
        let s = Status::new(10, Duration::from_secs(120));
        s.script(Some(m("52:54:00:00:00:01")), ip(1), Some("web-1"), &BTreeMap::new(), Ok(("lab", "e1")));
        assert_eq!(s.table(Sort::Time)[0].step, Step::Script);
        s.file(ip(1), "lab", "e1", Step::Kernel);
        s.sent(ip(1), Step::Kernel, 100, true);
        s.file(ip(1), "lab", "e1", Step::Initrd);
        assert_eq!(s.table(Sort::Time)[0].step, Step::Initrd);
        s.sent(ip(1), Step::Initrd, 50, false);
        assert_eq!(s.table(Sort::Time)[0].step, Step::Initrd, "a cut download is not done");
        s.sent(ip(1), Step::Initrd, 200, true);
        let row = &s.table(Sort::Time)[0];
        assert_eq!((row.step, row.bytes, row.mac), (Step::Done, 350, Some(m("52:54:00:00:00:01"))));
        s.script(None, ip(2), None, &BTreeMap::new(), Err("no group matches this machine"));
        let rows = s.table(Sort::Step);
        assert_eq!(rows[0].step, Step::Refused);
        assert_eq!(rows[0].refusal(), Some("no group matches this machine"));
    }

    /// Every row is found by its key, and the index holds nothing else,
    /// through machines arriving, saying their MAC, and being dropped.
    #[test]
    fn the_index_finds_every_row_through_arrivals_merges_and_drops() {
        let s = Status::new(20, Duration::from_secs(120));
        let mut x: u32 = 7;
        for _ in 0..3000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let n = (x >> 16) as u8 % 60;
            let mac = m(&format!("52:54:00:00:00:{n:02x}"));
            match (x >> 8) % 4 {
                0 => s.offer(mac, Some(ip(n)), true),
                1 => s.loader(ip(n)),
                2 => s.script(Some(mac), ip(n), None, &BTreeMap::new(), Ok(("lab", "e1"))),
                _ => s.script(None, ip(n), None, &BTreeMap::new(), Err("no group")),
            }
            let inner = s.lock();
            assert!(inner.rows.len() <= 20);
            assert_eq!(inner.index.len(), inner.rows.len());
            for (i, r) in inner.rows.iter().enumerate() {
                assert_eq!(inner.index.get(&r.key(), &inner.rows), Some(i), "{:?}", r.key());
            }
        }
    }

    #[test]
    fn at_most_cap_machines_are_kept_least_recently_seen_dropped_and_stalled_ones_come_first() {
        let s = Status::new(3, Duration::from_secs(0));
        for n in 1..=5 {
            s.script(Some(m(&format!("52:54:00:00:00:0{n}"))), ip(n), None, &BTreeMap::new(), Ok(("lab", "e1")));
        }
        let macs: Vec<String> = s.table(Sort::Time).into_iter().filter_map(|r| r.mac.map(|m| m.to_string())).collect();
        assert_eq!(macs.len(), 3);
        assert!(!macs.contains(&"52:54:00:00:00:01".to_string()), "{macs:?}");
        assert!(s.lock().at.len() <= 3);
        // With a threshold of 0 s, a boot a second old is stuck; a done one is not.
        std::thread::sleep(Duration::from_millis(1100));
        s.file(ip(5), "lab", "e1", Step::Initrd);
        s.sent(ip(5), Step::Initrd, 1, true);
        let rows = s.table(Sort::Time);
        assert!(rows[0].stuck && rows[1].stuck && !rows[2].stuck, "{rows:?}");
    }

    #[test]
    fn a_full_table_drops_its_least_recently_seen_sixteenth_and_a_row_stays_small() {
        let s = Status::new(32, Duration::from_secs(120));
        let mac = |n: u32| m(&format!("52:54:00:00:{:02x}:{:02x}", n >> 8, n & 0xff));
        for n in 0..32 {
            s.offer(mac(n), Some(IpAddr::from([10, 0, 1, n as u8])), true);
        }
        // Machine 0 is seen again: now 1 and 2 are the least recently seen.
        s.offer(mac(0), None, true);
        s.offer(mac(100), None, true);
        let rows = s.table(Sort::Time);
        assert_eq!(rows.len(), 31, "32 - 32/16 + 1");
        let kept: Vec<Mac> = rows.iter().filter_map(|r| r.mac).collect();
        assert!(kept.contains(&mac(0)) && kept.contains(&mac(100)) && kept.contains(&mac(3)), "{kept:?}");
        assert!(!kept.contains(&mac(1)) && !kept.contains(&mac(2)), "{kept:?}");
        // Every remaining row is still found by its key and its address.
        let inner = s.lock();
        for (i, r) in inner.rows.iter().enumerate() {
            assert_eq!(inner.index.get(&r.key(), &inner.rows), Some(i));
        }
        assert_eq!(inner.index.len(), inner.rows.len(), "no slot points at a dropped row");
        assert!(inner.at.get(&IpAddr::from([10, 0, 1, 1])).is_none(), "a dropped machine's address is forgotten");
        drop(inner);
        // What a 10,000-machine storm costs: a row's bytes, extras apart.
        assert!(std::mem::size_of::<Seen>() <= 96, "{}", std::mem::size_of::<Seen>());
    }

    #[test]
    fn a_pxe_boot_is_seen_from_its_offer_and_its_loader_in_one_row() {
        let s = Status::new(10, Duration::from_secs(120));
        let mac = "52:54:00:00:07:01";
        // The firmware's DISCOVER (no address yet), its REQUEST on 4011, the
        // loader by TFTP, iPXE's own DHCP, then the script with the MAC.
        s.offer(m(mac), None, true);
        s.offer(m(mac), Some(ip(7)), true);
        s.loader(ip(7));
        s.offer(m(mac), Some(ip(7)), false);
        s.script(Some(m(mac)), ip(7), None, &BTreeMap::new(), Ok(("lab", "e1")));
        s.file(ip(7), "lab", "e1", Step::Kernel);
        s.file(ip(7), "lab", "e1", Step::Initrd);
        s.sent(ip(7), Step::Initrd, 10, true);
        let rows = s.table(Sort::Time);
        assert_eq!(rows.len(), 1, "{rows:?}");
        let steps: Vec<Step> = rows[0].history.steps().map(|h| h.0).collect();
        use Step::*;
        assert_eq!(steps, [Offer, Loader, Script, Kernel, Initrd, Done]);
        // Its next power-on starts a new boot.
        s.offer(m(mac), None, true);
        assert_eq!(s.table(Sort::Time)[0].history.steps().map(|h| h.0).collect::<Vec<_>>(), [Offer]);
    }

    #[test]
    fn boots_in_the_last_hour_count_every_boot_per_group_and_mid_boot_counts_machines() {
        let s = Status::new(10, Duration::from_secs(120));
        for _ in 0..3 {
            s.script(Some(m("52:54:00:00:00:01")), ip(1), None, &BTreeMap::new(), Ok(("lab", "e1")));
        }
        s.offer(m("52:54:00:00:00:02"), Some(ip(2)), true);
        s.file(ip(2), "uki", "e1", Step::Uki);
        let counts = s.group_counts(&s.table(Sort::Time));
        assert_eq!(counts.get("lab"), Some(&(3, 1)), "three boots, one machine mid-boot");
        assert_eq!(counts.get("uki"), Some(&(1, 1)));
    }

    #[test]
    fn addresses_a_client_names_cannot_grow_the_table_past_its_bound() {
        let s = Status::new(10, Duration::from_secs(120));
        s.offer(m("52:54:00:00:00:01"), None, true);
        for n in 0..10_000u32 {
            s.address(m("52:54:00:00:00:01"), IpAddr::from(n.to_be_bytes()));
            s.loader(IpAddr::from(((n + 1) << 8).to_be_bytes()));
        }
        let inner = s.lock();
        assert!(inner.at.len() <= 2 * 10 + 16 + 1, "{}", inner.at.len());
        assert!(inner.rows.len() <= 10);
    }

    #[test]
    fn a_uki_only_machine_is_done_when_its_uki_is_sent_whole() {
        let s = Status::new(10, Duration::from_secs(120));
        s.offer(m("52:54:00:00:16:02"), None, true);
        s.address(m("52:54:00:00:16:02"), ip(9));
        s.address(m("52:54:00:00:99:99"), ip(11));
        s.file(ip(9), "uki", "e1", Step::Uki);
        s.sent(ip(9), Step::Uki, 1000, true);
        let row = &s.table(Sort::Time)[0];
        assert_eq!((row.step, row.bytes, row.mac), (Step::Done, 1000, Some(m("52:54:00:00:16:02"))));
        assert_eq!(s.table(Sort::Time).len(), 1, "a MAC never answered is not noted");
        // Without an offer first (a client that kept its address) too.
        s.file(ip(10), "uki", "e1", Step::Uki);
        s.sent(ip(10), Step::Uki, 5, true);
        assert!(s.table(Sort::Time).iter().any(|r| r.address == ip(10) && r.step == Step::Done));
    }
}
