//! The sniff fuzz target's runner, shared with the corpus replay test
//! (`mesh-tower/tests/fuzz_corpus.rs` includes this file by path).
//!
//! The input is the first bytes of an inbound connection on a PERMISSIVE port.
//! [`mesh_tower::tls::is_tls_handshake`] decides TLS or plaintext; bytes taken for TLS then go
//! to rustls, which must parse (or refuse) the ClientHello the way the TLS acceptor would,
//! and its server name and ALPN are read (what `TlsInfo` records). Nothing may panic.

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
    /// A TLS handshake rustls refused.
    Refused(String),
}

/// Sniffs, then parses the ClientHello of what looks like TLS.
pub fn run(data: &[u8]) -> Sniffed {
    if !is_tls_handshake(data) {
        return Sniffed::Plaintext;
    }
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = data;
    // Each read_tls consumes at least one byte or returns 0/an error: bounded by the input.
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => {
            let hello = accepted.client_hello();
            Sniffed::ClientHello {
                sni: hello.server_name().map(str::to_owned),
                alpn: hello
                    .alpn()
                    .map(|protocols| protocols.map(<[u8]>::to_vec).collect())
                    .unwrap_or_default(),
            }
        }
        Ok(None) => Sniffed::Incomplete,
        Err((e, _alert)) => Sniffed::Refused(e.to_string()),
    }
}
