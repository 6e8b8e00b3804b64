//! The authenticated handshake: a challenge-response proof of a shared secret, both ways.
//!
//! ```text
//!  connector                                          server
//!     | ClientHello { version, nonce: Nc, max_frame: Mc } |
//!     |-------------------------------------------------->|  version must equal the server's
//!     | ServerHello { version, nonce: Ns,                 |
//!     |   max_frame: min(Mc, Ms),                         |
//!     |   proof: HMAC(secret, "colony/v1 server" ‖ Nc ‖ Ns) }
//!     |<--------------------------------------------------|
//!     | Join { proof: HMAC(secret, "colony/v1 client" ‖ Ns ‖ Nc), role }
//!     |-------------------------------------------------->|  checked in constant time
//!     | Welcome { .. }                                    |
//!     |<--------------------------------------------------|
//! ```
//!
//! HMAC is HMAC-SHA256 keyed with the secret; `‖` is concatenation; the labels are the 16 ASCII
//! bytes of [`SERVER_PROOF_LABEL`] and [`CLIENT_PROOF_LABEL`]. Nonces are [`NONCE_LEN`](super::NONCE_LEN) bytes.
//!
//! Invariants:
//! - Each side proves the secret over the *other* side's fresh nonce, so a proof cannot be
//!   replayed on another connection, and the distinct labels keep a server's proof from being
//!   reflected back as a connector's.
//! - A connector checks the server's proof before it sends its own, so a fake server learns no
//!   connector proof. A server sends nothing beyond its [`ServerHello`] and accepts nothing but
//!   the [`Join`] until the proof checks out.
//! - The server's proof is an HMAC over a nonce the connector chose, so the secret must be
//!   high-entropy (32 random bytes, say): a guessable password could be found offline from one
//!   [`ServerHello`].
//! - No randomness here: both sides' nonces come from the caller, who must draw them fresh from
//!   a cryptographic random source for every connection.
//! - Until [`Welcome`] every frame is bound by [`HANDSHAKE_MAX_FRAME`]; after it, by the agreed
//!   `max_frame`, which is never below [`HANDSHAKE_MAX_FRAME`].

use core::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use super::frame::HANDSHAKE_MAX_FRAME;
use super::message::{
    ClientHello, ErrorCode, Join, Nonce, PROTOCOL_VERSION, Proof, Role, ServerHello,
};

/// The label that opens the server's HMAC input.
pub const SERVER_PROOF_LABEL: &[u8; 16] = b"colony/v1 server";

/// The label that opens the connector's HMAC input.
pub const CLIENT_PROOF_LABEL: &[u8; 16] = b"colony/v1 client";

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 block length: keys up to this length are zero-padded, longer ones hashed first.
const BLOCK_LEN: usize = 64;

/// An HMAC-SHA256 instance keyed with `secret`, following RFC 2104's key rule without a
/// fallible constructor.
fn keyed(secret: &[u8]) -> HmacSha256 {
    let mut key = [0u8; BLOCK_LEN];
    if secret.len() <= BLOCK_LEN {
        key.iter_mut().zip(secret).for_each(|(k, s)| *k = *s);
    } else {
        let digest = Sha256::digest(secret);
        key.iter_mut().zip(digest.iter()).for_each(|(k, s)| *k = *s);
    }
    HmacSha256::new(&key.into())
}

fn mac(secret: &[u8], label: &[u8; 16], first: &Nonce, second: &Nonce) -> HmacSha256 {
    keyed(secret)
        .chain_update(label)
        .chain_update(first)
        .chain_update(second)
}

/// The server's proof: `HMAC-SHA256(secret, "colony/v1 server" ‖ client_nonce ‖ server_nonce)`.
pub fn server_proof(secret: &[u8], client_nonce: &Nonce, server_nonce: &Nonce) -> Proof {
    mac(secret, SERVER_PROOF_LABEL, client_nonce, server_nonce)
        .finalize()
        .into_bytes()
        .into()
}

