//! Kernel-adapter-level access to etcd for Reef: connecting (endpoints, TLS, timeouts), and
//! the handful of KV operations Reef uses, with errors that say which endpoints failed and
//! whether trying again later can help. Domain logic (IPAM blocks, nodes) lives above this.

#[cfg(feature = "cli")]
pub mod cli;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
pub use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse,
    TxnResponse,
};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// `"etcd": {"endpoints": [...], "tls": {"ca", "cert", "key"}}` in configs, and the CLI flags.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct TlsFiles {
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// etcd could not be reached or did not answer in time: worth retrying later.
    #[error("etcd unavailable at {endpoints}: {detail}")]
    Unavailable { endpoints: String, detail: String },
    /// Nothing usable answered at the endpoints (connection refused, no route, timed out,
    /// closed): worth retrying later. The message is one line (endpoint, what failed, what
    /// to check); `detail` keeps the full transport error chain for `--verbose` or a log.
    #[error(
        "cannot reach etcd at {endpoints}: {reason} (check that etcd is running and \
         listening there, and the endpoint's scheme, address and port)"
    )]
    Unreachable {
        endpoints: String,
        reason: String,
        detail: String,
    },
    /// Bad configuration (endpoints, TLS files): retrying will not help.
    #[error("etcd configuration: {0}")]
    Config(String),
    /// etcd answered with an error (permission, certificate, invalid request).
    #[error("etcd at {endpoints} refused the request: {detail}")]
    Rejected { endpoints: String, detail: String },
    /// A value in etcd could not be decoded.
    #[error("invalid data in etcd at {key}: {detail}")]
    Decode { key: String, detail: String },
}

impl Error {
    /// Every value of [`Error::kind`].
    pub const KINDS: [&'static str; 5] =
        ["unavailable", "unreachable", "config", "rejected", "decode"];

    /// A stable, low-cardinality name of the error class: a metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Unavailable { .. } => "unavailable",
            Error::Unreachable { .. } => "unreachable",
            Error::Config(_) => "config",
            Error::Rejected { .. } => "rejected",
            Error::Decode { .. } => "decode",
        }
    }

    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable { .. } | Error::Unreachable { .. })
    }

    /// The full underlying error (transport error chain, gRPC status) when the message
    /// summarises it: for `--verbose` output and logs.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Error::Unreachable { detail, .. } => Some(detail),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Time budgets: a plugin must fail within 5 s when etcd is down (CNI code 11), so a
/// connection attempt gets 2 s and each request 2 s.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// HTTP/2 keep-alive of streaming connections: a PING after this long without a frame from
/// etcd. etcd (grpc-go) answers pings that come more often than its
/// `--grpc-keepalive-min-time` (default 5 s) with a strike, and after two strikes closes the
/// connection with GOAWAY "too_many_pings": with the former 3 s every idle watch broke about
/// every 12 s (issue #18). 10 s is twice etcd's default minimum, so an idle watch is never
/// struck; the price is that a silently dead etcd (host gone, packets dropped) is noticed
/// only after up to `KEEP_ALIVE_INTERVAL + KEEP_ALIVE_TIMEOUT` = 15 s instead of 6 s. A
/// refused or reset connection is still noticed at once, and unary requests keep their own
/// `REQUEST_TIMEOUT`. Clusters that raise `--grpc-keepalive-min-time` above 10 s must keep
/// it below this interval.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a keep-alive PING may go unanswered before the connection counts as dead.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Etcd {
    client: Client,
    endpoints: String,
    /// TLS without a client certificate: a server requiring one closes the connection after
    /// the handshake (TLS 1.3), which must not read as "unavailable".
    tls_without_cert: bool,
}

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Config(format!("read {what} {}: {e}", path.display())))
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub key: String,
    /// The new value; None for a deletion (or a lease expiry).
    pub value: Option<Vec<u8>>,
    pub mod_revision: i64,
}

/// A prefix watch. Each `next` yields the events of one etcd response.
pub struct Watch {
    stream: etcd_client::WatchStream,
    endpoints: String,
}

