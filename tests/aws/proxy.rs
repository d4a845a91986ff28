//! A loopback HTTP proxy in front of moto that injects faults, and answers the
//! EC2 calls moto lacks (ImportSnapshot, DescribeImportSnapshotTasks,
//! Enable/DisableImageDeprecation, with `deprecationTime` added to
//! DescribeImages' answers) the way AWS does.
//!
//! It also mends ways moto's answers differ from AWS's, so the SDK can parse
//! them and imgd sees what AWS would show: ListParts' root element, and EBS
//! direct snapshots — moto reports one `completed` from StartSnapshot on and
//! checks nothing, so the proxy keeps each one's state (pending until
//! CompleteSnapshot, error once "cancelled" with [`Proxy::cancel_snapshot`])
//! in DescribeSnapshots, refuses blocks for a snapshot that is not pending,
//! and checks what EBS checks: each block's SHA-256, and at completion the
//! block count and the LINEAR aggregate of the checksums.
//!
//! Faults: every Nth request is throttled before it reaches moto (503 with the
//! service's throttling code), and the first RegisterImage/CopyImage is
//! forwarded but its answer replaced by a 500: the request landed, the answer
//! was lost, which is what makes blind retries create duplicates.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

#[derive(Default, Clone)]
pub struct Faults {
    /// Throttle every Nth request (0: never).
    pub throttle_every: usize,
    /// Throttle every Nth EBS PutSnapshotBlock, and only those (0: never).
    pub throttle_blocks_every: usize,
    /// EC2 actions whose first answer is lost after moto acted on it.
    pub lose_first_answer: Vec<&'static str>,
    /// Answer ImportSnapshot as AWS does when the vmimport role is missing.
    pub no_vmimport_role: bool,
    /// Hold each S3 UploadPart this long before forwarding it (a slow link).
    pub part_delay_ms: u64,
    /// Flip a byte in the first UploadPart's body (moto stores it anyway).
    pub corrupt_first_part: bool,
    /// Answer this many UploadParts with a bare 502 and no body, as a load
    /// balancer in front of S3-compatible storage does; they never reach moto.
    pub bare_502_parts: usize,
    /// Accept this many PutSnapshotBlock requests, then hold every later one
    /// unanswered (a link that died mid-upload) until [`Proxy::release_blocks`];
    /// held ones never reach moto. 0: never.
    pub stall_blocks_after: usize,
}

#[derive(Default)]
pub struct Log {
    /// Every request: the EC2 action, or "METHOD /path" for REST services.
    pub requests: Vec<String>,
    pub throttled: usize,
    /// PutSnapshotBlock requests seen.
    pub blocks: usize,
    pub lost: Vec<String>,
    /// Polls of DescribeImportSnapshotTasks.
    pub import_polls: usize,
    /// Bodies of EC2 calls and of StartSnapshot, to check what was asked for.
    pub bodies: Vec<(String, String)>,
    pub corrupted: usize,
    /// UploadParts answered with a bare 502.
    pub bare_502s: usize,
    /// S3 bodies that came with a checksum header, checked as S3 would.
    pub checksums_checked: usize,
    /// Those whose body did not match its header (S3 would answer BadDigest).
    pub bad_checksums: Vec<String>,
    /// EBS direct: snapshot id -> what EBS would hold.
    pub ebs: BTreeMap<String, EbsSnapshot>,
    /// Why EBS would refuse a block or a completion (empty when all was right).
    pub ebs_refused: Vec<String>,
    /// PutSnapshotBlock requests that reached the proxy, refused or not.
    pub ebs_puts_seen: usize,
}

#[derive(Default, Debug, Clone)]
pub struct EbsSnapshot {
    pub state: EbsState,
    /// Block index -> its SHA-256 checksum (base64), as last written.
    pub blocks: BTreeMap<u64, String>,
    /// PutSnapshotBlock requests it accepted (a block written twice counts twice).
    pub puts: usize,
}

#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub enum EbsState {
    #[default]
    Pending,
    Completed,
    /// EBS cancelled it (nobody completed it within its timeout).
    Error,
}

struct Task {
    id: String,
    bucket: String,
    key: String,
    polls: usize,
    snapshot: Option<String>,
    error: Option<String>,
}