/// The connector's proof: `HMAC-SHA256(secret, "colony/v1 client" ‖ server_nonce ‖ client_nonce)`.
///
/// Takes the nonces in the same order as [`server_proof`]; the HMAC input puts the server's first.
pub fn client_proof(secret: &[u8], client_nonce: &Nonce, server_nonce: &Nonce) -> Proof {
    mac(secret, CLIENT_PROOF_LABEL, server_nonce, client_nonce)
        .finalize()
        .into_bytes()
        .into()
}

/// Checks a server's proof, in constant time.
///
/// # Errors
/// [`AuthError::BadProof`] if `proof` is not [`server_proof`] of the same inputs.
pub fn verify_server_proof(
    secret: &[u8],
    client_nonce: &Nonce,
    server_nonce: &Nonce,
    proof: &Proof,
) -> Result<(), AuthError> {
    mac(secret, SERVER_PROOF_LABEL, client_nonce, server_nonce)
        .verify_slice(proof)
        .map_err(|_| AuthError::BadProof)
}

/// Checks a connector's proof, in constant time.
///
/// # Errors
/// [`AuthError::BadProof`] if `proof` is not [`client_proof`] of the same inputs.
pub fn verify_client_proof(
    secret: &[u8],
    client_nonce: &Nonce,
    server_nonce: &Nonce,
    proof: &Proof,
) -> Result<(), AuthError> {
    mac(secret, CLIENT_PROOF_LABEL, server_nonce, client_nonce)
        .verify_slice(proof)
        .map_err(|_| AuthError::BadProof)
}

/// A proof did not check out: the peer does not know the secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum AuthError {
    /// The HMAC does not match.
    BadProof,
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthError::BadProof => "handshake proof does not match the shared secret",
        })
    }
}

impl core::error::Error for AuthError {}

/// The handshake failed; the connection should be closed, after sending
/// [`Message::Error`](super::Message::Error) with [`HandshakeError::code`] where that helps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer speaks another protocol version.
    VersionMismatch {
        /// Our [`PROTOCOL_VERSION`].
        ours: u16,
        /// The peer's.
        theirs: u16,
    },
    /// The peer's proof is wrong.
    Auth(AuthError),
    /// The peer's frame limit is unusable: below [`HANDSHAKE_MAX_FRAME`], or (from a server)
    /// above the limit the connector announced.
    BadFrameLimit {
        /// The limit the peer sent.
        max_frame: u32,
    },
    /// A handshake step came out of order (twice, or after a failure).
    OutOfOrder,
}

impl HandshakeError {
    /// The reason code to send in a [`Message::Error`](super::Message::Error) before closing.
    pub const fn code(&self) -> ErrorCode {
        match self {
            HandshakeError::VersionMismatch { .. } => ErrorCode::VersionMismatch,
            HandshakeError::Auth(_) => ErrorCode::AuthFailed,
            HandshakeError::BadFrameLimit { .. } => ErrorCode::LimitExceeded,
            HandshakeError::OutOfOrder => ErrorCode::BadMessage,
        }
    }
}

impl From<AuthError> for HandshakeError {
    fn from(err: AuthError) -> Self {
        HandshakeError::Auth(err)
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::VersionMismatch { ours, theirs } => {
                write!(f, "peer speaks protocol version {theirs}, this side {ours}")
            }
            HandshakeError::Auth(err) => write!(f, "authentication failed: {err}"),
            HandshakeError::BadFrameLimit { max_frame } => {
                write!(f, "peer's frame limit of {max_frame} bytes is unusable")
            }
            HandshakeError::OutOfOrder => f.write_str("handshake step out of order"),
        }
    }
}

impl core::error::Error for HandshakeError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            HandshakeError::Auth(err) => Some(err),
            _ => None,
        }
    }
}

fn check_version(theirs: u16) -> Result<(), HandshakeError> {
    if theirs == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(HandshakeError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs,
        })
    }
}

/// The server's side of one connection's handshake (sans-IO).
///
/// Feed it the [`ClientHello`] (with a fresh nonce) to get the [`ServerHello`] to send, then the
/// [`Join`]; once [`ServerHandshake::join`] succeeds, send [`Welcome`](super::Welcome) and switch
/// the frame limit to [`ServerHandshake::max_frame`].
#[derive(Clone, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ServerHandshake {
    max_frame: u32,
    state: ServerState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
