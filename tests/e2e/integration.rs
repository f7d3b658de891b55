//! The integration daemon, end to end: syslog in, MISP lookups, blocks on the FortiGate.

use std::net::IpAddr;
use std::time::Duration;

use fortimisp_e2e::fortimisp_testkit::misp::AttributeSpec;
use fortimisp_e2e::{eventually, members, send_tcp, send_udp, traffic_line, Env};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const WAIT: Duration = Duration::from_secs(20);

/// Every kind of indicator that must block, each seen as the source of a triggering line, over UDP and TCP; and
/// every case that must not, with garbage in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_indicators_and_nothing_else() {
    let env = Env::start().await;
    let event = env.misp.add_event("C2 servers", true, &[]);
    env.misp.add_attribute(event, AttributeSpec::new("ip-src", "198.51.100.10"));
    env.misp.add_attribute(event, AttributeSpec::new("ip-dst", "198.51.100.11"));
    env.misp.add_attribute(event, AttributeSpec::new("ip-src|port", "198.51.100.12|443"));
    env.misp.add_attribute(event, AttributeSpec::new("ip-src", "2001:db8::12"));
    env.misp.add_attribute(event, AttributeSpec::new("ip-src", "198.51.100.20").to_ids(false));
    env.misp.add_attribute(event, AttributeSpec::new("ip-src", "198.51.100.21"));
    env.misp.add_warninglist("Known good", "cidr", &["198.51.100.21/32"]);
    env.misp.add_attribute(event, AttributeSpec::new("ip-src", "10.1.2.3"));
    env.misp.add_attribute(event, AttributeSpec::new("ip-src", "198.51.100.250"));
    env.misp.add_attribute(event, AttributeSpec::new("ip-src", "198.51.100.30"));
    let daemon = env.integration().await;

    let dst = ip("203.0.113.1");
    let mut udp_lines = vec![];
    for src in [
        "198.51.100.10",
        "198.51.100.11",
        "198.51.100.20",
        "198.51.100.21",
        "10.1.2.3",
        "198.51.100.250",
        "198.51.100.99",
    ] {
        udp_lines.push(traffic_line(ip(src), dst, 7, "accept"));
        udp_lines.push("\u{0}\u{ff}garbage <999> not a log".to_string());
    }
    // Policy 8 is no trigger: this indicator must not be blocked.
    udp_lines.push(traffic_line(ip("198.51.100.30"), dst, 8, "accept"));
    send_udp(env.udp, &udp_lines);
    // Over TCP, both framings.
    send_tcp(env.tcp, &[traffic_line(ip("198.51.100.12"), dst, 7, "accept")], true);
    send_tcp(env.tcp, &[traffic_line(ip("2001:db8::12"), ip("2001:db8::1"), 7, "accept")], false);

    let expect_v4 = ["misp-198.51.100.10", "misp-198.51.100.11", "misp-198.51.100.12"];
    eventually(WAIT, "the three IPv4 indicators are members of MISP_BLOCK", || async {
        let m = members(&env, "MISP_BLOCK");
        expect_v4.iter().all(|n| m.iter().any(|x| x == n))
    })
    .await;
    eventually(WAIT, "the IPv6 indicator is a member of MISP_BLOCK6", || async {
        members(&env, "MISP_BLOCK6").iter().any(|x| x == "misp-2001:db8::12")
    })
    .await;
    // Let the rest of the lines be fully processed before asserting what is absent.
    eventually(WAIT, "every triggering line was looked up", || async {
        env.metric("fortimisp_lookups_total{outcome=\"misp_miss\"}").await >= 3.0
    })
    .await;
    let v4 = members(&env, "MISP_BLOCK");
    for never in [
        "misp-198.51.100.20",
        "misp-198.51.100.21",
        "misp-10.1.2.3",
        "misp-198.51.100.250",
        "misp-198.51.100.99",
        "misp-198.51.100.30",
    ] {
        assert!(!v4.iter().any(|m| m == never), "{never} must not be blocked: {v4:?}");
        assert!(env.fortigate.object(never).is_none(), "{never} must not exist");
    }
    let (_, object) = env.fortigate.object("misp-198.51.100.10").unwrap();
    let comment = object["comment"].as_str().unwrap();
    assert!(comment.starts_with("fortimisp 20"), "comment marker: {comment}");
    assert!(comment.contains(&format!("misp-event={event}")), "event id in comment: {comment}");
    assert!(
        env.metric("fortimisp_parse_errors_total{reason=\"not_fortigate\"}").await
            + env.metric("fortimisp_parse_errors_total{reason=\"bad_pri\"}").await
            >= 1.0
    );
    assert!(env.metric("fortimisp_candidates_total{outcome=\"never_block\"}").await >= 2.0);
    assert!(env.metric("fortimisp_lines_untriggered_total").await >= 1.0);
    drop(daemon);
}
