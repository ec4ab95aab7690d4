//! Throwaway TLS material made with the `openssl` command-line tool.

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::TempDir;

static SERIALS: AtomicU64 = AtomicU64::new(1);

/// A test CA plus a server and a client certificate (ECDSA P-256, PEM, valid 10 years), in a
/// temporary directory removed on drop.
///
/// - `ca` / `ca_key`: the CA certificate and key (the key signs further certificates, see
///   [`TlsMaterial::issue_server_cert`]).
/// - `cert` / `key`: a client certificate (CN `reef-test-client`, extended key usage
///   clientAuth), what etcd clients present.
/// - `server_cert` / `server_key`: a server certificate with subjectAltName `IP:127.0.0.1`,
///   `DNS:localhost` and every address of `server_ips`, extended key usage serverAuth **and**
///   clientAuth (etcd 3.4 dials itself with its server certificate for its gRPC gateway).
///
/// [`crate::EtcdHost::start`] copies what it needs, so the material may be dropped while etcd
/// keeps running. If `server_ips` does not contain the etcd host's address, the etcd host
/// issues itself a server certificate from this CA.
#[derive(Debug)]
pub struct TlsMaterial {
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub server_ips: Vec<Ipv4Addr>,
    dir: TempDir,
}

impl TlsMaterial {
    /// Generates a CA, a server certificate for `server_ips` (plus 127.0.0.1 and localhost),
    /// and a client certificate. Takes a few tens of milliseconds.
    pub fn generate(server_ips: &[Ipv4Addr]) -> io::Result<TlsMaterial> {
        let dir = tempfile::Builder::new().prefix("reef-tls-").tempdir()?;
        let ca = dir.path().join("ca.pem");
        let ca_key = dir.path().join("ca-key.pem");
        run(Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args([
                "-nodes",
                "-sha256",
                "-days",
                "3650",
                "-subj",
                "/CN=reef-test-ca",
            ])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca))?;
        let mut tls = TlsMaterial {
            server_cert: PathBuf::new(),
            server_key: PathBuf::new(),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            server_ips: server_ips.to_vec(),
            ca,
            ca_key,
            dir,
        };
        let dir = tls.dir.path().to_path_buf();
        (tls.server_cert, tls.server_key) = tls.issue_server_cert(&dir, "server", server_ips)?;
        (tls.cert, tls.key) = tls.issue_client_cert(&dir, "client", "reef-test-client")?;
        Ok(tls)
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// True if `server_cert` is valid for `ip` (127.0.0.1 or one of `server_ips`).
    pub fn covers(&self, ip: Ipv4Addr) -> bool {
        ip == Ipv4Addr::LOCALHOST || self.server_ips.contains(&ip)
    }

    /// Issues a server certificate signed by this CA for `ips` plus 127.0.0.1 and localhost,
    /// written to `dir/NAME.pem` and `dir/NAME-key.pem` (returned in that order).
    pub fn issue_server_cert(
        &self,
        dir: &Path,
        name: &str,
        ips: &[Ipv4Addr],
    ) -> io::Result<(PathBuf, PathBuf)> {
        let mut san = String::from("DNS:localhost,IP:127.0.0.1");
        for ip in ips {
            san += &format!(",IP:{ip}");
        }
        self.issue(
            dir,
            name,
            "reef-test-server",
            &format!(
                "basicConstraints=critical,CA:FALSE\n\
                 keyUsage=critical,digitalSignature,keyEncipherment\n\
                 extendedKeyUsage=serverAuth,clientAuth\n\
                 subjectAltName={san}\n"
            ),
        )
    }

    /// Issues a client certificate (extended key usage clientAuth) with common name `cn`,
    /// written to `dir/NAME.pem` and `dir/NAME-key.pem` (returned in that order).
    pub fn issue_client_cert(
        &self,
        dir: &Path,
        name: &str,
        cn: &str,
    ) -> io::Result<(PathBuf, PathBuf)> {
        self.issue(
            dir,
            name,
            cn,
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=clientAuth\n",
        )
    }

    fn issue(
        &self,
        dir: &Path,
        name: &str,
        cn: &str,
        extensions: &str,
    ) -> io::Result<(PathBuf, PathBuf)> {
        if cn.contains(['/', '\n']) || name.contains(['/', '\n']) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("certificate name {name:?} / CN {cn:?}: no '/' or newlines"),
            ));
        }
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}-key.pem"));
        let csr = dir.join(format!("{name}.csr"));
        let ext = dir.join(format!("{name}.ext"));
        std::fs::write(&ext, extensions)?;
        let subj = format!("/CN={cn}");
        run(Command::new("openssl")
            .args([
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-subj", &subj])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr))?;
        // A serial unique per process and call; no serial file, so concurrent issuing from
        // one CA is safe.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let serial = format!(
            "0x{:08x}{:016x}{:08x}",
            std::process::id(),
            nanos,
            SERIALS.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("openssl")
            .args([
                "x509",
                "-req",
                "-sha256",
                "-days",
                "3650",
                "-set_serial",
                &serial,
            ])
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(&self.ca)
            .arg("-CAkey")
            .arg(&self.ca_key)
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&cert))?;
        let _ = std::fs::remove_file(&csr);
        let _ = std::fs::remove_file(&ext);
        Ok((cert, key))
    }
}

fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
