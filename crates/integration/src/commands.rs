//! The hand-run subcommands. Each goes through the same stages as the daemon (ingest, decide, execute), so what
//! an operator tries by hand is what the daemon does.

use std::io::{BufRead, Write};
use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use chrono::Utc;
use fortimisp_core::config::{Backend as BackendKind, Config, Contents};
use fortimisp_core::journal::{transfer, ActionKind, Journal, Outcome, PendingQuery};
use fortimisp_core::metrics::{Metrics, TargetMetrics};
use fortimisp_core::misp::SearchQuery;
use fortimisp_core::policy::Protected;
use fortimisp_core::preflight;
use fortimisp_core::syslog;
use fortimisp_core::unblock::{self, Target, Unblocked, Unblocker};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::block::{self, Blocker, Executed};
use crate::decide::SharedMirror;
use crate::feed::state::FeedState;
use crate::mirror::CidrIndicators;
use crate::output::{self, ListRow};
use crate::run::Parts;
use fortimisp_core::view;

/// `integration parse [LOGFILE|-]`: one JSON object per input line.
pub fn parse(logfile: &str) -> Result<()> {
    let reader: Box<dyn BufRead> = if logfile == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(logfile).with_context(|| format!("cannot open {logfile}"))?,
        ))
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for (i, line) in reader.split(b'\n').enumerate() {
        let line = line.with_context(|| format!("reading {logfile}"))?;
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        writeln!(out, "{}", syslog::describe_line(i + 1, line))?;
    }
    out.flush()?;
    Ok(())
}

