//! The handshake every cluster connection passes before ractor_cluster sees
//! a byte of it.
//!
//! ractor_cluster's own cookie challenge has the dialling side prove the
//! cookie first, so whoever answers a node's dial (a `--join` address that
//! is down, a spoofed one) can relay that node's own challenge to its
//! listener and be let in. Tidings therefore listens itself, and on every
//! connection (inside TLS when `--cluster-certs` is given) both sides:
//!
//! 1. send a [`Hello`]: a magic, the protocol version, the sender's node id,
//!    its advertised cluster address and a fresh 32-byte random nonce;
//! 2. prove the cookie: the dialer first, then the acceptor (so that a party
//!    that has not proved anything learns no proof), each sending
//!    HMAC-SHA256(key, label ‖ role ‖ dialer's hello ‖ acceptor's hello),
//!    the key being SHA-256 of a label and the cookie.
//!
//! A proof names its direction (dialer or acceptor) and both hellos, so both
//! ids and both nonces: nothing from one connection is worth anything on
//! another, or in the other direction. A peer that claims this node's own
//! id is refused (that is what a relayed dial of our own looks like), as is
//! a bad proof or another protocol version. Every frame before the proofs
//! are checked is at most [`MAX_FRAME`] bytes, and the whole of it (TLS
//! included) must finish within `--cluster-handshake-timeout`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use ractor_cluster::{BoxRead, BoxWrite, ClusterBidiStream};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The version of this handshake; a peer with another is refused.
pub const VERSION: u16 = 1;
/// The largest frame a connection may send before it has proved the cookie.
pub const MAX_FRAME: usize = 64 * 1024;
/// Every node certificate names this, besides its node id: the dialer checks
/// the acceptor's certificate against it (it dials an address, not an id),
/// and both check the peer's node id after the handshake.
pub const CLUSTER_NAME: &str = "tidings-cluster";

const MAGIC: &[u8; 4] = b"TDGL";
const KEY_LABEL: &[u8] = b"tidings cluster link key v1\0";
const PROOF_LABEL: &[u8] = b"tidings cluster link proof v1\0";
const NONCE: usize = 32;
const PROOF: usize = 32;

/// Which end of a connection a side is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Dialer,
    Acceptor,
}

impl Role {
    fn byte(self) -> u8 {
        match self {
            Role::Dialer => b'D',
            Role::Acceptor => b'A',
        }
    }
}

/// What each side says first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub id: String,
    /// The address the other nodes dial this one on.
    pub addr: SocketAddr,
    pub nonce: [u8; NONCE],
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("the handshake did not finish within {0:?}")]
    TimedOut(Duration),
    #[error("a frame of {0} bytes before authentication (at most {MAX_FRAME})")]
    FrameTooLarge(usize),
    #[error("not a Tidings cluster hello: {0}")]
    Malformed(&'static str),
    #[error("the peer speaks cluster protocol {theirs}, this node {ours}")]
    Version { ours: u16, theirs: u16 },
    #[error("the peer claims this node's own id {0:?}")]
    OwnId(String),
    #[error("the peer's node id {0:?} is not 1 to 32 lowercase letters, digits or '-'")]
    BadId(String),
    #[error("the peer's proof of the cookie is wrong")]
    BadProof,
    #[error("tls: {0}")]
    Tls(std::io::Error),
    #[error("the peer's certificate does not name its node id {0:?}")]
    CertificateName(String),
}

impl Hello {
    /// A hello from this node, with a fresh nonce.
    pub fn new(id: &str, addr: SocketAddr) -> Hello {
        let mut nonce = [0; NONCE];
        rand::rng().fill_bytes(&mut nonce);
        Hello {
            version: VERSION,
            id: id.to_owned(),
            addr,
            nonce,
        }
    }

