//! Reading profile and hardware files: `extends` layering, `--set` overrides,
//! relative paths made absolute against the file that wrote them, and a record
//! of where every key was set so later errors can point at file, line and key.

use super::error::{from_toml, line_col, ConfigError};
use super::hardware::HardwareFile;
use super::profile::ProfileFile;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::de::{DeTable, DeValue};
use toml::{Table, Value};

/// Keys whose string values are paths, relative to the file that sets them.
/// `[]` stands for "every element of the array".
const PATH_KEYS: &[&str] = &[
    "base.tarball",
    "base.dir",
    "base.debs[]",
    "base.debian.keyring",
    "kernel.deb",
    "kernel.image",
    "kernel.modules",
    "files[].source",
    "secure_boot.key",
    "secure_boot.cert",
];

/// Arrays of tables that a child profile appends to instead of replacing.
const APPENDED_ARRAYS: &[&str] = &["files", "users"];

/// Where a key was set: a file (with 1-based line and column) or a `--set`.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub file: PathBuf,
    pub pos: Option<(usize, usize)>,
}

/// Where every key of a build's inputs was set: each file is parsed once and
/// its span map travels with the profile into the [`super::Recipe`], so an
/// error found at build time names the file that set the value (a parent
/// profile, the child, a `--set` or the hardware file), its line and the key.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    /// The profile named on the command line (for keys set nowhere).
    top: PathBuf,
    /// Layered profile keys (`files[2].mode`) -> where set.
    profile: BTreeMap<String, Origin>,
    hardware_file: PathBuf,
    hardware: BTreeMap<String, Origin>,
}

impl Origins {
    /// An error about profile `key`, pointing at the file and line that set it
    /// (or its nearest parent key; or the profile itself for a missing key).
    pub(crate) fn profile_error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let origin = nearest(&self.profile, key).unwrap_or(Origin { file: self.top.clone(), pos: None });
        ConfigError::new(origin.file, message).key(key).at(origin.pos)
    }

    pub(crate) fn hardware_error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let pos = nearest(&self.hardware, key).and_then(|o| o.pos);
        ConfigError::new(&self.hardware_file, message).key(key).at(pos)
    }
}

/// The origin of `key`, else of its nearest parent ("files[2].source" unset?
/// then "files[2]").
fn nearest(map: &BTreeMap<String, Origin>, key: &str) -> Option<Origin> {
    let mut k = key;
    loop {
        if let Some(o) = map.get(k) {
            return Some(o.clone());
        }
        k = &k[..k.rfind(['.', '['])?];
    }
}

/// A profile after layering, with the hardware file it names.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The profile file named on the command line.
    pub profile_path: PathBuf,
    pub profile: ProfileFile,
    pub hardware_name: String,
    pub hardware_path: PathBuf,
    pub hardware: HardwareFile,
    pub origins: std::sync::Arc<Origins>,
}

impl Loaded {
    pub(crate) fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        self.origins.profile_error(key, message)
    }

    pub(crate) fn hardware_error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        self.origins.hardware_error(key, message)
    }
}

/// What the caller asked for on the command line.
#[derive(Debug, Clone, Default)]
pub struct LoadRequest {
    /// A profile path, or a name looked up as `<root>/profiles/<name>.toml`.
    pub profile: String,
    /// Directory holding `profiles/` and `hardware/`.
    pub root: PathBuf,
    /// `--hardware`: a name in `hardware/` or a path.
    pub hardware: Option<String>,
    /// `--set key=value`, applied in order over the layered profile.
    pub sets: Vec<String>,
}

