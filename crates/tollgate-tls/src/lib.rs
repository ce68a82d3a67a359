//! TLS for every hop Tollgate makes or serves, with rustls on the `ring` provider (no
//! OpenSSL): PEM files read with errors that name them, client configurations (the
//! system's roots plus extra CAs, and an optional client certificate), and server
//! configurations whose certificate is re-read when its files change, so a rotation by
//! cert-manager (or anything that rewrites the files) needs no restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// How often, at most, a server checks whether its certificate files changed.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {what}", path.display())]
    File { path: PathBuf, what: String },
    #[error("{0}")]
    Config(String),
}

fn file_error(path: &Path, what: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        what: what.into(),
    }
}

/// The one crypto provider every TLS configuration uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file (a chain: leaf first).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, format!("cannot read certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(path, "holds no certificate (-----BEGIN CERTIFICATE-----)"));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, format!("no usable private key: {e}")))
}

/// Trusted roots: the system's (unless `system` is false), plus every certificate in
/// `ca_file`.
pub fn roots(ca_file: Option<&Path>, system: bool) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    if system {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::debug!("skipping a system root certificate: {error}");
        }
        let (added, ignored) = store.add_parsable_certificates(found.certs);
        tracing::debug!(added, ignored, "system root certificates loaded");
    }
    if let Some(path) = ca_file {
        for cert in read_certs(path)? {
            store
                .add(cert)
                .map_err(|e| file_error(path, format!("not a usable CA certificate: {e}")))?;
        }
    }
    if store.is_empty() {
        return Err(TlsError::Config(
            "no trusted root certificates: the system has none, and no ca_file was given".into(),
        ));
    }
    Ok(store)
}

/// A client certificate and its key, for mutual TLS.
#[derive(Debug, Clone)]
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A client configuration: the system's roots plus `ca_file`, and `identity` as the client
/// certificate when the server asks for one. `alpn` lists the protocols to offer.
pub fn client_config(
    ca_file: Option<&Path>,
    identity: Option<&Identity>,
    alpn: &[&[u8]],
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots(ca_file, true)?);
    let mut config = match identity {
        Some(identity) => {
            let certs = read_certs(&identity.cert)?;
            let key = read_key(&identity.key)?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| file_error(&identity.key, format!("does not fit {}: {e}", identity.cert.display())))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A server configuration with the certificate in `cert` / `key` (re-read when the files
/// change); with `client_ca`, clients must present a certificate that CA signed.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(Some(ca), false)?), provider())
                .build()
                .map_err(|e| file_error(ca, format!("cannot verify clients with it: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(ReloadingCertificate::load(cert, key)?));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A server certificate that follows its files: on a handshake, at most once per
/// [`RELOAD_CHECK_INTERVAL`], the files' modification times and sizes are compared with
/// the loaded ones, and changed files are read again. Files that cannot be read or do not
/// fit together leave the last good certificate in service (and are logged), so a
/// half-written rotation never takes the listener down.
#[derive(Debug)]
pub struct ReloadingCertificate {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    stamp: Stamp,
    checked: Instant,
}

type Stamp = [(Option<SystemTime>, u64); 2];

impl ReloadingCertificate {
    pub fn load(cert: &Path, key: &Path) -> Result<ReloadingCertificate, TlsError> {
        let stamp = stamp(cert, key);
        let certified = certified_key(cert, key)?;
        Ok(ReloadingCertificate {
            cert: cert.to_owned(),
            key: key.to_owned(),
            state: Mutex::new(Loaded {
                key: certified,
                stamp,
                checked: Instant::now(),
            }),
        })
    }

    /// The certificate to serve now, re-read first if its files changed.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.checked.elapsed() >= RELOAD_CHECK_INTERVAL {
            state.checked = Instant::now();
            let now = stamp(&self.cert, &self.key);
            if now != state.stamp {
                match certified_key(&self.cert, &self.key) {
                    Ok(key) => {
                        tracing::info!(cert = %self.cert.display(), "TLS certificate changed on disk: serving the new one");
                        state.key = key;
                        state.stamp = now;
                    }
                    Err(e) => {
                        tracing::warn!(cert = %self.cert.display(), "TLS certificate files changed but cannot be used, still serving the previous certificate: {e}");
                    }
                }
            }
        }
        state.key.clone()
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let of = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| (m.modified().ok(), m.len()))
            .unwrap_or((None, 0))
    };
    [of(cert), of(key)]
}

fn certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs = read_certs(cert)?;
    let private = read_key(key)?;
    let signing = provider()
        .key_provider
        .load_private_key(private)
        .map_err(|e| file_error(key, format!("unsupported private key: {e}")))?;
    let certified = CertifiedKey::new(certs, signing);
    certified.keys_match().map_err(|e| {
        file_error(
            key,
            format!("does not match the certificate in {}: {e}", cert.display()),
        )
    })?;
    Ok(Arc::new(certified))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf, Vec<u8>) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let (cert_path, key_path) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&cert_path, cert.pem()).expect("write");
        std::fs::write(&key_path, key.serialize_pem()).expect("write");
        (cert_path, key_path, cert.der().to_vec())
    }

    fn temp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tollgate-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    #[test]
    fn a_rewritten_certificate_is_served_and_a_broken_one_is_not() {
        let dir = temp("reload");
        let (cert, key, first) = write_pair(&dir, "a");
        let reloading = ReloadingCertificate::load(&cert, &key).expect("load");
        assert_eq!(reloading.current().cert[0].as_ref(), first.as_slice());
        let (new_cert, new_key, second) = write_pair(&dir, "b");
        std::fs::copy(&new_cert, &cert).expect("copy");
        std::fs::copy(&new_key, &key).expect("copy");
        std::thread::sleep(RELOAD_CHECK_INTERVAL + Duration::from_millis(50));
        assert_eq!(reloading.current().cert[0].as_ref(), second.as_slice());
        // Half a rotation (a key that does not fit) keeps the last good pair.
        std::fs::write(&key, std::fs::read(dir.join("a.key")).expect("read")).expect("write");
        std::thread::sleep(RELOAD_CHECK_INTERVAL + Duration::from_millis(50));
        assert_eq!(reloading.current().cert[0].as_ref(), second.as_slice());
    }

    #[test]
    fn unreadable_files_are_named() {
        let dir = temp("errors");
        let missing = dir.join("missing.pem");
        let e = read_certs(&missing).expect_err("missing");
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not pem").expect("write");
        let e = read_certs(&junk).expect_err("junk");
        assert!(
            e.to_string().contains("junk.pem") && e.to_string().contains("no certificate"),
            "{e}"
        );
        let e = read_key(&junk).expect_err("junk key");
        assert!(e.to_string().contains("junk.pem"), "{e}");
        let (cert, _, _) = write_pair(&dir, "c");
        let (_, other_key, _) = write_pair(&dir, "d");
        let e = certified_key(&cert, &other_key).expect_err("mismatch");
        assert!(e.to_string().contains("does not match"), "{e}");
    }
}
