//! The sockets of the peer port: one TCP listener (peer RPC, hop channels) and one UDP socket
//! (gossip) on the same address, bound by the caller or by the node.
//!
//! Members know each other by one `ip:port` (`--cluster`), which gossip advertises and the peer
//! client dials, so both sockets must share it. A caller that binds them itself (an embedding
//! program, a test with port 0) holds them from the start, so no other process can take the port
//! between choosing it and using it.

use std::io;
use std::net::{SocketAddr, UdpSocket};

use tokio::net::TcpListener;

/// How many ports [`PeerSockets::bind`] tries for port 0 before it gives up.
const PORT_ATTEMPTS: usize = 64;

/// A bound peer listener and gossip socket on one address.
#[derive(Debug)]
pub struct PeerSockets {
    pub(crate) listener: TcpListener,
    pub(crate) gossip: UdpSocket,
    addr: SocketAddr,
}

/// Sockets that cannot serve as a node's peer port.
#[derive(Debug, thiserror::Error)]
pub enum PeerSocketsError {
    /// The OS refused a socket.
    #[error("cannot bind {addr}/{protocol}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// `tcp` or `udp`.
        protocol: &'static str,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The two sockets are on different addresses.
    #[error(
        "the peer listener ({tcp}/tcp) and the gossip socket ({udp}/udp) must share one address"
    )]
    Mismatch {
        /// The listener's address.
        tcp: SocketAddr,
        /// The gossip socket's address.
        udp: SocketAddr,
    },
}

impl PeerSockets {
    /// Binds both sockets on `addr`. With port 0, the first port free for TCP and UDP alike.
    pub async fn bind(addr: SocketAddr) -> Result<PeerSockets, PeerSocketsError> {
        let attempts = if addr.port() == 0 { PORT_ATTEMPTS } else { 1 };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let listener =
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| PeerSocketsError::Bind {
                        addr,
                        protocol: "tcp",
                        source,
                    })?;
            let bound = listener
                .local_addr()
                .map_err(|source| PeerSocketsError::Bind {
                    addr,
                    protocol: "tcp",
                    source,
                })?;
            match UdpSocket::bind(bound) {
                Ok(gossip) => return PeerSockets::from_parts(listener, gossip),
                // Port 0: this TCP port's UDP twin is taken; try another.
                Err(_) if attempt < attempts => {}
                Err(source) => {
                    return Err(PeerSocketsError::Bind {
                        addr: bound,
                        protocol: "udp",
                        source,
                    });
                }
            }
        }
    }

    /// Takes sockets the caller bound; they must share one address.
    pub fn from_parts(
        listener: TcpListener,
        gossip: UdpSocket,
    ) -> Result<PeerSockets, PeerSocketsError> {
        let tcp = listener
            .local_addr()
            .map_err(|source| PeerSocketsError::Bind {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                protocol: "tcp",
                source,
            })?;
        let udp = gossip
            .local_addr()
            .map_err(|source| PeerSocketsError::Bind {
                addr: tcp,
                protocol: "udp",
                source,
            })?;
        if tcp != udp {
            return Err(PeerSocketsError::Mismatch { tcp, udp });
        }
        Ok(PeerSockets {
            listener,
            gossip,
            addr: tcp,
        })
    }

    /// The address both sockets are bound to: what the node advertises as `--cluster`.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn port_zero_gives_one_port_for_both_and_mismatches_are_refused() {
        let sockets = PeerSockets::bind(([127, 0, 0, 1], 0).into())
            .await
            .expect("bind");
        let addr = sockets.local_addr();
        assert_ne!(addr.port(), 0);
        assert_eq!(sockets.gossip.local_addr().expect("udp addr"), addr);
        // The same address again is taken.
        assert!(matches!(
            PeerSockets::bind(addr).await,
            Err(PeerSocketsError::Bind { .. })
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("tcp");
        let gossip = UdpSocket::bind("127.0.0.1:0").expect("udp");
        if listener.local_addr().expect("addr").port() != gossip.local_addr().expect("addr").port()
        {
            assert!(matches!(
                PeerSockets::from_parts(listener, gossip),
                Err(PeerSocketsError::Mismatch { .. })
            ));
        }
    }
}
