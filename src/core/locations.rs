//! The table of client locations: one record per client, the newest wins.
//!
//! Records live in an append-only vector (clients are never forgotten), so a resync to a peer
//! walks it with a plain index that stays valid while new records arrive. The index is a
//! `HashTable` of positions into that vector: the client id is stored once, inside the record's
//! AT line. Hashing is SipHash with a per-process random key, because client ids are chosen by
//! strangers.

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;

use crate::proto::Timestamp;

/// One client's newest location: the AT line the origin server answered with.
#[derive(Debug)]
pub struct Record {
    line: Vec<u8>,
    client_at: u32,
    client_len: u32,
    time: Timestamp,
}

impl Record {
    /// The AT line, without its `\n`, identical at every server of the herd.
    pub fn line(&self) -> &[u8] {
        &self.line
    }

    /// The client id.
    pub fn client(&self) -> &[u8] {
        let at = self.client_at as usize;
        &self.line[at..at + self.client_len as usize]
    }

    /// The client's own timestamp.
    pub fn time(&self) -> Timestamp {
        self.time
    }
}

/// What [`Locations::observe`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Newer than what was stored (or the first for this client): stored, and to be flooded.
    Newer,
    /// Older than or as old as the stored record: nothing changed.
    Stale,
}

/// All known clients.
#[derive(Debug, Default)]
pub struct Locations {
    records: Vec<Record>,
    index: HashTable<u32>,
    hasher: RandomState,
}

impl Locations {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of clients.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no client is known.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The record at `position` (0..len), in order of first appearance.
    pub fn at(&self, position: usize) -> Option<&Record> {
        self.records.get(position)
    }

    /// The record of `client`.
    pub fn get(&self, client: &[u8]) -> Option<&Record> {
        let hash = self.hasher.hash_one(client);
        let records = &self.records;
        self.index.find(hash, |&i| records[i as usize].client() == client).map(|&i| &records[i as usize])
    }

    /// Stores `line` (from an IAMAT) as the record of the client found at
    /// `line[client_at..client_at + len]` if `time` is newer than the stored one: an IAMAT at an
    /// equal time stores nothing (PROTOCOL.md). An update reuses the record's buffer.
    pub fn observe(&mut self, line: &[u8], client_at: usize, client_len: usize, time: Timestamp) -> Observed {
        self.store(line, client_at, client_len, time, false)
    }

    /// Stores `line` (an AT line from a peer) like [`observe`](Self::observe), and also when its
    /// time equals the stored one and the line is greater byte for byte: the herd's tie-break
    /// (docs/PEERS.md). Every server compares the same two lines the same way, so however equal
    /// timestamps race, every server ends with the greatest of them.
    pub fn observe_peer(
        &mut self,
        line: &[u8],
        client_at: usize,
        client_len: usize,
        time: Timestamp,
    ) -> Observed {
        self.store(line, client_at, client_len, time, true)
    }

    fn store(
        &mut self,
        line: &[u8],
        client_at: usize,
        client_len: usize,
        time: Timestamp,
        ties: bool,
    ) -> Observed {
        let client = &line[client_at..client_at + client_len];
        let hash = self.hasher.hash_one(client);
        let records = &mut self.records;
        if let Some(&i) = self.index.find(hash, |&i| records[i as usize].client() == client) {
            let r = &mut records[i as usize];
            let wins = time > r.time || (ties && time == r.time && line > &r.line[..]);
            if !wins {
                return Observed::Stale;
            }
            r.line.clear();
            r.line.extend_from_slice(line);
            r.client_at = client_at as u32;
            r.client_len = client_len as u32;
            r.time = time;
            return Observed::Newer;
        }
        let i = records.len() as u32;
        records.push(Record {
            line: line.to_vec(),
            client_at: client_at as u32,
            client_len: client_len as u32,
            time,
        });
        let hasher = &self.hasher;
        self.index.insert_unique(hash, i, |&j| hasher.hash_one(records[j as usize].client()));
        Observed::Newer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(client: &str, t: &str) -> (Vec<u8>, usize, usize, Timestamp) {
        let l = format!("AT Hill +0.1 {client} +1.0+1.0 {t}").into_bytes();
        (l, 13, client.len(), Timestamp::parse(t.as_bytes()).unwrap())
    }

    fn observe(table: &mut Locations, client: &str, t: &str) -> Observed {
        let (l, at, len, time) = line(client, t);
        table.observe(&l, at, len, time)
    }

    #[test]
    fn observe_first_newer_stored() {
        let mut t = Locations::new();
        assert_eq!(observe(&mut t, "kiwi", "1.5"), Observed::Newer);
        let r = t.get(b"kiwi").unwrap();
        assert_eq!(r.line(), b"AT Hill +0.1 kiwi +1.0+1.0 1.5");
        assert_eq!(r.client(), b"kiwi");
        assert!(t.get(b"kiw").is_none());
    }

    #[test]
    fn observe_equal_or_older_stale_unchanged() {
        let mut t = Locations::new();
        observe(&mut t, "kiwi", "2.000000002");
        assert_eq!(observe(&mut t, "kiwi", "2.000000002"), Observed::Stale);
        assert_eq!(observe(&mut t, "kiwi", "2.000000001"), Observed::Stale);
        assert_eq!(t.get(b"kiwi").unwrap().time(), Timestamp::new(2, 2));
        assert_eq!(observe(&mut t, "kiwi", "2.000000003"), Observed::Newer);
        assert_eq!(t.get(b"kiwi").unwrap().time(), Timestamp::new(2, 3));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn peer_line_at_an_equal_time_wins_only_if_greater_in_either_order() {
        let a = b"AT Hill +0.1 kiwi +1.0+1.0 5".to_vec();
        let b = b"AT Smith +0.2 kiwi +2.0+2.0 5".to_vec();
        let time = Timestamp::new(5, 0);
        let winner = a.clone().max(b.clone());
        for (first, second) in [(&a, &b), (&b, &a)] {
            let mut t = Locations::new();
            let at = |l: &[u8]| l.windows(4).position(|w| w == b"kiwi").unwrap();
            assert_eq!(t.observe_peer(first, at(first), 4, time), Observed::Newer);
            let second_wins = second > first;
            let got = t.observe_peer(second, at(second), 4, time);
            assert_eq!(got == Observed::Newer, second_wins);
            assert_eq!(t.get(b"kiwi").unwrap().line(), &winner[..], "the same record whatever the order");
            // The same line again is not news.
            assert_eq!(t.observe_peer(&winner, at(&winner), 4, time), Observed::Stale);
        }
        // An IAMAT at an equal time never replaces (PROTOCOL.md), whatever its line.
        let mut t = Locations::new();
        t.observe(&a, 13, 4, time);
        assert_eq!(t.observe(&b"AT Zzz +0.1 kiwi +9.0+9.0 5"[..], 12, 4, time), Observed::Stale);
    }

    #[test]
    fn many_clients_positions_stable() {
        let mut t = Locations::new();
        for i in 0..10_000 {
            observe(&mut t, &format!("c{i}"), "1");
        }
        assert_eq!(t.len(), 10_000);
        for i in (0..10_000).step_by(997) {
            let name = format!("c{i}");
            assert_eq!(t.get(name.as_bytes()).unwrap().client(), name.as_bytes());
            assert_eq!(t.at(i).unwrap().client(), name.as_bytes());
        }
    }
}
