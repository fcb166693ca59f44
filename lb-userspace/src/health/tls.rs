//! The rustls client configuration of HTTPS checks, built once per check.

use std::{fs::File, io::BufReader, path::Path, sync::Arc};

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime},
};

use super::{SetupError, TlsCheck};

/// Builds the client configuration for `tls`. The ring provider is passed
/// explicitly so that no process-wide default provider has to be installed.
pub fn client_config(tls: &TlsCheck) -> Result<Arc<ClientConfig>, SetupError> {
    tls.check()?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(SetupError::Rustls)?;

    let builder = if tls.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification::new(&provider)))
    } else {
        let ca_file = tls
            .ca_file
            .as_deref()
            .ok_or(SetupError::Tls(super::TlsRule::NoCaFile))?;
        let mut roots = RootCertStore::empty();
        for cert in read_certs(ca_file)? {
            roots
                .add(cert)
                .map_err(|source| SetupError::BadCaCertificate {
                    path: ca_file.to_owned(),
                    source,
                })?;
        }
        builder.with_root_certificates(roots)
    };

    let config = match (&tls.client_cert, &tls.client_key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
            .map_err(SetupError::Rustls)?,
        _ => return Err(SetupError::Tls(super::TlsRule::ClientCertWithoutKey)),
    };
    Ok(Arc::new(config))
}

fn open(path: &Path) -> Result<BufReader<File>, SetupError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|source| SetupError::ReadPem {
            path: path.to_owned(),
            source,
        })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, SetupError> {
    let certs = rustls_pemfile::certs(&mut open(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| SetupError::ReadPem {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(SetupError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, SetupError> {
    rustls_pemfile::private_key(&mut open(path)?)
        .map_err(|source| SetupError::ReadPem {
            path: path.to_owned(),
            source,
        })?
        .ok_or_else(|| SetupError::NoPrivateKey {
            path: path.to_owned(),
        })
}

/// A server certificate verifier that accepts ANY certificate, from anyone,
/// for any name.
///
/// It exists for health checks of backends whose CA the load balancer cannot
/// read (a lab, a CA being rotated): the probe then still proves that the
/// server completes a TLS handshake and answers HTTP, but not who it is. It is
/// only used when the check says `insecure = true` explicitly; nothing falls
/// back to it. The handshake signatures are still checked, against the
/// (unverified) certificate's key, so the peer must at least hold that key.
#[derive(Debug)]
pub struct NoVerification {
    algorithms: WebPkiSupportedAlgorithms,
}

impl NoVerification {
    pub fn new(provider: &CryptoProvider) -> Self {
        NoVerification {
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
