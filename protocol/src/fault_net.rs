//! A fault-injecting network for tests: quinn over a UDP socket wrapper that, per directed link,
//! drops, delays (and so reorders) and duplicates datagrams and cuts links for partitions —
//! majority/minority splits, an isolated node, a bridge node that still reaches both sides.
//! Every socket of a test cluster shares one [`FaultPlan`]; its random choices come from one
//! seeded generator, so a seed names a run's faults.
//!
//! Chosen over a simulated whole cluster (turmoil) because the replicas, their QUIC transport,
//! TLS and openraft then run exactly as in production: only the datagrams between them change.

use std::collections::HashSet;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What the network does to datagrams now. Shared by every socket of a cluster.
pub struct FaultPlan {
    state: Mutex<PlanState>,
}

struct PlanState {
    /// Directed links (from, to) that deliver nothing.
    cut: HashSet<(SocketAddr, SocketAddr)>,
    /// Per mille of datagrams dropped, duplicated, delayed.
    drop_per_mille: u32,
    duplicate_per_mille: u32,
    delay_per_mille: u32,
    /// A delayed datagram waits up to this long (so later ones overtake it).
    max_delay: Duration,
    rng: StdRng,
    dropped: u64,
    duplicated: u64,
    delayed: u64,
}

/// What happens to one datagram.
enum Fate {
    Deliver,
    Drop,
    Duplicate,
    Delay(Duration),
}

impl FaultPlan {
    pub fn new(seed: u64) -> Arc<Self> {
        Arc::new(FaultPlan {
            state: Mutex::new(PlanState {
                cut: HashSet::new(),
                drop_per_mille: 0,
                duplicate_per_mille: 0,
                delay_per_mille: 0,
                max_delay: Duration::ZERO,
                rng: StdRng::seed_from_u64(seed),
                dropped: 0,
                duplicated: 0,
                delayed: 0,
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PlanState> {
        self.state.lock().expect("fault plan")
    }

    /// Splits the nodes into groups that cannot reach each other (each group still reaches
    /// itself); replaces any earlier partition.
    pub fn partition(&self, groups: &[Vec<SocketAddr>]) {
        let mut state = self.state();
        state.cut.clear();
        for (i, a) in groups.iter().enumerate() {
            for (j, b) in groups.iter().enumerate() {
                if i == j {
                    continue;
                }
                for from in a {
                    for to in b {
                        state.cut.insert((*from, *to));
                    }
                }
            }
        }
    }

    /// Cuts the links between `a` and `b` both ways, leaving every other link (a bridge node
    /// reaching both is such a partition).
    pub fn cut_between(&self, a: SocketAddr, b: SocketAddr) {
        let mut state = self.state();
        state.cut.insert((a, b));
        state.cut.insert((b, a));
    }

    /// Every link delivers again.
    pub fn heal(&self) {
        self.state().cut.clear();
    }

    /// Random loss, duplication and delay on every link, in per mille of datagrams.
    pub fn set_noise(
        &self,
        drop_per_mille: u32,
        duplicate_per_mille: u32,
        delay_per_mille: u32,
        max_delay: Duration,
    ) {
        let mut state = self.state();
        state.drop_per_mille = drop_per_mille.min(1000);
        state.duplicate_per_mille = duplicate_per_mille.min(1000);
        state.delay_per_mille = delay_per_mille.min(1000);
        state.max_delay = max_delay;
    }

    /// Datagrams dropped (by cuts or noise), duplicated and delayed so far.
    pub fn counts(&self) -> (u64, u64, u64) {
        let state = self.state();
        (state.dropped, state.duplicated, state.delayed)
    }

    fn cut(&self, from: SocketAddr, to: SocketAddr) -> bool {
        let mut state = self.state();
        let cut = state.cut.contains(&(from, to));
        if cut {
            state.dropped += 1;
        }
        cut
    }

    fn fate(&self, from: SocketAddr, to: SocketAddr) -> Fate {
        let mut state = self.state();
        if state.cut.contains(&(from, to)) {
            state.dropped += 1;
            return Fate::Drop;
        }
        let roll = state.rng.random_range(0..1000u32);
        let (drop, duplicate, delay) = (
            state.drop_per_mille,
            state.duplicate_per_mille,
            state.delay_per_mille,
        );
        if roll < drop {
            state.dropped += 1;
            Fate::Drop
        } else if roll < drop + duplicate {
            state.duplicated += 1;
            Fate::Duplicate
        } else if roll < drop + duplicate + delay && !state.max_delay.is_zero() {
            state.delayed += 1;
            let max = state.max_delay.as_micros() as u64;
            Fate::Delay(Duration::from_micros(state.rng.random_range(0..=max)))
        } else {
            Fate::Deliver
        }
    }
}

/// A UDP socket whose datagrams go through a [`FaultPlan`].
pub struct FaultySocket {
    inner: Arc<dyn AsyncUdpSocket>,
    local: SocketAddr,
    plan: Arc<FaultPlan>,
}

impl fmt::Debug for FaultySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultySocket({})", self.local)
    }
}

impl FaultySocket {
    /// Wraps a bound socket for tokio.
    pub fn wrap(socket: std::net::UdpSocket, plan: Arc<FaultPlan>) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let local = socket.local_addr()?;
        let inner = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, socket)?;
        Ok(Arc::new(FaultySocket { inner, local, plan }))
    }
}

impl AsyncUdpSocket for FaultySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        match self.plan.fate(self.local, transmit.destination) {
            // Lost on the way: the sender cannot tell.
            Fate::Drop => Ok(()),
            Fate::Deliver => self.inner.try_send(transmit),
            Fate::Duplicate => {
                self.inner.try_send(transmit)?;
                let _ = self.inner.try_send(transmit);
                Ok(())
            }
            Fate::Delay(wait) => {
                let inner = self.inner.clone();
                let (destination, ecn, segment_size, src_ip) = (
                    transmit.destination,
                    transmit.ecn,
                    transmit.segment_size,
                    transmit.src_ip,
                );
                let contents = transmit.contents.to_vec();
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    let _ = inner.try_send(&Transmit {
                        destination,
                        ecn,
                        contents: &contents,
                        segment_size,
                        src_ip,
                    });
                });
                Ok(())
            }
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let count = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(count)) => count,
                other => return other,
            };
            // Keep what came over links that are not cut, packed to the front.
            let mut kept = 0;
            for i in 0..count {
                if self.plan.cut(meta[i].addr, self.local) {
                    continue;
                }
                if kept != i {
                    let len = meta[i].len;
                    let (front, back) = bufs.split_at_mut(i);
                    front[kept][..len].copy_from_slice(&back[0][..len]);
                    meta[kept] = meta[i];
                }
                kept += 1;
            }
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}
