//! Wall-clock time for the whole crate: the injectable [`Clock`], the millisecond
//! [`Timestamp`] every record and file carries, and the `YYYY-MM-DD` day names of the
//! dataset's files. A leaf module: it imports nothing from the crate.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime};

/// A source of wall-clock time, injectable for tests (day rollover, retention).
pub trait Clock: Send + Sync + fmt::Debug {
    /// Milliseconds since the Unix epoch (UTC).
    fn now_millis(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}

/// A UTC instant with millisecond precision, serialized as RFC 3339
/// (`2026-11-25T04:23:14.123Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Milliseconds since the Unix epoch.
    pub fn millis(self) -> i64 {
        self.0
    }

    fn datetime(self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// The UTC day of this instant.
    pub fn day(self) -> Date {
        // Julian day number of 1970-01-01 is 2440588.
        let days = self.0.div_euclid(MS_PER_DAY);
        i32::try_from(days + 2_440_588)
            .ok()
            .and_then(|jd| Date::from_julian_day(jd).ok())
            .unwrap_or_else(|| self.datetime().date())
    }

    /// Parses an RFC 3339 timestamp.
    pub fn parse(s: &str) -> Option<Timestamp> {
        let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
        i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
            .ok()
            .map(Timestamp)
    }
}

const MS_PER_DAY: i64 = 86_400_000;

/// `(year, month, day)` of a count of days since 1970-01-01 (proleptic Gregorian;
/// H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hot in the dataset writer: formatted by hand for years 0..=9999.
        let (y, mo, d) = civil_from_days(self.0.div_euclid(MS_PER_DAY));
        if (0..=9999).contains(&y) {
            let ms = self.0.rem_euclid(MS_PER_DAY);
            let fields = [
                (y as u32, 4, b'-'),
                (mo, 2, b'-'),
                (d, 2, b'T'),
                ((ms / 3_600_000) as u32, 2, b':'),
                ((ms / 60_000 % 60) as u32, 2, b':'),
                ((ms / 1000 % 60) as u32, 2, b'.'),
                ((ms % 1000) as u32, 3, b'Z'),
            ];
            let mut buf = [0u8; 24];
            let mut at = 0;
            for (value, width, sep) in fields {
                let mut v = value;
                for i in (0..width).rev() {
                    buf[at + i] = b'0' + (v % 10) as u8;
                    v /= 10;
                }
                buf[at + width] = sep;
                at += width + 1;
            }
            return f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?);
        }
        let t = self.datetime();
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Timestamp::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid RFC 3339 timestamp {s:?}")))
    }
}

/// `YYYY-MM-DD` of a UTC day.
pub fn day_string(day: Date) -> String {
    format!(
        "{:04}-{:02}-{:02}",
        day.year(),
        u8::from(day.month()),
        day.day()
    )
}

/// Parses `YYYY-MM-DD`.
pub fn parse_day(s: &str) -> Option<Date> {
    let mut it = s.splitn(3, '-');
    let y: i32 = it.next()?.parse().ok()?;
    let m: u8 = it.next()?.parse().ok()?;
    let d: u8 = it.next()?.parse().ok()?;
    if s.len() != 10 {
        return None;
    }
    Date::from_calendar_date(y, time::Month::try_from(m).ok()?, d).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_format_as_rfc3339_millis_and_round_trip() {
        let t = Timestamp(1_764_044_594_123);
        assert_eq!(t.to_string(), "2025-11-25T04:23:14.123Z");
        assert_eq!(Timestamp::parse(&t.to_string()), Some(t));
        assert_eq!(day_string(t.day()), "2025-11-25");
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn fast_formatting_agrees_with_the_time_crate() {
        let mut t = -86_400_000i64 * 800_000; // year -220
        while t < 253_402_300_799_999 {
            let ts = Timestamp(t);
            let dt = ts.datetime();
            let expect = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                dt.year(),
                u8::from(dt.month()),
                dt.day(),
                dt.hour(),
                dt.minute(),
                dt.second(),
                dt.millisecond()
            );
            assert_eq!(ts.to_string(), expect, "at {t}");
            assert_eq!(ts.day(), dt.date(), "at {t}");
            t += 7_777_777_777;
        }
    }

    #[test]
    fn days_parse_strictly() {
        assert_eq!(
            parse_day("2026-02-28").map(day_string).as_deref(),
            Some("2026-02-28")
        );
        assert_eq!(parse_day("2026-02-30"), None);
        assert_eq!(parse_day("2026-2-3"), None);
        assert_eq!(parse_day("x"), None);
    }
}
