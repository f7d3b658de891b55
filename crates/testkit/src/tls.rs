//! Throw-away TLS material for tests and the lab: a self-signed CA (rcgen) that issues server certificates for
//! `127.0.0.1`, `::1` and `localhost`, and the rustls server config the emulators serve with.
//!
//! The clients under test get [`TestCa::ca_pem`] (written to a file with [`TestCa::write_ca_file`]) as their
//! extra trust root; without it verification must fail closed, which is what the TLS tests prove.
//!
//! ```no_run
//! let ca = fortimisp_testkit::tls::TestCa::new();
//! let server = ca.issue_server_cert();
//! let config = fortimisp_testkit::tls::server_config(&server);
//! # let _ = config;
//! ```

use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A certificate authority that lives as long as the test. Its key never leaves the process.
pub struct TestCa {
    /// The CA certificate in PEM, what a client adds as a trust root (`ca_file`).
    pub ca_pem: String,
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A server certificate (chain: leaf, CA) and its private key, both PEM and DER.
pub struct ServerCert {
    /// Leaf then CA certificate, PEM.
    pub cert_pem: String,
    /// PKCS#8 private key, PEM.
    pub key_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
}

impl TestCa {
    /// Generates a fresh CA ("fortimisp test CA").
    pub fn new() -> Self {
        let key = KeyPair::generate().expect("invariant: ring can generate a P-256 key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("invariant: empty SAN list is valid");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "fortimisp test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("invariant: self-signing a CA with a fresh key succeeds");
        TestCa { ca_pem: cert.pem(), cert, key }
    }

    /// Issues a server certificate valid for `127.0.0.1`, `::1` and `localhost`.
    pub fn issue_server_cert(&self) -> ServerCert {
        self.issue_server_cert_for(&["127.0.0.1", "::1", "localhost"])
    }

    /// Issues a server certificate for the given names (IP literals become IP SANs).
    pub fn issue_server_cert_for(&self, names: &[&str]) -> ServerCert {
        let key = KeyPair::generate().expect("invariant: ring can generate a P-256 key");
        let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("invariant: SANs are valid names");
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("localhost"));
        let leaf = params.signed_by(&key, &self.cert, &self.key).expect("invariant: signing with the test CA succeeds");
        ServerCert {
            cert_pem: format!("{}{}", leaf.pem(), self.ca_pem),
            key_pem: key.serialize_pem(),
            chain: vec![leaf.der().clone(), self.cert.der().clone()],
            key_der: key.serialize_der(),
        }
    }

    /// Writes [`TestCa::ca_pem`] to `path` (for a client's `ca_file`).
    pub fn write_ca_file(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, &self.ca_pem)
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerCert {
    /// Writes `cert.pem` and `key.pem` into `dir` (the layout `--tls-dir` reads).
    pub fn write_to_dir(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::write(dir.join("cert.pem"), &self.cert_pem)?;
        std::fs::write(dir.join("key.pem"), &self.key_pem)
    }
}

/// A rustls server config (ring provider, TLS 1.2 and 1.3, ALPN http/1.1 like httpsd) serving `cert`.
pub fn server_config(cert: &ServerCert) -> Arc<rustls::ServerConfig> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_der.clone()));
    build_server_config(cert.chain.clone(), key).expect("invariant: rcgen output is a valid cert/key pair")
}

/// A rustls server config from PEM files (`cert.pem` may hold a chain, `key.pem` any PEM private key).
pub fn server_config_from_pem(cert_pem: &[u8], key_pem: &[u8]) -> std::io::Result<Arc<rustls::ServerConfig>> {
    let chain = rustls_pemfile::certs(&mut &cert_pem[..]).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut &key_pem[..])?
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no private key in PEM"))?;
    build_server_config(chain, key).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

fn build_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
