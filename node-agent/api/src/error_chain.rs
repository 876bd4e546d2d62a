// SPDX-License-Identifier: Apache-2.0
//! One line for an error and its causes, `outer: cause: root cause`, as the
//! agent logs a fatal error and answers an API request that failed.

/// `e` and every `source()` below it, joined with `": "`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// The causes of `e` alone (without `e` itself), each as it displays.
pub fn causes(e: &dyn std::error::Error) -> Vec<String> {
    let mut out = Vec::new();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push(c.to_string());
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn joins_every_cause() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(error_chain(&e), "outer: inner");
        assert_eq!(causes(&e), vec!["inner"]);
    }
}