impl Watch {
    /// The next batch of events; an error when the stream broke or etcd cancelled the watch
    /// (for example because its start revision was compacted): re-list, then watch again.
    pub async fn next(&mut self) -> Result<Vec<WatchEvent>> {
        loop {
            let msg = self
                .stream
                .message()
                .await
                .map_err(|e| Error::Unavailable {
                    endpoints: self.endpoints.clone(),
                    detail: format!("watch: {e}"),
                })?;
            let Some(resp) = msg else {
                return Err(Error::Unavailable {
                    endpoints: self.endpoints.clone(),
                    detail: "watch stream closed".into(),
                });
            };
            if resp.canceled() {
                return Err(Error::Unavailable {
                    endpoints: self.endpoints.clone(),
                    detail: format!(
                        "watch cancelled (compacted at {}): {}",
                        resp.compact_revision(),
                        resp.cancel_reason()
                    ),
                });
            }
            if resp.events().is_empty() {
                continue; // creation or progress notification
            }
            return Ok(resp
                .events()
                .iter()
                .filter_map(|ev| {
                    let kv = ev.kv()?;
                    let put = ev.event_type() == etcd_client::EventType::Put;
                    Some(WatchEvent {
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        value: put.then(|| kv.value().to_vec()),
                        mod_revision: kv.mod_revision(),
                    })
                })
                .collect());
        }
    }
}

/// Keeps one lease alive (see `Etcd::keep_alive`).
pub struct LeaseKeepAlive {
    keeper: etcd_client::LeaseKeeper,
    stream: etcd_client::LeaseKeepAliveStream,
    endpoints: String,
}

impl LeaseKeepAlive {
    /// Refreshes the lease once; returns its remaining TTL in seconds (0 = it had expired).
    pub async fn refresh(&mut self) -> Result<i64> {
        let unavailable = |detail: String, endpoints: &str| Error::Unavailable {
            endpoints: endpoints.to_string(),
            detail,
        };
        let fut = async {
            self.keeper
                .keep_alive()
                .await
                .map_err(|e| unavailable(format!("lease keep-alive: {e}"), &self.endpoints))?;
            match self.stream.message().await {
                Ok(Some(r)) => Ok(r.ttl()),
                Ok(None) => Err(unavailable(
                    "lease keep-alive stream closed".into(),
                    &self.endpoints,
                )),
                Err(e) => Err(unavailable(
                    format!("lease keep-alive: {e}"),
                    &self.endpoints,
                )),
            }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, fut)
            .await
            .map_err(|_| Error::Unavailable {
                endpoints: self.endpoints.clone(),
                detail: "lease keep-alive timed out".into(),
            })?
    }
}

/// Runs one request on a streaming connection (which has no per-request deadline of its own)
/// within `REQUEST_TIMEOUT`.
async fn bounded<T>(
    endpoints: &str,
    what: &str,
    fut: impl std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    tls_without_cert: bool,
) -> Result<T> {
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .map_err(|_| Error::Unavailable {
            endpoints: endpoints.to_string(),
            detail: format!("{what} timed out"),
        })?
        .map_err(|e| classify(endpoints, e, tls_without_cert))
}

impl Etcd {
    /// A connection for long-lived streams (watches, lease keep-alives): no per-request
    /// deadline, which would cut a watch that is simply quiet. Unary requests on it are
    /// bounded by hand (`REQUEST_TIMEOUT`).
    pub async fn connect_streaming(cfg: &EtcdConfig) -> Result<Etcd> {
        Self::connect_inner(cfg, false).await
    }

    /// Watches every key under `prefix` from `start_revision` (inclusive).
    pub async fn watch_prefix(&mut self, prefix: &str, start_revision: i64) -> Result<Watch> {
        let opts = etcd_client::WatchOptions::new()
            .with_prefix()
            .with_start_revision(start_revision)
            .with_progress_notify();
        let fut = self.client.watch(prefix, Some(opts));
        let stream = bounded(&self.endpoints, "watch request", fut, self.tls_without_cert).await?;
        Ok(Watch {
            stream,
            endpoints: self.endpoints.clone(),
        })
    }