struct State {
    upstream: String,
    faults: Faults,
    log: Mutex<Log>,
    tasks: Mutex<BTreeMap<String, Task>>,
    lost_once: Mutex<BTreeSet<String>>,
    /// Image -> deprecation time (ISO 8601), which moto does not keep.
    deprecations: Mutex<BTreeMap<String, String>>,
    released: std::sync::atomic::AtomicBool,
    parts_undelayed: std::sync::atomic::AtomicBool,
}

pub struct Proxy {
    pub url: String,
    state: Arc<State>,
    _rt: tokio::runtime::Runtime,
}

impl Proxy {
    /// Starts on a free loopback port, forwarding to `upstream` (host:port).
    pub fn start(upstream: &str, faults: Faults) -> Proxy {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(State {
            upstream: upstream.to_string(),
            faults,
            log: Mutex::default(),
            tasks: Mutex::default(),
            lost_once: Mutex::default(),
            deprecations: Mutex::default(),
            released: Default::default(),
            parts_undelayed: Default::default(),
        });
        let st = state.clone();
        rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(st.clone(), req));
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Proxy { url, state, _rt: rt }
    }

    pub fn log<T>(&self, f: impl FnOnce(&Log) -> T) -> T {
        f(&self.state.log.lock().unwrap())
    }

    /// Ends `stall_blocks_after` for blocks sent from now on.
    pub fn release_blocks(&self) {
        self.state.released.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Ends `part_delay_ms` for parts sent from now on.
    pub fn end_part_delay(&self) {
        self.state.parts_undelayed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// What EBS does to a pending snapshot nobody completes within its
    /// timeout: it becomes `error` and takes no more blocks.
    pub fn cancel_snapshot(&self, id: &str) {
        let mut log = self.state.log.lock().unwrap();
        log.ebs.get_mut(id).expect("a snapshot the proxy saw started").state = EbsState::Error;
    }
}

fn form(body: &[u8]) -> BTreeMap<String, String> {
    let dec = |s: &str| percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned();
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (dec(k), dec(v)))
        .collect()
}

fn xml(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder().status(status).header("content-type", "text/xml").body(Full::new(Bytes::from(body))).unwrap()
}

fn ec2_error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    xml(
        status,
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>{code}</Code>\
             <Message>{message}</Message></Error></Errors><RequestID>proxy</RequestID></Response>"
        ),
    )
}

/// What S3 checks on a PUT with a checksum header (moto checks nothing):
/// `None` without one, an empty string when the body matches, else why not.
fn checksum_mismatch(headers: &hyper::HeaderMap, body: &[u8]) -> Option<String> {
    use base64::Engine;
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
    let sent = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (sent, ours) = if let Some(v) = sent("x-amz-checksum-crc32c") {
        (v, b64(&(crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, body) as u32).to_be_bytes()))
    } else if let Some(v) = sent("x-amz-checksum-sha256") {
        use sha2::Digest;
        (v, b64(&sha2::Sha256::digest(body)))
    } else {
        return None;
    };
    Some(if sent == ours { String::new() } else { format!("header {sent}, body {ours}") })
}

