//! Broker URLs as Celery users write them, turned into a redis-rs client. Here, beside
//! the settings, so that checking the config file needs nothing from the broker client.
//!
//! - `redis://[USER][:PASSWORD@]HOST[:PORT][/DB]`: plain TCP.
//! - `rediss://...?ssl_cert_reqs=required&ssl_ca_certs=PATH&ssl_certfile=PATH&ssl_keyfile=PATH`:
//!   TLS, with Celery's (kombu's, redis-py's) query options. `ssl_cert_reqs` takes
//!   `required`, `optional` or `none`, also spelled `CERT_REQUIRED`, `CERT_OPTIONAL`,
//!   `CERT_NONE`; `optional` checks the certificate as `required` does (Python's `ssl`
//!   does the same for a client); unset means `required`. Without `ssl_ca_certs` the
//!   system's trusted roots are used. A client certificate (`ssl_certfile`) may hold its
//!   key, as Python's `load_cert_chain` allows.
//! - `redis+socket:///PATH`, `socket:///PATH`, `unix:///PATH`: a Unix socket, with the
//!   database in `?virtual_host=N` (Celery's spelling) or `?db=N`, and `?password=`.
//!
//! redis-rs never sees Celery's options: they are parsed here and removed, and an
//! unknown `ssl_*` option is an error rather than silently ignored.

use std::path::PathBuf;

use ::url::Url;

/// A broker URL that celeriac cannot use, with what to change. Never holds a password.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct UrlError(String);

/// How the server's certificate is checked (`ssl_cert_reqs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertReqs {
    /// Verified against `ssl_ca_certs` (or the system's roots), host name included.
    Required,
    /// Not checked at all: anyone on the path can read and change the traffic.
    None,
}

/// The TLS options of a `rediss://` URL.
#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    /// `ssl_cert_reqs`.
    pub cert_reqs: CertReqs,
    /// `ssl_ca_certs`: PEM file of the CAs to trust instead of the system's.
    pub ca_certs: Option<PathBuf>,
    /// `ssl_certfile`: PEM client certificate (chain), for servers that ask for one.
    pub certfile: Option<PathBuf>,
    /// `ssl_keyfile`: PEM key of the client certificate (default: read from `certfile`).
    pub keyfile: Option<PathBuf>,
}

/// Where the broker is.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    /// TCP or TLS: a URL redis-rs parses (host, port, user, password, db), with Celery's
    /// options removed.
    Tcp(String),
    /// A Unix socket.
    Socket {
        path: PathBuf,
        db: i64,
        user: Option<String>,
        password: Option<String>,
    },
}

/// A parsed broker URL.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerUrl {
    target: Target,
    /// Set for `rediss://`.
    pub tls: Option<Tls>,
    /// The URL without its password, for logs and readiness.
    pub shown: String,
}

/// `redis://` and `rediss://` (`tls`): Celery's `ssl_*` options come out of the query
/// into [`Tls`]; the rest stays for redis-rs.
fn tcp(
    mut parsed: Url,
    tls: bool,
    pairs: Vec<(String, String)>,
    bad: &dyn Fn(String) -> UrlError,
) -> Result<(Target, Option<Tls>), UrlError> {
    let mut tls = tls.then_some(Tls {
        cert_reqs: CertReqs::Required,
        ca_certs: None,
        certfile: None,
        keyfile: None,
    });
    let mut rest = Vec::new();
    for (k, v) in pairs {
        if !k.starts_with("ssl_") {
            rest.push((k, v));
            continue;
        }
        let Some(t) = tls.as_mut() else {
            return Err(bad(format!(
                "`{k}` is a TLS option: use a rediss:// URL for TLS"
            )));
        };
        let path = || {
            if v.is_empty() {
                Err(bad(format!("`{k}` needs a file path")))
            } else {
                Ok(Some(PathBuf::from(&v)))
            }
        };
        match k.as_str() {
            "ssl_cert_reqs" => t.cert_reqs = cert_reqs(&v).map_err(bad)?,
            "ssl_ca_certs" => t.ca_certs = path()?,
            "ssl_certfile" => t.certfile = path()?,
            "ssl_keyfile" => t.keyfile = path()?,
            _ => {
                return Err(bad(format!(
                    "unknown option `{k}`; celeriac reads ssl_cert_reqs, ssl_ca_certs, ssl_certfile and ssl_keyfile"
                )));
            }
        }
    }
    if let Some(t) = &tls
        && t.keyfile.is_some()
        && t.certfile.is_none()
    {
        return Err(bad("`ssl_keyfile` needs `ssl_certfile`".into()));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad(format!("no host; use {SCHEMES}")));
    }
    if rest.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(rest);
    }
    if tls.as_ref().is_some_and(|t| t.cert_reqs == CertReqs::None) {
        // redis-rs's spelling of "do not verify".
        parsed.set_fragment(Some("insecure"));
    }
    Ok((Target::Tcp(parsed.into()), tls))
}