enum ServerState {
    AwaitHello,
    AwaitJoin {
        client_nonce: Nonce,
        server_nonce: Nonce,
    },
    Done,
    Failed,
}

impl ServerHandshake {
    /// A handshake for a server accepting payloads of up to `max_frame` bytes (raised to
    /// [`HANDSHAKE_MAX_FRAME`] if lower).
    pub const fn new(max_frame: u32) -> Self {
        let max_frame = if max_frame < HANDSHAKE_MAX_FRAME {
            HANDSHAKE_MAX_FRAME
        } else {
            max_frame
        };
        ServerHandshake {
            max_frame,
            state: ServerState::AwaitHello,
        }
    }

    /// Answers the connector's hello. `nonce` must be fresh and random.
    ///
    /// # Errors
    /// [`HandshakeError::VersionMismatch`], [`HandshakeError::BadFrameLimit`] if the connector
    /// accepts less than [`HANDSHAKE_MAX_FRAME`], [`HandshakeError::OutOfOrder`] if called twice.
    /// After any error the handshake is failed for good.
    pub fn hello(
        &mut self,
        secret: &[u8],
        hello: &ClientHello,
        nonce: Nonce,
    ) -> Result<ServerHello, HandshakeError> {
        let result = self.try_hello(secret, hello, nonce);
        if result.is_err() {
            self.state = ServerState::Failed;
        }
        result
    }

    fn try_hello(
        &mut self,
        secret: &[u8],
        hello: &ClientHello,
        nonce: Nonce,
    ) -> Result<ServerHello, HandshakeError> {
        if self.state != ServerState::AwaitHello {
            return Err(HandshakeError::OutOfOrder);
        }
        check_version(hello.version)?;
        if hello.max_frame < HANDSHAKE_MAX_FRAME {
            return Err(HandshakeError::BadFrameLimit {
                max_frame: hello.max_frame,
            });
        }
        self.max_frame = self.max_frame.min(hello.max_frame);
        self.state = ServerState::AwaitJoin {
            client_nonce: hello.nonce,
            server_nonce: nonce,
        };
        Ok(ServerHello {
            version: PROTOCOL_VERSION,
            nonce,
            max_frame: self.max_frame,
            proof: server_proof(secret, &hello.nonce, &nonce),
        })
    }

    /// Checks the connector's proof. On success the connector is in, with the role it claimed.
    ///
    /// # Errors
    /// [`HandshakeError::Auth`] if the proof is wrong, [`HandshakeError::OutOfOrder`] if no
    /// hello came first or the handshake already ended. After any error the handshake is failed
    /// for good.
    pub fn join(&mut self, secret: &[u8], join: &Join<'_>) -> Result<(), HandshakeError> {
        let ServerState::AwaitJoin {
            client_nonce,
            server_nonce,
        } = self.state
        else {
            self.state = ServerState::Failed;
            return Err(HandshakeError::OutOfOrder);
        };
        match verify_client_proof(secret, &client_nonce, &server_nonce, &join.proof) {
            Ok(()) => {
                self.state = ServerState::Done;
                Ok(())
            }
            Err(err) => {
                self.state = ServerState::Failed;
                Err(err.into())
            }
        }
    }

    /// Whether the connector proved the secret.
    pub const fn is_done(&self) -> bool {
        matches!(self.state, ServerState::Done)
    }

    /// The payload limit for frames in either direction right now: [`HANDSHAKE_MAX_FRAME`]
    /// until the join checks out, then the agreed limit.
    pub const fn max_frame(&self) -> u32 {
        if self.is_done() {
            self.max_frame
        } else {
            HANDSHAKE_MAX_FRAME
        }
    }
}

/// The connector's side of a handshake (sans-IO), for workers, task clients and observers.
///
/// Send [`ClientHandshake::hello`], feed the [`ServerHello`] to
/// [`ClientHandshake::server_hello`] and send the [`Join`] it returns; once
/// [`Welcome`](super::Welcome) arrives, call [`ClientHandshake::welcomed`] and switch the frame
/// limit to [`ClientHandshake::max_frame`].
#[derive(Clone, Debug)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ClientHandshake {
    nonce: Nonce,
    max_frame: u32,
    state: ClientState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