    /// Every key under `prefix` and the store revision they were read at. Read in pages at
    /// that one revision. Pages are large because etcd 3.4 walks the whole range's index
    /// for every page: 60,000 keys took 2.8 s in pages of 500, 0.9 s in pages of 2,000 and
    /// 0.35 s in pages of 10,000 here. A page too large for one message (values far bigger
    /// than Reef's records) is asked again at half the size.
    pub async fn list_prefix(&mut self, prefix: &str) -> Result<(Vec<KeyValue>, i64)> {
        let mut out = Vec::new();
        let rev = self
            .list_prefix_pages(prefix, |kvs| out.extend(kvs))
            .await?;
        Ok((out, rev))
    }

    /// [`Etcd::list_prefix`] page by page: `each` gets every page, in key order, as it
    /// arrives (a caller can hand them to another thread and decode while the next page is
    /// read). Returns the revision of the read.
    pub async fn list_prefix_pages(
        &mut self,
        prefix: &str,
        each: impl FnMut(Vec<KeyValue>),
    ) -> Result<i64> {
        self.list_prefix_pages_at(prefix, 0, each).await
    }

    /// [`Etcd::list_prefix_pages`] at store revision `rev` (0: the current one), so that
    /// several prefixes can be read as one snapshot. A revision compacted meanwhile is an
    /// error: the caller lists again.
    pub async fn list_prefix_pages_at(
        &mut self,
        prefix: &str,
        rev: i64,
        mut each: impl FnMut(Vec<KeyValue>),
    ) -> Result<i64> {
        let end = prefix_end(prefix.as_bytes());
        let mut from: Vec<u8> = prefix.as_bytes().to_vec();
        let mut rev = rev;
        let mut page = LIST_PAGE;
        let mut kv = self
            .client
            .kv_client()
            .max_decoding_message_size(LIST_MESSAGE_MAX);
        loop {
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(page);
            if rev != 0 {
                opts = opts.with_revision(rev);
            }
            let fut = kv.get(from.clone(), Some(opts));
            let mut r = match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
                Err(_) => {
                    return Err(Error::Unavailable {
                        endpoints: self.endpoints.clone(),
                        detail: "list timed out".into(),
                    })
                }
                Ok(Err(etcd_client::Error::GRpcStatus(s)))
                    if TOO_LARGE.contains(&i32::from(s.code())) && page > LIST_PAGE_MIN =>
                {
                    page /= 2;
                    continue;
                }
                Ok(Err(e)) => return Err(classify(&self.endpoints, e, self.tls_without_cert)),
                Ok(Ok(r)) => r,
            };
            if rev == 0 {
                rev = r.header().map(|h| h.revision()).unwrap_or_default();
            }
            let more = r.more();
            let kvs = r.take_kvs();
            match kvs.last() {
                Some(last) if more => {
                    // The next page starts just after the last key read.
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => {
                    each(kvs);
                    return Ok(rev);
                }
            }
            each(kvs);
        }
    }

    /// Grants a lease of `ttl` seconds; returns its id.
    pub async fn lease_grant(&mut self, ttl: i64) -> Result<i64> {
        let fut = self.client.lease_grant(ttl, None);
        let r = bounded(&self.endpoints, "lease grant", fut, self.tls_without_cert).await?;
        Ok(r.id())
    }

    /// Revokes a lease (its keys are deleted at once).
    pub async fn lease_revoke(&mut self, id: i64) -> Result<()> {
        let fut = self.client.lease_revoke(id);
        bounded(&self.endpoints, "lease revoke", fut, self.tls_without_cert).await?;
        Ok(())
    }

    /// A keep-alive channel for lease `id`.
    pub async fn keep_alive(&mut self, id: i64) -> Result<LeaseKeepAlive> {
        let fut = self.client.lease_keep_alive(id);
        let (keeper, stream) = bounded(
            &self.endpoints,
            "lease keep-alive",
            fut,
            self.tls_without_cert,
        )
        .await?;
        Ok(LeaseKeepAlive {
            keeper,
            stream,
            endpoints: self.endpoints.clone(),
        })
    }

