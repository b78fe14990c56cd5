//! The sniff fuzz target's runner, shared with the corpus replay test
//! (`mesh-tower/tests/fuzz_corpus.rs` includes this file by path).
//!
//! The input is the first bytes of an inbound connection on a PERMISSIVE port.
//! [`mesh_tower::tls::is_tls_handshake`] decides TLS or plaintext; bytes taken for TLS then go
//! to rustls, which must parse (or refuse) the ClientHello the way the TLS acceptor would,
//! and its server name and ALPN are read (what `TlsInfo` records and what decides whether a
//! PERMISSIVE port terminates the connection). Nothing may panic.

use mesh_tower::tls::hello::{Peeked, parse_client_hello};
use mesh_tower::tls::is_tls_handshake;

/// What one input was taken for.
#[derive(Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// Plaintext (HTTP/1, h2c, or anything not starting with a handshake record).
    Plaintext,
    /// A TLS handshake whose ClientHello parsed: its SNI and ALPN protocols.
    ClientHello {
        /// The server name asked for.
        sni: Option<String>,
        /// The ALPN protocols offered.
        alpn: Vec<Vec<u8>>,
    },
    /// A TLS handshake cut short (more bytes needed).
    Incomplete,
    /// A TLS handshake rustls refused (a PERMISSIVE port that passes the app's TLS through
    /// takes it for plaintext, as Envoy's TLS inspector does).
    Refused,
}

/// Sniffs, then parses the ClientHello of what looks like TLS, as
/// [`mesh_tower::tls::InboundTls`] does on a PERMISSIVE port.
pub fn run(data: &[u8]) -> Sniffed {
    if !is_tls_handshake(data) {
        return Sniffed::Plaintext;
    }
    match parse_client_hello(data) {
        Peeked::Hello(hello) => Sniffed::ClientHello {
            sni: hello.server_name,
            alpn: hello.alpn,
        },
        Peeked::Incomplete => Sniffed::Incomplete,
        Peeked::NotTls => Sniffed::Refused,
    }
}