enum ClientState {
    AwaitServerHello,
    AwaitWelcome { agreed: u32 },
    Done { agreed: u32 },
    Failed,
}

impl ClientHandshake {
    /// A handshake with a fresh random `nonce`, accepting payloads of up to `max_frame` bytes
    /// (raised to [`HANDSHAKE_MAX_FRAME`] if lower).
    pub const fn new(nonce: Nonce, max_frame: u32) -> Self {
        let max_frame = if max_frame < HANDSHAKE_MAX_FRAME {
            HANDSHAKE_MAX_FRAME
        } else {
            max_frame
        };
        ClientHandshake {
            nonce,
            max_frame,
            state: ClientState::AwaitServerHello,
        }
    }

    /// The opening message to send.
    pub const fn hello(&self) -> ClientHello {
        ClientHello {
            version: PROTOCOL_VERSION,
            nonce: self.nonce,
            max_frame: self.max_frame,
        }
    }

    /// Checks the server's hello and proof, and returns the [`Join`] to send.
    ///
    /// # Errors
    /// [`HandshakeError::VersionMismatch`]; [`HandshakeError::Auth`] if the server does not know
    /// the secret; [`HandshakeError::BadFrameLimit`] if the agreed limit is above ours or below
    /// [`HANDSHAKE_MAX_FRAME`]; [`HandshakeError::OutOfOrder`] if called twice. After any error
    /// the handshake is failed for good.
    pub fn server_hello<'r>(
        &mut self,
        secret: &[u8],
        hello: &ServerHello,
        role: Role<'r>,
    ) -> Result<Join<'r>, HandshakeError> {
        let result = self.try_server_hello(secret, hello, role);
        self.state = match result {
            Ok(_) => ClientState::AwaitWelcome {
                agreed: hello.max_frame,
            },
            Err(_) => ClientState::Failed,
        };
        result
    }

    fn try_server_hello<'r>(
        &self,
        secret: &[u8],
        hello: &ServerHello,
        role: Role<'r>,
    ) -> Result<Join<'r>, HandshakeError> {
        if self.state != ClientState::AwaitServerHello {
            return Err(HandshakeError::OutOfOrder);
        }
        check_version(hello.version)?;
        verify_server_proof(secret, &self.nonce, &hello.nonce, &hello.proof)?;
        if hello.max_frame < HANDSHAKE_MAX_FRAME || hello.max_frame > self.max_frame {
            return Err(HandshakeError::BadFrameLimit {
                max_frame: hello.max_frame,
            });
        }
        Ok(Join {
            proof: client_proof(secret, &self.nonce, &hello.nonce),
            role,
        })
    }

    /// Records that the server's [`Welcome`](super::Welcome) arrived: the handshake is complete
    /// and the agreed limit applies from the next frame on. Returns that limit.
    ///
    /// # Errors
    /// [`HandshakeError::OutOfOrder`] if no [`Join`] was produced first, or if called twice.
    pub fn welcomed(&mut self) -> Result<u32, HandshakeError> {
        let ClientState::AwaitWelcome { agreed } = self.state else {
            self.state = ClientState::Failed;
            return Err(HandshakeError::OutOfOrder);
        };
        self.state = ClientState::Done { agreed };
        Ok(agreed)
    }

    /// Whether the handshake is complete.
    pub const fn is_done(&self) -> bool {
        matches!(self.state, ClientState::Done { .. })
    }

    /// The payload limit for frames in either direction right now: [`HANDSHAKE_MAX_FRAME`]
    /// until [`Welcome`](super::Welcome), then the agreed limit.
    pub const fn max_frame(&self) -> u32 {
        match self.state {
            ClientState::Done { agreed } => agreed,
            _ => HANDSHAKE_MAX_FRAME,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Batch, ClientInfo, Platform, WorkerHello};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const CLIENT_NONCE: Nonce = [0x11; 16];
    const SERVER_NONCE: Nonce = [0x22; 16];

    fn worker() -> Role<'static> {
        Role::Worker(WorkerHello {
            name: "w",
            platform: Platform::Linux,
            kinds: Batch::empty(),
            slots: 2,
        })
    }

    /// HMAC-SHA256 computed independently of this module (RFC 2104 by hand over sha2).
    fn reference_hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
        let mut block = [0u8; 64];
        if key.len() > 64 {
            block[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let inner_key: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
        let outer_key: Vec<u8> = block.iter().map(|b| b ^ 0x5C).collect();
        let inner = Sha256::new()
            .chain_update(&inner_key)
            .chain_update(message)
            .finalize();
        Sha256::new()
            .chain_update(&outer_key)
            .chain_update(inner)
            .finalize()
            .into()
    }

    #[test]
    fn rfc4231_test_case_2() {
        // Key "Jefe", data "what do ya want for nothing?".
        let tag: [u8; 32] = keyed(b"Jefe")
            .chain_update(b"what do ya want for nothing?")
            .finalize()
            .into_bytes()
            .into();
        let expected = [
            0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e, 0x6a, 0x04, 0x24, 0x26, 0x08, 0x95,
            0x75, 0xc7, 0x5a, 0x00, 0x3f, 0x08, 0x9d, 0x27, 0x39, 0x83, 0x9d, 0xec, 0x58, 0xb9,
            0x64, 0xec, 0x38, 0x43,
        ];
        assert_eq!(tag, expected);
    }

    #[test]
    fn proofs_follow_the_documented_inputs() {
        for key_len in [0usize, 1, 32, 63, 64, 65, 200] {
            let key: Vec<u8> = (0..key_len).map(|i| i as u8).collect();
            let mut input = SERVER_PROOF_LABEL.to_vec();
            input.extend_from_slice(&CLIENT_NONCE);
            input.extend_from_slice(&SERVER_NONCE);
            assert_eq!(
                server_proof(&key, &CLIENT_NONCE, &SERVER_NONCE),
                reference_hmac(&key, &input),
                "key length {key_len}"
            );
            let mut input = CLIENT_PROOF_LABEL.to_vec();
            input.extend_from_slice(&SERVER_NONCE);
            input.extend_from_slice(&CLIENT_NONCE);
            assert_eq!(
                client_proof(&key, &CLIENT_NONCE, &SERVER_NONCE),
                reference_hmac(&key, &input)
            );
            // The keying matches the hmac crate's own slice constructor.
            let ours: [u8; 32] = keyed(&key)
                .chain_update(b"x")
                .finalize()
                .into_bytes()
                .into();
            let theirs: [u8; 32] = <HmacSha256 as KeyInit>::new_from_slice(&key)
                .unwrap()
                .chain_update(b"x")
                .finalize()
                .into_bytes()
                .into();
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn verify_accepts_only_the_right_proof() {
        let proof = server_proof(SECRET, &CLIENT_NONCE, &SERVER_NONCE);
        assert_eq!(
            verify_server_proof(SECRET, &CLIENT_NONCE, &SERVER_NONCE, &proof),
            Ok(())
        );
        assert_eq!(
            verify_server_proof(b"other", &CLIENT_NONCE, &SERVER_NONCE, &proof),
            Err(AuthError::BadProof)
        );
        // Swapped nonces, or a server proof reflected as a client one, do not verify.
        assert!(verify_server_proof(SECRET, &SERVER_NONCE, &CLIENT_NONCE, &proof).is_err());
        assert!(verify_client_proof(SECRET, &CLIENT_NONCE, &SERVER_NONCE, &proof).is_err());
        for i in 0..32 {
            let mut bad = proof;
            bad[i] ^= 0x80;
            assert!(verify_server_proof(SECRET, &CLIENT_NONCE, &SERVER_NONCE, &bad).is_err());
        }
        let proof = client_proof(SECRET, &CLIENT_NONCE, &SERVER_NONCE);
        assert_eq!(
            verify_client_proof(SECRET, &CLIENT_NONCE, &SERVER_NONCE, &proof),
            Ok(())
        );
        assert!(verify_client_proof(SECRET, &CLIENT_NONCE, &[0x23; 16], &proof).is_err());
    }

    #[test]
    fn full_handshake_agrees_on_the_smaller_limit() {
        let mut client = ClientHandshake::new(CLIENT_NONCE, 4096);
        let mut server = ServerHandshake::new(1 << 20);
        assert_eq!(client.max_frame(), HANDSHAKE_MAX_FRAME);
        assert_eq!(server.max_frame(), HANDSHAKE_MAX_FRAME);

        let hello = client.hello();
        assert_eq!(hello.version, PROTOCOL_VERSION);
        let server_hello = server.hello(SECRET, &hello, SERVER_NONCE).unwrap();
        assert_eq!(server_hello.max_frame, 4096);
        assert_eq!(server_hello.nonce, SERVER_NONCE);
        let join = client
            .server_hello(SECRET, &server_hello, worker())
            .unwrap();
        assert_eq!(join.role, worker());
        assert!(!server.is_done());
        assert_eq!(server.max_frame(), HANDSHAKE_MAX_FRAME);
        server.join(SECRET, &join).unwrap();
        assert!(server.is_done());
        assert_eq!(server.max_frame(), 4096);
        assert!(!client.is_done());
        assert_eq!(client.welcomed(), Ok(4096));
        assert!(client.is_done());
        assert_eq!(client.max_frame(), 4096);

        // Steps cannot be repeated.
        assert_eq!(client.welcomed(), Err(HandshakeError::OutOfOrder));
        assert_eq!(server.join(SECRET, &join), Err(HandshakeError::OutOfOrder));
    }

    #[test]
    fn server_limit_is_agreed_when_smaller_and_floors_apply() {
        let mut client = ClientHandshake::new(CLIENT_NONCE, 1 << 20);
        let mut server = ServerHandshake::new(10);
        let server_hello = server.hello(SECRET, &client.hello(), SERVER_NONCE).unwrap();
        assert_eq!(server_hello.max_frame, HANDSHAKE_MAX_FRAME);
        let join = client
            .server_hello(SECRET, &server_hello, Role::Observer)
            .unwrap();
        server.join(SECRET, &join).unwrap();
        assert_eq!(client.welcomed(), Ok(HANDSHAKE_MAX_FRAME));
        assert_eq!(
            ClientHandshake::new(CLIENT_NONCE, 0).hello().max_frame,
            HANDSHAKE_MAX_FRAME
        );
    }

    #[test]
    fn connector_without_the_secret_is_refused() {
        let mut client = ClientHandshake::new(CLIENT_NONCE, 4096);
        let mut server = ServerHandshake::new(4096);
        let server_hello = server.hello(SECRET, &client.hello(), SERVER_NONCE).unwrap();
        // The connector, with another secret, refuses the server first...
        assert_eq!(
            client.server_hello(b"wrong", &server_hello, worker()),
            Err(HandshakeError::Auth(AuthError::BadProof))
        );
        // ...and a forged join (any proof it could make) is refused by the server.
        let forged = Join {
            proof: client_proof(b"wrong", &CLIENT_NONCE, &SERVER_NONCE),
            role: Role::Client(ClientInfo { name: "x" }),
        };
        let err = server.join(SECRET, &forged).unwrap_err();
        assert_eq!(err, HandshakeError::Auth(AuthError::BadProof));
        assert_eq!(err.code(), ErrorCode::AuthFailed);
        assert!(!server.is_done());
        assert_eq!(server.max_frame(), HANDSHAKE_MAX_FRAME);
        // Failed for good: even the right proof is not accepted now.
        let right = Join {
            proof: client_proof(SECRET, &CLIENT_NONCE, &SERVER_NONCE),
            ..forged
        };
        assert_eq!(server.join(SECRET, &right), Err(HandshakeError::OutOfOrder));
    }

    #[test]
    fn server_without_the_secret_is_refused() {
        let mut client = ClientHandshake::new(CLIENT_NONCE, 4096);
        let mut impostor = ServerHandshake::new(4096);
        let server_hello = impostor
            .hello(b"guess", &client.hello(), SERVER_NONCE)
            .unwrap();
        assert_eq!(
            client.server_hello(SECRET, &server_hello, worker()),
            Err(HandshakeError::Auth(AuthError::BadProof))
        );
        assert_eq!(client.welcomed(), Err(HandshakeError::OutOfOrder));
        assert_eq!(client.max_frame(), HANDSHAKE_MAX_FRAME);
    }

    #[test]
    fn proof_from_another_connection_is_refused() {
        let mut client = ClientHandshake::new(CLIENT_NONCE, 4096);
        let mut server = ServerHandshake::new(4096);
        let server_hello = server.hello(SECRET, &client.hello(), SERVER_NONCE).unwrap();
        let join = client
            .server_hello(SECRET, &server_hello, worker())
            .unwrap();
        // Replayed on a new connection, where the server picked another nonce.
        let mut second = ServerHandshake::new(4096);
        second
            .hello(
                SECRET,
                &ClientHandshake::new(CLIENT_NONCE, 4096).hello(),
                [0x33; 16],
            )
            .unwrap();
        assert!(matches!(
            second.join(SECRET, &join),
            Err(HandshakeError::Auth(_))
        ));
    }

    #[test]
    fn version_mismatch_both_ways() {
        let mut server = ServerHandshake::new(4096);
        let hello = ClientHello {
            version: PROTOCOL_VERSION + 1,
            ..ClientHandshake::new(CLIENT_NONCE, 4096).hello()
        };
        let err = server.hello(SECRET, &hello, SERVER_NONCE).unwrap_err();
        assert_eq!(
            err,
            HandshakeError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: PROTOCOL_VERSION + 1
            }
        );
        assert_eq!(err.code(), ErrorCode::VersionMismatch);
        assert_eq!(
            err.to_string(),
            "peer speaks protocol version 2, this side 1"
        );

        let mut client = ClientHandshake::new(CLIENT_NONCE, 4096);
        let server_hello = ServerHello {
            version: 0,
            nonce: SERVER_NONCE,
            max_frame: 4096,
            proof: server_proof(SECRET, &CLIENT_NONCE, &SERVER_NONCE),
        };
        assert_eq!(
            client.server_hello(SECRET, &server_hello, worker()),
            Err(HandshakeError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: 0
            })
        );
    }

    #[test]
    fn unusable_frame_limits() {
        let mut server = ServerHandshake::new(4096);
        let hello = ClientHello {
            version: PROTOCOL_VERSION,
            nonce: CLIENT_NONCE,
            max_frame: 100,
        };
        let err = server.hello(SECRET, &hello, SERVER_NONCE).unwrap_err();
        assert_eq!(err, HandshakeError::BadFrameLimit { max_frame: 100 });
        assert_eq!(err.code(), ErrorCode::LimitExceeded);

        for max_frame in [HANDSHAKE_MAX_FRAME - 1, 4097] {
            let mut client = ClientHandshake::new(CLIENT_NONCE, 4096);
            let server_hello = ServerHello {
                version: PROTOCOL_VERSION,
                nonce: SERVER_NONCE,
                max_frame,
                proof: server_proof(SECRET, &CLIENT_NONCE, &SERVER_NONCE),
            };
            assert_eq!(
                client.server_hello(SECRET, &server_hello, Role::Observer),
                Err(HandshakeError::BadFrameLimit { max_frame })
            );
        }
    }

    #[test]
    fn join_before_hello_is_out_of_order() {
        let mut server = ServerHandshake::new(4096);
        let join = Join {
            proof: [0; 32],
            role: Role::Observer,
        };
        assert_eq!(server.join(SECRET, &join), Err(HandshakeError::OutOfOrder));
        assert_eq!(
            server.hello(
                SECRET,
                &ClientHandshake::new(CLIENT_NONCE, 4096).hello(),
                SERVER_NONCE
            ),
            Err(HandshakeError::OutOfOrder)
        );
    }

    #[test]
    fn errors_display_lowercase() {
        let auth = HandshakeError::from(AuthError::BadProof);
        assert_eq!(
            auth.to_string(),
            "authentication failed: handshake proof does not match the shared secret"
        );
        assert!(core::error::Error::source(&auth).is_some());
        assert_eq!(
            HandshakeError::OutOfOrder.to_string(),
            "handshake step out of order"
        );
    }
}
