//! Self-signed TLS for the emulator: an rcgen CA and a server certificate for `localhost`, `127.0.0.1` and `::1`,
//! served through tokio-rustls (ring provider). Kept private to the MISP emulator; small on purpose.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// PEM material: the CA a client must trust, and the server's certificate and key.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl TlsMaterial {
    /// A fresh CA and a server certificate for localhost / 127.0.0.1 / ::1 (plus `extra_names`).
    pub fn generate(extra_names: &[String]) -> io::Result<Self> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(other)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "fortimisp emulator CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().map_err(other)?;
        let ca = ca_params.self_signed(&ca_key).map_err(other)?;

        let mut names = vec!["localhost".to_string()];
        names.extend(extra_names.iter().filter(|n| n.parse::<IpAddr>().is_err()).cloned());
        let mut params = CertificateParams::new(names).map_err(other)?;
        params.distinguished_name.push(DnType::CommonName, "misp-emulator");
        let mut ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)];
        ips.extend(extra_names.iter().filter_map(|n| n.parse::<IpAddr>().ok()));
        params.subject_alt_names.extend(ips.into_iter().map(SanType::IpAddress));
        let key = KeyPair::generate().map_err(other)?;
        let cert = params.signed_by(&key, &ca, &ca_key).map_err(other)?;
        Ok(TlsMaterial { ca_pem: ca.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// Reuses `ca.pem`, `server.pem`, `server-key.pem` from `dir` when all exist, else generates and writes them.
    pub fn load_or_generate(dir: &Path, extra_names: &[String]) -> io::Result<Self> {
        let (ca, cert, key) = (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server-key.pem"));
        if ca.exists() && cert.exists() && key.exists() {
            return Ok(TlsMaterial {
                ca_pem: std::fs::read_to_string(ca)?,
                cert_pem: std::fs::read_to_string(cert)?,
                key_pem: std::fs::read_to_string(key)?,
            });
        }
        std::fs::create_dir_all(dir)?;
        let material = Self::generate(extra_names)?;
        std::fs::write(ca, &material.ca_pem)?;
        std::fs::write(cert, &material.cert_pem)?;
        std::fs::write(key, &material.key_pem)?;
        Ok(material)
    }

    /// A rustls server config (ring provider, h2 and http/1.1 by ALPN).
    pub fn server_config(&self) -> io::Result<Arc<ServerConfig>> {
        let certs: Vec<CertificateDer<'static>> =
            rustls_pemfile::certs(&mut self.cert_pem.as_bytes()).collect::<Result<_, _>>()?;
        let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut self.key_pem.as_bytes())?
            .ok_or_else(|| other("no private key in the PEM"))?;
        let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(other)?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(other)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}
