//! `imgd build` and `imgd hash`.

use super::{ProfileArgs, StoreArgs};
use clap::Args;
use imgd::build::Outcome;
use imgd::model::Format;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  imgd build hello                      build every format of profiles/hello.toml
  imgd build hello --format ipxe        only the netboot bundle
  imgd build debian --hardware aws-nitro-x86_64 --set hostname=web-1
  imgd build profiles/hello.toml --json | jq -r .artifacts[].file
  imgd build hello --cache s3://team-images/cache   fetch it if a colleague built it, else build and share")]
pub struct BuildArgs {
    #[command(flatten)]
    pub profile: ProfileArgs,
    /// Build only these formats (repeatable): ipxe, raw, qcow2, vhd, tar, uki.
    #[arg(long = "format", value_name = "FORMAT")]
    pub formats: Vec<Format>,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print the manifest as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: &BuildArgs) -> anyhow::Result<()> {
    let recipe = a.profile.recipe_with(&a.formats)?;
    let store = a.store.open()?;
    let built = a.profile.build(&recipe, &store)?;
    let (e, signed) = (&built.entry, &built.signed);
    if a.json {
        let mut v = serde_json::to_value(&e.manifest)?;
        v["path"] = serde_json::Value::String(e.path.to_string_lossy().into_owned());
        v["cached"] = serde_json::Value::Bool(built.outcome != Outcome::Built);
        v["fetched"] = serde_json::Value::Bool(built.outcome == Outcome::Fetched);
        if let Some((s, _)) = signed {
            v["signed"] = serde_json::json!({
                "cert_sha256": s.record.cert_sha256,
                "path": s.dir.to_string_lossy(),
                "files": s.record.files,
            });
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        eprintln!("{} {}", built.outcome.as_str(), e.name);
        for art in &e.manifest.artifacts {
            eprintln!("  {:<6} {:<15} {:>12} bytes  blake3:{}", art.format, art.file, art.size, &art.blake3[..16]);
        }
        if let Some((s, now)) = signed {
            let how = if *now { "signed" } else { "signed (kept)" };
            eprintln!("{how} with certificate sha256:{} in {}", &s.record.cert_sha256[..16], s.dir.display());
        }
        println!("{}", e.path.display());
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct HashArgs {
    #[command(flatten)]
    pub profile: ProfileArgs,
    /// Only these formats (they are part of the hash).
    #[arg(long = "format", value_name = "FORMAT")]
    pub formats: Vec<Format>,
    /// Print hash, entry name and the hashed recipe as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn hash(a: &HashArgs) -> anyhow::Result<()> {
    let recipe = a.profile.recipe_with(&a.formats)?;
    let hash = imgd::build::input_hash(&recipe);
    if a.json {
        let v = serde_json::json!({
            "hash": hash,
            "name": imgd::model::EntryName::of(&hash, &recipe.name)?,
            "recipe": recipe,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{hash}");
    }
    Ok(())
}
