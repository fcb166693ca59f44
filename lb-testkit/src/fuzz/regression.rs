//! The regressions file (`tests/fuzz_regressions.txt`): one saved input a
//! line, with the reason it must get.

use lb_common::Reason;

use super::{action_name, action_of};

/// A saved failing input: the verdict and reason it must get, and its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Regression {
    pub reason: Reason,
    pub frame: Vec<u8>,
    pub desc: String,
}

impl Regression {
    /// One line of `tests/fuzz_regressions.txt`:
    /// `<action> <reason> <hex> # <description>`.
    pub fn to_line(&self) -> String {
        let hex: String = self.frame.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "{} {} {hex} # {}",
            action_name(action_of(self.reason)),
            self.reason.label(),
            self.desc.replace('\n', " ")
        )
    }

    /// Parse a line; `Ok(None)` for blank and comment lines.
    pub fn parse(line: &str) -> Result<Option<Regression>, String> {
        let (data, desc) = match line.split_once('#') {
            Some((d, c)) => (d, c.trim()),
            None => (line, ""),
        };
        let words: Vec<&str> = data.split_whitespace().collect();
        if words.is_empty() {
            return Ok(None);
        }
        let [action, reason, hex] = words[..] else {
            return Err(format!(
                "want `<action> <reason> <hex>`, got {} fields",
                words.len()
            ));
        };
        let reason = Reason::ALL
            .iter()
            .copied()
            .find(|r| r.label() == reason)
            .ok_or_else(|| format!("unknown reason {reason:?}"))?;
        if action_name(action_of(reason)) != action {
            return Err(format!(
                "action {action:?} does not match reason {}",
                reason.label()
            ));
        }
        if hex.len() % 2 != 0 {
            return Err("odd number of hex digits".into());
        }
        let frame = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|e| e.to_string()))
            .collect::<Result<Vec<u8>, String>>()?;
        Ok(Some(Regression {
            reason,
            frame,
            desc: desc.to_owned(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_lines_round_trip() {
        let r = Regression {
            reason: Reason::DropBadL3,
            frame: vec![0, 1, 0xab, 0xff],
            desc: "x".into(),
        };
        let line = r.to_line();
        assert_eq!(line, "drop drop_bad_l3 0001abff # x");
        assert_eq!(Regression::parse(&line).unwrap(), Some(r));
        assert_eq!(Regression::parse("  # comment").unwrap(), None);
        assert!(Regression::parse("tx drop_bad_l3 00").is_err());
        assert!(Regression::parse("drop nonsense 00").is_err());
        assert!(Regression::parse("drop drop_bad_l3 0").is_err());
    }
}
