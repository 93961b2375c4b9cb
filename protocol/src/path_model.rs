//! How long bytes take over a network path: the transfer-time model the allocator places tasks
//! by and the gateway places inference batches by, tuned to the transport's QUIC stream window.

/// The assumptions of the transfer-time model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NetworkModel {
    /// Throughput of one path when the window is not the limit, bytes per second.
    pub link_bytes_per_sec: f64,
    /// Bytes in flight per stream (the QUIC stream window the transport is tuned to).
    pub window_bytes: f64,
}

impl Default for NetworkModel {
    fn default() -> Self {
        NetworkModel {
            link_bytes_per_sec: 1.25e9,
            window_bytes: 16.0 * 1024.0 * 1024.0,
        }
    }
}

impl NetworkModel {
    /// Seconds to move `bytes` over a path of `rtt_ms`: a handshake and a request, then the
    /// bytes at the rate the window allows.
    pub fn transfer_secs(&self, bytes: u64, rtt_ms: f64) -> f64 {
        let rtt = (rtt_ms / 1000.0).max(1e-6);
        let rate = self.link_bytes_per_sec.min(self.window_bytes / rtt);
        2.0 * rtt + bytes as f64 / rate
    }
}