/// `redis+socket:///PATH` and its spellings: kombu's `virtual_host`, password and
/// username from the query or the URL.
fn socket(
    parsed: &Url,
    scheme: &str,
    pairs: Vec<(String, String)>,
    bad: &dyn Fn(String) -> UrlError,
) -> Result<Target, UrlError> {
    let path = percent_decode(parsed.path());
    if path.is_empty() || path == "/" {
        return Err(bad(format!(
            "no socket path; use {scheme}:///path/to/redis.sock"
        )));
    }
    let (mut db, mut user, mut password) = (0, None, None);
    for (k, v) in pairs {
        match k.as_str() {
            "virtual_host" | "db" => {
                db = v
                    .trim_start_matches('/')
                    .parse()
                    .map_err(|_| bad(format!("`{k}={v}` is not a database number")))?;
            }
            "password" | "pass" => password = Some(v),
            "username" | "user" => user = Some(v),
            _ => {
                return Err(bad(format!(
                    "unknown option `{k}` for a Unix socket; celeriac reads virtual_host (or db), password and username"
                )));
            }
        }
    }
    if !parsed.username().is_empty() {
        user = Some(percent_decode(parsed.username()));
    }
    if let Some(p) = parsed.password() {
        password = Some(percent_decode(p));
    }
    Ok(Target::Socket {
        path: PathBuf::from(path),
        db,
        user,
        password,
    })
}

const SCHEMES: &str = "redis://HOST:PORT/DB, rediss://HOST:PORT/DB?ssl_cert_reqs=required&ssl_ca_certs=PATH, or redis+socket:///PATH";

impl BrokerUrl {
    /// Parses `url` (no file is read here).
    pub fn parse(url: &str) -> Result<BrokerUrl, UrlError> {
        let shown = redact(url);
        let bad = |why: String| UrlError(format!("`{shown}`: {why}"));
        let parsed = Url::parse(url).map_err(|e| bad(format!("not a URL ({e}); use {SCHEMES}")))?;
        let scheme = parsed.scheme().to_string();
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let (target, tls) = match scheme.as_str() {
            "redis" | "rediss" => tcp(parsed, scheme == "rediss", pairs, &bad)?,
            "unix" | "redis+unix" | "socket" | "redis+socket" => {
                (socket(&parsed, &scheme, pairs, &bad)?, None)
            }
            other => {
                return Err(bad(format!(
                    "`{other}://` is not a Redis URL; use {SCHEMES}"
                )));
            }
        };
        Ok(BrokerUrl { target, tls, shown })
    }

    /// A redis-rs client for this URL; reads the certificate files.
    pub fn client(&self) -> Result<redis::Client, UrlError> {
        let fail = |e: redis::RedisError| UrlError(format!("`{}`: {e}", self.shown));
        match (&self.target, &self.tls) {
            (Target::Tcp(url), None) => redis::Client::open(url.as_str()).map_err(fail),
            (Target::Tcp(url), Some(tls)) => {
                install_crypto_provider();
                let read = |option: &str, path: &PathBuf| {
                    std::fs::read(path).map_err(|e| {
                        UrlError(format!(
                            "`{}`: {option} `{}` cannot be read: {e}",
                            self.shown,
                            path.display()
                        ))
                    })
                };
                let root_cert = match (&tls.ca_certs, tls.cert_reqs) {
                    (Some(p), CertReqs::Required) => Some(read("ssl_ca_certs", p)?),
                    _ => None,
                };
                let client_tls = match &tls.certfile {
                    Some(cert) => {
                        let client_cert = read("ssl_certfile", cert)?;
                        let client_key = match &tls.keyfile {
                            Some(key) => read("ssl_keyfile", key)?,
                            None => client_cert.clone(),
                        };
                        Some(redis::ClientTlsConfig {
                            client_cert,
                            client_key,
                        })
                    }
                    None => None,
                };
                redis::Client::build_with_tls(
                    url.as_str(),
                    redis::TlsCertificates {
                        client_tls,
                        root_cert,
                    },
                )
                .map_err(fail)
            }
            (
                Target::Socket {
                    path,
                    db,
                    user,
                    password,
                },
                _,
            ) => {
                let mut settings = redis::RedisConnectionInfo::default().set_db(*db);
                if let Some(u) = user {
                    settings = settings.set_username(u);
                }
                if let Some(p) = password {
                    settings = settings.set_password(p);
                }
                let info = redis::IntoConnectionInfo::into_connection_info(
                    redis::ConnectionAddr::Unix(path.clone()),
                )
                .map_err(fail)?
                .set_redis_settings(settings);
                redis::Client::open(info).map_err(fail)
            }
        }
    }

