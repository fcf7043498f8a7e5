//! When a drill fires: its RFC 5545 recurrence rule read in its IANA time zone, blackout dates,
//! and what a late or missed occurrence becomes. Pure: every function takes the time it reasons
//! about as an argument (Unix milliseconds), so the scheduler is tested without a clock.
//!
//! # Reading the rule
//!
//! The rule is evaluated by the `rrule` crate with DTSTART in the drill's zone, so `BYHOUR=3`
//! means 03:00 on the local wall clock, whatever the offset that day. DTSTART is
//! `schedule.start` when given; otherwise local midnight of the day the anchor falls on (the day
//! the drill was applied for [`due`], the `after` instant for [`next_fires`]) and occurrences
//! before the anchor itself are dropped. Midnight rather than the anchor's own time because
//! RFC 5545 takes every time part the rule leaves out (`BYSECOND`, often `BYMINUTE`) from
//! DTSTART: a drill applied at 13:04:27 must not fire at 03:00:27. Since `INTERVAL` and `COUNT`
//! count from DTSTART, a rule using them needs an explicit `start` ([`validate`] says so).
//!
//! # Daylight-saving changes (RFC 5545 §3.3.5)
//!
//! A local time that does not exist (the hour skipped when clocks spring forward) is read with
//! the offset in force before the gap: 01:30 in Europe/Dublin on 2027-03-28 is 01:30 UTC, which
//! the wall clock shows as 02:30 IST. So the occurrence happens, shifted by the gap, rather than
//! vanishing. A local time that happens twice (clocks falling back) fires once, at the first of
//! the two instants. `start` itself must exist: a DTSTART in a gap is refused.
//!
//! # Several occurrences due at once
//!
//! [`due`] decides one occurrence per call: the caller records it as the last occurrence in the
//! replicated state (fired or skipped) and calls again. When several occurrences passed since the
//! last one recorded (the coordinator had no leader for a quarter, say), only the newest can
//! still matter, so the first call skips straight to the newest *older* one (one `Skip`
//! standing for all of them) and the next call decides the newest on its own merits.

use super::spec::{MissedPolicy, Schedule};
use chrono::{DateTime, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat, TimeZone, Utc};
use rrule::{RRule, RRuleSet, Unvalidated};
use std::time::Duration;

/// The format of `schedule.start`: local wall time without an offset.
pub const START_FORMAT: &str = "%Y-%m-%dT%H:%M:%S";

/// The format of a blackout date.
pub const DATE_FORMAT: &str = "%Y-%m-%d";

/// Bounds the due occurrences one call of [`due`] collects, so that a dense rule (every minute)
/// after a long outage costs a bounded amount of work; see [`due`] for what happens at the bound.
const MAX_SCAN: usize = 200_000;

/// One occurrence of a schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fire {
    /// The instant, Unix milliseconds (UTC).
    pub at_ms: i64,
    /// RFC 3339 with the zone's offset that day, e.g. `2027-04-06T03:00:00+01:00`.
    pub local: String,
    /// RFC 3339 in UTC, e.g. `2027-04-06T02:00:00Z`.
    pub utc: String,
    /// It falls on a blackout date: it will be skipped and recorded as such.
    pub blackout: bool,
}

/// What the scheduler does now about a drill's schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// No occurrence is due (or the schedule is disabled).
    Nothing,
    /// Start a run for this occurrence (`late`: after its start tolerance, under `run_late`).
    Fire {
        /// The occurrence (Unix ms, UTC) the run is for; record it as the last occurrence.
        occurrence_ms: i64,
        /// Started after the start tolerance.
        late: bool,
    },
    /// Record this occurrence as skipped, with why; it will not run.
    Skip {
        /// The occurrence (Unix ms, UTC); record it as the last occurrence.
        occurrence_ms: i64,
        /// For the drill's history, e.g. `blackout 2027-12-28`.
        reason: String,
    },
}

/// A schedule problem, naming the schedule field at fault (`rrule`, `timezone`, `start`,
/// `blackout` with the list index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScheduleError {
    /// The key under `spec.schedule`.
    pub(crate) field: &'static str,
    /// The index into a list field (`blackout`).
    pub(crate) index: Option<usize>,
    /// What is wrong.
    pub(crate) message: String,
}

