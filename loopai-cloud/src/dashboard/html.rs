//! HTML building blocks of the dashboard: escaping (every value that reaches a page goes
//! through [`esc`]), the page layout with its stylesheet, and number formatting.

use std::fmt::Write;

/// Escapes text for HTML element content and quoted attribute values.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A percentage with one decimal (`91.5%`), or `–` for none.
pub(crate) fn pct(rate: Option<f64>) -> String {
    match rate {
        Some(r) if r.is_finite() => format!("{:.1}%", r * 100.0),
        _ => "–".to_owned(),
    }
}

/// An integer with thin-space thousands separators (`12 345`).
pub(crate) fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push('\u{2009}');
        }
        out.push(c);
    }
    out
}

/// A duration in seconds, readable (`45 s`, `12 min`, `3 h`, `2 d`).
pub(crate) fn ago(seconds: f64) -> String {
    let s = seconds.max(0.0);
    if s < 90.0 {
        format!("{s:.0} s ago")
    } else if s < 90.0 * 60.0 {
        format!("{:.0} min ago", s / 60.0)
    } else if s < 36.0 * 3600.0 {
        format!("{:.0} h ago", s / 3600.0)
    } else {
        format!("{:.0} d ago", s / 86_400.0)
    }
}

const STYLE: &str = "
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1d2433;background:#f5f6f8}
header{background:#1d2433;color:#fff;padding:10px 24px;display:flex;align-items:center;gap:24px}
header a{color:#fff;text-decoration:none}
header .brand{font-weight:700;letter-spacing:.02em}
header form{margin-left:auto}
header button{background:none;border:1px solid #8892a6;color:#fff;border-radius:4px;padding:3px 10px;cursor:pointer}
main{max-width:1280px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:22px;margin:8px 0 12px}
h2{font-size:16px;margin:28px 0 8px}
section.card{background:#fff;border:1px solid #dfe3ea;border-radius:6px;padding:12px 16px;margin-bottom:16px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eceff3;vertical-align:top}
th{font-weight:600;color:#4a5468;font-size:12px;text-transform:uppercase;letter-spacing:.03em}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600}
.ok{background:#dcf5e3;color:#17662e}.degraded{background:#fff1cc;color:#7a5300}.silent{background:#fde0e0;color:#8f1d1d}
.stats{display:flex;gap:12px;flex-wrap:wrap}
.stat{background:#fff;border:1px solid #dfe3ea;border-radius:6px;padding:8px 14px;min-width:140px}
.stat b{display:block;font-size:20px}
.stat span{color:#5b6478;font-size:12px}
.legend{display:flex;flex-wrap:wrap;gap:10px;margin:4px 0 0;padding:0;list-style:none;font-size:12px}
.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px}
.muted{color:#6b7385}
pre{margin:0;white-space:pre-wrap;word-break:break-word;font-size:12px}
.error{color:#8f1d1d}
form.login{max-width:420px;margin:60px auto;background:#fff;border:1px solid #dfe3ea;border-radius:6px;padding:20px}
form.login input{width:100%;padding:8px;margin:8px 0 12px;font:inherit}
form.login button{padding:6px 16px;font:inherit}
svg text{font:11px system-ui,sans-serif;fill:#5b6478}
";

/// A whole page: `title` (escaped here) and `body` (already HTML). `signed_in` adds the
/// sign-out button.
pub(crate) fn page(title: &str, body: &str, signed_in: bool) -> String {
    let mut out = String::with_capacity(body.len() + 4096);
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <link rel=\"icon\" href=\"data:,\">\
         <title>{} · Loopai cloud</title><style>{STYLE}</style></head><body>\
         <header><a class=\"brand\" href=\"/\">Loopai cloud</a><a href=\"/\">Fleet</a>{}</header>\
         <main>{body}</main></body></html>",
        esc(title),
        if signed_in {
            "<form method=\"post\" action=\"/logout\"><button type=\"submit\">Sign out</button></form>"
        } else {
            ""
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_both_quotes() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert!(page("<b>", "", false).contains("<title>&lt;b&gt; · Loopai cloud</title>"));
    }

    #[test]
    fn numbers_are_readable() {
        assert_eq!(count(1_234_567), "1\u{2009}234\u{2009}567");
        assert_eq!(count(999), "999");
        assert_eq!(pct(Some(0.9154)), "91.5%");
        assert_eq!(pct(None), "–");
        assert_eq!(ago(12.0), "12 s ago");
        assert_eq!(ago(600.0), "10 min ago");
        assert_eq!(ago(7200.0), "2 h ago");
        assert_eq!(ago(3.0 * 86_400.0), "3 d ago");
    }
}
