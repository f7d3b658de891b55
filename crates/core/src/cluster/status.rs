//! What `integration cluster status` shows, read from the shared store in one transaction: the instances (and how
//! long ago each was last heard from), the leases (who holds each target and job, until when) and, per target, the
//! pending actions and the age of the oldest: the cluster's lag on that FortiGate.

use serde::Serialize;

use crate::journal::{Error, PostgresTarget};

/// One instance, as its keeper last wrote it.
#[derive(Debug, Clone, Serialize)]
pub struct Instance {
    pub id: String,
    pub name: String,
    pub role: String,
    pub host: String,
    pub pid: i64,
    pub version: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// Seconds since its last heartbeat: more than the lease ttl means it is gone or cut off.
    pub seen_seconds_ago: f64,
}

/// One lease row.
#[derive(Debug, Clone, Serialize)]
pub struct LeaseRow {
    /// A target name, or `job:...`.
    pub name: String,
    /// The instance id that holds or last held it (`""`: never granted).
    pub holder: String,
    pub epoch: i64,
    /// Seconds until it expires (negative: expired; `None`: released or never granted).
    pub expires_in: Option<f64>,
}

/// One target's queue.
#[derive(Debug, Clone, Serialize)]
pub struct Lag {
    pub target: String,
    pub pending: i64,
    /// Age of the oldest pending action, in seconds.
    pub oldest_seconds: f64,
}

/// Everything `cluster status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub instances: Vec<Instance>,
    pub leases: Vec<LeaseRow>,
    pub lag: Vec<Lag>,
}

impl Status {
    /// Whether `lease` is held now (unexpired).
    pub fn is_held(lease: &LeaseRow) -> bool {
        lease.expires_in.is_some_and(|s| s > 0.0) && !lease.holder.is_empty()
    }
}

/// Reads the status. Synchronous (the `postgres` client): call it off the async runtime.
///
/// # Errors
/// PostgreSQL cannot be reached, or its schema has no cluster tables (a database no instance has migrated).
pub fn read(target: &PostgresTarget) -> Result<Status, Error> {
    let at = || target.location().to_owned();
    let sql = |source| Error::Postgres { at: at(), source };
    let mut client = target.connect()?;
    let mut tx = client.build_transaction().read_only(true).start().map_err(sql)?;
    let instances = tx
        .query(
            "SELECT id, name, role, host, pid, version, started_at,
                    extract(epoch FROM now() - seen_at)::float8
             FROM instances ORDER BY name, role, id",
            &[],
        )
        .map_err(sql)?
        .iter()
        .map(|r| {
            Ok(Instance {
                id: r.try_get(0)?,
                name: r.try_get(1)?,
                role: r.try_get(2)?,
                host: r.try_get(3)?,
                pid: r.try_get(4)?,
                version: r.try_get(5)?,
                started_at: r.try_get(6)?,
                seen_seconds_ago: r.try_get(7)?,
            })
        })
        .collect::<Result<Vec<_>, postgres::Error>>()
        .map_err(sql)?;
    let leases = tx
        .query(
            "SELECT name, holder, epoch,
                    CASE WHEN isfinite(expires_at) THEN extract(epoch FROM expires_at - now())::float8 END
             FROM leases ORDER BY name",
            &[],
        )
        .map_err(sql)?
        .iter()
        .map(|r| {
            Ok(LeaseRow { name: r.try_get(0)?, holder: r.try_get(1)?, epoch: r.try_get(2)?, expires_in: r.try_get(3)? })
        })
        .collect::<Result<Vec<_>, postgres::Error>>()
        .map_err(sql)?;
    let lag = tx
        .query(
            "SELECT target, count(*), extract(epoch FROM now() - min(requested_at))::float8
             FROM actions WHERE state = 'pending' GROUP BY target ORDER BY target",
            &[],
        )
        .map_err(sql)?
        .iter()
        .map(|r| Ok(Lag { target: r.try_get(0)?, pending: r.try_get(1)?, oldest_seconds: r.try_get(2)? }))
        .collect::<Result<Vec<_>, postgres::Error>>()
        .map_err(sql)?;
    tx.commit().map_err(sql)?;
    Ok(Status { instances, leases, lag })
}
