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

    /// The client's address, as a PROXY header named it: counted for it from now on.
    pub(crate) fn readdress(&mut self, client: IpAddr) -> Result<(), Refused> {
        if self.address.is_some() {
            return Ok(()); // counted already (not behind a proxy)
        }
        let mut counts = self.admission.counts.lock();
        self.address = Admission::count_address(&mut counts, self.admission.limits.max_per_address, client)?;
        drop(counts);
        self.peer = client;
        Ok(())
    }
}

impl Admission {
    pub(crate) fn new(limits: AdmissionLimits) -> Arc<Admission> {
        Arc::new(Admission { limits, counts: Mutex::default() })
    }

    /// A connection from `address`; `proxied`: the address is a proxy's, the client's comes
    /// later (see [`Ticket::readdress`]), so it counts for the node only until then.
    pub(crate) fn admit(self: &Arc<Self>, address: IpAddr, proxied: bool) -> Result<Ticket, Refused> {
        let mut counts = self.counts.lock();
        if self.limits.max_connections > 0 && counts.total >= self.limits.max_connections {
            return Err(Refused::NodeFull);
        }
        let counted = match proxied {
            true => None,
            false => Self::count_address(&mut counts, self.limits.max_per_address, address)?,
        };
        counts.total += 1;
        // Made once the lock is free again: a ticket dropped takes it.
        drop(counts);
        Ok(Ticket { admission: self.clone(), peer: address, address: counted })
    }

    /// Counts a connection from `address` if that limit is on: `Some(address)` then.
    fn count_address(counts: &mut Counts, max: usize, address: IpAddr) -> Result<Option<IpAddr>, Refused> {
        if max == 0 {
            return Ok(None);
        }
        let n = counts.per_address.entry(address).or_default();
        if *n >= max {
            return Err(Refused::AddressFull);
        }
        *n += 1;
        Ok(Some(address))
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
        let t1 = a.admit(one, false).expect("first");
        let _t2 = a.admit(one, false).expect("second");
        assert_eq!(a.admit(one, false).err(), Some(Refused::AddressFull));
        let _t3 = a.admit(two, false).expect("another address");
        assert_eq!(a.admit(two, false).err(), Some(Refused::NodeFull));
        drop(t1);
        assert_eq!(a.held(), 2);
        let _t4 = a.admit(one, false).expect("a place given back");
    }

    #[test]
    fn behind_a_proxy_the_client_s_address_counts_once_its_header_names_it() {
        let a = Admission::new(AdmissionLimits { max_connections: 0, max_per_address: 1 });
        let proxy = "127.0.0.1".parse().unwrap();
        let (mut t1, mut t2) = (a.admit(proxy, true).unwrap(), a.admit(proxy, true).unwrap());
        t1.readdress("192.0.2.1".parse().unwrap()).expect("first from that client");
        assert_eq!(t2.readdress("192.0.2.1".parse().unwrap()), Err(Refused::AddressFull));
        let mut t3 = a.admit(proxy, true).unwrap();
        t3.readdress("192.0.2.2".parse().unwrap()).expect("another client");
        assert_eq!(t3.peer(), "192.0.2.2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn no_limits_admit_everyone() {
        let a = Admission::new(AdmissionLimits::default());
        let tickets: Vec<_> =
            (0..1000).map(|_| a.admit("127.0.0.1".parse().unwrap(), false).expect("admitted")).collect();
        assert_eq!(a.held(), 1000);
        drop(tickets);
        assert_eq!(a.held(), 0);
    }
}
