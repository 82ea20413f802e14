//! A cron pattern read in an IANA time zone: parsing it, and its firings
//! before and after an instant.

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

use crate::domain::{Error, Result, quoted};

/// Longest cron pattern or zone name accepted.
const MAX_PATTERN_LEN: usize = 256;

/// An entry's pattern read in its zone.
pub(super) struct Timing {
    cron: Cron,
    zone: Tz,
}

impl Timing {
    /// Parses a pattern and a zone, naming `field` in the errors.
    pub(super) fn parse(field: &str, pattern: &str, zone: &str) -> Result<Timing> {
        if pattern.len() > MAX_PATTERN_LEN || zone.len() > MAX_PATTERN_LEN {
            return Err(Error::invalid(
                field,
                format!("the pattern and the time zone are at most {MAX_PATTERN_LEN} bytes each"),
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(pattern)
            .map_err(|error| {
                Error::invalid(
                    format!("{field}.cron"),
                    format!(
                        "{} is not a cron pattern ({error}): write minute hour day-of-month \
                         month day-of-week, such as \"0 18 * * FRI\", optionally with seconds first",
                        quoted(pattern)
                    ),
                )
            })?;
        let zone: Tz = zone.parse().map_err(|_| {
            Error::invalid(
                format!("{field}.time_zone"),
                format!(
                    "{} is not a time zone: use an IANA name such as \"Europe/Berlin\" or \"UTC\"",
                    quoted(zone)
                ),
            )
        })?;
        Ok(Timing { cron, zone })
    }

    /// The shortest time between two firings on the pattern's clock:
    /// between two of its times of day, or from the last of one day to the
    /// first of the next, as if it fired every day. A daylight-saving
    /// change may shorten one gap by the hour it skips.
    pub(super) fn shortest_gap(&self) -> TimeDelta {
        const DAY: i64 = 24 * 3600;
        let pattern = &self.cron.pattern;
        let mut times = Vec::new();
        for hour in pattern.hours.values() {
            for minute in pattern.minutes.values() {
                for second in pattern.seconds.values() {
                    times.push(i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second));
                }
            }
        }
        times.sort_unstable();
        let (Some(first), Some(last)) = (times.first(), times.last()) else {
            return TimeDelta::seconds(DAY);
        };
        let across_midnight = DAY - last + first;
        let within_a_day = times.windows(2).map(|pair| pair[1] - pair[0]);
        TimeDelta::seconds(within_a_day.fold(across_midnight, i64::min))
    }

    /// The first firing strictly after `after`.
    pub(super) fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&after.with_timezone(&self.zone), false)
            .ok()
            .map(|at| at.with_timezone(&Utc))
    }

    /// The last firing at or before `until`.
    pub(super) fn latest_until(&self, until: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&until.with_timezone(&self.zone), true)
            .ok()
            .map(|at| at.with_timezone(&Utc))
    }
}
