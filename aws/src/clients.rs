//! One place that builds AWS clients: the standard credential chain and
//! region, `--endpoint-url`/`AWS_ENDPOINT_URL` for a local emulator, the
//! SDK's retries with backoff for throttling and 5xx answers, and the one
//! HTTP client (hyper + rustls on ring, the system's trust roots).

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::AfterDeserializationInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

pub struct Clients {
    pub config: SdkConfig,
    pub endpoint: Option<String>,
}

impl Clients {
    pub async fn load(home_region: &str, aws: &crate::options::Options) -> Clients {
        let endpoint = aws.endpoint_url.clone();
        use aws_smithy_http_client::tls;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .region(Region::new(home_region.to_string()))
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(aws.max_attempts));
        if let Some(e) = &endpoint {
            loader = loader.endpoint_url(e);
        }
        Clients { config: loader.load().await, endpoint }
    }

    pub fn s3(&self) -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::config::Builder::from(&self.config)
            // Emulators and custom endpoints serve buckets by path.
            .force_path_style(self.endpoint.is_some())
            .interceptor(NotTheServices)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    pub fn ec2(&self, region: &str) -> aws_sdk_ec2::Client {
        let conf = aws_sdk_ec2::config::Builder::from(&self.config)
            .region(Region::new(region.to_string()))
            .interceptor(NotTheServices)
            .build();
        aws_sdk_ec2::Client::from_conf(conf)
    }

    pub fn ebs(&self, region: &str) -> aws_sdk_ebs::Client {
        let conf = aws_sdk_ebs::config::Builder::from(&self.config)
            .region(Region::new(region.to_string()))
            .interceptor(NotTheServices)
            .build();
        aws_sdk_ebs::Client::from_conf(conf)
    }

    pub fn ssm(&self, region: &str) -> aws_sdk_ssm::Client {
        let conf = aws_sdk_ssm::config::Builder::from(&self.config)
            .region(Region::new(region.to_string()))
            .interceptor(NotTheServices)
            .build();
        aws_sdk_ssm::Client::from_conf(conf)
    }
}

/// Says what an endpoint answered when an error was not the service's own
/// (an empty 5xx from a load balancer, a proxy's HTML page, an emulator's
/// crash): the SDK reports only "unhandled error" ("Error" for an empty
/// body, "error parsing XML" for text), which names neither the status nor
/// what came back. Logged on every attempt, retried or not.
#[derive(Debug)]
struct NotTheServices;

impl Intercept for NotTheServices {
    fn name(&self) -> &'static str {
        "NotTheServices"
    }

    fn read_after_deserialization(
        &self,
        context: &AfterDeserializationInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let r = context.response();
        let status = r.status().as_u16();
        let body = r.body().bytes().unwrap_or_default();
        if let Some(what) = not_the_services(status, r.headers().contains_key("x-amzn-errortype"), body) {
            let op = cfg.load::<Metadata>().map_or("a call".into(), |m| format!("{} {}", m.service(), m.name()));
            tracing::warn!("{op}: the endpoint answered {what}");
        }
        Ok(())
    }
}

/// What an answer was, when it is an error and not the service's: AWS's
/// errors carry a code (`<Code>` in XML, `__type` or the
/// `x-amzn-errortype` header in JSON). A 4xx with an empty body is left
/// alone: HEAD answers have no body, and S3's 404 to a HEAD is routine.
fn not_the_services(status: u16, errortype_header: bool, body: &[u8]) -> Option<String> {
    let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    if status < 400 || errortype_header || has(b"<Code>") || has(b"__type") {
        return None;
    }
    if body.is_empty() {
        return (status >= 500).then(|| format!("HTTP {status} with an empty body"));
    }
    // The endpoint's words, untrusted: a short start, control characters escaped.
    let start = String::from_utf8_lossy(&body[..body.len().min(80)]).escape_debug().to_string();
    Some(format!("HTTP {status} with a body that is not the service's error ({} bytes: \"{start}\")", body.len()))
}

#[cfg(test)]
mod tests {
    use super::not_the_services;

    #[test]
    fn only_errors_that_are_not_the_services_are_described() {
        assert_eq!(not_the_services(502, false, b"").as_deref(), Some("HTTP 502 with an empty body"));
        let html = not_the_services(403, false, b"<html>\n<title>Forbidden</title>").unwrap();
        assert_eq!(
            html,
            "HTTP 403 with a body that is not the service's error (31 bytes: \"<html>\\n<title>Forbidden</title>\")"
        );
        assert!(not_the_services(500, false, &[b'x'; 500]).unwrap().contains("500 bytes"), "the start only");
        for (status, header, body) in [
            (200, false, &b""[..]),
            (404, false, b""),
            (503, false, b"<Error><Code>SlowDown</Code></Error>"),
            (400, false, b"{\"__type\":\"ValidationException\"}"),
            (503, true, b"{\"message\":\"Rate exceeded\"}"),
        ] {
            assert_eq!(not_the_services(status, header, body), None, "{status} {body:?}");
        }
    }
}