/// `integration validate`: config (already loaded), MISP and FortiGate reachability, and every permission the
/// configuration needs, proven without changing anything lasting (`core::preflight`; the FortiGate write check
/// creates and deletes one probe address object).
pub async fn validate(config: Config) -> Result<ExitCode> {
    let parts = Parts::build(config)?;
    let cfg = &parts.config;
    let mut ok = true;
    let backends: Vec<String> = parts.targets.iter().map(|t| format!("{} {}", t.name(), t.config.backend)).collect();
    println!("ok    config: {} trigger rule(s), target(s): {}", cfg.trigger.len(), backends.join(", "));
    for warning in &cfg.warnings {
        println!("warn  {warning}");
    }
    // Each permission the configured backend needs, proven against the live servers (core::preflight): one line
    // per check; MISSING or FAIL exits 1.
    let checks = preflight::misp(&parts.misp, &cfg.misp).await;
    for check in &checks {
        println!("{check}");
        ok &= check.status.passes();
    }
    // Each target on its own, under a header naming it when there are several.
    for target in &parts.targets {
        if parts.targets.len() > 1 {
            println!("target {} ({})", target.name(), target.config.url);
        }
        let mut checks = preflight::fortigate(&target.client, &target.config, Utc::now()).await;
        if let (Some(feed), BackendKind::ThreatFeed) = (&cfg.feed, target.config.backend) {
            checks.extend(fortimisp_core::feed::check::checks(target.client.transport(), feed).await);
        }
        for check in &checks {
            println!("{check}");
            ok &= check.status.passes();
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `integration lookup IP`: what MISP knows and what the daemon would decide. No change made.
pub async fn lookup(config: Config, ip: IpAddr) -> Result<ExitCode> {
    let parts = Parts::build(config)?;
    let cfg = &parts.config.misp;
    println!("address: {ip}");
    // Everything MISP holds for the value, unfiltered, so the operator sees why a filter excludes it.
    let all = parts.misp.search_values(&SearchQuery::new(), &[ip]).await.context("MISP restSearch")?;
    if all.is_empty() {
        println!("misp: no attribute has the value {ip}");
    }
    for ind in &all {
        println!("{}", output::attribute_line(cfg, ind));
    }
    let warninglists: Result<Vec<String>, String> = match parts.misp.check_warninglist(&[ip]).await {
        Ok(hits) => Ok(hits.get(&ip).map(|lists| lists.iter().map(|h| h.name.clone()).collect()).unwrap_or_default()),
        Err(error) => Err(error.to_string()),
    };
    let shown: Result<&[String], &str> = warninglists.as_deref().map_err(String::as_str);
    println!("{}", output::warninglist_line(shown, cfg.enforce_warninglist));
    // The daemon's answer: the exact lookup combined with the CIDR indicators (restSearch matches values exactly).
    let cidrs = CidrIndicators::new(cfg.lookup_cache_ttl)
        .get(&parts.misp, cfg)
        .await
        .context("MISP restSearch (CIDR indicators)")?;
    let filtered = parts.misp.search_values(&view::base_query(cfg), &[ip]).await.context("MISP restSearch")?;
    let found = view::hit(cfg, ip, &filtered, &cidrs);
    if let Some(hit) = found.filter(|h| h.network.prefix_len() < h.network.max_prefix_len()) {
        println!(
            "misp: network {} (event {}, attribute {}) contains {ip}: passes the [misp] filters",
            hit.network,
            hit.entry.event_id,
            fortimisp_core::indicators::format_uuid(hit.entry.uuid)
        );
    }
    let decision =
        output::lookup_decision(parts.never_block.check(ip), found.is_some(), &all, cfg, warninglists.as_deref().ok());
    println!("decision: {decision}");
    Ok(ExitCode::SUCCESS)
}

/// `integration block IP`: the daemon's execution path, by hand.
pub async fn block(
    config: Config,
    ip: IpAddr,
    comment: Option<String>,
    force: bool,
    target: Option<&str>,
) -> Result<ExitCode> {
    let mut parts = Parts::build(config)?;
    let selected = parts.select(target)?;
    match parts.never_block.check(ip) {
        Some(Protected::Reserved { range, name }) => {
            bail!("{ip} is in the reserved range {range} ({name}); it can never be blocked")
        }
        Some(Protected::Configured { range }) if !force => {
            bail!("{ip} is in blocking.never_block ({range}); add --force to block it anyway")
        }
        Some(Protected::Configured { .. }) => {
            // --force: this one call may block it; reserved ranges stay protected.
            parts.never_block = fortimisp_core::policy::NeverBlock::new(Vec::new());
        }
        None => {}
    }
    let mut request = block::manual_request(ip, comment.unwrap_or_else(|| "manual".into()));
    request.targets = selected.iter().copied().collect();
    // Every selected target is tried, whatever the others did; each outcome is printed once.
    let mut failures = Vec::new();
    for i in selected {
        let t = &parts.targets[i];
        let on = if parts.targets.len() > 1 { format!(" on {}", t.name()) } else { String::new() };
        let executor = parts.executor_of(i, false);
        let job = executor.enqueue(&request).await;
        match executor.execute(&job).await {
            Executed::Done(applied) => {
                println!("{}{on}", output::block_sentence(ip, &applied, &t.config.backend.to_string()));
                if t.config.backend == BackendKind::ThreatFeed && parts.config.feed.as_ref().is_some_and(|f| !f.push) {
                    println!(
                        "the running integration daemon serves it within seconds; the FortiGate loads it at its \
                         next pull"
                    );
                }
            }
            // A hand-run block has no event: it is always carried out.
            Executed::Taken => println!("{ip} is already blocked{on}"),
            Executed::DryRun => println!("dry run: {ip} would be blocked{on}"),
            Executed::Protected(reason) => failures.push(format!("not blocked{on}: {reason}")),
            Executed::Retry(error) => {
                failures.push(format!("not blocked yet{on} (the daemon will retry it from the journal): {error}"))
            }
            Executed::Fatal(error) | Executed::Failed(error) => failures.push(format!("not blocked{on}: {error}")),
        }
    }
    flush_journal(&parts).await;
    match failures.len() {
        0 => Ok(ExitCode::SUCCESS),
        1 => bail!("{}", failures[0]),
        _ => bail!("{}", failures.join("; ")),
    }
}

/// `integration unblock IP`: removes fortimisp's block (never a foreign object), through the core's one unblock
/// path: the journal has the pending unblock before the FortiGate is touched.
pub async fn unblock(config: Config, ip: IpAddr, target: Option<&str>) -> Result<ExitCode> {
    let parts = Parts::build(config)?;
    let mut failures = Vec::new();
    for i in parts.select(target)? {
        let t = &parts.targets[i];
        let on = if parts.targets.len() > 1 { format!(" on {}", t.name()) } else { String::new() };
        if let Err(error) = unblock_on(&parts, t, ip, &on).await {
            failures.push(format!("{error:#}"));
        }
    }
    flush_journal(&parts).await;
    match failures.len() {
        0 => Ok(ExitCode::SUCCESS),
        _ => bail!("{}", failures.join("; ")),
    }
}

/// One target's part of `integration unblock`.
async fn unblock_on(parts: &Parts, t: &crate::run::TargetParts, ip: IpAddr, on: &str) -> Result<()> {
    let what = match t.config.backend {
        BackendKind::AddressGroup => Target::Address(ip),
        BackendKind::BannedIp => Target::Banned(ip),
        BackendKind::ThreatFeed => {
            Target::Feed { ip, push_to: parts.config.feed.as_ref().map_or_else(Vec::new, |f| f.push_targets(ip)) }
        }
    };
    let unblocker = Unblocker { target_name: t.name(), fortigate: &t.client, journal: &parts.journal };
    let request = unblock::Request { target: what, reason: "manual".into(), member_of: None };
    let unblocked = unblocker.unblock(&request).await;
    let result = match &unblocked {
        Unblocked::Done if t.config.backend == BackendKind::BannedIp => {
            println!("unbanned {ip}{on}");
            Ok(())
        }
        Unblocked::Done => {
            println!("unblocked {ip}{on}");
            Ok(())
        }
        Unblocked::NotThere => {
            println!("{ip} was not blocked by fortimisp{on}");
            Ok(())
        }
        Unblocked::Retryable(error) => {
            Err(anyhow::anyhow!("not unblocked yet{on} (pending in the journal; run unblock again): {error}"))
        }
        Unblocked::Refused(error) => Err(anyhow::anyhow!(
            "not unblocked{on}: the FortiGate refused the token or its profile (pending in the journal; fix the \
             token, then run unblock again): {error}"
        )),
        Unblocked::Foreign(error) | Unblocked::InUse(error) | Unblocked::Fatal(error) => {
            Err(anyhow::anyhow!("not unblocked{on}: {error}"))
        }
    };
    // A block of this address still pending in the journal would undo the operator's unblock on the daemon's
    // next start: it is closed as skipped.
    if unblocked.is_gone() {
        let mut cancelled = 0;
        let query = PendingQuery { kind: Some(ActionKind::Block), target: Some(t.name().into()), limit: None };
        for action in parts.journal.pending_where(query).await?.into_iter().filter(|a| a.ip == ip) {
            parts.journal.complete(action.id, &Outcome::Skipped { reason: "unblocked by hand".into() }).await?;
            cancelled += 1;
        }
        if cancelled > 0 {
            println!("cancelled {cancelled} pending block(s) of {ip} in the journal{on}");
        }
    }
    result.context("FortiGate")
}

/// A hand-run command exits right after: what the journal buffered in memory (the file refused writes) gets
/// one last chance to reach the file, loudly if it cannot.
async fn flush_journal(parts: &Parts) {
    if let Err(error) = parts.journal.flush().await {
        eprintln!("error: journal entries kept in memory could not be written: {error}");
    }
}

/// `integration list --feeds`: per threat feed, what fortimisp serves or pushes (the journal's blocks and, in
/// indicators mode, MISP's actionable indicators, laid out as the daemon does) next to what the FortiGate reports
/// it loaded (entry-list status).
pub async fn list_feeds(config: Config) -> Result<ExitCode> {
    let parts = Parts::build(config)?;
    let (Some(cfg), Some(target)) = (parts.config.feed.as_ref(), parts.feed_target()) else {
        bail!("no target has backend = \"threat-feed\": there are no threat feeds to list");
    };
    let state = FeedState::new(cfg, parts.metrics.clone());
    let ledger = parts.journal.active_blocks_of(target.name()).await?;
    state.replace_blocked(
        ledger.iter().filter(|b| b.backend == crate::feed::BACKEND).map(|b| (b.ip, b.blocked_at.timestamp())).collect(),
    );
    if cfg.contents == Contents::Indicators {
        let (set, _) = view::full(&parts.misp, &parts.config.misp).await.context("MISP")?;
        state.set_indicators(fortimisp_core::feed::content::entries(&set, &parts.never_block));
    }
    let transport = target.client.transport();
    let mut statuses = Vec::new();
    for name in state.names().all() {
        statuses.push((name.clone(), transport.feed_status(&name).await));
    }
    // The device's limit is the cap when max_entries = 0, as in the daemon.
    if let Some(limit) = statuses.iter().find_map(|(_, s)| s.as_ref().ok().and_then(|s| s.limit)) {
        state.set_device_limit(limit);
    }
    let built = state.current();
    let rows = statuses
        .into_iter()
        .map(|(name, status)| output::FeedRow {
            served: built.entries(&name).len(),
            status: status.map_err(|e| e.to_string()),
            name,
        })
        .collect();
    print!("{}", output::feeds_table(rows, built.layout.left_out_v4 + built.layout.left_out_v6, built.cap, Utc::now()));
    Ok(ExitCode::SUCCESS)
}

/// `integration list [--target NAME]`: each target's FortiGate view joined with the journal's.
pub async fn list(config: Config, target: Option<&str>) -> Result<ExitCode> {
    let parts = Parts::build(config)?;
    let ledger = parts.journal.active_blocks().await?;
    let mut rows = Vec::new();
    for i in parts.select(target)? {
        let t = &parts.targets[i];
        let of_target: Vec<_> = ledger.iter().filter(|b| b.target == t.name()).cloned().collect();
        rows.extend(list_target(t, &of_target).await?);
    }
    print!("{}", output::list_table(rows, parts.targets.len() > 1));
    Ok(ExitCode::SUCCESS)
}

/// One target's rows of `integration list`.
async fn list_target(
    t: &crate::run::TargetParts,
    ledger: &[fortimisp_core::journal::BlockRecord],
) -> Result<Vec<ListRow>> {
    let now = Utc::now();
    let event_of = |event_id: Option<u64>| event_id.map_or_else(|| "manual".to_string(), |e| e.to_string());
    let context = || format!("FortiGate {}", t.name());
    let mut rows = Vec::new();
    let row =
        |ip, object, age, event, comment| ListRow { target: t.name().to_string(), ip, object, age, event, comment };
    match t.config.backend {
        BackendKind::AddressGroup => {
            let owned = t.client.list_owned().await.with_context(context)?;
            for obj in &owned {
                rows.push(row(
                    obj.ip,
                    obj.name.to_string(),
                    Some(now.signed_duration_since(obj.comment.created_at)),
                    obj.comment.event_id.clone().unwrap_or_else(|| "-".into()),
                    // What follows the marker: the operator's --comment, or the indicator and rule.
                    obj.comment.rest.clone(),
                ));
            }
            for b in ledger.iter().filter(|b| !owned.iter().any(|o| o.ip == b.ip)) {
                rows.push(row(
                    b.ip,
                    b.object.clone(),
                    Some(now.signed_duration_since(b.blocked_at)),
                    event_of(b.event_id),
                    "in the journal only: not on the FortiGate".into(),
                ));
            }
        }
        BackendKind::BannedIp => {
            for banned in t.client.list_banned().await.with_context(context)? {
                let ours = ledger.iter().find(|b| b.ip == banned.ip);
                rows.push(row(
                    banned.ip,
                    "(banned ip)".into(),
                    banned.created.map(|created| now.signed_duration_since(created)),
                    ours.map_or_else(|| "-".into(), |b| event_of(b.event_id)),
                    ours.and_then(|b| b.rule).map(|rule| format!("rule={rule}")).unwrap_or_default(),
                ));
            }
        }
        BackendKind::ThreatFeed => {
            for b in ledger.iter().filter(|b| b.backend == crate::feed::BACKEND) {
                rows.push(row(
                    b.ip,
                    format!("feed {}", b.object),
                    Some(now.signed_duration_since(b.blocked_at)),
                    event_of(b.event_id),
                    b.rule.map(|rule| format!("rule={rule}")).unwrap_or_default(),
                ));
            }
        }
    }
    Ok(rows)
}

/// `integration replay LOGFILE`: the file's lines through ingest, decide and block, then a summary.
pub async fn replay(config: Config, logfile: &Path, dry_run: bool) -> Result<ExitCode> {
    let parts = Parts::build(config)?;
    let text = tokio::fs::read(logfile).await.with_context(|| format!("cannot read {}", logfile.display()))?;
    let (candidate_tx, candidate_rx) = mpsc::channel(1024);
    let (block_tx, block_rx) = mpsc::channel(1024);
    let shutdown = CancellationToken::new();
    // No mirror: every address is looked up on demand (batched, cached).
    let mirror: SharedMirror = Arc::new(RwLock::new(None));
    let decider = tokio::spawn(parts.decider(mirror).run(candidate_rx, block_tx, shutdown.clone()));
    // A block the FortiGate refuses for now is left pending in the journal for the daemon: replay ends.
    let mut blockers = Vec::new();
    let mut inputs = Vec::new();
    for i in 0..parts.targets.len() {
        let (tx, rx) = mpsc::channel(1024);
        let mut blocker = Blocker::new(parts.executor_of(i, dry_run), parts.config.blocking.max_blocks_per_minute)
            .leaving_failures_pending();
        blocker.resume_pending().await;
        blockers.push(tokio::spawn(blocker.run(rx, CancellationToken::new(), Duration::from_secs(30))));
        inputs.push(tx);
    }
    let fan_out = tokio::spawn(crate::run::fan_out(block_rx, inputs));
    let ingest = parts.ingest(candidate_tx);
    let mut lines = 0u64;
    for line in text.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        lines += 1;
        Metrics::inc(&parts.metrics.received, "replay");
        ingest.offer(line, tokio::time::Instant::now()).await;
    }
    drop(ingest);
    decider.await?;
    fan_out.await?;
    let mut left_pending = 0;
    for blocker in blockers {
        left_pending += blocker.await?;
    }
    flush_journal(&parts).await;
    let lookup_errors = Metrics::count(&parts.metrics.lookups, "misp_error");
    let targets: Vec<TargetMetrics> = parts.targets.iter().map(|t| t.metrics.clone()).collect();
    println!("{}", replay_summary(&parts.metrics, &targets, lines, left_pending));
    if left_pending > 0 {
        eprintln!("error: {left_pending} block(s) not done yet; they are pending in the journal for the daemon");
    }
    if lookup_errors > 0 {
        eprintln!("error: {lookup_errors} address(es) could not be looked up in MISP; replay again when it answers");
    }
    Ok(if left_pending > 0 || lookup_errors > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// `replay`'s one-line summary, read from the counters themselves.
fn replay_summary(m: &Metrics, targets: &[TargetMetrics], lines: u64, left_pending: usize) -> String {
    let blocks = |outcome| targets.iter().map(|t| t.blocks(outcome)).sum::<u64>();
    format!(
        "lines {lines}, parse errors {}, triggered {}, MISP requests {}, MISP lookup errors {}, blocked {}, already blocked {}, dry run {}, failed {}, left pending {left_pending}",
        m.parse_errors_total(),
        m.triggered.get(),
        m.misp_lookup_requests.get(),
        Metrics::count(&m.lookups, "misp_error"),
        blocks("blocked"),
        blocks("already_blocked"),
        blocks("dry_run"),
        blocks("failed"),
    )
}

/// `integration journal export [FILE|-]`: every row of the configured journal as JSON lines.
pub async fn journal_export(config: Config, file: &str) -> Result<ExitCode> {
    let journal = Journal::open_strict(&config.state).context("the journal")?;
    let rows = journal.export().await.with_context(|| format!("cannot export {}", journal.location()))?;
    let mut out: Box<dyn Write> = if file == "-" {
        Box::new(std::io::BufWriter::new(std::io::stdout().lock()))
    } else {
        Box::new(std::io::BufWriter::new(std::fs::File::create(file).with_context(|| format!("cannot create {file}"))?))
    };
    transfer::write_lines(&rows, &mut out).with_context(|| format!("cannot write {file}"))?;
    eprintln!("exported {} rows from {}", rows.len(), journal.location());
    Ok(ExitCode::SUCCESS)
}

/// `integration cluster status`: read from the shared PostgreSQL journal; refused on a SQLite one.
pub async fn cluster_status(config: Config, json: bool) -> Result<ExitCode> {
    let (Some(target), Some(cluster)) = (config.state.postgres.clone(), config.cluster.clone()) else {
        anyhow::bail!(
            "cluster status needs a PostgreSQL journal (state.url); this config uses the SQLite file {}",
            config.state.path.display()
        );
    };
    // The synchronous client runs a runtime of its own: on a plain thread, outside this one.
    let (reply, answer) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || reply.send(fortimisp_core::cluster::status::read(&target)));
    let status = answer.await.context("the status reader")?.context("cannot read the cluster status")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status).context("status as JSON")?);
    } else {
        print!("{}", crate::output::cluster_tables(&status, cluster.timings.ttl));
    }
    Ok(ExitCode::SUCCESS)
}