    /// Says what a failed first connection means, for the start-up error: above all, a
    /// server certificate that the configured CAs do not vouch for.
    pub fn explain(&self, error: &str) -> String {
        let Some(tls) = &self.tls else {
            return error.to_string();
        };
        if error.contains("invalid peer certificate") {
            let trust = match &tls.ca_certs {
                Some(ca) => format!("the CA certificates in ssl_ca_certs `{}`", ca.display()),
                None => "the system's trusted roots (set ssl_ca_certs to the CA that signed it)"
                    .to_string(),
            };
            format!(
                "the broker's TLS certificate could not be verified against {trust}, or does not name this host: {error}"
            )
        } else if error.contains("CertificateRequired") && tls.certfile.is_none() {
            format!(
                "the server asks for a client certificate: set ssl_certfile and ssl_keyfile ({error})"
            )
        } else {
            error.to_string()
        }
    }
}

/// `required`, `optional`, `none`, or Python's `CERT_REQUIRED`, `CERT_OPTIONAL`,
/// `CERT_NONE`.
fn cert_reqs(v: &str) -> Result<CertReqs, String> {
    let lower = v.to_ascii_lowercase();
    match lower.strip_prefix("cert_").unwrap_or(&lower) {
        "required" | "optional" => Ok(CertReqs::Required),
        "none" => Ok(CertReqs::None),
        _ => Err(format!(
            "`ssl_cert_reqs={v}`: use required, optional or none (or CERT_REQUIRED, CERT_OPTIONAL, CERT_NONE)"
        )),
    }
}

