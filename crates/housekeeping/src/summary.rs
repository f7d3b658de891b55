//! What `housekeeping --once` prints when its pass is over: the [`Report`] in sentences a person reads, whether
//! anything was due or not, and with `--dry-run` in the conditional ("would remove"). Pure: the daemon's timer
//! passes log the report's numbers instead.

use std::time::Duration;

use crate::pass::Report;

/// The settings a summary names, so the operator sees which key decided.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub dry_run: bool,
    pub max_age: Duration,
    pub unblock_revoked: bool,
    pub max_unblock_fraction: f64,
}

/// The summary of one pass: a headline, then one line per thing the operator should look at.
pub fn summary(report: &Report, settings: &Settings) -> String {
    let max_age = format_max_age(settings.max_age);
    let examined = format!("examined {}", count(report.examined, "block", "blocks"));
    let removed = &report.removed;
    let mut lines = Vec::new();
    let headline = if removed.total() == 0 {
        let mut none = vec![format!("none older than max_age ({max_age})")];
        if settings.unblock_revoked && report.misp_view && report.held_back.is_none() {
            none.push("none revoked in MISP".into());
        }
        let due = if settings.dry_run { "nothing is due" } else { "nothing was due" };
        format!("{examined}; {due} ({})", none.join(", "))
    } else {
        let mut why = Vec::new();
        if removed.max_age > 0 {
            why.push(format!("{} older than max_age ({max_age})", removed.max_age));
        }
        if removed.revoked > 0 {
            why.push(format!("{} revoked in MISP", removed.revoked));
        }
        if removed.legacy > 0 {
            why.push(format!(
                "{} older than max_age ({max_age})",
                count(removed.legacy, "legacy member", "legacy members")
            ));
        }
        let verb = if settings.dry_run { "would remove" } else { "removed" };
        format!("{examined}; {verb} {}: {}", removed.total(), why.join(", "))
    };
    lines.push(if settings.dry_run { format!("dry run, nothing changed: {headline}") } else { headline });
    if let Some((would, of)) = report.held_back {
        lines.push(format!(
            "revocation held back: it would remove {would} of {}, more than max_unblock_fraction ({}); check MISP, \
             then rerun with --force",
            count(of, "block", "blocks"),
            settings.max_unblock_fraction
        ));
    }
    if report.misp_unavailable {
        lines.push(
            "revocation not checked: no complete view of MISP (see the log); no block was removed as revoked".into(),
        );
    }
    if report.failed > 0 {
        lines.push(format!(
            "failed: {} (see the log); the next pass tries again",
            count(report.failed, "removal", "removals")
        ));
    }
    if report.refused {
        lines.push(
            "stopped: the FortiGate refused the API token or its profile (401/403); no further request was sent, so \
             as not to extend an admin lockout. Fix the token, its profile or trusted hosts"
                .into(),
        );
    }
    if report.readded > 0 {
        lines.push(format!("re-added {} that no block group held", count(report.readded, "object", "objects")));
    }
    if report.dangling > 0 {
        lines.push(format!(
            "{} named like fortimisp's but with no fortimisp object (see the log)",
            count(report.dangling, "block-group member", "block-group members")
        ));
    }
    if report.interrupted {
        lines.push("interrupted by shutdown: what is left is done by the next pass".into());
    }
    lines.join("\n")
}

fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `90d` for whole days (humantime would say `2months 29days 1h 30m 36s` for 90 days), humantime otherwise.
fn format_max_age(d: Duration) -> String {
    let secs = d.as_secs();
    if secs > 0 && secs.is_multiple_of(86_400) && d.subsec_nanos() == 0 {
        format!("{}d", secs / 86_400)
    } else {
        humantime::format_duration(d).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pass::Removed;

    const DAYS_90: Duration = Duration::from_secs(90 * 86_400);

    fn settings(dry_run: bool) -> Settings {
        Settings { dry_run, max_age: DAYS_90, unblock_revoked: true, max_unblock_fraction: 0.5 }
    }

    fn report(removed: Removed) -> Report {
        Report { examined: 32, removed, misp_view: true, ..Report::default() }
    }

    #[test]
    fn a_dry_run_says_what_would_be_removed_and_why() {
        let r = report(Removed { max_age: 3, revoked: 1, legacy: 1 });
        assert_eq!(
            summary(&r, &settings(true)),
            "dry run, nothing changed: examined 32 blocks; would remove 5: 3 older than max_age (90d), 1 revoked in \
             MISP, 1 legacy member older than max_age (90d)"
        );
        assert_eq!(
            summary(&r, &settings(false)),
            "examined 32 blocks; removed 5: 3 older than max_age (90d), 1 revoked in MISP, 1 legacy member older \
             than max_age (90d)"
        );
    }

    #[test]
    fn nothing_due_is_said_in_words() {
        let r = report(Removed::default());
        assert_eq!(
            summary(&r, &settings(true)),
            "dry run, nothing changed: examined 32 blocks; nothing is due (none older than max_age (90d), none \
             revoked in MISP)"
        );
        let one = Report { examined: 1, ..Report::default() };
        let off = Settings { unblock_revoked: false, max_age: Duration::from_secs(36 * 3600), ..settings(false) };
        assert_eq!(summary(&one, &off), "examined 1 block; nothing was due (none older than max_age (1day 12h))");
    }

    /// What the operator must look at gets a line of its own, with the key or flag that helps.
    #[test]
    fn problems_get_a_line_each() {
        let r = Report {
            held_back: Some((20, 30)),
            misp_view: true,
            failed: 2,
            readded: 1,
            dangling: 3,
            interrupted: true,
            refused: true,
            ..report(Removed { max_age: 1, ..Removed::default() })
        };
        assert_eq!(
            summary(&r, &settings(false)),
            "examined 32 blocks; removed 1: 1 older than max_age (90d)\n\
             revocation held back: it would remove 20 of 30 blocks, more than max_unblock_fraction (0.5); check \
             MISP, then rerun with --force\n\
             failed: 2 removals (see the log); the next pass tries again\n\
             stopped: the FortiGate refused the API token or its profile (401/403); no further request was sent, so \
             as not to extend an admin lockout. Fix the token, its profile or trusted hosts\n\
             re-added 1 object that no block group held\n\
             3 block-group members named like fortimisp's but with no fortimisp object (see the log)\n\
             interrupted by shutdown: what is left is done by the next pass"
        );
        let unavailable = Report { misp_view: false, misp_unavailable: true, ..report(Removed::default()) };
        assert_eq!(
            summary(&unavailable, &settings(true)),
            "dry run, nothing changed: examined 32 blocks; nothing is due (none older than max_age (90d))\n\
             revocation not checked: no complete view of MISP (see the log); no block was removed as revoked"
        );
    }
}
