//! SLO expressions such as `p95_ms <= 300`, `error_ratio <= 0.001`, `lag_seconds <= 5` or
//! `value >= 0.9985`: a metric name, a comparison and a number. Pure; parsed once at config load.

use std::collections::BTreeMap;
use std::fmt;

/// Comparison of an SLO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `<=`
    Le,
    /// `<`
    Lt,
    /// `>=`
    Ge,
    /// `>`
    Gt,
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

impl Op {
    fn text(self) -> &'static str {
        match self {
            Op::Le => "<=",
            Op::Lt => "<",
            Op::Ge => ">=",
            Op::Gt => ">",
            Op::Eq => "==",
            Op::Ne => "!=",
        }
    }

    fn holds(self, v: f64, t: f64) -> bool {
        match self {
            Op::Le => v <= t,
            Op::Lt => v < t,
            Op::Ge => v >= t,
            Op::Gt => v > t,
            Op::Eq => v == t,
            Op::Ne => v != t,
        }
    }
}

/// One parsed objective.
#[derive(Debug, Clone, PartialEq)]
pub struct Slo {
    /// Metric name, e.g. `p95_ms`.
    pub metric: String,
    /// Comparison.
    pub op: Op,
    /// Threshold.
    pub threshold: f64,
}

/// The outcome of evaluating one SLO against current values.
#[derive(Debug, Clone, PartialEq)]
pub struct SloResult {
    /// The expression as written canonically.
    pub expr: String,
    /// The metric's current value, if known.
    pub value: Option<f64>,
    /// Whether it holds. An unknown value does not hold: no evidence is not good evidence.
    pub ok: bool,
}

impl fmt::Display for Slo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.metric, self.op.text(), self.threshold)
    }
}

impl Slo {
    /// Parses `METRIC OP NUMBER`; the error says what is wrong with the text.
    pub fn parse(text: &str) -> Result<Slo, String> {
        let t = text.trim();
        let ops = [("<=", Op::Le), (">=", Op::Ge), ("==", Op::Eq), ("!=", Op::Ne), ("<", Op::Lt), (">", Op::Gt)];
        let Some((pos, sym, op)) = ops
            .iter()
            .filter_map(|(s, o)| t.find(s).map(|p| (p, *s, *o)))
            .min_by_key(|(p, s, _)| (*p, usize::MAX - s.len()))
        else {
            return Err(format!("{text:?}: expected METRIC OP NUMBER with OP one of <= < >= > == !="));
        };
        let metric = t[..pos].trim();
        let num = t[pos + sym.len()..].trim();
        if metric.is_empty() || !metric.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err(format!("{text:?}: metric {metric:?} must be a name like p95_ms or error_ratio"));
        }
        let threshold: f64 = num.parse().map_err(|_| format!("{text:?}: {num:?} is not a number"))?;
        if !threshold.is_finite() {
            return Err(format!("{text:?}: threshold must be finite"));
        }
        Ok(Slo { metric: metric.to_string(), op, threshold })
    }

    /// Evaluates against the named values.
    pub fn eval(&self, values: &BTreeMap<String, f64>) -> SloResult {
        let value = values.get(&self.metric).copied().filter(|v| v.is_finite());
        SloResult { expr: self.to_string(), value, ok: value.is_some_and(|v| self.op.holds(v, self.threshold)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(Slo::parse("p95_ms <= 300").unwrap(), Slo { metric: "p95_ms".into(), op: Op::Le, threshold: 300.0 });
        assert_eq!(Slo::parse("value>=0.9985").unwrap().op, Op::Ge);
        assert_eq!(Slo::parse(" lag_seconds < 5 ").unwrap().op, Op::Lt);
        assert_eq!(Slo::parse("error_ratio == 0").unwrap().op, Op::Eq);
    }

    #[test]
    fn bad_expressions_say_why() {
        assert!(Slo::parse("p95_ms 300").unwrap_err().contains("OP"));
        assert!(Slo::parse("p95_ms <= fast").unwrap_err().contains("not a number"));
        assert!(Slo::parse("P95 <= 3").unwrap_err().contains("metric"));
        assert!(Slo::parse("<= 3").unwrap_err().contains("metric"));
    }

    #[test]
    fn unknown_value_fails() {
        let s = Slo::parse("lag_seconds <= 5").unwrap();
        assert!(!s.eval(&BTreeMap::new()).ok);
        let v = BTreeMap::from([("lag_seconds".to_string(), 7.0)]);
        let r = s.eval(&v);
        assert_eq!((r.ok, r.value), (false, Some(7.0)));
        let v = BTreeMap::from([("lag_seconds".to_string(), 2.0)]);
        assert!(s.eval(&v).ok);
    }
}