pub fn load(req: &LoadRequest) -> Result<Loaded, ConfigError> {
    let profile_path = find_profile(&req.root, &req.profile)?;
    let mut origins = BTreeMap::new();
    let mut table = load_layers(&profile_path, &mut origins, 0, &mut Vec::new())?;

    for set in &req.sets {
        apply_set(&mut table, set, &mut origins)?;
        // Validate after each --set so the error names the one at fault.
        if let Err(e) = Table::try_into::<ProfileFile>(table.clone()) {
            return Err(ConfigError::new("--set", e.message().trim().to_string()).key(set.clone()));
        }
    }
    let profile: ProfileFile = table
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::new(&profile_path, e.message().trim().to_string()))?;

    let (hardware_name, hardware_ref) = match (&req.hardware, &profile.hardware) {
        (Some(h), _) => (h.clone(), h.clone()),
        (None, Some(h)) => (h.clone(), h.clone()),
        (None, None) => {
            return Err(ConfigError::new(&profile_path, "no hardware: set `hardware = \"NAME\"` or pass --hardware")
                .key("hardware"))
        }
    };
    let hardware_path = find_hardware(&req.root, &profile_path, &hardware_ref).map_err(|m| {
        let o = origins.get("hardware").cloned().filter(|_| req.hardware.is_none());
        match o {
            Some(o) => ConfigError::new(o.file, m).key("hardware").at(o.pos),
            None => ConfigError::new("--hardware", m),
        }
    })?;
    let (hardware, hw_origins): (HardwareFile, _) = parse_once(&hardware_path)?;
    let hardware_name =
        Path::new(&hardware_name).file_stem().map_or(hardware_name.clone(), |s| s.to_string_lossy().into_owned());
    let origins = Origins {
        top: profile_path.clone(),
        profile: origins,
        hardware_file: hardware_path.clone(),
        hardware: hw_origins,
    };
    Ok(Loaded { profile_path, profile, hardware_name, hardware_path, hardware, origins: std::sync::Arc::new(origins) })
}

/// Reads and parses a TOML file once: the typed value (errors at their own
/// line and column) and where each key is.
fn parse_once<T: serde::de::DeserializeOwned>(path: &Path) -> Result<(T, BTreeMap<String, Origin>), ConfigError> {
    let text = read(path)?;
    let (typed, _, origins) = parse_text(path, &text)?;
    Ok((typed, origins))
}

/// One parse of `text`: the typed value, the plain table, and the origins.
fn parse_text<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &str,
) -> Result<(T, Table, BTreeMap<String, Origin>), ConfigError> {
    use serde::Deserialize;
    let doc = DeTable::parse(text).map_err(|e| from_toml(path, text, &e))?;
    let mut origins = BTreeMap::new();
    collect_origins(path, text, doc.get_ref(), "", &mut origins);
    let typed = T::deserialize(toml::de::Deserializer::from(doc.clone())).map_err(|e| from_toml(path, text, &e))?;
    let table = Table::deserialize(toml::de::Deserializer::from(doc)).map_err(|e| from_toml(path, text, &e))?;
    Ok((typed, table, origins))
}

/// Line and column of a dotted `key` (e.g. `group[1].selector`) in TOML
/// text already read, or of its nearest parent that is there.
pub(crate) fn locate_in(path: &Path, text: &str, key: &str) -> Option<(usize, usize)> {
    let mut origins = BTreeMap::new();
    let t = DeTable::parse(text).ok()?;
    collect_origins(path, text, t.get_ref(), "", &mut origins);
    nearest(&origins, key)?.pos
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError::new(path, format!("cannot read: {e}")))
}

fn looks_like_path(s: &str) -> bool {
    s.contains('/') || s.ends_with(".toml")
}

pub(crate) fn find_profile(root: &Path, arg: &str) -> Result<PathBuf, ConfigError> {
    let direct = PathBuf::from(arg);
    if looks_like_path(arg) || direct.is_file() {
        return if direct.is_file() {
            Ok(absolute(&direct))
        } else {
            Err(ConfigError::new(arg, "no such profile file"))
        };
    }
    let named = root.join("profiles").join(format!("{arg}.toml"));
    if named.is_file() {
        return Ok(absolute(&named));
    }
    let mut known: Vec<String> = std::fs::read_dir(root.join("profiles"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".toml").map(str::to_string))
        // Deployments and composition files live beside the profiles; they
        // are not profiles.
        .filter(|n| !n.ends_with(".deploy") && !n.ends_with(".compose"))
        .collect();
    known.sort();
    Err(ConfigError::new(
        &named,
        format!(
            "no profile named `{arg}` (known: {})",
            if known.is_empty() { "none".into() } else { known.join(", ") }
        ),
    ))
}

