//! [`Split`]: a share of a name's traffic moved from one set of addresses to another, and what
//! each driver writes for it. Pure: no I/O, so the arithmetic is tested on its own.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// `percent` % of answers go to `to`, the rest to `from`. Both sets are non-empty, sorted,
/// without duplicates, and disjoint (an address in both would make the observed share
/// meaningless).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    from: Vec<Ipv4Addr>,
    to: Vec<Ipv4Addr>,
    percent: u8,
}

impl Split {
    /// Validates and normalises a split. Errors name the offending parameter.
    pub fn new(from: &[Ipv4Addr], to: &[Ipv4Addr], percent: u8) -> Result<Split, String> {
        if percent > 100 {
            return Err(format!("percent: {percent} is not in 0..=100"));
        }
        let from: Vec<Ipv4Addr> = from.iter().copied().collect::<BTreeSet<_>>().into_iter().collect();
        let to: Vec<Ipv4Addr> = to.iter().copied().collect::<BTreeSet<_>>().into_iter().collect();
        if from.is_empty() {
            return Err("from: list at least one address".into());
        }
        if to.is_empty() {
            return Err("to: list at least one address".into());
        }
        if let Some(both) = to.iter().find(|ip| from.contains(ip)) {
            return Err(format!("to: {both} is also in from; the two sets must be disjoint"));
        }
        Ok(Split { from, to, percent })
    }

    /// The share of answers planned for `to`, in percent.
    pub fn percent(&self) -> u8 {
        self.percent
    }

    /// The addresses traffic moves away from.
    pub fn from(&self) -> &[Ipv4Addr] {
        &self.from
    }

    /// The addresses traffic moves to.
    pub fn to(&self) -> &[Ipv4Addr] {
        &self.to
    }

    /// At 0 % or 100 % every answer is one side: a plain A RRset of that side, no weighting.
    pub fn plain(&self) -> Option<&[Ipv4Addr]> {
        match self.percent {
            0 => Some(&self.from),
            100 => Some(&self.to),
            _ => None,
        }
    }

    /// Integer weights giving exactly `percent` % to `to`, spread evenly over each side's
    /// addresses: each `from` address weighs `(100 - p) * |to|`, each `to` address `p * |from|`
    /// (so the sides weigh `(100 - p) * |from| * |to|` and `p * |from| * |to|`), reduced by their
    /// common divisor. Addresses of weight 0 are left out.
    pub fn weights(&self) -> Vec<(u64, Ipv4Addr)> {
        let p = u64::from(self.percent);
        let (nf, nt) = (self.from.len() as u64, self.to.len() as u64);
        let (wf, wt) = ((100 - p) * nt, p * nf);
        let g = gcd(wf, wt).max(1);
        let side = |ips: &[Ipv4Addr], w: u64| ips.iter().map(move |ip| (w / g, *ip)).collect::<Vec<_>>();
        let mut out = side(&self.from, wf);
        out.extend(side(&self.to, wt));
        out.retain(|(w, _)| *w > 0);
        out
    }

    /// The PowerDNS LUA record content answering one address per query, picked at random with
    /// [`Split::weights`]: `A "pickwrandom({{75,'192.0.2.1'},{25,'198.51.100.1'}})"`.
    pub fn lua_content(&self) -> String {
        let entries: Vec<String> = self.weights().iter().map(|(w, ip)| format!("{{{w},'{ip}'}}")).collect();
        format!("A \"pickwrandom({{{}}})\"", entries.join(","))
    }

    /// The plain RRset that comes closest to the split, and its share of `to` records.
    ///
    /// Plain DNS has no weights: a server answers the whole RRset and a client picks one record,
    /// so the share of traffic is the share of records. An RRset is a *set*: duplicate records
    /// are dropped by the server (RFC 2136 §3.4.2.2), so "3 × from, 1 × to" is only possible
    /// with 3 distinct `from` addresses. With `m` `from` and `n` `to` addresses the reachable
    /// shares are `k / (j + k)` for `j ≤ m`, `k ≤ n`: one address each gives only 0, 50 and
    /// 100 %; `from: [a, b, c]`, `to: [d]` gives 25 % exactly. The nearest share is chosen
    /// (ties go to more records, for a smoother spread). Even then the split is approximate:
    /// servers rotate record order, and many stub resolvers take the first record or sort by
    /// address (RFC 6724) instead of picking uniformly.
    pub fn proportional(&self) -> (Vec<Ipv4Addr>, f64) {
        if let Some(side) = self.plain() {
            let share = if self.percent == 100 { 1.0 } else { 0.0 };
            return (side.to_vec(), share);
        }
        let p = u64::from(self.percent);
        // err(j, k) = |100k - p(j+k)| / (j+k), compared as fractions.
        let mut best = (u64::MAX, 1u64, 0usize, 0usize);
        for j in 0..=self.from.len() {
            for k in 0..=self.to.len() {
                let total = (j + k) as u64;
                if total == 0 {
                    continue;
                }
                let num = (100 * k as u64).abs_diff(p * total);
                let (bn, bd, bj, bk) = best;
                let better = match (num * bd).cmp(&(bn.saturating_mul(total))) {
                    std::cmp::Ordering::Less => true,
                    std::cmp::Ordering::Equal => total > (bj + bk) as u64,
                    std::cmp::Ordering::Greater => false,
                };
                if bn == u64::MAX || better {
                    best = (num, total, j, k);
                }
            }
        }
        let (_, _, j, k) = best;
        let mut records: Vec<Ipv4Addr> = self.from[..j].to_vec();
        records.extend_from_slice(&self.to[..k]);
        (records, k as f64 / (j + k) as f64)
    }