async fn handle(st: Arc<State>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = req.into_parts();
    let mut body = body.collect().await?.to_bytes();
    let params =
        if parts.method == hyper::Method::POST && parts.uri.path() == "/" { form(&body) } else { BTreeMap::new() };
    let action = params.get("Action").cloned();
    let upload_part = parts.method == hyper::Method::PUT && parts.uri.query().is_some_and(|q| q.contains("partNumber"));
    // JSON-protocol services (SSM) name the action in a header.
    let target = parts.headers.get("x-amz-target").and_then(|v| v.to_str().ok()).and_then(|t| t.rsplit('.').next());
    let what = match (&action, target) {
        (Some(a), _) => a.clone(),
        (None, Some(t)) => t.to_string(),
        (None, None) if upload_part => format!("UploadPart {}", parts.uri.path()),
        (None, None) => format!("{} {}", parts.method, parts.uri.path()),
    };
    let n = {
        let mut log = st.log.lock().unwrap();
        log.requests.push(what.clone());
        if action.is_some() || what == "POST /snapshots" {
            log.bodies.push((what.clone(), String::from_utf8_lossy(&body).into_owned()));
        }
        log.requests.len()
    };

    // Throttle before anything happens.
    let block = parts.method == hyper::Method::PUT && parts.uri.path().contains("/blocks/");
    let nth_block = if block {
        let mut log = st.log.lock().unwrap();
        log.blocks += 1;
        log.blocks
    } else {
        0
    };
    let throttle_block =
        block && st.faults.throttle_blocks_every > 0 && nth_block % st.faults.throttle_blocks_every == 0;
    if throttle_block || (st.faults.throttle_every > 0 && n % st.faults.throttle_every == 0) {
        st.log.lock().unwrap().throttled += 1;
        return Ok(match &action {
            Some(_) => ec2_error(StatusCode::SERVICE_UNAVAILABLE, "RequestLimitExceeded", "Request limit exceeded."),
            None if parts.uri.path().starts_with("/snapshots") => Response::builder()
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .header("x-amzn-errortype", "ThrottlingException")
                .body(Full::new(Bytes::from_static(b"{\"message\":\"Rate exceeded\"}")))
                .unwrap(),
            None => xml(
                StatusCode::SERVICE_UNAVAILABLE,
                "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>".into(),
            ),
        });
    }

    if upload_part {
        let mut log = st.log.lock().unwrap();
        if log.bare_502s < st.faults.bare_502_parts {
            log.bare_502s += 1;
            return Ok(Response::builder().status(StatusCode::BAD_GATEWAY).body(Full::new(Bytes::new())).unwrap());
        }
    }
    if parts.method == hyper::Method::PUT {
        if let Some(bad) = checksum_mismatch(&parts.headers, &body) {
            let mut log = st.log.lock().unwrap();
            log.checksums_checked += 1;
            if !bad.is_empty() {
                log.bad_checksums.push(format!("{what}: {bad}"));
            }
        }
    }
    if upload_part && st.faults.corrupt_first_part && !body.is_empty() {
        let mut log = st.log.lock().unwrap();
        if log.corrupted == 0 {
            log.corrupted += 1;
            let mut v = body.to_vec();
            v[body.len() / 2] ^= 0xff;
            body = Bytes::from(v);
        }
    }
    if let Some(refused) = ebs_check(&st, &parts, &body) {
        return Ok(refused);
    }
    if block
        && st.faults.stall_blocks_after > 0
        && nth_block > st.faults.stall_blocks_after
        && !st.released.load(std::sync::atomic::Ordering::SeqCst)
    {
        std::future::pending::<()>().await;
    }
    if upload_part && st.faults.part_delay_ms > 0 && !st.parts_undelayed.load(std::sync::atomic::Ordering::SeqCst) {
        tokio::time::sleep(std::time::Duration::from_millis(st.faults.part_delay_ms)).await;
    }
    match action.as_deref() {
        Some("ImportSnapshot") => return Ok(import_snapshot(&st, &params).await),
        Some("DescribeImportSnapshotTasks") => return Ok(describe_import(&st, &params).await),
        Some(a @ ("EnableImageDeprecation" | "DisableImageDeprecation")) => {
            let id = params.get("ImageId").cloned().unwrap_or_default();
            let mut d = st.deprecations.lock().unwrap();
            match params.get("DeprecateAt") {
                Some(at) if a == "EnableImageDeprecation" => d.insert(id, at.clone()),
                _ => d.remove(&id),
            };
            return Ok(xml(
                StatusCode::OK,
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><{a}Response xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
                     <requestId>proxy</requestId><return>true</return></{a}Response>"
                ),
            ));
        }
        _ => {}
    }
    let describe_images = action.as_deref() == Some("DescribeImages");
    let describe_snapshots = action.as_deref() == Some("DescribeSnapshots");
    let ebs_call = ebs_call(&parts);

    let list_parts = parts.method == hyper::Method::GET && parts.uri.query().is_some_and(|q| q.contains("uploadId"));
    let mut answer = forward(&st.upstream, parts, body).await;
    if list_parts {
        // moto 5.2 names ListParts' root element ListPartsResponse; S3 says ListPartsResult.
        let (mut p, b) = answer.into_parts();
        p.headers.remove(hyper::header::CONTENT_LENGTH);
        let text = String::from_utf8_lossy(&b.collect().await.unwrap().to_bytes())
            .replace("ListPartsResponse", "ListPartsResult");
        answer = Response::from_parts(p, Full::new(Bytes::from(text)));
    }
    if let Some(call) = ebs_call {
        answer = ebs_answered(&st, call, answer).await;
    }
    if describe_snapshots {
        // What AWS shows of an EBS direct snapshot: its real state.
        let (mut p, b) = answer.into_parts();
        p.headers.remove(hyper::header::CONTENT_LENGTH);
        let text = String::from_utf8_lossy(&b.collect().await.unwrap().to_bytes()).into_owned();
        let log = st.log.lock().unwrap();
        let text = text
            .split_inclusive("</item>")
            .map(|item| {
                let id = between(item, "<snapshotId>", "</snapshotId>").unwrap_or_default();
                match log.ebs.get(id).map(|s| s.state) {
                    Some(EbsState::Pending) => item.replace("<status>completed</status>", "<status>pending</status>"),
                    Some(EbsState::Error) => item.replace("<status>completed</status>", "<status>error</status>"),
                    _ => item.to_string(),
                }
            })
            .collect::<String>();
        answer = Response::from_parts(p, Full::new(Bytes::from(text)));
    }
    if describe_images {
        // What AWS adds to an image with a deprecation time.
        let (mut p, b) = answer.into_parts();
        p.headers.remove(hyper::header::CONTENT_LENGTH);
        let mut text = String::from_utf8_lossy(&b.collect().await.unwrap().to_bytes()).into_owned();
        for (id, at) in st.deprecations.lock().unwrap().iter() {
            let tag = format!("<imageId>{id}</imageId>");
            text = text.replace(&tag, &format!("{tag}<deprecationTime>{at}</deprecationTime>"));
        }
        answer = Response::from_parts(p, Full::new(Bytes::from(text)));
    }
    if let Some(a) = &action {
        if st.faults.lose_first_answer.contains(&a.as_str()) && st.lost_once.lock().unwrap().insert(a.clone()) {
            st.log.lock().unwrap().lost.push(a.clone());
            return Ok(ec2_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "An internal error has occurred"));
        }
    }
    Ok(answer)
}

