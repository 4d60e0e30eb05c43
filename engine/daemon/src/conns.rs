//! Caps on QUIC connections, for the whole daemon and per source IP address: a connection
//! takes a [`ConnSlot`] when it arrives (before its handshake) and gives it back when it ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnRefusal {
    #[error("the daemon holds {max} connections, its limit (limits.max_connections, REFEREE_MAX_CONNECTIONS)")]
    Total { max: usize },
    #[error(
        "{ip} holds {max} connections, the limit per address (limits.max_connections_per_ip, \
         REFEREE_MAX_CONNECTIONS_PER_IP)"
    )]
    PerIp { ip: IpAddr, max: usize },
}

impl ConnRefusal {
    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            ConnRefusal::Total { .. } => "total",
            ConnRefusal::PerIp { .. } => "per_ip",
        }
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Connections held now, against the two caps.
pub struct ConnLimits {
    max_total: usize,
    max_per_ip: usize,
    counts: Mutex<Counts>,
}

impl ConnLimits {
    /// Caps of `max_total` connections, `max_per_ip` from any one address.
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_ip,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// A slot for one more connection from `ip`, or why not (counted in
    /// `referee_connections_refused_total`).
    pub fn try_take(self: &Arc<Self>, ip: IpAddr) -> Result<ConnSlot, ConnRefusal> {
        let mut c = self.counts.lock();
        let from_ip = c.per_ip.get(&ip).copied().unwrap_or(0);
        let refusal = if c.total >= self.max_total {
            Some(ConnRefusal::Total {
                max: self.max_total,
            })
        } else if from_ip >= self.max_per_ip {
            Some(ConnRefusal::PerIp {
                ip,
                max: self.max_per_ip,
            })
        } else {
            None
        };
        if let Some(r) = refusal {
            metrics::counter!("referee_connections_refused_total", "reason" => r.reason())
                .increment(1);
            return Err(r);
        }
        c.total += 1;
        *c.per_ip.entry(ip).or_insert(0) += 1;
        metrics::gauge!("referee_connections_open").set(c.total as f64);
        Ok(ConnSlot {
            limits: self.clone(),
            ip,
        })
    }

    /// Connections held now.
    pub fn open(&self) -> usize {
        self.counts.lock().total
    }
}

/// One connection's place under the caps; given back when dropped.
pub struct ConnSlot {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut c = self.limits.counts.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
        metrics::gauge!("referee_connections_open").set(c.total as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_per_address_and_in_all_and_slots_come_back() {
        let limits = ConnLimits::new(3, 2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let a1 = limits.try_take(a).unwrap();
        let _a2 = limits.try_take(a).unwrap();
        assert_eq!(
            limits.try_take(a).err(),
            Some(ConnRefusal::PerIp { ip: a, max: 2 })
        );
        let _b1 = limits.try_take(b).unwrap();
        assert_eq!(
            limits.try_take(b).err(),
            Some(ConnRefusal::Total { max: 3 })
        );
        drop(a1);
        assert_eq!(limits.open(), 2);
        assert!(limits.try_take(b).is_ok());
    }
}