    /// Puts `key` attached to lease `lease` (deleted when the lease expires).
    pub async fn put_with_lease(&mut self, key: &str, value: Vec<u8>, lease: i64) -> Result<()> {
        let fut = self
            .client
            .put(key, value, Some(PutOptions::new().with_lease(lease)));
        bounded(&self.endpoints, "put", fut, self.tls_without_cert).await?;
        Ok(())
    }

    pub async fn connect(cfg: &EtcdConfig) -> Result<Etcd> {
        Self::connect_inner(cfg, true).await
    }

    async fn connect_inner(cfg: &EtcdConfig, request_timeout: bool) -> Result<Etcd> {
        if cfg.endpoints.is_empty() {
            return Err(Error::Config("no etcd endpoints".into()));
        }
        let endpoints = cfg.endpoints.join(",");
        let tls_without_cert = cfg.tls.as_ref().is_some_and(|t| t.cert.is_none());
        let mut opts = ConnectOptions::new().with_connect_timeout(CONNECT_TIMEOUT);
        if request_timeout {
            opts = opts.with_timeout(REQUEST_TIMEOUT);
        } else {
            // A watch on a silently dead connection would wait forever: HTTP/2 pings notice
            // (see KEEP_ALIVE_INTERVAL for the trade-off). Not while no stream is open:
            // etcd permits pings without an active stream only every 2 h (grpc-go's
            // PermitWithoutStream is off), and there is nothing to keep alive then.
            opts = opts
                .with_keep_alive(KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT)
                .with_keep_alive_while_idle(false);
        }
        if let Some(tls) = &cfg.tls {
            let mut t = TlsOptions::new();
            if let Some(ca) = &tls.ca {
                t = t.ca_certificate(Certificate::from_pem(read(ca, "CA certificate")?));
            }
            match (&tls.cert, &tls.key) {
                (Some(c), Some(k)) => {
                    t = t.identity(Identity::from_pem(
                        read(c, "client certificate")?,
                        read(k, "client key")?,
                    ))
                }
                (None, None) => {}
                _ => return Err(Error::Config("tls.cert and tls.key go together".into())),
            }
            opts = opts.with_tls(t);
        }
        let connect = Client::connect(&cfg.endpoints, Some(opts));
        let client = tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_millis(500), connect)
            .await
            .map_err(|_| Error::Unreachable {
                endpoints: endpoints.clone(),
                reason: format!("connecting timed out after {CONNECT_TIMEOUT:?}"),
                detail: "connection timed out".into(),
            })?
            .map_err(|e| classify(&endpoints, e, tls_without_cert))?;
        Ok(Etcd {
            client,
            endpoints,
            tls_without_cert,
        })
    }

    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    fn err(&self, e: etcd_client::Error) -> Error {
        classify(&self.endpoints, e, self.tls_without_cert)
    }

    pub async fn get(&mut self, key: &str) -> Result<Option<KeyValue>> {
        let mut r = self.client.get(key, None).await.map_err(|e| self.err(e))?;
        Ok(r.take_kvs().into_iter().next())
    }

    /// Every key under `prefix` (paged, like [`Etcd::list_prefix`]).
    pub async fn get_prefix(&mut self, prefix: &str) -> Result<Vec<KeyValue>> {
        Ok(self.list_prefix(prefix).await?.0)
    }

    pub async fn put(&mut self, key: &str, value: Vec<u8>) -> Result<i64> {
        let r = self
            .client
            .put(key, value, None)
            .await
            .map_err(|e| self.err(e))?;
        Ok(r.header().map(|h| h.revision()).unwrap_or_default())
    }

    pub async fn delete(&mut self, key: &str) -> Result<()> {
        self.client
            .delete(key, None)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub async fn txn(&mut self, txn: Txn) -> Result<TxnResponse> {
        self.client.txn(txn).await.map_err(|e| self.err(e))
    }
}