impl ScheduleError {
    fn new(field: &'static str, message: impl Into<String>) -> ScheduleError {
        ScheduleError { field, index: None, message: message.into() }
    }
}

/// Checks that the rule parses, the zone is an IANA zone, `start` is a local date-time that
/// exists in the zone, blackout dates are dates, and the rule yields at least one occurrence.
pub fn validate(s: &Schedule) -> Result<(), String> {
    check(s).map_err(|e| match e.index {
        Some(i) => format!("{}[{i}]: {}", e.field, e.message),
        None => format!("{}: {}", e.field, e.message),
    })
}

/// [`validate`] with the failing field kept apart, for located parse errors.
pub(crate) fn check(s: &Schedule) -> Result<(), ScheduleError> {
    let tz = zone(&s.timezone)?;
    let rule = rule(&s.rrule)?;
    let start = match &s.start {
        Some(text) => Some(start(tz, text)?),
        None => None,
    };
    for (i, d) in s.blackout.iter().enumerate() {
        if let Err(message) = date(d) {
            return Err(ScheduleError { field: "blackout", index: Some(i), message });
        }
    }
    if start.is_none() && (rule.get_interval() > 1 || rule.get_count().is_some()) {
        return Err(ScheduleError::new(
            "rrule",
            "INTERVAL and COUNT count from DTSTART: give schedule.start, or the rule would restart \
             its count whenever the drill is applied again",
        ));
    }
    if matches!(rule.get_freq(), rrule::Frequency::Secondly) {
        return Err(ScheduleError::new("rrule", "FREQ=SECONDLY: a drill cannot run every second"));
    }
    // Without `start`, any fixed local midnight does to see whether the rule can ever fire.
    let dtstart = match start {
        Some(d) => d,
        None => midnight(tz, NaiveDate::from_ymd_opt(2000, 1, 1).expect("a valid date")),
    };
    let set = rule.build(dtstart).map_err(|e| ScheduleError::new("rrule", rrule_message(&e)))?;
    if set.all(1).dates.is_empty() {
        return Err(ScheduleError::new("rrule", "the rule never yields an occurrence"));
    }
    Ok(())
}

/// The next `n` occurrences strictly after `after_ms`, blackout ones included and marked
/// (disabled schedules too: this is what the rule says, for plans). Empty for an invalid
/// schedule, which parsing refuses anyway.
pub fn next_fires(s: &Schedule, after_ms: i64, n: usize) -> Vec<Fire> {
    let Ok(set) = rule_set(s, after_ms) else {
        return Vec::new();
    };
    let tz = match zone(&s.timezone) {
        Ok(tz) => tz,
        Err(_) => return Vec::new(),
    };
    set.into_iter()
        .map(|o| o.timestamp_millis())
        .filter(|&ms| ms > after_ms)
        .take(n)
        .map(|ms| fire(s, tz, ms))
        .collect()
}