/// An EBS direct call, from its method and path.
#[derive(Debug, Clone)]
enum EbsCall {
    Start,
    Put { snapshot: String, index: u64, checksum: String },
    Complete { snapshot: String, count: Option<usize>, aggregate: Option<String> },
}

fn ebs_call(parts: &hyper::http::request::Parts) -> Option<EbsCall> {
    let path = parts.uri.path();
    let header = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    match (&parts.method, path.strip_prefix("/snapshots")?) {
        (&hyper::Method::POST, "") => Some(EbsCall::Start),
        (&hyper::Method::POST, rest) => Some(EbsCall::Complete {
            snapshot: rest.strip_prefix("/completion/")?.to_string(),
            count: header("x-amz-ChangedBlocksCount").and_then(|c| c.parse().ok()),
            aggregate: header("x-amz-Checksum"),
        }),
        (&hyper::Method::PUT, rest) => {
            let (snapshot, index) = rest.strip_prefix('/')?.split_once("/blocks/")?;
            let checksum = header("x-amz-Checksum").unwrap_or_default();
            Some(EbsCall::Put { snapshot: snapshot.to_string(), index: index.parse().ok()?, checksum })
        }
        _ => None,
    }
}

fn ebs_error(code: &str, message: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::BAD_REQUEST)
        .header("x-amzn-errortype", code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(format!("{{\"message\":\"{message}\",\"Reason\":\"INVALID_PARAMETER_VALUE\"}}"))))
        .unwrap()
}

/// What EBS refuses before it acts: a block for a snapshot that is not
/// pending, or whose body is not its checksum.
fn ebs_check(st: &State, parts: &hyper::http::request::Parts, body: &[u8]) -> Option<Response<Full<Bytes>>> {
    let Some(EbsCall::Put { snapshot, index, checksum }) = ebs_call(parts) else { return None };
    let mut log = st.log.lock().unwrap();
    log.ebs_puts_seen += 1;
    let state = log.ebs.get(&snapshot).map(|s| s.state);
    let why = if state != Some(EbsState::Pending) {
        format!("block {index} for {snapshot}, which is {state:?}, not pending")
    } else {
        use base64::Engine;
        use sha2::Digest;
        if checksum == base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(body)) {
            return None;
        }
        format!("block {index} of {snapshot}: its checksum is not its body's")
    };
    log.ebs_refused.push(why.clone());
    Some(ebs_error("ValidationException", &why))
}

