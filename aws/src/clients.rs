//! One place that builds AWS clients: the standard credential chain and
//! region, `--endpoint-url`/`AWS_ENDPOINT_URL` for a local emulator, the
//! SDK's retries with backoff for throttling and 5xx answers, and the one
//! HTTP client (hyper + rustls on ring, the system's trust roots).

use aws_config::{BehaviorVersion, Region, SdkConfig};

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
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    pub fn ec2(&self, region: &str) -> aws_sdk_ec2::Client {
        let conf = aws_sdk_ec2::config::Builder::from(&self.config).region(Region::new(region.to_string())).build();
        aws_sdk_ec2::Client::from_conf(conf)
    }

    pub fn ebs(&self, region: &str) -> aws_sdk_ebs::Client {
        let conf = aws_sdk_ebs::config::Builder::from(&self.config).region(Region::new(region.to_string())).build();
        aws_sdk_ebs::Client::from_conf(conf)
    }

    pub fn ssm(&self, region: &str) -> aws_sdk_ssm::Client {
        let conf = aws_sdk_ssm::config::Builder::from(&self.config).region(Region::new(region.to_string())).build();
        aws_sdk_ssm::Client::from_conf(conf)
    }
}
