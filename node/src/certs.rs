//! `tidings certs`: a certificate authority and one certificate per node,
//! for operators without a PKI of their own.
//!
//! `DIR/ca.crt` and `DIR/ca.key` are the CA (keep the key off the nodes:
//! whoever has it can make members); `DIR/<node>/` holds what
//! `--cluster-certs` reads: `ca.crt`, `node.crt` and `node.key`. A node's
//! certificate names its node id and `tidings-cluster` (DNS names), and
//! serves as both a TLS server and a TLS client certificate.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tidings_cluster::link::{valid_id, CLUSTER_NAME};

/// `tidings certs`' flags.
#[derive(Debug, Clone, clap::Args)]
pub struct CertsArgs {
    /// Directory to write into (created; files already there are not
    /// overwritten).
    #[arg(long)]
    pub out: PathBuf,
    /// The node ids, comma-separated, as each node's --node-id.
    #[arg(long, value_delimiter = ',', required = true)]
    pub nodes: Vec<String>,
}

/// Checks the node ids: each valid and named once.
pub fn check_nodes(nodes: &[String]) -> anyhow::Result<()> {
    for (i, node) in nodes.iter().enumerate() {
        if !valid_id(node) {
            bail!("node id {node:?} must be 1 to 32 letters, digits or '-'");
        }
        if node.starts_with('-') || node.ends_with('-') {
            bail!("node id {node:?} must not start or end with '-' (it is a DNS name in the certificate)");
        }
        if nodes[..i].contains(node) {
            bail!("node id {node:?} is named twice");
        }
    }
    Ok(())
}

/// Writes the CA and every node's directory under `args.out`; returns the
/// files written.
pub fn write(args: &CertsArgs) -> anyhow::Result<Vec<PathBuf>> {
    check_nodes(&args.nodes)?;
    let mut written = Vec::new();
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Tidings cluster CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca_pem = ca_cert.pem();
    fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    save(&args.out.join("ca.crt"), &ca_pem, false, &mut written)?;
    save(
        &args.out.join("ca.key"),
        &ca_key.serialize_pem(),
        true,
        &mut written,
    )?;
    let issuer = Issuer::new(ca_params, ca_key);
    for node in &args.nodes {
        let key = KeyPair::generate().context("generating a node key")?;
        let mut params = CertificateParams::new(vec![node.clone(), CLUSTER_NAME.to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, node);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &issuer)?;
        let dir = args.out.join(node);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        save(&dir.join("ca.crt"), &ca_pem, false, &mut written)?;
        save(&dir.join("node.crt"), &cert.pem(), false, &mut written)?;
        save(
            &dir.join("node.key"),
            &key.serialize_pem(),
            true,
            &mut written,
        )?;
    }
    Ok(written)
}

/// Writes a new file (never over an existing one); a key readable by its
/// owner only.
fn save(path: &Path, text: &str, secret: bool, written: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    written.push(path.to_owned());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_must_be_usable_names_and_unique() {
        let ids = |list: &[&str]| -> Vec<String> { list.iter().map(|s| (*s).to_owned()).collect() };
        check_nodes(&ids(&["n1", "n2", "node-3"])).unwrap();
        for bad in [&["n1", "n1"][..], &["n 1"], &["-n1"], &["n1-"], &[""]] {
            assert!(check_nodes(&ids(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn writes_a_ca_and_a_directory_per_node_and_overwrites_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let args = CertsArgs {
            out: dir.path().join("certs"),
            nodes: vec!["n1".into(), "n2".into()],
        };
        let written = write(&args).unwrap();
        assert_eq!(written.len(), 2 + 2 * 3);
        for node in ["n1", "n2"] {
            for file in ["ca.crt", "node.crt", "node.key"] {
                assert!(args.out.join(node).join(file).is_file(), "{node}/{file}");
            }
        }
        let mode = |p: &Path| {
            std::os::unix::fs::PermissionsExt::mode(&fs::metadata(p).unwrap().permissions()) & 0o777
        };
        assert_eq!(mode(&args.out.join("ca.key")), 0o600);
        assert_eq!(mode(&args.out.join("n1/node.key")), 0o600);
        // What was written loads as a node's TLS set-up.
        tidings_cluster::link::Tls::load(&args.out.join("n1")).unwrap();
        assert!(
            write(&args).is_err(),
            "a second run must not overwrite the CA"
        );
    }
}
