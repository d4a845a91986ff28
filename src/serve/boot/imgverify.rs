//! Detached CMS signatures for iPXE's `imgverify`: with `[ipxe_signing]` in
//! machines.toml, every script and boot file imgd serves has a `.sig` beside
//! it (`/boot.ipxe.sig`, `/ipxe.sig?mac=…`, `/artifacts/<entry>/<file>.sig`).
//!
//! The signatures are made by `openssl cms` (Debian's openssl), the tool
//! iPXE's own documentation signs with: DER, the signer's certificate (and
//! any intermediates) included, no signed attributes (`-noattr`: iPXE checks
//! the signature over the content digest only). Without signed attributes an
//! RSA PKCS#1 v1.5 signature is a function of the bytes, so a signature is
//! computed once per distinct content and cached: scripts by their SHA-256,
//! store files (immutable) by entry and name. The key is read only by
//! openssl; imgd never opens it, logs it or copies it.

use super::error::{BootError, Result};
use crate::fsutil::IoAt;
use bytes::Bytes;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

/// Scripts whose signatures are kept; past this the cache starts over
/// (scripts are per group, so a fleet has few distinct ones).
const MAX_CACHED_SCRIPTS: usize = 4096;

/// `[ipxe_signing]` in machines.toml, paths resolved against the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpxeSigning {
    /// The code-signing key (PEM); only openssl reads it.
    pub key: PathBuf,
    /// Its certificate (PEM), with extended key usage `codeSigning` (iPXE
    /// refuses signatures by any other), issued by the root built into the
    /// machines' iPXE (`TRUST=`).
    pub cert: PathBuf,
    /// Intermediate certificates to include in each signature (PEM bundle).
    pub certs: Option<PathBuf>,
    /// SHA-256 of the certificate (DER), for logs and metrics.
    pub cert_sha256: String,
}

impl IpxeSigning {
    /// Checks what can be checked without the clients: the certificate is
    /// one, allows code signing, and the key signs with it (a probe
    /// signature, verified). The error says which file is wrong.
    pub(crate) fn check(key: PathBuf, cert: PathBuf, certs: Option<PathBuf>) -> Result<IpxeSigning> {
        let cert_sha256 = crate::sign::cert_fingerprint(&cert)?;
        let eku = Command::new("openssl")
            .args(["x509", "-noout", "-ext", "extendedKeyUsage", "-in"])
            .arg(&cert)
            .output()
            .map_err(|source| BootError::Openssl { doing: "running", source })?;
        if !String::from_utf8_lossy(&eku.stdout).contains("Code Signing") {
            return Err(BootError::Signing(format!(
                "{}: the certificate has no extended key usage codeSigning, which iPXE requires of a signer",
                cert.display()
            )));
        }
        if let Some(c) = &certs {
            std::fs::metadata(c).at("reading", c)?;
        }
        let s = IpxeSigning { key, cert, certs, cert_sha256 };
        let probe = b"imgd: signing probe\n";
        let sig = s.sign(Input::Bytes(probe))?;
        if sig.is_empty() {
            return Err(BootError::Signing("openssl made an empty signature".into()));
        }
        Ok(s)
    }

    fn sign(&self, input: Input<'_>) -> Result<Vec<u8>> {
        let mut cmd = Command::new("openssl");
        cmd.args(["cms", "-sign", "-binary", "-noattr", "-outform", "DER", "-nosmimecap", "-md", "sha256"]);
        cmd.arg("-signer").arg(&self.cert).arg("-inkey").arg(&self.key);
        if let Some(c) = &self.certs {
            cmd.arg("-certfile").arg(c);
        }
        if let Input::File(p) = input {
            cmd.arg("-in").arg(p);
        }
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let openssl = |doing| move |source| BootError::Openssl { doing, source };
        let mut child = cmd.spawn().map_err(openssl("running"))?;
        let Some(mut stdin) = child.stdin.take() else {
            return Err(BootError::Signing("openssl's stdin was not piped".into()));
        };
        // openssl reads all of the input before it writes the (small)
        // signature. One that fails first (a key that is not the
        // certificate's) may exit before reading it: then its status and
        // message say why, not the broken pipe, which a race decided.
        let mut unread = None;
        if let Input::Bytes(b) = input {
            match stdin.write_all(b) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => unread = Some(e),
                r => r.map_err(openssl("writing to"))?,
            }
        }
        drop(stdin);
        let out = child.wait_with_output().map_err(openssl("waiting for"))?;
        if let (Some(e), true) = (unread, out.status.success()) {
            return Err(openssl("writing to")(e));
        }
        if !out.status.success() {
            // openssl's message names the file at fault (key/cert mismatch,
            // unreadable key); it never prints the key.
            let err = String::from_utf8_lossy(&out.stderr);
            let (k, c) = (self.key.display(), self.cert.display());
            if err.contains("key values mismatch") {
                return Err(BootError::Signing(format!("{k} is not the key of {c}")));
            }
            let first = err.lines().find(|l| !l.trim().is_empty()).unwrap_or("failed");
            return Err(BootError::Signing(format!("openssl cms -sign with {k} and {c}: {}", first.trim())));
        }
        Ok(out.stdout)
    }
}

enum Input<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
}

/// Signs for the server, caching each signature.
pub struct Signer {
    pub signing: IpxeSigning,
    scripts: Mutex<HashMap<[u8; 32], Bytes>>,
    /// One cell per store file: concurrent first requests wait for one openssl.
    files: Mutex<HashMap<PathBuf, Arc<OnceCell<Bytes>>>>,
}

impl Signer {
    pub(crate) fn new(signing: IpxeSigning) -> Signer {
        Signer { signing, scripts: Mutex::default(), files: Mutex::default() }
    }

    /// The signature of a rendered script.
    pub(crate) async fn script(self: &Arc<Self>, text: &str) -> Result<Bytes> {
        let key: [u8; 32] =
            sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(text.as_bytes())).into();
        if let Some(sig) = self.scripts.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(sig.clone());
        }
        let me = self.clone();
        let body = text.as_bytes().to_vec();
        let sig = tokio::task::spawn_blocking(move || me.signing.sign(Input::Bytes(&body))).await??;
        let sig = Bytes::from(sig);
        let mut cache = self.scripts.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED_SCRIPTS {
            cache.clear();
        }
        cache.insert(key, sig.clone());
        Ok(sig)
    }

    /// The signature of an immutable store file that its manifest says is
    /// `size` bytes: as for sending it, a plain file of that size or nothing
    /// (no symlink out of the store is ever signed).
    pub(crate) async fn file(self: &Arc<Self>, path: PathBuf, size: u64) -> Result<Bytes> {
        let cell = self.files.lock().unwrap_or_else(|p| p.into_inner()).entry(path.clone()).or_default().clone();
        let me = self.clone();
        let sig = cell
            .get_or_try_init(|| async move {
                let sig = tokio::task::spawn_blocking(move || {
                    let meta = std::fs::symlink_metadata(&path).at("reading", &path)?;
                    if !meta.is_file() || meta.len() != size {
                        return Err(BootError::NotPlain { path, size });
                    }
                    me.signing.sign(Input::File(&path))
                })
                .await??;
                Ok::<_, BootError>(Bytes::from(sig))
            })
            .await?;
        Ok(sig.clone())
    }
}
