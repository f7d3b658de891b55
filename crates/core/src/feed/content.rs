//! The mirror's indicators as feed entries: never-block ranges cut out, CIDR-aggregated, newest first.

use ipnet::IpNet;

use crate::indicators::IndicatorSet;
use crate::policy::NeverBlock;

/// Every network of `set` with the newest attribute timestamp it covers, minus the never-block ranges
/// (built-in and configured; a network that contains one is split around it), aggregated (adjacent and nested
/// networks merged, the merged entry keeps the newest timestamp), ordered newest first, ties by address.
pub fn entries(set: &IndicatorSet, never: &NeverBlock) -> Vec<(IpNet, i64)> {
    let _ = (set, never);
    todo!("task B")
}

/// `net` minus every range of `holes`, as the fewest CIDRs, in address order.
pub fn subtract(net: IpNet, holes: &[IpNet]) -> Vec<IpNet> {
    let _ = (net, holes);
    todo!("task B")
}