/// What to do at `now_ms` about the schedule of a drill applied at `applied_ms` whose last
/// recorded occurrence (fired or skipped) is `last_occurrence_ms`. Deterministic in its inputs;
/// the exactly-once guarantee is the caller's, which records the decision in replicated state.
///
/// The occurrence considered is the oldest one after `last_occurrence_ms` (and, without
/// `start`, not before `applied_ms`) and not after `now_ms`. When newer ones are also due, the
/// newest of the older ones is skipped as `superseded` (see the module doc). Otherwise: a
/// blackout date (in the drill's zone) skips it; within `start_tolerance` it fires; beyond it,
/// `skip` skips it and `run_late` fires it late up to `late_limit`, then skips it.
///
/// Should one call scan more than `MAX_SCAN` due occurrences, the last one scanned is skipped as
/// superseded: newer ones exist, so it is not the one that matters, and the next call goes on
/// from there.
pub fn due(s: &Schedule, applied_ms: i64, last_occurrence_ms: Option<i64>, now_ms: i64) -> Due {
    if !s.enabled {
        return Due::Nothing;
    }
    let Ok(set) = rule_set(s, applied_ms) else {
        return Due::Nothing;
    };
    let Ok(tz) = zone(&s.timezone) else {
        return Due::Nothing;
    };
    let floor = if s.start.is_none() { Some(applied_ms) } else { None };
    // Occurrences due: (last, now], and not before `applied_ms` without `start`.
    let mut due = set
        .into_iter()
        .map(|o| o.timestamp_millis())
        .skip_while(|&ms| last_occurrence_ms.is_some_and(|l| ms <= l) || floor.is_some_and(|f| ms < f))
        .take_while(|&ms| ms <= now_ms);
    let Some(oldest) = due.next() else {
        return Due::Nothing;
    };
    let mut count = 1usize;
    let (mut newest, mut before_newest) = (oldest, None);
    for ms in due {
        count += 1;
        before_newest = Some(newest);
        newest = ms;
        if count >= MAX_SCAN {
            return Due::Skip {
                occurrence_ms: newest,
                reason: format!("superseded: {count} occurrences due at once, and there are newer ones"),
            };
        }
    }
    if let Some(older) = before_newest {
        return Due::Skip {
            occurrence_ms: older,
            reason: format!(
                "superseded: {} occurrences missed since the last one recorded; only the newest ({}) can still run",
                count - 1,
                fire(s, tz, newest).local
            ),
        };
    }

    let occ = oldest;
    if let Some(day) = blackout_day(s, tz, occ) {
        return Due::Skip { occurrence_ms: occ, reason: format!("blackout {}", day.format(DATE_FORMAT)) };
    }
    let late_ms = u64::try_from(now_ms - occ).unwrap_or(0);
    if late_ms <= s.start_tolerance_ms {
        return Due::Fire { occurrence_ms: occ, late: false };
    }
    let late = human(late_ms);
    let tolerance = human(s.start_tolerance_ms);
    match s.missed {
        MissedPolicy::Skip => Due::Skip {
            occurrence_ms: occ,
            reason: format!("missed: would have started {late} late, tolerance {tolerance} (missed: skip)"),
        },
        MissedPolicy::RunLate if late_ms <= s.late_limit_ms => Due::Fire { occurrence_ms: occ, late: true },
        MissedPolicy::RunLate => Due::Skip {
            occurrence_ms: occ,
            reason: format!(
                "missed: would have started {late} late, beyond late_limit {} (tolerance {tolerance})",
                human(s.late_limit_ms)
            ),
        },
    }
}

/// A duration for messages: whole seconds (`42m 10s`).
fn human(ms: u64) -> String {
    humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
}

/// The occurrence at `ms` as a [`Fire`].
fn fire(s: &Schedule, tz: chrono_tz::Tz, ms: i64) -> Fire {
    let utc = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
    Fire {
        at_ms: ms,
        local: utc.with_timezone(&tz).to_rfc3339_opts(SecondsFormat::Secs, false),
        utc: utc.to_rfc3339_opts(SecondsFormat::Secs, true),
        blackout: blackout_day(s, tz, ms).is_some(),
    }
}

/// The local date of `ms` in `tz`, if it is a blackout date (compared as dates, so `2027-7-6`
/// and `2027-07-06` are the same day).
fn blackout_day(s: &Schedule, tz: chrono_tz::Tz, ms: i64) -> Option<NaiveDate> {
    let day = DateTime::<Utc>::from_timestamp_millis(ms)?.with_timezone(&tz).date_naive();
    s.blackout.iter().any(|b| date(b).ok() == Some(day)).then_some(day)
}

/// The rule with its DTSTART: `start`, or local midnight of the day `anchor_ms` falls on.
fn rule_set(s: &Schedule, anchor_ms: i64) -> Result<RRuleSet, ScheduleError> {
    let tz = zone(&s.timezone)?;
    let dtstart = match &s.start {
        Some(text) => start(tz, text)?,
        None => {
            let anchor = DateTime::<Utc>::from_timestamp_millis(anchor_ms)
                .ok_or_else(|| ScheduleError::new("start", format!("{anchor_ms} ms is out of range")))?;
            midnight(tz, anchor.with_timezone(&tz).date_naive())
        }
    };
    // `limit` bounds the work the iterator spends looking for a next occurrence of a rule that
    // rarely or never matches (BYMONTHDAY=31 in February).
    rule(&s.rrule)?.build(dtstart).map(RRuleSet::limit).map_err(|e| ScheduleError::new("rrule", rrule_message(&e)))
}

