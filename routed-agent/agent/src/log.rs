//! Structured log lines on stderr (`ts=… level=… msg="…" key=value …`), one per event, so
//! operators can grep and ship them; never stdout.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

pub fn line(level: &str, msg: &str, fields: &[(&str, &dyn std::fmt::Display)]) {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    let mut s = format!("ts={ts:.3} level={level} msg={}", quote(msg));
    for (k, v) in fields {
        let _ = write!(s, " {k}={}", quote(&v.to_string()));
    }
    eprintln!("{s}");
}

fn quote(v: &str) -> String {
    if !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '=')
    {
        v.to_string()
    } else {
        format!("{v:?}")
    }
}

/// `info!("msg", key = value, ...)`
#[macro_export]
macro_rules! info {
    ($msg:expr $(, $k:ident = $v:expr)* $(,)?) => {
        $crate::log::line("info", $msg, &[$((stringify!($k), &$v as &dyn std::fmt::Display)),*])
    };
}

#[macro_export]
macro_rules! warn {
    ($msg:expr $(, $k:ident = $v:expr)* $(,)?) => {
        $crate::log::line("warn", $msg, &[$((stringify!($k), &$v as &dyn std::fmt::Display)),*])
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoting() {
        assert_eq!(super::quote("abc"), "abc");
        assert_eq!(super::quote("a b"), "\"a b\"");
        assert_eq!(super::quote(""), "\"\"");
    }
}
