//! The local servers' certificates: a CA made once per data directory, and
//! a certificate it signs for `localhost` and `127.0.0.1`. PostgreSQL
//! accepts TLS on its port and ClickHouse serves HTTPS on a port of its
//! own, so a client can prove `verify-full` against the stack exactly as
//! against a managed service, with [`TlsFiles::ca_cert`] as the root.

use std::path::{Path, PathBuf};

use crate::{StackError, secrets};

/// Where the stack's TLS files are.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The CA to trust (PEM); give it to clients as `sslrootcert` /
    /// `ca_cert`.
    pub ca_cert: PathBuf,
    /// The servers' certificate (PEM), signed by the CA.
    pub cert: PathBuf,
    /// Its private key (PEM, `0600`).
    pub key: PathBuf,
}

/// Makes the files under `data_dir/tls` unless they are there.
pub fn ensure(data_dir: &Path) -> Result<TlsFiles, StackError> {
    let dir = data_dir.join("tls");
    secrets::private_dir(&dir)?;
    let files = TlsFiles {
        ca_cert: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    if files.ca_cert.exists() && files.cert.exists() && files.key.exists() {
        return Ok(files);
    }
    let (ca, cert, key) = generate()
        .map_err(|e| StackError::Setup(format!("making the local TLS certificates: {e}")))?;
    secrets::write_private(&files.key, key.as_bytes())?;
    write_public(&files.cert, &cert)?;
    write_public(&files.ca_cert, &ca)?;
    Ok(files)
}

fn write_public(path: &Path, text: &str) -> Result<(), StackError> {
    std::fs::write(path, text).map_err(StackError::io(format!("writing {}", path.display())))
}

/// (CA certificate, server certificate, server key), PEM.
fn generate() -> Result<(String, String, String), rcgen::Error> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "tally local CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let mut server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let server = server.signed_by(&key, &ca, &ca_key)?;
    Ok((ca.pem(), server.pem(), key.serialize_pem()))
}

/// A CA and certificate made afresh, for tests that need a second, wrong
/// CA: (CA certificate PEM, server certificate PEM, key PEM).
pub fn throwaway() -> Result<(String, String, String), StackError> {
    generate().map_err(|e| StackError::Setup(format!("making TLS certificates: {e}")))
}
