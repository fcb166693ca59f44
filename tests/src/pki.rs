//! A throwaway PKI for tests and demos: one CA and, per host, a certificate
//! whose SANs are its name (DNS) and its addresses (IP), plus any extra SANs
//! the caller passes (the VIP, when clients connect through the load
//! balancer and verify the name they dialled).
//!
//! Host certificates carry both serverAuth and clientAuth, so a host entry
//! (say `voxlb`) also serves as a client certificate for health checks.

use std::{fs, net::IpAddr, path::Path, str::FromStr};

use anyhow::{Context, bail, ensure};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// A host to issue a certificate for: `NAME=IP[,IP...]` on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostSpec {
    /// Common name, DNS SAN and file name (`NAME.pem`, `NAME.key`).
    pub name: String,
    /// More SANs: IP addresses, or DNS names.
    pub sans: Vec<String>,
}

impl HostSpec {
    pub fn new(name: &str, ips: &[IpAddr]) -> Self {
        HostSpec {
            name: name.to_owned(),
            sans: ips.iter().map(ToString::to_string).collect(),
        }
    }
}

impl FromStr for HostSpec {
    type Err = anyhow::Error;

    /// `NAME` or `NAME=SAN[,SAN...]`.
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let (name, sans) = s.split_once('=').unwrap_or((s, ""));
        let sans = sans
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        Ok(HostSpec {
            name: name.trim().to_owned(),
            sans,
        })
    }
}

/// A host's certificate and key, PEM.
#[derive(Clone, Debug)]
pub struct HostCert {
    pub name: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A generated CA and its host certificates, in memory.
#[derive(Clone, Debug)]
pub struct Pki {
    pub ca_pem: String,
    pub hosts: Vec<HostCert>,
}

impl Pki {
    /// Generates a CA named `ca_name` and a certificate per host; every host
    /// certificate also gets `extra_sans` (IP addresses or DNS names).
    pub fn generate(
        ca_name: &str,
        hosts: &[HostSpec],
        extra_sans: &[String],
    ) -> anyhow::Result<Pki> {
        let ca_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, ca_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = params.self_signed(&ca_key)?;

        let mut certs = Vec::with_capacity(hosts.len());
        for host in hosts {
            let cert = issue(host, extra_sans, &ca, &ca_key)
                .with_context(|| format!("certificate for {:?}", host.name))?;
            certs.push(cert);
        }
        Ok(Pki {
            ca_pem: ca.pem(),
            hosts: certs,
        })
    }

    pub fn host(&self, name: &str) -> Option<&HostCert> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// Writes `ca.pem` and, per host, `NAME.pem` and `NAME.key` (mode 0600)
    /// into `dir`, creating it.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        write_file(&dir.join("ca.pem"), &self.ca_pem, false)?;
        for host in &self.hosts {
            write_file(
                &dir.join(format!("{}.pem", host.name)),
                &host.cert_pem,
                false,
            )?;
            write_file(&dir.join(format!("{}.key", host.name)), &host.key_pem, true)?;
        }
        Ok(())
    }
}

/// [`Pki::generate`] then [`Pki::write`].
pub fn generate(
    dir: &Path,
    ca_name: &str,
    hosts: &[HostSpec],
    extra_sans: &[String],
) -> anyhow::Result<Pki> {
    let pki = Pki::generate(ca_name, hosts, extra_sans)?;
    pki.write(dir)?;
    Ok(pki)
}

fn issue(
    host: &HostSpec,
    extra_sans: &[String],
    ca: &Certificate,
    ca_key: &KeyPair,
) -> anyhow::Result<HostCert> {
    let name = &host.name;
    ensure!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_'),
        "host name {name:?} must be letters, digits, '-', '.' or '_' (it names files)"
    );
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, name.as_str());
    let mut sans = vec![san(name)?];
    for s in host.sans.iter().chain(extra_sans) {
        let s = san(s)?;
        if !sans.contains(&s) {
            sans.push(s);
        }
    }
    params.subject_alt_names = sans;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca, ca_key)?;
    Ok(HostCert {
        name: name.clone(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn san(s: &str) -> anyhow::Result<SanType> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let is_dns_name = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    match s.to_owned().try_into() {
        Ok(dns) if is_dns_name => Ok(SanType::DnsName(dns)),
        _ => bail!("{s:?} is neither an IP address nor a DNS name"),
    }
}

fn write_file(path: &Path, contents: &str, private: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_specs_parse() {
        let h: HostSpec = "compiler1=10.0.0.1, 10.0.0.100".parse().unwrap();
        assert_eq!(h.name, "compiler1");
        assert_eq!(h.sans, ["10.0.0.1", "10.0.0.100"]);
        let h: HostSpec = "ca".parse().unwrap();
        assert_eq!(h.name, "ca");
        assert!(h.sans.is_empty());
    }

    #[test]
    fn bad_names_are_refused() {
        let hosts = [HostSpec::new("../evil", &[])];
        assert!(Pki::generate("CA", &hosts, &[]).is_err());
        let hosts = [HostSpec {
            name: "ok".into(),
            sans: vec!["not a name!".into()],
        }];
        assert!(Pki::generate("CA", &hosts, &[]).is_err());
    }
}
