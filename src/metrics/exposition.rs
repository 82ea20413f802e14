//! The two exposition formats Prometheus scrapes: OpenMetrics when the
//! scraper asks for it (`Accept: application/openmetrics-text`, as
//! Prometheus does), else the classic text format 0.0.4 that `promtool check
//! metrics`, curl users and older scrapers read.
//!
//! The registry writes OpenMetrics; the classic form differs only where
//! counters are named (OpenMetrics declares `# TYPE x counter` for samples
//! `x_total`, the classic format declares the sample name), in having no
//! `# UNIT` lines and no `# EOF`.

use std::collections::HashSet;

/// Content type of OpenMetrics text.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the classic text format.
pub const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|accept| {
        accept
            .split(',')
            .any(|range| range.trim().starts_with("application/openmetrics-text"))
    })
}

/// The classic text form of an OpenMetrics exposition.
pub fn to_classic(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut classic = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|marker| {
            let rest = line.strip_prefix(marker)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{marker}{name}_total {tail}"))
        });
        match renamed {
            Some(renamed) => classic.push_str(&renamed),
            None => classic.push_str(line),
        }
        classic.push('\n');
    }
    classic
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_declared_by_their_sample_name_and_eof_goes() {
        let openmetrics = "# HELP policyhub_activations Moves.\n\
                           # TYPE policyhub_activations counter\n\
                           policyhub_activations_total 3\n\
                           # HELP policyhub_revision Revision.\n\
                           # TYPE policyhub_revision gauge\n\
                           policyhub_revision 7\n\
                           # UNIT policyhub_x seconds\n\
                           # EOF\n";
        assert_eq!(
            to_classic(openmetrics),
            "# HELP policyhub_activations_total Moves.\n\
             # TYPE policyhub_activations_total counter\n\
             policyhub_activations_total 3\n\
             # HELP policyhub_revision Revision.\n\
             # TYPE policyhub_revision gauge\n\
             policyhub_revision 7\n"
        );
    }

    #[test]
    fn prometheus_gets_openmetrics_and_curl_the_classic_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(Some(prometheus)));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(None));
    }
}
