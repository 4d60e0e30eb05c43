//! TLS identity of the daemon and the trust modes of clients.

use crate::error::TransportError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// File names of the persisted self-signed identity inside the data directory.
pub const CERT_FILE: &str = "cert.pem";
/// Private key file of the persisted identity.
pub const KEY_FILE: &str = "key.pem";
/// Hex SHA-256 fingerprint of the identity's certificate, for agents to pin.
pub const FINGERPRINT_FILE: &str = "identity.sha256";

/// The one crypto provider of this project (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The daemon's certificate chain and private key.
#[derive(Debug)]
pub struct ServerIdentity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for ServerIdentity {
    fn clone(&self) -> Self {
        ServerIdentity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl ServerIdentity {
    /// Loads a PEM certificate chain and a PEM private key.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, TransportError> {
        let chain = read_certs(cert)?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
            TransportError::Identity(format!(
                "cannot read a PEM private key from {}: {e}",
                key.display()
            ))
        })?;
        Ok(ServerIdentity { chain, key })
    }

    /// Builds an identity from DER parts (tests, generated identities).
    pub fn from_der(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Self {
        ServerIdentity { chain, key }
    }

    /// Generates a fresh self-signed identity valid for `names` (DNS names or IP addresses).
    pub fn generate_self_signed(names: &[String]) -> Result<Self, TransportError> {
        let ck = rcgen::generate_simple_self_signed(names.to_vec())
            .map_err(|e| TransportError::Identity(format!("cannot generate a certificate: {e}")))?;
        let key = PrivateKeyDer::try_from(ck.signing_key.serialize_der())
            .map_err(|e| TransportError::Identity(format!("generated key unusable: {e}")))?;
        Ok(ServerIdentity {
            chain: vec![ck.cert.der().clone()],
            key,
        })
    }

    /// Loads `cert.pem`/`key.pem` from `data_dir`, or generates a self-signed identity (for
    /// `localhost`, `127.0.0.1`, `::1`) and persists it there on first use. Always (re)writes
    /// `identity.sha256` with the certificate's fingerprint.
    pub fn load_or_generate(data_dir: &Path) -> Result<Self, TransportError> {
        let cert = data_dir.join(CERT_FILE);
        let key = data_dir.join(KEY_FILE);
        let identity = if cert.exists() && key.exists() {
            tracing::debug!(dir = %data_dir.display(), "reusing the persisted TLS identity");
            Self::from_files(&cert, &key)?
        } else {
            std::fs::create_dir_all(data_dir).map_err(|e| {
                TransportError::io(
                    format!("creating the data directory {}", data_dir.display()),
                    e,
                )
            })?;
            let names = ["localhost", "127.0.0.1", "::1"].map(String::from);
            let id = Self::generate_self_signed(&names)?;
            let cert_pem = pem_encode("CERTIFICATE", &id.chain[0]);
            let key_pem = pem_encode("PRIVATE KEY", id.key.secret_der());
            write_private(&key, key_pem.as_bytes())?;
            std::fs::write(&cert, cert_pem)
                .map_err(|e| TransportError::io(format!("writing {}", cert.display()), e))?;
            tracing::info!(dir = %data_dir.display(), "generated a self-signed TLS identity");
            id
        };
        let fp = data_dir.join(FINGERPRINT_FILE);
        std::fs::write(&fp, format!("{}\n", identity.fingerprint_hex()))
            .map_err(|e| TransportError::io(format!("writing {}", fp.display()), e))?;
        Ok(identity)
    }

    /// SHA-256 of the leaf certificate's DER, lowercase hex without separators.
    pub fn fingerprint_hex(&self) -> String {
        self.chain
            .first()
            .map(|c| fingerprint(c))
            .unwrap_or_default()
    }

    /// The leaf certificate in PEM (to hand to clients as a CA file).
    pub fn cert_pem(&self) -> String {
        self.chain
            .iter()
            .map(|c| pem_encode("CERTIFICATE", c))
            .collect()
    }

    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

/// SHA-256 of a DER certificate, lowercase hex.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    hex::encode(Sha256::digest(cert.as_ref()))
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    // Standard PEM: base64 in 64-column lines.
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len() * 4 / 3 + 4);
    for chunk in der.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                b64.push(B64[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TransportError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| TransportError::io(format!("creating {}", path.display()), e))?;
    f.write_all(bytes)
        .map_err(|e| TransportError::io(format!("writing {}", path.display()), e))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| {
        TransportError::Identity(format!(
            "cannot read certificates from {}: {e}",
            path.display()
        ))
    })?;
    let certs: Vec<_> = iter.collect::<Result<_, _>>().map_err(|e| {
        TransportError::Identity(format!("bad PEM certificate in {}: {e}", path.display()))
    })?;
    if certs.is_empty() {
        return Err(TransportError::Identity(format!(
            "{} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// How a client decides to trust the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Verify the chain against the CA certificate(s) in this PEM file (names and expiry checked).
    CaFile(PathBuf),
    /// Pin the SHA-256 of the server's leaf certificate (hex; colons and spaces allowed).
    Fingerprint(String),
    /// Accept any certificate, only for loopback targets (development).
    InsecureLoopback,
}

impl Trust {
    /// Builds `Trust::Fingerprint` from a hex value or from the path of an `identity.sha256` file.
    pub fn fingerprint_from_arg(arg: &str) -> Result<Self, TransportError> {
        if parse_fingerprint(arg).is_ok() {
            return Ok(Trust::Fingerprint(arg.to_string()));
        }
        let path = Path::new(arg);
        if path.exists() {
            let text = std::fs::read_to_string(path)
                .map_err(|e| TransportError::io(format!("reading {}", path.display()), e))?;
            parse_fingerprint(text.trim())?;
            return Ok(Trust::Fingerprint(text.trim().to_string()));
        }
        Err(TransportError::Config(format!(
            "{arg:?} is neither a SHA-256 fingerprint (64 hex digits, colons allowed) nor a readable file"
        )))
    }
}

/// Parses a hex SHA-256 fingerprint, ignoring `:`, spaces and case.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], TransportError> {
    let clean: String = s
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .collect();
    let bytes = hex::decode(&clean)
        .map_err(|e| TransportError::Config(format!("fingerprint {s:?} is not hex: {e}")))?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        TransportError::Config(format!(
            "fingerprint {s:?} has {} bytes; a SHA-256 fingerprint has 32 (64 hex digits)",
            b.len()
        ))
    })
}