    /// The share of `to` in one reply's answer set, as a client picking uniformly would see it:
    /// 0 or 1 for a weighted (one-record) answer, `k / n` for a proportional set. An address in
    /// neither set is an error: clients are being sent somewhere the split does not know.
    pub fn share_of(&self, answers: &[Ipv4Addr]) -> Result<f64, String> {
        if answers.is_empty() {
            return Err("no answers".into());
        }
        if let Some(stray) = answers.iter().find(|ip| !self.from.contains(ip) && !self.to.contains(ip)) {
            return Err(format!("answer {stray} is in neither from nor to"));
        }
        let to = answers.iter().filter(|ip| self.to.contains(ip)).count();
        Ok(to as f64 / answers.len() as f64)
    }
}

/// What a series of queries saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    /// Replies with an answer set within the split.
    pub answered: u32,
    /// Queries without a reply (timeouts, lost datagrams).
    pub lost: u32,
    /// Sum over answered replies of their share of `to`.
    pub to_share_sum: f64,
    /// Replies that were wrong: no answers, an error rcode, an address outside the split.
    pub wrong: u32,
    /// The first wrong reply's reason.
    pub first_wrong: Option<String>,
}

impl Tally {
    /// The observed share of `to` over answered replies (0 when none were).
    pub fn observed(&self) -> f64 {
        if self.answered == 0 { 0.0 } else { self.to_share_sum / f64::from(self.answered) }
    }