fn percent_decode(s: &str) -> String {
    // `form_urlencoded` would also turn `+` into a space, which a path keeps.
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// rustls takes its crypto from the process default: this build's is `ring`, installed
/// here so that no other crate's feature can make the choice ambiguous.
fn install_crypto_provider() {
    // rustls 0.23.48 deprecates ring's provider for lacking post-quantum key exchange;
    // aws-lc-rs has it but needs cmake and a C toolchain to build. Redis servers offer
    // classic key exchange, which ring covers.
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    // An error means one is installed already, which is as good.
    let _ = provider.install_default();
}

/// `url` without its password (in the user part or a `password=` option), for logs.
pub fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) if u.has_authority() => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            let secret = |k: &str| matches!(k, "password" | "pass");
            if u.query_pairs().any(|(k, _)| secret(&k)) {
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if secret(&k) {
                            "***".into()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.into()
        }
        // Not a URL with a host: hide whatever sits before an `@`.
        _ => match (url.find("://"), url.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
            (None, Some(at)) => format!("***@{}", &url[at + 1..]),
            _ => url.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(u: &BrokerUrl) -> &str {
        match &u.target {
            Target::Tcp(s) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("redis://:hunter2@host:6379/0"),
            "redis://:***@host:6379/0"
        );
        assert_eq!(
            redact("redis://app:hunter2@host:6379/0"),
            "redis://app:***@host:6379/0"
        );
        assert_eq!(redact("redis://host:6379/0"), "redis://host:6379/0");
        assert_eq!(
            redact("redis+socket:///run/redis.sock?password=hunter2&virtual_host=2"),
            "redis+socket:///run/redis.sock?password=***&virtual_host=2"
        );
        assert_eq!(redact("nonsense:hunter2@x"), "***@x");
        let e = BrokerUrl::parse("rediss://u:hunter2@h:1/0?ssl_cert_reqs=maybe").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let u = BrokerUrl::parse("redis://u:hunter2@h:1/0").unwrap();
        assert!(!u.shown.contains("hunter2"));
    }

    #[test]
    fn plain_urls_pass_through() {
        let u = BrokerUrl::parse("redis://u:p%40ss@127.0.0.1:6380/3").unwrap();
        assert_eq!(tcp(&u), "redis://u:p%40ss@127.0.0.1:6380/3");
        assert_eq!(u.tls, None);
        let c = u.client().unwrap();
        let info = c.get_connection_info().redis_settings();
        assert_eq!(
            (info.db(), info.username(), info.password()),
            (3, Some("u"), Some("p@ss"))
        );
    }

    #[test]
    fn celery_tls_options_are_read_and_removed() {
        let u = BrokerUrl::parse(
            "rediss://:pw@cache.example.com:6380/1?ssl_cert_reqs=CERT_REQUIRED&ssl_ca_certs=%2Fetc%2Fca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k.pem&protocol=resp2",
        )
        .unwrap();
        assert_eq!(
            u.tls,
            Some(Tls {
                cert_reqs: CertReqs::Required,
                ca_certs: Some("/etc/ca.pem".into()),
                certfile: Some("/c.pem".into()),
                keyfile: Some("/k.pem".into()),
            })
        );
        assert_eq!(
            tcp(&u),
            "rediss://:pw@cache.example.com:6380/1?protocol=resp2"
        );
        for (v, want) in [
            ("required", CertReqs::Required),
            ("optional", CertReqs::Required),
            ("CERT_OPTIONAL", CertReqs::Required),
            ("none", CertReqs::None),
            ("CERT_NONE", CertReqs::None),
        ] {
            let u = BrokerUrl::parse(&format!("rediss://h:6380?ssl_cert_reqs={v}")).unwrap();
            assert_eq!(u.tls.unwrap().cert_reqs, want, "{v}");
        }
        let none = BrokerUrl::parse("rediss://h:6380/0?ssl_cert_reqs=none").unwrap();
        assert_eq!(tcp(&none), "rediss://h:6380/0#insecure");
        // Unset: verified.
        let u = BrokerUrl::parse("rediss://h:6380/0").unwrap();
        assert_eq!(u.tls.unwrap().cert_reqs, CertReqs::Required);
    }

    #[test]
    fn mistakes_are_named() {
        let err = |u: &str| BrokerUrl::parse(u).unwrap_err().to_string();
        assert!(err("rediss://h?ssl_cert_reqs=maybe").contains("CERT_REQUIRED"));
        assert!(err("rediss://h?ssl_ca_cert=/x").contains("unknown option `ssl_ca_cert`"));
        assert!(err("redis://h?ssl_cert_reqs=none").contains("rediss://"));
        assert!(err("rediss://h?ssl_keyfile=/k").contains("ssl_certfile"));
        assert!(err("amqp://guest@localhost//").contains("not a Redis URL"));
        assert!(err("127.0.0.1:6379").contains("not"));
        assert!(err("redis+socket://").contains("socket path"));
        assert!(err("unix:///s.sock?virtual_host=x").contains("database number"));
        let missing = BrokerUrl::parse("rediss://h:1?ssl_ca_certs=/nonexistent/ca.pem")
            .unwrap()
            .client()
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("ssl_ca_certs `/nonexistent/ca.pem` cannot be read"),
            "{missing}"
        );
    }

    #[test]
    fn unix_sockets_as_celery_writes_them() {
        for url in [
            "redis+socket:///run/redis/redis.sock?virtual_host=2",
            "socket:///run/redis/redis.sock?virtual_host=2",
            "unix:///run/redis/redis.sock?db=2",
            "redis+unix:///run/redis/redis.sock?db=2",
        ] {
            let u = BrokerUrl::parse(url).unwrap();
            assert_eq!(
                u.target,
                Target::Socket {
                    path: "/run/redis/redis.sock".into(),
                    db: 2,
                    user: None,
                    password: None,
                },
                "{url}"
            );
            let c = u.client().unwrap();
            assert_eq!(c.get_connection_info().redis_settings().db(), 2);
            assert!(matches!(
                c.get_connection_info().addr(),
                redis::ConnectionAddr::Unix(p) if p == std::path::Path::new("/run/redis/redis.sock")
            ));
        }
        let u = BrokerUrl::parse("unix:///tmp/r.sock?password=s3cret").unwrap();
        assert!(!u.shown.contains("s3cret"));
        let c = u.client().unwrap();
        assert_eq!(
            c.get_connection_info().redis_settings().password(),
            Some("s3cret")
        );
    }
}