/// `integration journal import FILE`: rows written by `journal export`, into the configured (empty) journal.
pub async fn journal_import(config: Config, file: &str) -> Result<ExitCode> {
    let mut input: Box<dyn BufRead> = if file == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(std::fs::File::open(file).with_context(|| format!("cannot open {file}"))?))
    };
    let rows = transfer::read_lines(&mut input).with_context(|| format!("cannot read {file}"))?;
    let journal = Journal::open_strict(&config.state).context("the journal")?;
    let imported = journal.import(rows).await.with_context(|| format!("cannot import into {}", journal.location()))?;
    journal.flush().await.context("the journal")?;
    eprintln!(
        "imported {} actions, {} decisions, {} ledger entries into {}",
        imported.actions,
        imported.decisions,
        imported.blocks,
        journal.location()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The summary counts come from `Metrics` directly; parse errors of every kind are summed.
    #[test]
    fn replay_summary_reads_the_counters() {
        let m = Arc::new(Metrics::new());
        let targets = [TargetMetrics::new(m.clone(), "a"), TargetMetrics::new(m.clone(), "b")];
        Metrics::inc(&m.parse_errors, "bad_pri");
        Metrics::inc(&m.parse_errors, "bad_pri");
        Metrics::inc(&m.parse_errors, "not_fortigate");
        m.triggered.inc();
        targets[0].block("blocked");
        targets[1].block("failed");
        Metrics::inc(&m.lookups, "misp_error");
        assert_eq!(
            replay_summary(&m, &targets, 5, 1),
            "lines 5, parse errors 3, triggered 1, MISP requests 0, MISP lookup errors 1, blocked 1, already blocked 0, \
             dry run 0, failed 1, left pending 1"
        );
    }
}