    /// Whether the observation matches `percent`: no wrong replies, at most 5 % of queries
    /// lost, and the observed share within `tolerance` (absolute) of `percent / 100`, or exactly
    /// 0 or 1 at 0 % and 100 %, where any stray answer means the shift is not complete.
    pub fn judge(&self, percent: u8, tolerance: f64) -> Result<(), String> {
        if self.wrong > 0 {
            return Err(format!(
                "{} of {} replies were wrong (first: {})",
                self.wrong,
                self.answered + self.wrong + self.lost,
                self.first_wrong.as_deref().unwrap_or("?")
            ));
        }
        let queries = self.answered + self.lost;
        if self.answered == 0 || self.lost * 20 > queries {
            return Err(format!("{} of {queries} queries got no reply", self.lost));
        }
        let observed = self.observed();
        let want = f64::from(percent) / 100.0;
        let fine = match percent {
            0 | 100 => observed == want,
            _ => (observed - want).abs() <= tolerance,
        };
        if fine {
            Ok(())
        } else if percent == 0 || percent == 100 {
            Err(format!("observed {:.1} % to `to`, expected exactly {percent} %", observed * 100.0))
        } else {
            Err(format!(
                "observed {:.1} % to `to`, expected {percent} % ± {:.1} points",
                observed * 100.0,
                tolerance * 100.0
            ))
        }
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(v: &[&str]) -> Vec<Ipv4Addr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn split(from: &[&str], to: &[&str], p: u8) -> Split {
        Split::new(&ips(from), &ips(to), p).unwrap()
    }

    #[test]
    fn validation_names_the_parameter() {
        let a = ips(&["192.0.2.1"]);
        assert!(Split::new(&a, &a, 10).unwrap_err().starts_with("to: 192.0.2.1 is also in from"));
        assert!(Split::new(&[], &a, 10).unwrap_err().starts_with("from:"));
        assert!(Split::new(&a, &[], 10).unwrap_err().starts_with("to:"));
        assert!(Split::new(&a, &ips(&["192.0.2.2"]), 101).unwrap_err().starts_with("percent:"));
    }

    #[test]
    fn weights_are_exact_integers() {
        let s = split(&["192.0.2.1"], &["198.51.100.1"], 25);
        assert_eq!(s.weights(), vec![(3, ips(&["192.0.2.1"])[0]), (1, ips(&["198.51.100.1"])[0])]);
        assert_eq!(s.lua_content(), "A \"pickwrandom({{3,'192.0.2.1'},{1,'198.51.100.1'}})\"");
        // Two from, one to, 10 %: each from weighs 90, the to 20 -> 9, 9, 2 (2/20 = 10 %).
        let s = split(&["192.0.2.1", "192.0.2.2"], &["198.51.100.1"], 10);
        let w: Vec<u64> = s.weights().iter().map(|(w, _)| *w).collect();
        assert_eq!(w, vec![9, 9, 2]);
        let s = split(&["192.0.2.1"], &["198.51.100.1"], 33);
        assert_eq!(s.lua_content(), "A \"pickwrandom({{67,'192.0.2.1'},{33,'198.51.100.1'}})\"");
    }

    #[test]
    fn ends_are_plain() {
        let s = split(&["192.0.2.1"], &["198.51.100.1", "198.51.100.2"], 100);
        assert_eq!(s.plain(), Some(&ips(&["198.51.100.1", "198.51.100.2"])[..]));
        assert_eq!(split(&["192.0.2.1"], &["198.51.100.1"], 0).plain(), Some(&ips(&["192.0.2.1"])[..]));
        assert_eq!(split(&["192.0.2.1"], &["198.51.100.1"], 1).plain(), None);
    }

    #[test]
    fn proportional_sets_within_granularity() {
        let (r, share) = split(&["192.0.2.1", "192.0.2.2", "192.0.2.3"], &["198.51.100.1"], 25).proportional();
        assert_eq!((r.len(), share), (4, 0.25));
        // One address each: 0, 50 or 100 % only; 40 % is nearest to 50.
        let (r, share) = split(&["192.0.2.1"], &["198.51.100.1"], 40).proportional();
        assert_eq!((r, share), (ips(&["192.0.2.1", "198.51.100.1"]), 0.5));
        let (r, share) = split(&["192.0.2.1"], &["198.51.100.1"], 10).proportional();
        assert_eq!((r, share), (ips(&["192.0.2.1"]), 0.0));
        let (r, share) = split(&["192.0.2.1", "192.0.2.2"], &["198.51.100.1", "198.51.100.2"], 50).proportional();
        assert_eq!((r.len(), share), (4, 0.5), "ties go to more records");
        let (r, share) = split(&["192.0.2.1"], &["198.51.100.1", "198.51.100.2"], 100).proportional();
        assert_eq!((r.len(), share), (2, 1.0));
    }

    #[test]
    fn share_of_a_reply() {
        let s = split(&["192.0.2.1", "192.0.2.2", "192.0.2.3"], &["198.51.100.1"], 25);
        assert_eq!(s.share_of(&ips(&["198.51.100.1"])), Ok(1.0));
        assert_eq!(s.share_of(&ips(&["192.0.2.1", "192.0.2.2", "192.0.2.3", "198.51.100.1"])), Ok(0.25));
        assert!(s.share_of(&ips(&["203.0.113.9"])).unwrap_err().contains("203.0.113.9"));
        assert!(s.share_of(&[]).is_err());
    }

    #[test]
    fn judging_a_tally() {
        let t = |answered, to: f64, lost| Tally { answered, lost, to_share_sum: to, ..Default::default() };
        assert_eq!(t(200, 54.0, 0).judge(25, 0.1), Ok(()));
        assert!(t(200, 80.0, 0).judge(25, 0.1).unwrap_err().contains("observed 40.0 %"));
        assert_eq!(t(200, 200.0, 0).judge(100, 0.1), Ok(()));
        assert!(t(200, 199.0, 0).judge(100, 0.1).unwrap_err().contains("exactly 100 %"));
        assert!(t(200, 1.0, 0).judge(0, 0.5).is_err(), "0 % is exact whatever the tolerance");
        assert!(t(180, 45.0, 20).judge(25, 0.1).unwrap_err().contains("20 of 200 queries got no reply"));
        assert_eq!(t(195, 48.0, 5).judge(25, 0.1), Ok(()));
        let wrong = Tally { wrong: 1, first_wrong: Some("rcode NXDOMAIN".into()), ..t(199, 50.0, 0) };
        assert!(wrong.judge(25, 0.1).unwrap_err().contains("1 of 200 replies were wrong (first: rcode NXDOMAIN)"));
    }
}
