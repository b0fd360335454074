//! Where the cluster's floating checks run: the replica scheduler's rules, without I/O.
//!
//! - **start**: a round-robin index over the registered replicas (sorted by id),
//!   advanced on each successful start. A replica at its capacity, draining or dead is
//!   passed over for the next; when none accepts, the check is refused and the answer
//!   says why (`started 3 of 5: 2 refused (all replicas at capacity)`).
//! - **sticky**: a placed check stays where it is; a dead or draining replica's checks
//!   are started again elsewhere, a joining replica takes none until `rebalance`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A replica as placement sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    pub id: String,
    pub capacity: usize,
    /// Takes no new checks, and its checks move away.
    pub draining: bool,
}

/// Why a check could not be started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// No replica is alive (or every live one is draining).
    NoReplica,
    /// Every live replica is at its capacity.
    AtCapacity,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NoReplica => "no live replica takes checks",
            Refusal::AtCapacity => "all replicas at capacity",
        }
    }
}

/// The placements of the floating checks: check → replica, as the leader keeps them.
#[derive(Clone, Debug, Default)]
pub struct Placement {
    /// Live replicas, sorted by id.
    replicas: Vec<Replica>,
    /// How many checks each replica has now.
    load: BTreeMap<String, usize>,
    /// The round-robin index.
    next: usize,
}

impl Placement {
    /// `replicas`: the live ones; `assigned`: where each placed check is now (checks on
    /// replicas not in `replicas` are not counted: they are to be moved).
    pub fn new<'a>(
        mut replicas: Vec<Replica>,
        assigned: impl IntoIterator<Item = &'a str>,
        next: usize,
    ) -> Placement {
        replicas.sort_by(|a, b| a.id.cmp(&b.id));
        replicas.dedup_by(|a, b| a.id == b.id);
        let mut load: BTreeMap<String, usize> =
            replicas.iter().map(|r| (r.id.clone(), 0)).collect();
        for r in assigned {
            if let Some(n) = load.get_mut(r) {
                *n += 1;
            }
        }
        Placement {
            replicas,
            load,
            next,
        }
    }

    /// The round-robin index, to keep for the next leader.
    pub fn next_index(&self) -> usize {
        self.next
    }

    pub fn is_live(&self, id: &str) -> bool {
        self.load.contains_key(id)
    }

    pub fn load_of(&self, id: &str) -> usize {
        self.load.get(id).copied().unwrap_or(0)
    }

    /// Whether the replica may run one more check.
    fn accepts(&self, r: &Replica) -> bool {
        !r.draining && self.load_of(&r.id) < r.capacity
    }

    /// Starts one check: the replica it goes to, or why none takes it.
    pub fn start(&mut self) -> Result<String, Refusal> {
        let n = self.replicas.len();
        if n == 0 || self.replicas.iter().all(|r| r.draining) {
            return Err(Refusal::NoReplica);
        }
        for i in 0..n {
            let at = (self.next + i) % n;
            if self.accepts(&self.replicas[at]) {
                let id = self.replicas[at].id.clone();
                *self.load.entry(id.clone()).or_default() += 1;
                self.next = (at + 1) % n;
                return Ok(id);
            }
        }
        Err(Refusal::AtCapacity)
    }

    /// A check stopped (or moved away) on `id`: its slot is free.
    pub fn release(&mut self, id: &str) {
        if let Some(n) = self.load.get_mut(id) {
            *n = n.saturating_sub(1);
        }
    }

    /// The moves that even the load out, within capacity: from the replicas above the
    /// mean (rounded up) to those below it (rounded down), draining ones emptied.
    /// `assigned`: check → replica. Returns (check, from, to), the checks taken in name
    /// order from the fullest replica.
    pub fn rebalance(
        &mut self,
        assigned: &BTreeMap<String, String>,
    ) -> Vec<(String, String, String)> {
        let takers: Vec<Replica> = self
            .replicas
            .iter()
            .filter(|r| !r.draining)
            .cloned()
            .collect();
        if takers.is_empty() {
            return Vec::new();
        }
        let total: usize = assigned.values().filter(|r| self.is_live(r)).count();
        let high = total.div_ceil(takers.len());
        let mut by_replica: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (check, r) in assigned {
            if self.is_live(r) {
                by_replica.entry(r).or_default().push(check);
            }
        }
        let draining: BTreeSet<String> = self
            .replicas
            .iter()
            .filter(|r| r.draining)
            .map(|r| r.id.clone())
            .collect();
        let mut moves = Vec::new();
        loop {
            // The fullest giver: a draining replica with any check, or one above `high`.
            let giver = by_replica
                .iter()
                .filter(|(r, cs)| !cs.is_empty() && (draining.contains(**r) || cs.len() > high))
                .max_by_key(|(r, cs)| (draining.contains(**r), cs.len()))
                .map(|(r, _)| r.to_string());
            let Some(giver) = giver else { break };
            // The emptiest taker with room, if the move evens things out (or empties a
            // draining replica).
            let from_draining = draining.contains(&giver);
            let taker = takers
                .iter()
                .filter(|t| t.id != giver)
                .filter(|t| {
                    let n = self.load_of(&t.id);
                    n < t.capacity && (from_draining || n + 1 < self.load_of(&giver))
                })
                .min_by_key(|t| (self.load_of(&t.id), t.id.clone()))
                .map(|t| t.id.clone());
            let Some(taker) = taker else { break };
            let Some(check) = by_replica.get_mut(giver.as_str()).and_then(|cs| cs.pop()) else {
                break;
            };
            self.release(&giver);
            *self.load.entry(taker.clone()).or_default() += 1;
            moves.push((check.to_string(), giver, taker));
        }
        moves
    }
}

