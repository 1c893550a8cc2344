//! Admission: how many connections a node holds, in all and per source address. The acceptor
//! asks before handing a socket on; the [`Ticket`] travels with the connection and gives its
//! place back when the connection is dropped, wherever that happens. Any thread.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

/// The limits; 0 means none.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AdmissionLimits {
    pub max_connections: usize,
    pub max_per_address: usize,
}

#[derive(Debug, Default)]
pub(crate) struct Admission {
    limits: AdmissionLimits,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    NodeFull,
    AddressFull,
}

/// A connection's place; given back on drop.
#[derive(Debug)]
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    peer: IpAddr,
    /// Counted per address (only while that limit is on).
    address: Option<IpAddr>,
}

impl Ticket {
    /// The client's address.
    pub(crate) fn peer(&self) -> IpAddr {
        self.peer
    }
}

impl Admission {
    pub(crate) fn new(limits: AdmissionLimits) -> Arc<Admission> {
        Arc::new(Admission { limits, counts: Mutex::default() })
    }

    pub(crate) fn admit(self: &Arc<Self>, address: IpAddr) -> Result<Ticket, Refused> {
        let AdmissionLimits { max_connections, max_per_address } = self.limits;
        let mut counts = self.counts.lock();
        if max_connections > 0 && counts.total >= max_connections {
            return Err(Refused::NodeFull);
        }
        let peer = address;
        let address = (max_per_address > 0).then_some(address);
        if let Some(a) = address {
            let n = counts.per_address.entry(a).or_default();
            if *n >= max_per_address {
                return Err(Refused::AddressFull);
            }
            *n += 1;
        }
        counts.total += 1;
        Ok(Ticket { admission: self.clone(), peer, address })
    }

    /// Connections held now.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.counts.lock().total
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut counts = self.admission.counts.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(a) = self.address {
            if let Some(n) = counts.per_address.get_mut(&a) {
                *n -= 1;
                if *n == 0 {
                    counts.per_address.remove(&a);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_counted_per_node_and_per_address_and_given_back() {
        let a = Admission::new(AdmissionLimits { max_connections: 3, max_per_address: 2 });
        let (one, two) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        let t1 = a.admit(one).expect("first");
        let _t2 = a.admit(one).expect("second");
        assert_eq!(a.admit(one).err(), Some(Refused::AddressFull));
        let _t3 = a.admit(two).expect("another address");
        assert_eq!(a.admit(two).err(), Some(Refused::NodeFull));
        drop(t1);
        assert_eq!(a.held(), 2);
        let _t4 = a.admit(one).expect("a place given back");
    }

    #[test]
    fn no_limits_admit_everyone() {
        let a = Admission::new(AdmissionLimits::default());
        let tickets: Vec<_> = (0..1000).map(|_| a.admit("127.0.0.1".parse().unwrap()).expect("admitted")).collect();
        assert_eq!(a.held(), 1000);
        drop(tickets);
        assert_eq!(a.held(), 0);
    }
}