/// Keeps what EBS would after moto answered `call`.
async fn ebs_answered(st: &State, call: EbsCall, answer: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    if !answer.status().is_success() {
        return answer;
    }
    match call {
        EbsCall::Start => {
            let (p, b) = answer.into_parts();
            let bytes = b.collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            let id = v["SnapshotId"].as_str().unwrap().to_string();
            st.log.lock().unwrap().ebs.insert(id, EbsSnapshot::default());
            Response::from_parts(p, Full::new(bytes))
        }
        EbsCall::Put { snapshot, index, checksum } => {
            let mut log = st.log.lock().unwrap();
            let s = log.ebs.get_mut(&snapshot).unwrap();
            s.puts += 1;
            s.blocks.insert(index, checksum);
            answer
        }
        EbsCall::Complete { snapshot, count, aggregate } => {
            use base64::Engine;
            use sha2::Digest;
            let mut log = st.log.lock().unwrap();
            let s = log.ebs.get_mut(&snapshot).unwrap();
            let mut agg = sha2::Sha256::new();
            for sum in s.blocks.values() {
                agg.update(base64::engine::general_purpose::STANDARD.decode(sum).unwrap_or_default());
            }
            let ours = base64::engine::general_purpose::STANDARD.encode(agg.finalize());
            let why = if s.state != EbsState::Pending {
                Some(format!("{snapshot}: completed while {:?}", s.state))
            } else if count != Some(s.blocks.len()) {
                Some(format!("{snapshot}: ChangedBlocksCount {count:?}, {} blocks written", s.blocks.len()))
            } else if aggregate.as_deref() != Some(ours.as_str()) {
                Some(format!("{snapshot}: aggregate checksum {aggregate:?}, blocks give {ours}"))
            } else {
                None
            };
            s.state = if why.is_some() { EbsState::Error } else { EbsState::Completed };
            if let Some(why) = why {
                log.ebs_refused.push(why);
                return Response::new(Full::new(Bytes::from_static(b"{\"Status\":\"error\"}")));
            }
            answer
        }
    }
}

async fn forward(upstream: &str, parts: hyper::http::request::Parts, body: Bytes) -> Response<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(upstream).await.expect("moto is up");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::from_parts(parts, Full::new(body));
    let resp = sender.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    Response::from_parts(parts, Full::new(bytes))
}

/// An unsigned request to moto, with an Authorization header only so moto
/// routes it to `service` (moto does not check signatures).
async fn moto(
    st: &State,
    service: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: String,
) -> (u16, Bytes) {
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0"
    );
    let mut b = Request::builder().method(method).uri(path).header("host", &st.upstream).header("authorization", auth);
    if method == "POST" {
        b = b.header("content-type", "application/x-www-form-urlencoded");
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let (parts, _) = b.body(()).unwrap().into_parts();
    let resp = forward(&st.upstream, parts, Bytes::from(body)).await;
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    Some(&text[start..start + text[start..].find(close)?])
}

async fn import_snapshot(st: &State, p: &BTreeMap<String, String>) -> Response<Full<Bytes>> {
    if st.faults.no_vmimport_role {
        return ec2_error(
            StatusCode::BAD_REQUEST,
            "InvalidParameter",
            "The service role vmimport provided does not exist or does not have sufficient permissions",
        );
    }
    let get = |k: &str| p.get(k).cloned().unwrap_or_default();
    if get("DiskContainer.Format") != "VHD" {
        return ec2_error(StatusCode::BAD_REQUEST, "InvalidParameter", "Unsupported disk format");
    }
    let token = get("ClientToken");
    let mut tasks = st.tasks.lock().unwrap();
    let next = format!("import-snap-{:017x}", tasks.len() + 1);
    let task = tasks.entry(token).or_insert_with(|| Task {
        id: next,
        bucket: get("DiskContainer.UserBucket.S3Bucket"),
        key: get("DiskContainer.UserBucket.S3Key"),
        polls: 0,
        snapshot: None,
        error: None,
    });
    xml(
        StatusCode::OK,
        format!(
            "<ImportSnapshotResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>proxy</requestId>\
             <importTaskId>{}</importTaskId><snapshotTaskDetail><status>active</status><progress>0</progress>\
             <statusMessage>pending</statusMessage></snapshotTaskDetail></ImportSnapshotResponse>",
            task.id
        ),
    )
}

