//! `application/x-www-form-urlencoded` parameters (query strings and the login form), and
//! the paging and filter parameters of the query API, each error naming the parameter.

use crate::http::form_decode;

use super::{DailyFilter, PageRequest, DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT};

/// The decoded `name=value` pairs of a query string or form body; `+` is a space and
/// `%XX` a byte. Errors name the parameter whose encoding is broken.
pub(crate) fn parse(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = form_decode(name).map_err(|e| format!("query parameter {name:?}: {e}"))?;
        let value = form_decode(value).map_err(|e| format!("{name}: {e}"))?;
        out.push((name, value));
    }
    Ok(out)
}

/// The parameters of one request, with typed getters.
#[derive(Debug, Default)]
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    /// Parses a query string (`None`: no parameters).
    pub(crate) fn from_query(query: Option<&str>) -> Result<Params, String> {
        Ok(Params(parse(query.unwrap_or(""))?))
    }

    /// The last value of `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Refuses parameters other than `allowed` (a typo must not silently widen a query).
    pub(crate) fn only(&self, allowed: &[&str]) -> Result<(), String> {
        match self.0.iter().find(|(n, _)| !allowed.contains(&n.as_str())) {
            Some((n, _)) => Err(format!(
                "{n}: unknown query parameter (expected one of: {})",
                allowed.join(", ")
            )),
            None => Ok(()),
        }
    }

    fn number(&self, name: &str) -> Result<Option<u64>, String> {
        self.get(name)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| format!("{name}: expected a non-negative integer, got {v:?}"))
            })
            .transpose()
    }

    /// `limit` (1..=[`MAX_PAGE_LIMIT`], default [`DEFAULT_PAGE_LIMIT`]) and `cursor` (the
    /// `next_cursor` of the previous page).
    pub(crate) fn page(&self) -> Result<PageRequest, String> {
        let limit = match self.number("limit")? {
            None => DEFAULT_PAGE_LIMIT,
            Some(n) if (1..=MAX_PAGE_LIMIT as u64).contains(&n) => n as usize,
            Some(n) => {
                return Err(format!(
                    "limit: must be between 1 and {MAX_PAGE_LIMIT}, got {n}"
                ))
            }
        };
        let offset = match self.get("cursor") {
            None => 0,
            Some(c) => c
                .parse::<usize>()
                .map_err(|_| format!("cursor: {c:?} is not a cursor returned as next_cursor"))?,
        };
        Ok(PageRequest { offset, limit })
    }

    /// `from` and `to` (inclusive days, `YYYY-MM-DD`) and `version`.
    pub(crate) fn daily_filter(&self) -> Result<DailyFilter, String> {
        let day = |name: &str| -> Result<Option<String>, String> {
            match self.get(name) {
                None => Ok(None),
                Some(d) => loopai_core::parse_day(d)
                    .map(|_| Some(d.to_owned()))
                    .ok_or_else(|| format!("{name}: expected a day as YYYY-MM-DD, got {d:?}")),
            }
        };
        let version = match self.number("version")? {
            None => None,
            Some(v) => Some(
                u32::try_from(v).map_err(|_| format!("version: {v} is not a program version"))?,
            ),
        };
        Ok(DailyFilter {
            from: day("from")?,
            to: day("to")?,
            version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding_handles_plus_percent_and_reports_bad_input() {
        assert_eq!(
            parse("key=a%2Bb+c&next=%2Ftasks%2Fspam&flag").unwrap(),
            vec![
                ("key".to_owned(), "a+b c".to_owned()),
                ("next".to_owned(), "/tasks/spam".to_owned()),
                ("flag".to_owned(), String::new()),
            ]
        );
        assert_eq!(
            parse("limit=%zz").unwrap_err(),
            "limit: bad percent-encoding at byte 0"
        );
        assert_eq!(
            parse("x=%ff").unwrap_err(),
            "x: not valid UTF-8 once decoded"
        );
    }

    #[test]
    fn paging_and_filters_name_the_bad_parameter() {
        let p = |q: &str| Params::from_query(Some(q)).unwrap();
        assert_eq!(
            p("").page().unwrap(),
            PageRequest {
                offset: 0,
                limit: DEFAULT_PAGE_LIMIT
            }
        );
        assert_eq!(
            p("limit=10&cursor=20").page().unwrap(),
            PageRequest {
                offset: 20,
                limit: 10
            }
        );
        assert_eq!(
            p("limit=0").page().unwrap_err(),
            "limit: must be between 1 and 1000, got 0"
        );
        assert_eq!(
            p("limit=ten").page().unwrap_err(),
            "limit: expected a non-negative integer, got \"ten\""
        );
        assert_eq!(
            p("cursor=abc").page().unwrap_err(),
            "cursor: \"abc\" is not a cursor returned as next_cursor"
        );
        assert_eq!(
            p("from=2026-13-01").daily_filter().unwrap_err(),
            "from: expected a day as YYYY-MM-DD, got \"2026-13-01\""
        );
        assert_eq!(
            p("from=2026-11-01&version=3").daily_filter().unwrap(),
            DailyFilter {
                from: Some("2026-11-01".into()),
                to: None,
                version: Some(3)
            }
        );
        assert_eq!(
            p("limt=5").only(&["limit", "cursor"]).unwrap_err(),
            "limt: unknown query parameter (expected one of: limit, cursor)"
        );
    }
}
