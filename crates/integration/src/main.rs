//! `integration`: the blocking daemon and its operator subcommands.
//!
//! This file does four things: parse the command line, load the config (one line naming the key on error, exit
//! 2), set up logging, and turn SIGTERM/SIGINT into a cancellation token. Everything else is in the modules:
//! [`run`] wires the daemon's stages ([`listen`] → [`ingest`] → [`decide`] → [`block`]), [`mirror`] keeps the
//! local copy of MISP's indicators, [`commands`] holds the hand-run subcommands, which call the same stages, and
//! [`output`] what they print. An error that ends the process is reported once
//! ([`fortimisp_core::process::report_failure`]).

mod backend;
mod block;
mod commands;
mod decide;
mod feed;
mod ingest;
mod listen;
mod mirror;
mod output;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fortimisp_core::process;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "integration",
    version,
    about = "fortimisp: block on the FortiGate what MISP lists, as FortiGate logs show it"
)]
struct Cli {
    /// Config file [default: $FORTIMISP_CONFIG, then /etc/fortimisp/config.toml]
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
    /// Test hook, debug builds only: the daemon's task NAME panics when the file DIR/panic-NAME appears.
    #[cfg(debug_assertions)]
    #[arg(long, global = true, hide = true, value_name = "DIR")]
    panic_trigger_dir: Option<PathBuf>,
    /// Test hook, debug builds only: how long a target's writes pause after a refused token (default 5m).
    #[cfg(debug_assertions)]
    #[arg(long, global = true, hide = true, value_name = "DURATION", value_parser = humantime::parse_duration)]
    fatal_pause: Option<std::time::Duration>,
}

impl Cli {
    /// The test hook the daemon runs with: none in release builds, which have no such option.
    fn faults(&self) -> fortimisp_core::supervise::Faults {
        #[cfg(debug_assertions)]
        if let Some(dir) = &self.panic_trigger_dir {
            return fortimisp_core::supervise::Faults::panic_on_file(dir.clone());
        }
        fortimisp_core::supervise::Faults::none()
    }

    /// The pause after a refused token: [`block::FATAL_PAUSE`] but in a debug build told otherwise.
    fn fatal_pause(&self) -> std::time::Duration {
        #[cfg(debug_assertions)]
        if let Some(pause) = self.fatal_pause {
            return pause;
        }
        block::FATAL_PAUSE
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the blocking daemon (the default).
    Run,
    /// Check the config and the reachability and permissions of MISP and the FortiGate; exit 0 or 1.
    Validate,
    /// Show what MISP knows about IP and what the daemon would decide. Changes nothing.
    Lookup { ip: std::net::IpAddr },
    /// Block IP by hand, through the same path as the daemon.
    Block {
        ip: std::net::IpAddr,
        /// Text added to the object comment.
        #[arg(long)]
        comment: Option<String>,
        /// Block even an address in never_block (reserved ranges can never be blocked).
        #[arg(long)]
        force: bool,
        /// The target to block on, or `all` (the default).
        #[arg(long, value_name = "NAME|all")]
        target: Option<String>,
    },
    /// Remove a block fortimisp made.
    Unblock {
        ip: std::net::IpAddr,
        /// The target to unblock on, or `all` (the default).
        #[arg(long, value_name = "NAME|all")]
        target: Option<String>,
    },
    /// List the blocks fortimisp owns on the FortiGate, with age and reason.
    List {
        /// Only this target's blocks (default: every target, with a TARGET column for a fleet).
        #[arg(long, value_name = "NAME")]
        target: Option<String>,
        /// Threat-feed backend: per feed, entries served, entries the FortiGate loaded, last load, overflow.
        #[arg(long)]
        feeds: bool,
    },
    /// Feed a file of log lines through the pipeline.
    Replay {
        logfile: PathBuf,
        /// Decide and log, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Move the configured journal's contents: export to JSON lines, import into an empty journal.
    Journal {
        #[command(subcommand)]
        action: JournalCommand,
    },
    /// Several instances on one PostgreSQL journal: who leads which target.
    Cluster {
        #[command(subcommand)]
        action: ClusterCommand,
    },
    /// Print how each line is read, one JSON object per line. Needs no config.
    Parse {
        /// A file of log lines, or - for standard input.
        #[arg(default_value = "-")]
        logfile: String,
    },
}

/// `integration journal ...`: how an operator moves a SQLite journal to PostgreSQL (export with the SQLite config,
/// import with the PostgreSQL one).
#[derive(Subcommand, Debug)]
enum JournalCommand {
    /// Write every action, decision and ledger entry of the configured journal as JSON lines.
    Export {
        /// The file to write, or - for standard output.
        #[arg(default_value = "-")]
        file: String,
    },
    /// Read JSON lines written by `journal export` into the configured journal, which must be empty.
    Import {
        /// The file to read, or - for standard input.
        file: String,
    },
}

/// `integration cluster ...`.
#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// List the instances, the leases of the targets and jobs, and each target's pending queue.
    Status {
        /// One JSON object instead of the tables.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Command::Parse { logfile }) = &cli.command {
        return match commands::parse(logfile) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    // `validate` prints the config's warnings in its report; logging them as well would show each twice.
    let warnings = match cli.command {
        Some(Command::Validate) => process::Warnings::Command,
        _ => process::Warnings::Log,
    };
    let config = match process::start(cli.config.clone(), process::Daemon::Integration, warnings) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let log = config.log.clone();
    let role = match cli.command {
        None | Some(Command::Run) => process::Role::Daemon,
        Some(_) => process::Role::Command,
    };
    let (faults, fatal_pause) = (cli.faults(), cli.fatal_pause());
    let result = runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Run) {
            Command::Run => {
                let shutdown = CancellationToken::new();
                tokio::spawn(process::cancel_on_signal(shutdown.clone()));
                run::run(config, shutdown, faults, fatal_pause).await.map(|()| ExitCode::SUCCESS)
            }
            Command::Validate => commands::validate(config).await,
            Command::Lookup { ip } => commands::lookup(config, ip).await,
            Command::Block { ip, comment, force, target } => {
                commands::block(config, ip, comment, force, target.as_deref()).await
            }
            Command::Unblock { ip, target } => commands::unblock(config, ip, target.as_deref()).await,
            Command::List { feeds: false, target } => commands::list(config, target.as_deref()).await,
            Command::List { feeds: true, .. } => commands::list_feeds(config).await,
            Command::Replay { logfile, dry_run } => commands::replay(config, &logfile, dry_run).await,
            Command::Journal { action: JournalCommand::Export { file } } => {
                commands::journal_export(config, &file).await
            }
            Command::Journal { action: JournalCommand::Import { file } } => {
                commands::journal_import(config, &file).await
            }
            Command::Cluster { action: ClusterCommand::Status { json } } => {
                commands::cluster_status(config, json).await
            }
            Command::Parse { .. } => unreachable!("handled before the config is loaded"),
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            process::report_failure(role, &log, &error);
            ExitCode::FAILURE
        }
    }
}