fn find_hardware(root: &Path, profile: &Path, arg: &str) -> Result<PathBuf, String> {
    if looks_like_path(arg) {
        let p = profile.parent().unwrap_or(Path::new(".")).join(arg);
        return if p.is_file() { Ok(p) } else { Err(format!("no such hardware file {}", p.display())) };
    }
    // Next to the profile's own folder first (a checkout used from elsewhere), then the root.
    let mut tried = Vec::new();
    for dir in [profile.parent().and_then(Path::parent).map(|p| p.join("hardware")), Some(root.join("hardware"))]
        .into_iter()
        .flatten()
    {
        let p = dir.join(format!("{arg}.toml"));
        if p.is_file() {
            return Ok(p);
        }
        tried.push(dir.display().to_string());
    }
    Err(format!("no hardware named `{arg}` in {}", tried.join(" or ")))
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Loads `path` and everything it extends, parent first, into one merged table.
fn load_layers(
    path: &Path,
    origins: &mut BTreeMap<String, Origin>,
    depth: usize,
    chain: &mut Vec<PathBuf>,
) -> Result<Table, ConfigError> {
    if chain.contains(&path.to_path_buf()) || depth > 16 {
        return Err(ConfigError::new(path, "`extends` forms a cycle").key("extends"));
    }
    chain.push(path.to_path_buf());
    let text = read(path)?;
    // Strict, typed parse of this file alone: unknown keys and bad values are
    // reported against this file's own lines.
    let (typed, mut table, own): (ProfileFile, _, _) = parse_text(path, &text)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    absolutize_paths(&mut table, dir);
    table.remove("extends");

    let Some(parent) = typed.extends else {
        origins.extend(own);
        return Ok(table);
    };
    let parent_path = dir.join(&parent);
    if !parent_path.is_file() {
        let pos = own.get("extends").and_then(|o| o.pos);
        return Err(ConfigError::new(path, format!("extends a missing file {}", parent_path.display()))
            .key("extends")
            .at(pos));
    }
    let mut merged = load_layers(&parent_path, origins, depth + 1, chain)?;
    // Elements appended to the parent's arrays keep their own origins, shifted.
    let offsets: BTreeMap<&str, usize> =
        APPENDED_ARRAYS.iter().map(|k| (*k, merged.get(*k).and_then(Value::as_array).map_or(0, Vec::len))).collect();
    for (key, origin) in own {
        let key = offsets.iter().fold(key, |key, (arr, off)| shift_index(&key, arr, *off));
        origins.insert(key, origin);
    }
    merge(&mut merged, table, "");
    Ok(merged)
}

/// "files[1].mode" with offset 2 -> "files[3].mode".
fn shift_index(key: &str, array: &str, offset: usize) -> String {
    let prefix = format!("{array}[");
    let Some(rest) = key.strip_prefix(&prefix) else { return key.to_string() };
    let Some((n, tail)) = rest.split_once(']') else { return key.to_string() };
    match n.parse::<usize>() {
        Ok(n) => format!("{array}[{}]{tail}", n + offset),
        Err(_) => key.to_string(),
    }
}

/// Child over parent: tables merge key by key, the appended arrays concatenate,
/// everything else is replaced.
fn merge(parent: &mut Table, child: Table, prefix: &str) {
    for (k, v) in child {
        let full = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match (parent.get_mut(&k), v) {
            (Some(Value::Table(p)), Value::Table(c)) => merge(p, c, &full),
            (Some(Value::Array(p)), Value::Array(c)) if APPENDED_ARRAYS.contains(&full.as_str()) => p.extend(c),
            (_, v) => {
                parent.insert(k, v);
            }
        }
    }
}

fn absolutize_paths(table: &mut Table, dir: &Path) {
    for key in PATH_KEYS {
        visit_key(table, key, &mut |v| {
            if let Value::String(s) = v {
                // Bare package names (base.debs, kernel.deb) are not paths.
                let is_name = (key.starts_with("base.debs") || *key == "kernel.deb") && !looks_like_path(s);
                if !is_name && !Path::new(s.as_str()).is_absolute() {
                    *s = dir.join(&*s).to_string_lossy().into_owned();
                }
            }
        });
    }
}

fn visit_key(table: &mut Table, key: &str, f: &mut dyn FnMut(&mut Value)) {
    let (head, rest) = match key.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (key, None),
    };
    let (name, each) = match head.strip_suffix("[]") {
        Some(n) => (n, true),
        None => (head, false),
    };
    let Some(v) = table.get_mut(name) else { return };
    let targets: Vec<&mut Value> = match (each, v) {
        (true, Value::Array(a)) => a.iter_mut().collect(),
        (true, _) => return,
        (false, v) => vec![v],
    };
    for t in targets {
        match (rest, t) {
            (Some(r), Value::Table(sub)) => visit_key(sub, r, f),
            (None, t) => f(t),
            _ => {}
        }
    }
}