    /// `TDGL`, version (u16 BE), nonce, then the id and the address, each
    /// a length byte and UTF-8.
    pub fn encode(&self) -> Vec<u8> {
        let addr = self.addr.to_string();
        let mut out = Vec::with_capacity(4 + 2 + NONCE + 2 + self.id.len() + addr.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.nonce);
        for text in [self.id.as_bytes(), addr.as_bytes()] {
            out.push(u8::try_from(text.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(&text[..text.len().min(255)]);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Hello, LinkError> {
        let rest = bytes
            .strip_prefix(MAGIC)
            .ok_or(LinkError::Malformed("no magic"))?;
        if rest.len() < 2 + NONCE {
            return Err(LinkError::Malformed("too short"));
        }
        let version = u16::from_be_bytes([rest[0], rest[1]]);
        if version != VERSION {
            // The rest may be laid out otherwise: say only the version.
            return Err(LinkError::Version {
                ours: VERSION,
                theirs: version,
            });
        }
        let nonce: [u8; NONCE] = rest[2..2 + NONCE].try_into().expect("sliced to size");
        let mut rest = &rest[2 + NONCE..];
        let mut text = || -> Result<String, LinkError> {
            let (&len, tail) = rest
                .split_first()
                .ok_or(LinkError::Malformed("truncated"))?;
            let len = usize::from(len);
            if tail.len() < len {
                return Err(LinkError::Malformed("truncated"));
            }
            let (text, tail) = tail.split_at(len);
            rest = tail;
            String::from_utf8(text.to_vec()).map_err(|_| LinkError::Malformed("not UTF-8"))
        };
        let id = text()?;
        let addr = text()?
            .parse()
            .map_err(|_| LinkError::Malformed("bad address"))?;
        if !rest.is_empty() {
            return Err(LinkError::Malformed("trailing bytes"));
        }
        Ok(Hello {
            version,
            id,
            addr,
            nonce,
        })
    }
}

/// Whether `id` is a node id (as `--node-id` allows): 1 to 32 lowercase
/// letters, digits or '-'. Lowercase only, because a certificate names its
/// node id as a DNS name, which compares without regard to case: were `N2`
/// an id, `n2`'s certificate would pass for it.
pub fn valid_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The key the proofs are made with, from the cluster's cookie.
pub fn key(cookie: &str) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(KEY_LABEL);
    hash.update(cookie.as_bytes());
    hash.finalize().into()
}

fn mac(key: &[u8; 32], role: Role, dialer: &[u8], acceptor: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(PROOF_LABEL);
    mac.update(&[role.byte()]);
    for hello in [dialer, acceptor] {
        mac.update(&(hello.len() as u32).to_be_bytes());
        mac.update(hello);
    }
    mac
}

/// The proof the side in `role` sends, over both encoded hellos.
pub fn proof(key: &[u8; 32], role: Role, dialer: &[u8], acceptor: &[u8]) -> [u8; PROOF] {
    mac(key, role, dialer, acceptor)
        .finalize()
        .into_bytes()
        .into()
}

/// Checks (in constant time) the proof of the side in `role`.
pub fn verify(
    key: &[u8; 32],
    role: Role,
    dialer: &[u8],
    acceptor: &[u8],
    proof: &[u8],
) -> Result<(), LinkError> {
    mac(key, role, dialer, acceptor)
        .verify_slice(proof)
        .map_err(|_| LinkError::BadProof)
}

/// Whether a session (once ractor_cluster has set it up) names another
/// node (`claimed`) than the one its connection proved to be (`proven`):
/// such a session is closed.
pub fn session_name_mismatch(proven: &str, claimed: &str) -> bool {
    proven != claimed
}

/// Whether a peer's hello may go on, for a node named `own_id`.
pub fn check_peer(own_id: &str, peer: &Hello) -> Result<(), LinkError> {
    if !valid_id(&peer.id) {
        return Err(LinkError::BadId(peer.id.clone()));
    }
    if peer.id == own_id {
        return Err(LinkError::OwnId(peer.id.clone()));
    }
    Ok(())
}

async fn write_frame<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> Result<(), LinkError> {
    let len = u32::try_from(bytes.len()).map_err(|_| LinkError::FrameTooLarge(bytes.len()))?;
    let mut frame = Vec::with_capacity(4 + bytes.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(bytes);
    stream.write_all(&frame).await?;
    stream.flush().await?;
    Ok(())
}

/// Reads one length-prefixed frame, refusing (before allocating) one over
/// [`MAX_FRAME`].
async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Vec<u8>, LinkError> {
    let mut len = [0; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(LinkError::FrameTooLarge(len));
    }
    // Grown as bytes arrive, not allocated up front on the sender's word.
    let mut frame = Vec::new();
    (&mut *stream)
        .take(len as u64)
        .read_to_end(&mut frame)
        .await?;
    if frame.len() < len {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    Ok(frame)
}

/// Runs the handshake as `role` on `stream`, as the node `me`; returns the
/// peer's proven hello.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    role: Role,
    key: &[u8; 32],
    me: &Hello,
) -> Result<Hello, LinkError> {
    let mine = me.encode();
    write_frame(stream, &mine).await?;
    let theirs = read_frame(stream).await?;
    let peer = Hello::decode(&theirs)?;
    check_peer(&me.id, &peer)?;
    let (dialer, acceptor) = match role {
        Role::Dialer => (&mine, &theirs),
        Role::Acceptor => (&theirs, &mine),
    };
    let my_proof = proof(key, role, dialer, acceptor);
    match role {
        Role::Dialer => {
            write_frame(stream, &my_proof).await?;
            let answer = read_frame(stream).await?;
            verify(key, Role::Acceptor, dialer, acceptor, &answer)?;
        }
        Role::Acceptor => {
            let answer = read_frame(stream).await?;
            verify(key, Role::Dialer, dialer, acceptor, &answer)?;
            write_frame(stream, &my_proof).await?;
        }
    }
    Ok(peer)
}

/// What a connection needs to be let in: the key, TLS if configured, and
/// the deadline.
#[derive(Clone)]
pub struct Gate {
    id: String,
    addr: SocketAddr,
    key: [u8; 32],
    tls: Option<Tls>,
    timeout: Duration,
}

/// A connection that passed the handshake, handed to ractor_cluster. Its
/// label is `<id>@<addr>`: the proven node id and its advertised address.
pub struct Admitted<S> {
    stream: S,
    label: String,
}

impl<S> Admitted<S> {
    fn new(stream: S, peer: &Hello) -> Admitted<S> {
        Admitted {
            stream,
            label: format!("{}@{}", peer.id, peer.addr),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> ClusterBidiStream for Admitted<S> {
    fn split(self: Box<Self>) -> (BoxRead, BoxWrite) {
        let (read, write) = tokio::io::split(self.stream);
        (Box::new(read), Box::new(write))
    }

    fn peer_label(&self) -> Option<String> {
        Some(self.label.clone())
    }
}

/// Reads back an [`Admitted`] label: the proven id and advertised address.
pub fn parse_label(label: &str) -> Option<(String, SocketAddr)> {
    let (id, addr) = label.split_once('@')?;
    Some((id.to_owned(), addr.parse().ok()?))
}

impl Gate {
    pub fn new(
        id: String,
        addr: SocketAddr,
        cookie: &str,
        tls: Option<Tls>,
        timeout: Duration,
    ) -> Gate {
        Gate {
            id,
            addr,
            key: key(cookie),
            tls,
            timeout,
        }
    }

    fn hello(&self) -> Hello {
        Hello::new(&self.id, self.addr)
    }

    /// Lets in a connection accepted on the cluster listener, or says why
    /// not.
    pub async fn accept(&self, socket: TcpStream) -> Result<Box<dyn ClusterBidiStream>, LinkError> {
        let _ = socket.set_nodelay(true);
        let admit = async {
            let me = self.hello();
            Ok::<_, LinkError>(match &self.tls {
                None => {
                    let mut socket = socket;
                    let peer = handshake(&mut socket, Role::Acceptor, &self.key, &me).await?;
                    Box::new(Admitted::new(socket, &peer)) as Box<dyn ClusterBidiStream>
                }
                Some(tls) => {
                    let mut stream = tls.acceptor.accept(socket).await.map_err(LinkError::Tls)?;
                    let peer = handshake(&mut stream, Role::Acceptor, &self.key, &me).await?;
                    names(stream.get_ref().1.peer_certificates(), &peer.id)?;
                    Box::new(Admitted::new(stream, &peer))
                }
            })
        };
        tokio::time::timeout(self.timeout, admit)
            .await
            .map_err(|_| LinkError::TimedOut(self.timeout))?
    }

    /// Dials `addr` and runs the handshake as the dialer.
    pub async fn dial(&self, addr: SocketAddr) -> Result<Box<dyn ClusterBidiStream>, LinkError> {
        let admit = async {
            let socket = TcpStream::connect(addr).await?;
            let _ = socket.set_nodelay(true);
            let me = self.hello();
            Ok::<_, LinkError>(match &self.tls {
                None => {
                    let mut socket = socket;
                    let peer = handshake(&mut socket, Role::Dialer, &self.key, &me).await?;
                    Box::new(Admitted::new(socket, &peer)) as Box<dyn ClusterBidiStream>
                }
                Some(tls) => {
                    let name = ServerName::try_from(CLUSTER_NAME).expect("a DNS name");
                    let mut stream = tls
                        .connector
                        .connect(name, socket)
                        .await
                        .map_err(LinkError::Tls)?;
                    let peer = handshake(&mut stream, Role::Dialer, &self.key, &me).await?;
                    names(stream.get_ref().1.peer_certificates(), &peer.id)?;
                    Box::new(Admitted::new(stream, &peer))
                }
            })
        };
        tokio::time::timeout(self.timeout, admit)
            .await
            .map_err(|_| LinkError::TimedOut(self.timeout))?
    }
}

/// Whether the peer's (already verified) certificate names node `id`.
fn names(certs: Option<&[CertificateDer<'static>]>, id: &str) -> Result<(), LinkError> {
    let refuse = || LinkError::CertificateName(id.to_owned());
    let cert = certs.and_then(<[_]>::first).ok_or_else(refuse)?;
    let parsed = rustls::server::ParsedCertificate::try_from(cert).map_err(|_| refuse())?;
    let name = ServerName::try_from(id.to_owned()).map_err(|_| refuse())?;
    rustls::client::verify_server_name(&parsed, &name).map_err(|_| refuse())
}

/// Mutual TLS from `--cluster-certs`: this node's certificate and key, and
/// the CA every peer's certificate must chain to.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {error}")]
    Read {
        path: PathBuf,
        error: rustls::pki_types::pem::Error,
    },
    #[error("{0} holds no certificate")]
    NoCertificate(PathBuf),
    #[error("{path}: {error}")]
    Rustls { path: PathBuf, error: rustls::Error },
    #[error("the CA in {path}: {error}")]
    Verifier {
        path: PathBuf,
        error: rustls::server::VerifierBuilderError,
    },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl Tls {
    /// Loads `dir/ca.crt`, `dir/node.crt` and `dir/node.key` (PEM).
    pub fn load(dir: &Path) -> Result<Tls, TlsError> {
        let certs = |name: &str| {
            let path = dir.join(name);
            let certs = CertificateDer::pem_file_iter(&path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|error| TlsError::Read {
                    path: path.clone(),
                    error,
                })?;
            if certs.is_empty() {
                return Err(TlsError::NoCertificate(path));
            }
            Ok((path, certs))
        };
        let (ca_path, ca) = certs("ca.crt")?;
        let (node_path, chain) = certs("node.crt")?;
        let key_path = dir.join("node.key");
        let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|error| TlsError::Read {
            path: key_path.clone(),
            error,
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in ca {
            roots.add(cert).map_err(|error| TlsError::Rustls {
                path: ca_path.clone(),
                error,
            })?;
        }
        let roots = Arc::new(roots);
        let rustls_err = |path: &Path| {
            let path = path.to_owned();
            move |error| TlsError::Rustls { path, error }
        };
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|error| TlsError::Verifier {
                    path: ca_path.clone(),
                    error,
                })?;
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(rustls_err(&node_path))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(rustls_err(&key_path))?;
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(rustls_err(&node_path))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(rustls_err(&key_path))?;
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }
}

/// A TLS acceptor that nobody gets through: it has no certificate to show.
/// ractor_cluster's `NodeServer` always opens a listener of its own; given
/// this, that listener admits no one, and every link comes through
/// [`Gate`].
pub fn closed_door() -> TlsAcceptor {
    #[derive(Debug)]
    struct NoCertificate;
    impl rustls::server::ResolvesServerCert for NoCertificate {
        fn resolve(
            &self,
            _: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            None
        }
    }
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the provider supports TLS 1.3")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(NoCertificate));
    TlsAcceptor::from(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_hello_reads_back_as_written() {
        let hello = Hello::new("n1", addr(7001));
        assert_eq!(Hello::decode(&hello.encode()).unwrap(), hello);
        let ipv6 = Hello::new("n-2", "[::1]:7002".parse().unwrap());
        assert_eq!(Hello::decode(&ipv6.encode()).unwrap(), ipv6);
    }

    #[test]
    fn a_malformed_or_foreign_hello_is_refused() {
        let good = Hello::new("n1", addr(7001)).encode();
        assert!(matches!(
            Hello::decode(b"GET / HTTP/1.1"),
            Err(LinkError::Malformed(_))
        ));
        assert!(matches!(
            Hello::decode(&good[..good.len() - 1]),
            Err(LinkError::Malformed(_))
        ));
        let mut longer = good.clone();
        longer.push(0);
        assert!(matches!(
            Hello::decode(&longer),
            Err(LinkError::Malformed(_))
        ));
        let mut other = good;
        other[5] = 9;
        assert!(matches!(
            Hello::decode(&other),
            Err(LinkError::Version { ours: 1, theirs: 9 })
        ));
    }

    #[test]
    fn a_peer_claiming_our_own_id_or_no_id_is_refused() {
        check_peer("n1", &Hello::new("n2", addr(1))).unwrap();
        assert!(matches!(
            check_peer("n1", &Hello::new("n1", addr(1))),
            Err(LinkError::OwnId(_))
        ));
        for bad in ["", "n 2", "n@2", &"x".repeat(33)] {
            assert!(matches!(
                check_peer("n1", &Hello::new(bad, addr(1))),
                Err(LinkError::BadId(_))
            ));
        }
    }

    #[test]
    fn a_proof_holds_only_for_its_direction_hellos_and_cookie() {
        let key = key("cookie");
        let d = Hello::new("n1", addr(1)).encode();
        let a = Hello::new("n2", addr(2)).encode();
        let dialer = proof(&key, Role::Dialer, &d, &a);
        verify(&key, Role::Dialer, &d, &a, &dialer).unwrap();
        // The other direction, the hellos swapped, another connection's
        // nonces, another cookie: all refused.
        assert!(verify(&key, Role::Acceptor, &d, &a, &dialer).is_err());
        assert!(verify(&key, Role::Dialer, &a, &d, &dialer).is_err());
        let fresh = Hello::new("n2", addr(2)).encode();
        assert!(verify(&key, Role::Dialer, &d, &fresh, &dialer).is_err());
        assert!(verify(&super::key("other"), Role::Dialer, &d, &a, &dialer).is_err());
        assert!(verify(&key, Role::Dialer, &d, &a, &dialer[..31]).is_err());
    }

    #[test]
    fn labels_carry_the_proven_id_and_address() {
        let peer = Hello::new("n2", addr(7002));
        let admitted = Admitted::new((), &peer);
        assert_eq!(
            parse_label(&admitted.label),
            Some(("n2".to_owned(), addr(7002)))
        );
        assert_eq!(parse_label("external"), None);
    }

    async fn pair(
        dialer_cookie: &str,
        acceptor_cookie: &str,
    ) -> (Result<Hello, LinkError>, Result<Hello, LinkError>) {
        let (mut d, mut a) = tokio::io::duplex(1024);
        let (dk, ak) = (key(dialer_cookie), key(acceptor_cookie));
        let dh = Hello::new("n1", addr(1));
        let ah = Hello::new("n2", addr(2));
        // Each side owns its end, dropped (closed) as soon as it is done.
        tokio::join!(
            async move { handshake(&mut d, Role::Dialer, &dk, &dh).await },
            async move { handshake(&mut a, Role::Acceptor, &ak, &ah).await },
        )
    }

    #[tokio::test]
    async fn two_nodes_with_one_cookie_shake_hands() {
        let (d, a) = pair("c", "c").await;
        assert_eq!(d.unwrap().id, "n2");
        assert_eq!(a.unwrap().id, "n1");
    }

    #[tokio::test]
    async fn a_wrong_cookie_is_refused_and_the_acceptor_proves_nothing() {
        let (d, a) = pair("wrong", "c").await;
        assert!(matches!(a, Err(LinkError::BadProof)), "{a:?}");
        // The acceptor closed without a proof of its own.
        assert!(matches!(d, Err(LinkError::Io(_))), "{d:?}");
    }

    #[tokio::test]
    async fn a_relayed_dial_of_our_own_is_refused() {
        // The node's dialer talking (through a relay) to its own acceptor.
        let (mut d, mut a) = tokio::io::duplex(1024);
        let k = key("c");
        let (dh, ah) = (Hello::new("n1", addr(1)), Hello::new("n1", addr(1)));
        let (d, a) = tokio::join!(
            handshake(&mut d, Role::Dialer, &k, &dh),
            handshake(&mut a, Role::Acceptor, &k, &ah),
        );
        assert!(matches!(d, Err(LinkError::OwnId(_))), "{d:?}");
        assert!(matches!(a, Err(LinkError::OwnId(_))), "{a:?}");
    }

    #[tokio::test]
    async fn an_oversized_frame_is_refused_before_it_is_read() {
        let (mut d, mut a) = tokio::io::duplex(1024);
        d.write_all(&(16u32 << 20).to_be_bytes()).await.unwrap();
        let me = Hello::new("n2", addr(2));
        let got = handshake(&mut a, Role::Acceptor, &key("c"), &me).await;
        assert!(matches!(got, Err(LinkError::FrameTooLarge(n)) if n == 16 << 20));
    }
}