/// What a start of several checks did, said as the seed scheduler said it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartSummary {
    pub asked: usize,
    /// Started now (placed on a replica).
    pub started: Vec<(String, String)>,
    /// Running already: left where they are.
    pub running: usize,
    pub refused: Vec<(String, Refusal)>,
    /// Names that are no floating check of the config.
    pub unknown: Vec<String>,
}

impl std::fmt::Display for StartSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ok = self.started.len() + self.running;
        write!(f, "started {ok} of {}", self.asked)?;
        let mut parts = Vec::new();
        if self.running > 0 {
            parts.push(format!("{} already running", self.running));
        }
        if !self.refused.is_empty() {
            let mut reasons: Vec<&str> = self.refused.iter().map(|(_, r)| r.as_str()).collect();
            reasons.sort();
            reasons.dedup();
            parts.push(format!(
                "{} refused ({})",
                self.refused.len(),
                reasons.join("; ")
            ));
        }
        if !self.unknown.is_empty() {
            parts.push(format!(
                "{} not a floating check of the config: {}",
                self.unknown.len(),
                self.unknown.join(", ")
            ));
        }
        if !parts.is_empty() {
            write!(f, ": {}", parts.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replicas(caps: &[(&str, usize)]) -> Vec<Replica> {
        caps.iter()
            .map(|(id, c)| Replica {
                id: id.to_string(),
                capacity: *c,
                draining: false,
            })
            .collect()
    }

    #[test]
    fn round_robin_skips_full_replicas_and_says_why_it_refuses() {
        let mut p = Placement::new(replicas(&[("b", 1), ("a", 2), ("c", 2)]), [], 0);
        let got: Vec<_> = (0..6).map(|_| p.start()).collect();
        assert_eq!(
            got,
            [
                Ok("a".to_string()),
                Ok("b".to_string()),
                Ok("c".to_string()),
                Ok("a".to_string()),
                Ok("c".to_string()),
                Err(Refusal::AtCapacity)
            ]
        );
        p.release("b");
        assert_eq!(p.start(), Ok("b".to_string()));
        assert_eq!(
            Placement::new(vec![], [], 0).start(),
            Err(Refusal::NoReplica)
        );
    }

    #[test]
    fn draining_replicas_take_nothing_and_are_emptied_by_rebalance() {
        let mut rs = replicas(&[("a", 10), ("b", 10), ("c", 10)]);
        rs[1].draining = true;
        let assigned: BTreeMap<String, String> = (0..9)
            .map(|i| (format!("c{i}"), ["a", "b", "c"][i % 3].to_string()))
            .collect();
        let mut p = Placement::new(rs, assigned.values().map(String::as_str), 0);
        assert_ne!(p.start(), Ok("b".to_string()));
        let mut p = Placement::new(p.replicas.clone(), assigned.values().map(String::as_str), 0);
        let moves = p.rebalance(&assigned);
        assert_eq!(moves.len(), 3, "{moves:?}");
        assert!(moves.iter().all(|(_, from, to)| from == "b" && to != "b"));
        assert_eq!((p.load_of("a"), p.load_of("b"), p.load_of("c")), (5, 0, 4));
    }

    #[test]
    fn rebalance_evens_out_a_joined_replica_within_one() {
        let assigned: BTreeMap<String, String> = (0..31)
            .map(|i| (format!("c{i:02}"), "a".to_string()))
            .collect();
        let mut p = Placement::new(
            replicas(&[("a", 100), ("b", 100), ("c", 100)]),
            assigned.values().map(String::as_str),
            0,
        );
        let moves = p.rebalance(&assigned);
        let loads = [p.load_of("a"), p.load_of("b"), p.load_of("c")];
        assert!(
            loads.iter().max().unwrap() - loads.iter().min().unwrap() <= 1,
            "{loads:?}"
        );
        assert_eq!(moves.len(), 31 - loads[0]);
        // Balanced already: nothing moves.
        let mut now = assigned.clone();
        for (c, _, to) in &moves {
            now.insert(c.clone(), to.clone());
        }
        let mut p = Placement::new(
            replicas(&[("a", 100), ("b", 100), ("c", 100)]),
            now.values().map(String::as_str),
            0,
        );
        assert!(p.rebalance(&now).is_empty());
    }

    #[test]
    fn summary_reads_like_the_seed_scheduler() {
        let s = StartSummary {
            asked: 5,
            started: vec![("x".into(), "a".into()); 3],
            refused: vec![
                ("y".into(), Refusal::AtCapacity),
                ("z".into(), Refusal::AtCapacity),
            ],
            ..Default::default()
        };
        assert_eq!(
            s.to_string(),
            "started 3 of 5: 2 refused (all replicas at capacity)"
        );
    }
}