fn collect_origins(file: &Path, text: &str, table: &DeTable<'_>, prefix: &str, out: &mut BTreeMap<String, Origin>) {
    for (k, v) in table {
        let key = if prefix.is_empty() { k.get_ref().to_string() } else { format!("{prefix}.{}", k.get_ref()) };
        let pos = Some(line_col(text, k.span().start));
        out.insert(key.clone(), Origin { file: file.to_path_buf(), pos });
        collect_value(file, text, v.get_ref(), &key, out);
    }
}

fn collect_value(file: &Path, text: &str, v: &DeValue<'_>, key: &str, out: &mut BTreeMap<String, Origin>) {
    match v {
        DeValue::Table(t) => collect_origins(file, text, t, key, out),
        DeValue::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                let k = format!("{key}[{i}]");
                out.insert(
                    k.clone(),
                    Origin { file: file.to_path_buf(), pos: Some(line_col(text, item.span().start)) },
                );
                collect_value(file, text, item.get_ref(), &k, out);
            }
        }
        _ => {}
    }
}

const MAX_SET_DEPTH: usize = 8;

/// `--set a.b=value`: the value is read as TOML (`3`, `true`, `["x"]`) and
/// taken as a plain string when it is not valid TOML.
pub(super) fn apply_set(
    table: &mut Table,
    set: &str,
    origins: &mut BTreeMap<String, Origin>,
) -> Result<(), ConfigError> {
    let err = |m: &str| ConfigError::new("--set", m.to_string()).key(set.to_string());
    let (key, raw) = set.split_once('=').ok_or_else(|| err("expected KEY=VALUE"))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(err("expected KEY=VALUE with a dotted key such as disk.size"));
    }
    // The schema is a few levels deep; a deeper key can only be a mistake
    // (and nested tables thousands deep would exhaust the stack).
    if key.split('.').count() > MAX_SET_DEPTH {
        return Err(err(&format!("keys are at most {MAX_SET_DEPTH} levels deep")));
    }
    let value = toml::from_str::<Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_string()));
    let parts: Vec<&str> = key.split('.').collect();
    let mut cur = table;
    for p in &parts[..parts.len() - 1] {
        let entry = cur.entry(p.to_string()).or_insert_with(|| Value::Table(Table::new()));
        cur = match entry {
            Value::Table(t) => t,
            _ => return Err(err(&format!("`{p}` is not a table"))),
        };
    }
    cur.insert(parts[parts.len() - 1].to_string(), value);
    origins.insert(key.to_string(), Origin { file: PathBuf::from("--set"), pos: None });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    fn project() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "hardware/vm.toml", "arch = \"x86_64\"\nfirmware = \"uefi\"\n");
        d
    }

    fn req(d: &Path, profile: &str) -> LoadRequest {
        LoadRequest { profile: profile.into(), root: d.to_path_buf(), ..Default::default() }
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let d = project();
        write(d.path(), "profiles/p.toml", "hardware = \"vm\"\n\n[disk]\nsize = \"1GiB\"\nsise = 3\n");
        let e = load(&req(d.path(), "p")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("sise"));
        assert_eq!(e.pos, Some((5, 1)));
        assert!(e.file.ends_with("profiles/p.toml"));
    }

    #[test]
    fn bad_value_names_its_line() {
        let d = project();
        write(d.path(), "profiles/p.toml", "hardware = \"vm\"\n[[files]]\npath = \"/x\"\nmode = \"0999\"\n");
        let e = load(&req(d.path(), "p")).unwrap_err();
        assert_eq!(e.pos.map(|p| p.0), Some(4), "{e}");
        assert_eq!(e.key.as_deref(), Some("mode"));
        assert!(e.message.contains("invalid mode"), "{e}");
    }

    #[test]
    fn extends_layers_and_appends_files() {
        let d = project();
        write(
            d.path(),
            "profiles/base.toml",
            "hardware = \"vm\"\nhostname = \"a\"\n[disk]\nsize = \"1GiB\"\nesp_size = \"32MiB\"\n[[files]]\npath = \"/a\"\nsource = \"a.txt\"\n",
        );
        write(d.path(), "profiles/child.toml", "extends = \"base.toml\"\nhostname = \"b\"\n[disk]\nsize = \"2GiB\"\n[[files]]\npath = \"/b\"\ncontent = \"x\"\n");
        let l = load(&req(d.path(), "child")).unwrap();
        assert_eq!(l.profile.hostname.as_deref(), Some("b"));
        let disk = l.profile.disk.as_ref().unwrap();
        assert_eq!(disk.size.unwrap().0, 2 << 30);
        assert_eq!(disk.esp_size.unwrap().0, 32 << 20);
        assert_eq!(l.profile.files.len(), 2);
        // The parent's relative source is resolved against the parent's folder.
        assert_eq!(l.profile.files[0].source.as_deref(), Some(d.path().join("profiles/a.txt").to_str().unwrap()));
        // Errors about the child's second file point into the child.
        let e = l.error("files[1].content", "boom");
        assert!(e.file.ends_with("child.toml"), "{e}");
        assert_eq!(e.pos.map(|p| p.0), Some(7));
        let e = l.error("files[0].source", "boom");
        assert!(e.file.ends_with("base.toml"), "{e}");
    }

    #[test]
    fn extends_cycle_is_an_error() {
        let d = project();
        write(d.path(), "profiles/a.toml", "extends = \"b.toml\"\n");
        write(d.path(), "profiles/b.toml", "extends = \"a.toml\"\n");
        let e = load(&req(d.path(), "a")).unwrap_err();
        assert!(e.message.contains("cycle"), "{e}");
    }

    #[test]
    fn set_overrides_and_validates() {
        let d = project();
        write(d.path(), "profiles/p.toml", "hardware = \"vm\"\nhostname = \"a\"\n");
        let mut r = req(d.path(), "p");
        r.sets = vec!["hostname=web-1".into(), "disk.size=4GiB".into(), "formats=[\"raw\"]".into()];
        let l = load(&r).unwrap();
        assert_eq!(l.profile.hostname.as_deref(), Some("web-1"));
        assert_eq!(l.profile.disk.unwrap().size.unwrap().0, 4 << 30);
        r.sets = vec!["disk.size=lots".into()];
        let e = load(&r).unwrap_err();
        assert_eq!(e.file, PathBuf::from("--set"));
        assert!(e.message.contains("invalid size"), "{e}");
        r.sets = vec!["nosuchkey=1".into()];
        assert!(load(&r).unwrap_err().message.contains("unknown field"));
    }

    #[test]
    fn missing_profile_lists_known_ones() {
        let d = project();
        write(d.path(), "profiles/hello.toml", "");
        let e = load(&req(d.path(), "helo")).unwrap_err();
        assert!(e.message.contains("known: hello"), "{e}");
    }

    #[test]
    fn unknown_hardware_points_at_the_key() {
        let d = project();
        write(d.path(), "profiles/p.toml", "\nhardware = \"nope\"\n");
        let e = load(&req(d.path(), "p")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("hardware"));
        assert_eq!(e.pos, Some((2, 1)));
    }

    /// Whatever a profile file says, loading it gives a profile or an error
    /// that names a file (never a panic).
    #[test]
    fn any_profile_text_loads_or_fails_cleanly() {
        use proptest::prelude::*;
        let d = project();
        let piece = prop_oneof![
            Just("hardware = \"vm\"\n".to_string()),
            Just("[base]\n".to_string()),
            Just("[[files]]\n".to_string()),
            Just("[[users]]\n".to_string()),
            "extends = \"[a-z./]{0,8}\"\n",
            "(hostname|name|init|cmdline) = \"[ -~]{0,8}\"\n",
            "(path|content|mode|owner|symlink) = \"[ -~]{0,8}\"\n",
            "(size|free|esp_size) = (\"[0-9]{0,4}[KMGT]?i?B?\"|[0-9]{1,25})\n",
            "formats = \\[\"(ipxe|raw|tar|iso)\"\\]\n",
            "[\\x00-\\x7f]{0,12}",
        ];
        proptest!(ProptestConfig::with_cases(400), |(parts in prop::collection::vec(piece, 0..12), sets in prop::collection::vec("[a-z.\\[\\]]{0,12}=[ -~]{0,10}", 0..3))| {
            write(d.path(), "profiles/p.toml", &parts.concat());
            let r = LoadRequest { profile: "p".into(), root: d.path().to_path_buf(), sets, ..Default::default() };
            if let Err(e) = load(&r) {
                prop_assert!(!e.file.as_os_str().is_empty());
            }
        });
    }
}