/// The first instant of `day` in `tz` (midnight, or the end of a gap at midnight).
fn midnight(tz: chrono_tz::Tz, day: NaiveDate) -> DateTime<rrule::Tz> {
    let rtz = rrule::Tz::Tz(tz);
    let mut t = day.and_time(NaiveTime::MIN);
    // A few zones have moved their clocks at midnight; step to the first local time that exists.
    for _ in 0..96 {
        if let Some(d) = rtz.from_local_datetime(&t).earliest() {
            return d;
        }
        t += chrono::Duration::minutes(15);
    }
    rtz.from_utc_datetime(&day.and_time(NaiveTime::MIN))
}

/// An IANA zone name.
pub(crate) fn zone(name: &str) -> Result<chrono_tz::Tz, ScheduleError> {
    name.parse::<chrono_tz::Tz>().map_err(|_| {
        ScheduleError::new("timezone", format!("{name:?} is not an IANA time zone name such as Europe/Dublin or UTC"))
    })
}

/// The RRULE body.
fn rule(text: &str) -> Result<RRule<Unvalidated>, ScheduleError> {
    if text.trim().is_empty() {
        return Err(ScheduleError::new("rrule", "empty: give a rule such as FREQ=MONTHLY;BYDAY=1TU;BYHOUR=3"));
    }
    if text.contains("DTSTART") || text.contains('\n') {
        return Err(ScheduleError::new("rrule", "give the RRULE body only; DTSTART is schedule.start"));
    }
    text.parse::<RRule<Unvalidated>>()
        .map_err(|e| ScheduleError::new("rrule", format!("{text:?}: {}", rrule_message(&e))))
}

fn rrule_message(e: &rrule::RRuleError) -> String {
    e.to_string()
}

/// `start` as an instant: it must exist in the zone; of two (clocks falling back), the first.
fn start(tz: chrono_tz::Tz, text: &str) -> Result<DateTime<rrule::Tz>, ScheduleError> {
    let naive = NaiveDateTime::parse_from_str(text, START_FORMAT).map_err(|e| {
        ScheduleError::new("start", format!("{text:?} is not a local date-time YYYY-MM-DDTHH:MM:SS (no offset): {e}"))
    })?;
    match rrule::Tz::Tz(tz).from_local_datetime(&naive) {
        LocalResult::Single(d) | LocalResult::Ambiguous(d, _) => Ok(d),
        LocalResult::None => Err(ScheduleError::new(
            "start",
            format!("{text} does not exist in {} (the clocks skip it): pick a time outside the gap", tz.name()),
        )),
    }
}