/// Advances the task a step per poll; at the third, checks the VHD in S3 (its
/// footer, as AWS would) and makes a real snapshot in moto.
async fn describe_import(st: &State, p: &BTreeMap<String, String>) -> Response<Full<Bytes>> {
    st.log.lock().unwrap().import_polls += 1;
    let id = p.get("ImportTaskId.1").cloned().unwrap_or_default();
    let (bucket, key, polls) = {
        let mut tasks = st.tasks.lock().unwrap();
        let Some(t) = tasks.values_mut().find(|t| t.id == id) else {
            return ec2_error(StatusCode::BAD_REQUEST, "InvalidConversionTaskId.Malformed", "no such task");
        };
        t.polls += 1;
        (t.bucket.clone(), t.key.clone(), t.polls)
    };
    if polls == 3 {
        let outcome = convert(st, &bucket, &key).await;
        let mut tasks = st.tasks.lock().unwrap();
        let t = tasks.values_mut().find(|t| t.id == id).unwrap();
        match outcome {
            Ok(snap) => t.snapshot = Some(snap),
            Err(e) => t.error = Some(e),
        }
    }
    let tasks = st.tasks.lock().unwrap();
    let t = tasks.values().find(|t| t.id == id).unwrap();
    let detail = match (&t.snapshot, &t.error) {
        (Some(s), _) => format!("<status>completed</status><snapshotId>{s}</snapshotId><progress>100</progress>"),
        (_, Some(e)) => format!("<status>deleted</status><statusMessage>{e}</statusMessage>"),
        _ => format!(
            "<status>active</status><progress>{}</progress><statusMessage>converting</statusMessage>",
            polls * 30
        ),
    };
    xml(
        StatusCode::OK,
        format!(
            "<DescribeImportSnapshotTasksResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>proxy\
             </requestId><importSnapshotTaskSet><item><importTaskId>{id}</importTaskId><snapshotTaskDetail>{detail}\
             <format>VHD</format><userBucket><s3Bucket>{bucket}</s3Bucket><s3Key>{key}</s3Key></userBucket>\
             </snapshotTaskDetail></item></importSnapshotTaskSet></DescribeImportSnapshotTasksResponse>"
        ),
    )
}

async fn convert(st: &State, bucket: &str, key: &str) -> Result<String, String> {
    let (status, footer) =
        moto(st, "s3", "GET", &format!("/{bucket}/{key}"), &[("range", "bytes=-512")], String::new()).await;
    if status >= 300 {
        return Err(format!("ClientError: Unable to find the S3 object s3://{bucket}/{key} ({status})"));
    }
    if footer.len() != 512 || &footer[..8] != b"conectix" {
        return Err("ClientError: Disk validation failed [Unsupported VHD footer]".into());
    }
    let size = u64::from_be_bytes(footer[48..56].try_into().unwrap());
    let gib = size.div_ceil(1 << 30);
    let (_, vol) = moto(
        st,
        "ec2",
        "POST",
        "/",
        &[],
        format!("Action=CreateVolume&Version=2016-11-15&Size={gib}&AvailabilityZone=us-east-1a"),
    )
    .await;
    let vol = between(&String::from_utf8_lossy(&vol), "<volumeId>", "</volumeId>").ok_or("no volume")?.to_string();
    let (_, snap) =
        moto(st, "ec2", "POST", "/", &[], format!("Action=CreateSnapshot&Version=2016-11-15&VolumeId={vol}")).await;
    let snap =
        between(&String::from_utf8_lossy(&snap), "<snapshotId>", "</snapshotId>").ok_or("no snapshot")?.to_string();
    Ok(snap)
}
