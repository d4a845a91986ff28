//! Which remote build cache a build uses: `--cache` (or `$IMGD_BUILD_CACHE`),
//! else `cache = "s3://…"` in `<root>/imgd.toml`; the URL is checked here,
//! where it enters, and opened as the one kind there is ([`super::s3`]).

use super::remote::Remote;
use crate::config::error::line_col;
use crate::config::ConfigError;
use std::path::Path;

/// `<root>/imgd.toml`: settings shared by everyone who builds in this folder.
///
/// ```toml
/// cache = "s3://team-images/cache"   # like --cache / $IMGD_BUILD_CACHE
/// ```
#[derive(serde::Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    pub cache: Option<toml::Spanned<String>>,
}

impl Settings {
    pub fn load(root: &Path) -> Result<(Settings, String), ConfigError> {
        let path = root.join("imgd.toml");
        let Ok(text) = std::fs::read_to_string(&path) else { return Ok((Settings::default(), String::new())) };
        let s = toml::from_str(&text).map_err(|e| crate::config::error::from_toml(&path, &text, &e))?;
        Ok((s, text))
    }
}

/// The cache to use: the flag (or its environment variable), else imgd.toml.
/// `endpoint` is a custom S3 endpoint (else `$AWS_ENDPOINT_URL` or AWS's own).
pub fn configured(
    flag: Option<&str>,
    root: &Path,
    endpoint: Option<&str>,
) -> Result<Option<Box<dyn Remote>>, ConfigError> {
    if let Some(url) = flag {
        return open(url, endpoint).map_err(|m| ConfigError::new("--cache", m));
    }
    let (settings, text) = Settings::load(root)?;
    let Some(url) = settings.cache else { return Ok(None) };
    open(url.get_ref(), endpoint).map_err(|m| {
        ConfigError::new(root.join("imgd.toml"), m).key("cache").at(Some(line_col(&text, url.span().start)))
    })
}

fn open(url: &str, endpoint: Option<&str>) -> Result<Option<Box<dyn Remote>>, String> {
    if url.is_empty() {
        return Ok(None);
    }
    if !url.starts_with("s3://") {
        return Err(format!("`{url}`: a cache is an s3://bucket/prefix URL"));
    }
    #[cfg(feature = "aws")]
    {
        let env = std::env::var("AWS_ENDPOINT_URL").ok();
        let cache = super::s3::S3Cache::new(url, endpoint.or(env.as_deref()))?;
        Ok(Some(Box::new(cache)))
    }
    #[cfg(not(feature = "aws"))]
    {
        let _ = endpoint;
        Err(format!("`{url}`: this imgd was built without the `aws` feature, which S3 caches need"))
    }
}
