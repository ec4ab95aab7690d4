//! Shared by the benches: the figures `cnitool bench` prints.

/// p50/p90 of ADD and DEL in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Figures {
    pub add_p50: f64,
    pub add_p90: f64,
    pub del_p50: f64,
    pub del_p90: f64,
}

impl Figures {
    /// Parses `add_p50_ms=… add_p90_ms=… del_p50_ms=… del_p90_ms=…`.
    pub fn parse(out: &str) -> Option<Figures> {
        let mut f = Figures::default();
        for kv in out.split_whitespace() {
            let (k, v) = kv.split_once('=')?;
            let v: f64 = v.parse().ok()?;
            match k {
                "add_p50_ms" => f.add_p50 = v,
                "add_p90_ms" => f.add_p90 = v,
                "del_p50_ms" => f.del_p50 = v,
                "del_p90_ms" => f.del_p90 = v,
                _ => {}
            }
        }
        Some(f)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_cnitool_bench_output() {
        let f = super::Figures::parse("add_p50_ms=1.5 add_p90_ms=2 del_p50_ms=3 del_p90_ms=4.25")
            .unwrap();
        assert_eq!(
            (f.add_p50, f.add_p90, f.del_p50, f.del_p90),
            (1.5, 2.0, 3.0, 4.25)
        );
    }
}