/// Keys per page of a prefix list: about 2 MB of Reef's records.
const LIST_PAGE: i64 = 10_000;
/// The smallest page a list shrinks to when a page does not fit one message.
const LIST_PAGE_MIN: i64 = 100;
/// The largest list reply accepted (tonic's default is 4 MiB).
const LIST_MESSAGE_MAX: usize = 64 << 20;
/// The gRPC codes of a reply over a message limit: OUT_OF_RANGE (tonic, receiving) and
/// RESOURCE_EXHAUSTED (etcd, sending). etcd uses them for other refusals too (a compacted
/// revision, too many requests): those fail again at every size and, once the page is at
/// its minimum, end the list like any other error (a few small, fast requests more).
const TOO_LARGE: [i32; 2] = [11, 8];

/// The end of the key range of `prefix` (etcd's `--prefix`): the prefix with its last byte
/// below 0xff incremented; all of the key space when there is none.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Transport failures and unavailable/deadline statuses are "try again later"; anything else
/// (bad certificate, permission) is a refusal.
fn classify(endpoints: &str, e: etcd_client::Error, tls_without_cert: bool) -> Error {
    use etcd_client::Error as E;
    let detail = match &e {
        E::TransportError(t) => {
            let mut s = t.to_string();
            let mut src = std::error::Error::source(t);
            while let Some(inner) = src {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                src = inner.source();
            }
            s
        }
        other => other.to_string(),
    };
    let unavailable = match &e {
        E::TransportError(_) | E::IoError(_) => true,
        // gRPC codes Cancelled (1), DeadlineExceeded (4), Unavailable (14).
        E::GRpcStatus(s) => matches!(s.code() as i32, 1 | 4 | 14),
        _ => false,
    };
    // Transport-level trouble (not an etcd application error) with TLS but no client
    // certificate: the server hung up on us, which retrying cannot fix.
    let transportish = unavailable || detail.contains("transport error");
    if transportish && tls_without_cert && !looks_like_no_server(&detail) {
        return Error::Rejected {
            endpoints: endpoints.to_string(),
            detail: format!(
                "{detail} (the TLS connection was closed after the handshake: etcd probably \
                 requires a client certificate, and tls.cert/tls.key are not set)"
            ),
        };
    }
    if unavailable && !looks_like_tls_refusal(&detail) {
        Error::Unreachable {
            endpoints: endpoints.to_string(),
            reason: reason(&e),
            detail,
        }
    } else {
        Error::Rejected {
            endpoints: endpoints.to_string(),
            detail,
        }
    }
}

/// One short phrase for what failed: the innermost cause (e.g. "Connection refused (os
/// error 111)"), not the whole chain, whose gRPC status and transport wrappers repeat the
/// same thing at length.
fn reason(e: &etcd_client::Error) -> String {
    use etcd_client::Error as E;
    let (top, mut src): (String, Option<&(dyn std::error::Error + 'static)>) = match e {
        E::GRpcStatus(s) => (s.message().to_string(), std::error::Error::source(s)),
        E::TransportError(t) => (t.to_string(), std::error::Error::source(t)),
        other => (other.to_string(), None),
    };
    let mut innermost = None;
    while let Some(inner) = src {
        innermost = Some(inner.to_string());
        src = inner.source();
    }
    let r = innermost.filter(|s| !s.trim().is_empty()).unwrap_or(top);
    let r = r.trim();
    if r.is_empty() {
        "no answer".to_string()
    } else {
        r.to_string()
    }
}

/// Errors that mean nothing answered at all (as opposed to a server closing on us).
fn looks_like_no_server(detail: &str) -> bool {
    let d = detail.to_ascii_lowercase();
    [
        "refused",
        "timed out",
        "timeout",
        "deadline",
        "unreachable",
        "no route",
    ]
    .iter()
    .any(|w| d.contains(w))
}

/// A TLS handshake refused for a missing or bad client certificate surfaces as a transport
/// error; retrying will not fix it, so it must not read as "unavailable".
fn looks_like_tls_refusal(detail: &str) -> bool {
    let d = detail.to_ascii_lowercase();
    [
        "certificate",
        "handshake",
        "tls",
        "unknown ca",
        "bad certificate",
    ]
    .iter()
    .any(|w| d.contains(w))
}

#[cfg(test)]
mod paging_tests {
    use super::prefix_end;

    #[test]
    fn the_range_of_a_prefix_ends_after_its_last_key() {
        assert_eq!(prefix_end(b"/reef/"), b"/reef0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