/// A blackout date.
fn date(text: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(text, DATE_FORMAT).map_err(|e| format!("{text:?} is not a date YYYY-MM-DD: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUARTERLY: &str = "FREQ=MONTHLY;BYMONTH=1,4,7,10;BYDAY=1TU;BYHOUR=3;BYMINUTE=0";
    const MIN: i64 = 60_000;

    fn sched(rrule: &str, start: Option<&str>) -> Schedule {
        Schedule {
            rrule: rrule.into(),
            timezone: "Europe/Dublin".into(),
            start: start.map(Into::into),
            blackout: vec![],
            start_tolerance_ms: 15 * 60_000,
            missed: MissedPolicy::Skip,
            late_limit_ms: 24 * 3_600_000,
            enabled: true,
        }
    }

    fn ms(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339).unwrap().timestamp_millis()
    }

    #[test]
    fn quarterly_rule_in_dublin_fires_at_three_local_across_summer_time() {
        let s = sched(QUARTERLY, None);
        validate(&s).unwrap();
        let fires = next_fires(&s, ms("2026-12-31T12:00:00Z"), 5);
        let utc: Vec<_> = fires.iter().map(|f| f.utc.as_str()).collect();
        // 2027: Tue 5 Jan (GMT), Tue 6 Apr and Tue 6 Jul (IST, UTC+1), Tue 5 Oct (still IST: the
        // clocks go back on Sun 31 Oct), Tue 4 Jan 2028 (GMT).
        assert_eq!(
            utc,
            [
                "2027-01-05T03:00:00Z",
                "2027-04-06T02:00:00Z",
                "2027-07-06T02:00:00Z",
                "2027-10-05T02:00:00Z",
                "2028-01-04T03:00:00Z"
            ]
        );
        let local: Vec<_> = fires.iter().map(|f| f.local.as_str()).collect();
        assert_eq!(
            local,
            [
                "2027-01-05T03:00:00+00:00",
                "2027-04-06T03:00:00+01:00",
                "2027-07-06T03:00:00+01:00",
                "2027-10-05T03:00:00+01:00",
                "2028-01-04T03:00:00+00:00"
            ]
        );
        assert_eq!(fires[0].at_ms, ms("2027-01-05T03:00:00Z"));
        assert!(fires.iter().all(|f| !f.blackout));
    }

    #[test]
    fn next_fires_is_strictly_after() {
        let s = sched(QUARTERLY, None);
        let fires = next_fires(&s, ms("2027-04-06T02:00:00Z"), 1);
        assert_eq!(fires[0].utc, "2027-07-06T02:00:00Z");
        // Later the same day as an occurrence, without `start`: the next one, not today's.
        let fires = next_fires(&s, ms("2027-04-06T02:00:01Z"), 1);
        assert_eq!(fires[0].utc, "2027-07-06T02:00:00Z");
    }

    #[test]
    fn a_time_in_the_spring_forward_gap_is_read_with_the_offset_before_it() {
        // Dublin 2027-03-28: 01:00 GMT becomes 02:00 IST; 01:30 does not exist that day.
        let s = sched("FREQ=DAILY;BYHOUR=1;BYMINUTE=30;BYSECOND=0", Some("2027-03-27T00:00:00"));
        validate(&s).unwrap();
        let fires = next_fires(&s, ms("2027-03-26T12:00:00Z"), 3);
        let got: Vec<_> = fires.iter().map(|f| (f.utc.as_str(), f.local.as_str())).collect();
        assert_eq!(
            got,
            [
                ("2027-03-27T01:30:00Z", "2027-03-27T01:30:00+00:00"),
                // RFC 5545 §3.3.5: the offset before the gap (+00:00): 01:30 UTC, shown as 02:30 IST.
                ("2027-03-28T01:30:00Z", "2027-03-28T02:30:00+01:00"),
                ("2027-03-29T00:30:00Z", "2027-03-29T01:30:00+01:00"),
            ]
        );
    }

    #[test]
    fn a_time_repeated_when_clocks_fall_back_fires_once_at_the_first() {
        // Dublin 2027-10-31: 02:00 IST becomes 01:00 GMT; 01:30 happens twice.
        let s = sched("FREQ=DAILY;BYHOUR=1;BYMINUTE=30;BYSECOND=0", Some("2027-10-30T00:00:00"));
        let fires = next_fires(&s, ms("2027-10-29T12:00:00Z"), 3);
        let got: Vec<_> = fires.iter().map(|f| f.utc.as_str()).collect();
        assert_eq!(got, ["2027-10-30T00:30:00Z", "2027-10-31T00:30:00Z", "2027-11-01T01:30:00Z"]);
    }

    #[test]
    fn start_in_the_gap_and_bad_parts_are_refused() {
        let e = validate(&sched(QUARTERLY, Some("2027-03-28T01:30:00"))).unwrap_err();
        assert!(e.starts_with("start: 2027-03-28T01:30:00 does not exist in Europe/Dublin"), "{e}");
        let e = validate(&sched(QUARTERLY, Some("2027-03-28 01:30"))).unwrap_err();
        assert!(e.starts_with("start: \"2027-03-28 01:30\" is not a local date-time"), "{e}");
        let e = validate(&sched("FREQ=FORTNIGHTLY", None)).unwrap_err();
        assert!(e.starts_with("rrule: \"FREQ=FORTNIGHTLY\""), "{e}");
        let e = validate(&Schedule { timezone: "Europe/Dubllin".into(), ..sched(QUARTERLY, None) }).unwrap_err();
        assert!(e.starts_with("timezone: \"Europe/Dubllin\" is not an IANA time zone"), "{e}");
        let e =
            validate(&Schedule { blackout: vec!["2027-12-28".into(), "2027-02-30".into()], ..sched(QUARTERLY, None) })
                .unwrap_err();
        assert!(e.starts_with("blackout[1]: \"2027-02-30\" is not a date"), "{e}");
        let e = validate(&sched("FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30", None)).unwrap_err();
        assert_eq!(e, "rrule: the rule never yields an occurrence");
        let e = validate(&sched("FREQ=MONTHLY;INTERVAL=3;BYDAY=1TU", None)).unwrap_err();
        assert!(e.starts_with("rrule: INTERVAL and COUNT count from DTSTART"), "{e}");
        validate(&sched("FREQ=MONTHLY;INTERVAL=3;BYDAY=1TU;BYHOUR=3", Some("2027-01-01T00:00:00"))).unwrap();
    }

    #[test]
    fn on_time_fires_and_the_same_occurrence_is_not_due_twice() {
        let s = sched(QUARTERLY, None);
        let applied = ms("2026-11-01T00:00:00Z");
        let occ = ms("2027-01-05T03:00:00Z");
        assert_eq!(due(&s, applied, None, occ - 1), Due::Nothing);
        assert_eq!(due(&s, applied, None, occ), Due::Fire { occurrence_ms: occ, late: false });
        assert_eq!(due(&s, applied, None, occ + 15 * MIN), Due::Fire { occurrence_ms: occ, late: false });
        assert_eq!(due(&s, applied, Some(occ), occ + 5 * MIN), Due::Nothing);
        let next = ms("2027-04-06T02:00:00Z");
        assert_eq!(due(&s, applied, Some(occ), next + MIN), Due::Fire { occurrence_ms: next, late: false });
    }

    #[test]
    fn a_drill_applied_today_never_fires_for_last_quarter() {
        let s = sched(QUARTERLY, None);
        // Applied an hour after the January occurrence: nothing until April.
        let applied = ms("2027-01-05T04:00:00Z");
        assert_eq!(due(&s, applied, None, applied + MIN), Due::Nothing);
        let april = ms("2027-04-06T02:00:00Z");
        assert_eq!(due(&s, applied, None, april), Due::Fire { occurrence_ms: april, late: false });
        // With an explicit start, occurrences since then count (as missed, beyond tolerance).
        let with_start = sched(QUARTERLY, Some("2027-01-01T00:00:00"));
        assert!(matches!(
            due(&with_start, applied, None, applied + MIN),
            Due::Skip { occurrence_ms, .. } if occurrence_ms == ms("2027-01-05T03:00:00Z")
        ));
    }

    #[test]
    fn beyond_the_tolerance_skip_policy_skips() {
        let s = sched(QUARTERLY, None);
        let occ = ms("2027-01-05T03:00:00Z");
        let d = due(&s, 0, Some(ms("2026-10-06T02:00:00Z")), occ + 42 * MIN);
        assert_eq!(
            d,
            Due::Skip {
                occurrence_ms: occ,
                reason: "missed: would have started 42m late, tolerance 15m (missed: skip)".into()
            }
        );
    }

    #[test]
    fn run_late_fires_late_until_the_late_limit() {
        let s = Schedule { missed: MissedPolicy::RunLate, late_limit_ms: 2 * 3_600_000, ..sched(QUARTERLY, None) };
        let occ = ms("2027-01-05T03:00:00Z");
        let last = Some(ms("2026-10-06T02:00:00Z"));
        assert_eq!(due(&s, 0, last, occ + 10 * MIN), Due::Fire { occurrence_ms: occ, late: false });
        assert_eq!(due(&s, 0, last, occ + 16 * MIN), Due::Fire { occurrence_ms: occ, late: true });
        assert_eq!(due(&s, 0, last, occ + 120 * MIN), Due::Fire { occurrence_ms: occ, late: true });
        match due(&s, 0, last, occ + 121 * MIN) {
            Due::Skip { occurrence_ms, reason } => {
                assert_eq!(occurrence_ms, occ);
                assert_eq!(reason, "missed: would have started 2h 1m late, beyond late_limit 2h (tolerance 15m)");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_blackout_date_in_the_zone_skips_its_occurrence() {
        // 2027-07-06 03:00 IST is 02:00 UTC: the same date both ways; a late-evening rule shows
        // that the date is the local one.
        let s = Schedule {
            blackout: vec!["2027-07-06".into()],
            ..sched("FREQ=DAILY;BYHOUR=0;BYMINUTE=30;BYSECOND=0", Some("2027-07-01T00:00:00"))
        };
        // 00:30 IST on 6 July is 23:30 UTC on 5 July.
        let occ = ms("2027-07-05T23:30:00Z");
        let last = Some(occ - 24 * 60 * MIN);
        assert_eq!(due(&s, 0, last, occ + MIN), Due::Skip { occurrence_ms: occ, reason: "blackout 2027-07-06".into() });
        let fires = next_fires(&s, occ - MIN, 2);
        assert!(fires[0].blackout && !fires[1].blackout, "{fires:?}");
        // The next day fires.
        let next = occ + 24 * 60 * MIN;
        assert_eq!(due(&s, 0, Some(occ), next), Due::Fire { occurrence_ms: next, late: false });
    }

    #[test]
    fn several_missed_occurrences_skip_to_the_newest() {
        let s = Schedule { missed: MissedPolicy::RunLate, ..sched(QUARTERLY, None) };
        let applied = ms("2026-11-01T00:00:00Z");
        // No leader from before January until 10 minutes after the July occurrence.
        let now = ms("2027-07-06T02:10:00Z");
        let first = due(&s, applied, None, now);
        let Due::Skip { occurrence_ms, reason } = first else { panic!("{first:?}") };
        assert_eq!(occurrence_ms, ms("2027-04-06T02:00:00Z"));
        assert!(reason.starts_with("superseded: 2 occurrences missed"), "{reason}");
        // The caller records it and asks again: the newest is within its tolerance.
        let july = ms("2027-07-06T02:00:00Z");
        assert_eq!(due(&s, applied, Some(occurrence_ms), now), Due::Fire { occurrence_ms: july, late: false });
    }

    #[test]
    fn a_disabled_schedule_never_fires() {
        let s = Schedule { enabled: false, ..sched(QUARTERLY, None) };
        let occ = ms("2027-01-05T03:00:00Z");
        assert_eq!(due(&s, 0, None, occ), Due::Nothing);
        assert_eq!(next_fires(&s, occ - 1, 1)[0].at_ms, occ);
    }

    #[test]
    fn due_is_deterministic() {
        let s = Schedule { missed: MissedPolicy::RunLate, ..sched("FREQ=HOURLY;BYMINUTE=0;BYSECOND=0", None) };
        let now = ms("2027-02-01T10:20:00Z");
        let a = due(&s, ms("2027-02-01T00:00:00Z"), Some(ms("2027-02-01T05:00:00Z")), now);
        let b = due(&s, ms("2027-02-01T00:00:00Z"), Some(ms("2027-02-01T05:00:00Z")), now);
        assert_eq!(a, b);
        assert!(matches!(a, Due::Skip { occurrence_ms, .. } if occurrence_ms == ms("2027-02-01T09:00:00Z")));
    }

    #[test]
    fn a_dense_rule_long_after_its_start_still_fires() {
        // Every minute for a year: the scan from DTSTART is long, the answer still the right one.
        let s =
            Schedule { start_tolerance_ms: 30_000, ..sched("FREQ=MINUTELY;BYSECOND=0", Some("2027-01-01T00:00:00")) };
        let occ = ms("2027-12-31T12:00:00Z");
        assert_eq!(due(&s, 0, Some(occ - MIN), occ + 1_000), Due::Fire { occurrence_ms: occ, late: false });
        assert_eq!(next_fires(&s, occ, 1)[0].at_ms, occ + MIN);
    }

    #[test]
    fn until_bounds_the_rule() {
        let s = sched("FREQ=DAILY;UNTIL=20270103T000000Z;BYHOUR=3;BYMINUTE=0;BYSECOND=0", Some("2027-01-01T00:00:00"));
        validate(&s).unwrap();
        let fires = next_fires(&s, 0, 5);
        let utc: Vec<_> = fires.iter().map(|f| f.utc.as_str()).collect();
        assert_eq!(utc, ["2027-01-01T03:00:00Z", "2027-01-02T03:00:00Z"]);
        assert_eq!(due(&s, 0, Some(ms("2027-01-02T03:00:00Z")), ms("2027-06-01T00:00:00Z")), Due::Nothing);
    }
}