/// Accepts exactly one leaf certificate (by SHA-256) and still checks handshake signatures.
#[derive(Debug)]
struct PinnedVerifier {
    /// `None` = accept any leaf (insecure loopback mode).
    pin: Option<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.pin {
            Some(pin) => {
                let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
                if subtle::ConstantTimeEq::ct_eq(&got[..], &pin[..]).into() {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::General(format!(
                        "server certificate fingerprint {} does not match the pinned {}",
                        hex::encode(got),
                        hex::encode(pin)
                    )))
                }
            }
            None => {
                let loopback = match server_name {
                    ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).is_loopback(),
                    ServerName::DnsName(n) => n.as_ref().eq_ignore_ascii_case("localhost"),
                    _ => false,
                };
                if loopback {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::General(
                        "insecure-loopback trust used for a non-loopback server name".into(),
                    ))
                }
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// rustls server configuration: TLS 1.3 only, ALPN `referee/2`.
pub fn server_crypto(identity: &ServerIdentity) -> Result<rustls::ServerConfig, TransportError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key())
        .map_err(|e| TransportError::Identity(format!("certificate and key do not fit: {e}")))?;
    cfg.alpn_protocols = vec![crate::messages::ALPN.to_vec()];
    Ok(cfg)
}

/// rustls client configuration for a trust mode, offering `alpn` (normally [`crate::messages::ALPN`]).
pub fn client_crypto(trust: &Trust, alpn: &[u8]) -> Result<rustls::ClientConfig, TransportError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut cfg = match trust {
        Trust::CaFile(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(path)? {
                roots.add(cert).map_err(|e| {
                    TransportError::Identity(format!(
                        "{} holds a certificate that cannot be a trust anchor: {e}",
                        path.display()
                    ))
                })?;
            }
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|e| TransportError::Identity(format!("CA file {}: {e}", path.display())))?;
            builder.with_webpki_verifier(verifier).with_no_client_auth()
        }
        Trust::Fingerprint(hex) => {
            let pin = parse_fingerprint(hex)?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                    pin: Some(pin),
                    provider: provider(),
                }))
                .with_no_client_auth()
        }
        Trust::InsecureLoopback => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                pin: None,
                provider: provider(),
            }))
            .with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(cfg)
}
