//! `imgd sign`: Secure Boot signatures for a build's EFI binaries, made
//! after the build (see `imgd::sign`).

use super::{ProfileArgs, StoreArgs};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  imgd sign hello --key db.key --cert db.crt     build (or find) hello and sign its unified kernel image
  imgd test hello --format uki --secure-boot db.crt   boot the signed image with Secure Boot enforced

The key is read by sbsign only; it is never copied into the store. Signed
copies go to <store>/.signed/<entry>/<certificate fingerprint>/: the uki, and
for UEFI entries the raw disk with signed systemd-boot and UKI on its ESP.
Signing again with the same certificate replaces them, with another adds a
set beside.")]
pub struct SignArgs {
    #[command(flatten)]
    pub profile: ProfileArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// The private key (PEM, unencrypted).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Its certificate (PEM): the one enrolled in the firmware's db.
    #[arg(long, value_name = "FILE")]
    pub cert: PathBuf,
    /// Print the signature record as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: &SignArgs) -> anyhow::Result<()> {
    let recipe = a.profile.recipe_with(&[])?;
    if !recipe.formats.contains(&imgd::model::Format::Uki) {
        anyhow::bail!(imgd::config::ConfigError::new(
            "formats",
            format!("profile {} builds no uki: add \"uki\" to its formats to sign it", recipe.name)
        ));
    }
    let store = a.store.open()?;
    let entry = a.profile.build(&recipe, &store)?.entry;
    let signed = imgd::sign::sign(&store, &entry, &a.key, &a.cert)?;
    if a.json {
        let mut v = serde_json::to_value(&signed.record)?;
        v["path"] = serde_json::Value::String(signed.dir.to_string_lossy().into_owned());
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        eprintln!("signed {} with certificate sha256:{}", entry.name, &signed.record.cert_sha256[..16]);
        for f in &signed.record.files {
            eprintln!("  {:<15} {:>12} bytes  blake3:{}", f.file, f.size, &f.blake3[..16]);
        }
        println!("{}", signed.dir.display());
    }
    Ok(())
}
