//! The one way a test says it did not run.
//!
//! A test that cannot run here (no root, no bpffs, no IPv6 loopback) returns
//! early, which libtest counts as passed. So it first prints a marker line,
//! `SKIP: <test>: <why>`, straight to the process's stdout, past libtest's
//! output capture, so that `cargo xtask test` sees it even for a passing test
//! and counts the test as skipped. A test that needs root marks its line
//! `[root]`: xtask fails the run if such a test skipped while it ran as root
//! (then something else is missing, and the kernel tests silently did not run).

use std::io::Write as _;

/// The marker that starts every skip line.
pub const MARKER: &str = "SKIP: ";
/// Put before the reason of a test that needs root.
pub const ROOT_TAG: &str = "[root] ";

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The running test's name: libtest names each test's thread after it;
/// `fallback` (the caller's module path) where that is not so.
fn test_name(fallback: &str) -> String {
    match std::thread::current().name() {
        Some(n) if n != "main" => n.to_owned(),
        _ => fallback.to_owned(),
    }
}

/// The line [`skip`] prints (without the newline).
pub fn line(test: &str, why: &str, root_test: bool) -> String {
    let tag = if root_test { ROOT_TAG } else { "" };
    format!("{MARKER}{test}: {tag}{why}")
}

/// Print the skip marker of the running test. `root_test`: the test is one
/// that must run when the suite runs as root. The caller then returns.
pub fn skip(module: &str, why: &str, root_test: bool) {
    let text = line(&test_name(module), why, root_test) + "\n";
    // One write of the whole line, on the real stdout (not `print!`, which
    // libtest captures for passing tests).
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// Return from the calling test, marked as skipped, unless running as root.
/// `$why` says what root is needed for.
#[macro_export]
macro_rules! require_root {
    ($why:expr) => {
        if !$crate::skip::is_root() {
            $crate::skip::skip(module_path!(), &format!("needs root: {}", $why), true);
            return;
        }
    };
}

/// Return from the calling test, marked as skipped, unless `$cond` holds.
/// `root: true` for a test that must run when the suite runs as root.
#[macro_export]
macro_rules! skip_unless {
    ($cond:expr, $why:expr, root: $root:expr) => {
        if !$cond {
            $crate::skip::skip(module_path!(), &$why, $root);
            return;
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_the_test_and_tags_root_tests() {
        assert_eq!(line("a::b", "no ::1", false), "SKIP: a::b: no ::1");
        assert_eq!(
            line("flood", "needs root: BPF", true),
            "SKIP: flood: [root] needs root: BPF"
        );
    }

    #[test]
    fn a_test_thread_is_named_after_its_test() {
        assert_eq!(
            test_name("fallback"),
            "skip::tests::a_test_thread_is_named_after_its_test"
        );
    }
}
