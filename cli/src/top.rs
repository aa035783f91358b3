//! `spate top`: a live view of a server's streams, read from its metrics endpoint (the
//! address its hello advertises, or `--metrics`): per stream the write and read rates,
//! throttling, iterator age and put latency; the busiest shards of streams with shard-level
//! metrics on; the engine's rounds, flushes and connections, and each core's load.
//! Refreshes every `--interval` seconds until interrupted; `--once` prints one frame (two
//! scrapes an interval apart) without terminal control codes. With `--tls` the endpoint is
//! read over HTTPS, verified as the server's own connections are (same CA, same name).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use spate_client::Client;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::args::TopArgs;

/// Longest a scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(client: &Client, server: &str, args: TopArgs) -> Result<(), String> {
    let metrics = match (&args.metrics, &client.server_info().metrics_address) {
        (Some(m), _) => m.clone(),
        (None, Some(m)) => reachable(m, server),
        (None, None) => {
            return Err(format!(
                "{server} has no metrics endpoint (it runs with metrics_listen = \"\"); give one with --metrics HOST:PORT"
            ))
        }
    };
    let tls = match &client.config().tls {
        Some(options) => Some(Https {
            connector: tokio_rustls::TlsConnector::from(
                options.client_config().map_err(|e| e.to_string())?,
            ),
            name: options.server_name_for(server).map_err(|e| e.to_string())?,
        }),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{metrics}/metrics");
    let interval = Duration::from_secs_f64(args.interval.max(0.1));
    let terminal = std::io::stdout().is_terminal() && !args.once;
    let mut prev = scrape(&metrics, tls.as_ref()).await?;
    loop {
        tokio::time::sleep(interval).await;
        let cur = scrape(&metrics, tls.as_ref()).await?;
        let frame = render(server, &url, &prev, &cur);
        let mut out = std::io::stdout().lock();
        let clear = if terminal { "\x1b[H\x1b[2J" } else { "" };
        write!(out, "{clear}{frame}")
            .and_then(|()| out.flush())
            .map_err(|e| format!("cannot write to stdout: {e}"))?;
        if args.once {
            return Ok(());
        }
        prev = cur;
    }
}

/// The advertised metrics address, with an unspecified host (0.0.0.0, ::) replaced by the
/// host the user reached the server at.
fn reachable(advertised: &str, server: &str) -> String {
    let Ok(addr) = advertised.parse::<std::net::SocketAddr>() else {
        return advertised.to_string();
    };
    if !addr.ip().is_unspecified() {
        return advertised.to_string();
    }
    let host = server.rsplit_once(':').map_or(server, |(h, _)| h);
    format!("{host}:{}", addr.port())
}

/// One scrape: the counters, gauges and histograms by name and `stream` label.
#[derive(Debug, Default)]
struct Sample {
    at: Option<Instant>,
    /// (metric, stream) -> value; stream "" for engine-wide ones.
    values: BTreeMap<(String, String), f64>,
    /// (metric, stream) -> cumulative bucket counts by upper bound.
    histograms: BTreeMap<(String, String), Vec<(f64, f64)>>,
    /// (metric, stream, shard) -> value, for streams with shard-level metrics on.
    shards: BTreeMap<(String, String, u32), f64>,
}

impl Sample {
    fn get(&self, metric: &str, stream: &str) -> f64 {
        self.values
            .get(&(metric.to_string(), stream.to_string()))
            .copied()
            .unwrap_or(0.0)
    }

    /// Sum of a labeled family over every label value (requests by op, errors by code).
    fn sum(&self, metric: &str) -> f64 {
        self.values
            .iter()
            .filter(|((m, _), _)| m == metric)
            .map(|(_, v)| v)
            .sum()
    }

    fn streams(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .values
            .keys()
            .filter(|(m, s)| m == "IncomingRecords_total" && !s.is_empty())
            .map(|(_, s)| s.clone())
            .collect();
        names.dedup();
        names
    }
}

/// How to reach a metrics endpoint that speaks HTTPS: the server's certificate is the one
/// its listeners show, so it is checked against the same CA and name.
struct Https {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

/// Sends one GET and reads the whole answer (the endpoint closes after it).
async fn get(mut conn: impl AsyncRead + AsyncWrite + Unpin, addr: &str) -> std::io::Result<String> {
    conn.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    conn.flush().await?;
    let mut text = String::new();
    conn.read_to_string(&mut text).await?;
    Ok(text)
}

async fn scrape(addr: &str, tls: Option<&Https>) -> Result<Sample, String> {
    let fetch = async {
        let conn = tokio::net::TcpStream::connect(addr).await?;
        match tls {
            None => get(conn, addr).await,
            Some(https) => {
                let conn = https.connector.connect(https.name.clone(), conn).await?;
                get(conn, addr).await
            }
        }
    };
    let text = tokio::time::timeout(SCRAPE_TIMEOUT, fetch)
        .await
        .map_err(|_| format!("no answer from the metrics endpoint {addr}"))?
        .map_err(|e| format!("cannot read the metrics endpoint {addr}: {e}"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("the metrics endpoint {addr} answered no HTTP"))?;
    if !head.starts_with("HTTP/1.1 200") {
        let status = head.lines().next().unwrap_or_default();
        return Err(format!("the metrics endpoint {addr} answered {status}"));
    }
    let parsed = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .map_err(|e| format!("the metrics of {addr} do not parse: {e}"))?;
    let mut sample = Sample {
        at: Some(Instant::now()),
        ..Sample::default()
    };
    for s in parsed.samples {
        if let (Some(stream), Some(shard)) = (s.labels.get("stream"), s.labels.get("shard")) {
            let (Ok(shard), Some(v)) = (shard.parse::<u32>(), plain(&s.value)) else {
                continue;
            };
            sample
                .shards
                .insert((s.metric.clone(), stream.to_string(), shard), v);
            continue;
        }
        let label = ["stream", "op", "code", "core", "reason"]
            .iter()
            .find_map(|l| s.labels.get(l))
            .unwrap_or_default()
            .to_string();
        if let Some(v) = plain(&s.value) {
            sample.values.insert((s.metric, label), v);
            continue;
        }
        if let prometheus_parse::Value::Histogram(h) = s.value {
            let buckets = h.iter().map(|b| (b.less_than, b.count)).collect();
            sample.histograms.insert((s.metric, label), buckets);
        }
    }
    Ok(sample)
}

fn plain(v: &prometheus_parse::Value) -> Option<f64> {
    match v {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => Some(*v),
        _ => None,
    }
}

/// Most shards the busiest-shards table shows.
const BUSIEST_SHARDS: usize = 10;

/// The upper bound (ms) of the bucket holding the 99th percentile of what was observed
/// between two scrapes; `None` when nothing was.
fn p99(prev: Option<&Vec<(f64, f64)>>, cur: Option<&Vec<(f64, f64)>>) -> Option<f64> {
    let cur = cur?;
    let delta: Vec<(f64, f64)> = cur
        .iter()
        .map(|(le, n)| {
            let before = prev
                .and_then(|p| p.iter().find(|(l, _)| l == le))
                .map_or(0.0, |(_, n)| *n);
            (*le, n - before)
        })
        .collect();
    let total = delta.iter().map(|(_, n)| *n).fold(0.0, f64::max);
    if total <= 0.0 {
        return None;
    }
    delta
        .iter()
        .find(|(_, n)| *n >= 0.99 * total)
        .map(|(le, _)| *le)
}

/// One frame; `url` is the endpoint's, for the header.
fn render(server: &str, url: &str, prev: &Sample, cur: &Sample) -> String {
    let dt = match (prev.at, cur.at) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64().max(1e-3),
        _ => 1.0,
    };
    let rate = |metric: &str, stream: &str| {
        (cur.get(metric, stream) - prev.get(metric, stream)).max(0.0) / dt
    };
    let mib = |bytes_per_s: f64| bytes_per_s / (1 << 20) as f64;
    let mut out = String::new();
    out.push_str(&format!(
        "spate top  {server}  (metrics {url}, rates over {dt:.1} s)\n\n"
    ));
    out.push_str(&format!(
        "{:<24} {:>10} {:>9} {:>11} {:>10} {:>9} {:>11} {:>10} {:>12}\n",
        "STREAM",
        "IN rec/s",
        "IN MiB/s",
        "THROTTLED/s",
        "OUT rec/s",
        "OUT MiB/s",
        "ITER AGE ms",
        "PUT p99 ms",
        "IN rec total"
    ));
    for s in cur.streams() {
        let p = p99(
            prev.histograms
                .get(&("PutRecords_Latency".to_string(), s.clone())),
            cur.histograms
                .get(&("PutRecords_Latency".to_string(), s.clone())),
        )
        .map_or("-".to_string(), |v| {
            if v == f64::INFINITY || v > 1e9 {
                "> 10000".to_string()
            } else {
                format!("{v}")
            }
        });
        out.push_str(&format!(
            "{:<24} {:>10.0} {:>9.2} {:>11.0} {:>10.0} {:>9.2} {:>11.0} {:>10} {:>12.0}\n",
            s,
            rate("IncomingRecords_total", &s),
            mib(rate("IncomingBytes_total", &s)),
            rate("WriteProvisionedThroughputExceeded_total", &s),
            rate("GetRecords_Records_total", &s) + rate("SubscribeToShardEvent_Records_total", &s),
            mib(rate("OutgoingBytes_total", &s)),
            cur.get("GetRecords_IteratorAgeMilliseconds", &s),
            p,
            cur.get("IncomingRecords_total", &s),
        ));
    }
    // The busiest shards (streams with shard-level metrics on), by bytes written.
    let shard_rate = |metric: &str, key: &(String, u32)| {
        let k = (metric.to_string(), key.0.clone(), key.1);
        let before = prev.shards.get(&k).copied().unwrap_or(0.0);
        (cur.shards.get(&k).copied().unwrap_or(0.0) - before).max(0.0) / dt
    };
    let mut busiest: Vec<((String, u32), f64)> = cur
        .shards
        .keys()
        .filter(|(m, _, _)| m == "IncomingBytes_total")
        .map(|(_, s, id)| {
            let key = (s.clone(), *id);
            let r = shard_rate("IncomingBytes_total", &key);
            (key, r)
        })
        .collect();
    busiest.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if !busiest.is_empty() {
        out.push_str(&format!(
            "\n{:<24} {:>6} {:>10} {:>9} {:>11} {:>10} {:>9} {:>11}\n",
            "BUSIEST SHARDS",
            "SHARD",
            "IN rec/s",
            "IN MiB/s",
            "THROTTLED/s",
            "OUT rec/s",
            "OUT MiB/s",
            "ITER AGE ms"
        ));
        for (key, in_bytes) in busiest.iter().take(BUSIEST_SHARDS) {
            out.push_str(&format!(
                "{:<24} {:>6} {:>10.0} {:>9.2} {:>11.0} {:>10.0} {:>9.2} {:>11.0}\n",
                key.0,
                key.1,
                shard_rate("IncomingRecords_total", key),
                mib(*in_bytes),
                shard_rate("WriteProvisionedThroughputExceeded_total", key),
                shard_rate("OutgoingRecords_total", key),
                mib(shard_rate("OutgoingBytes_total", key)),
                cur.shards
                    .get(&(
                        "GetRecords_IteratorAgeMilliseconds".to_string(),
                        key.0.clone(),
                        key.1
                    ))
                    .copied()
                    .unwrap_or(0.0),
            ));
        }
    }
    let per_s = |metric: &str| (cur.sum(metric) - prev.sum(metric)).max(0.0) / dt;
    // Requests answered "throttled" (a whole put refused, a read over the shard's five calls
    // a second) are the limits at work, shown per stream above: not errors here.
    let throttled_answers =
        rate("spate_errors_total", "Throttled") + rate("spate_errors_total", "ReadThrottled");
    out.push_str(&format!(
        "\nENGINE  cores {:.0}  rounds/s {:.0}  flushes/s {:.0}  journal MiB/s {:.2}  requests/s {:.0}  errors/s {:.0}  throttled/s {:.0}  connections {:.0}  parked reads {:.0}\n",
        cur.get("spate_cores", ""),
        per_s("spate_rounds_total"),
        per_s("spate_round_syncs_total"),
        mib(per_s("spate_journal_bytes_total")),
        per_s("spate_requests_total"),
        (per_s("spate_errors_total") - throttled_answers).max(0.0),
        throttled_answers,
        cur.get("spate_connections", ""),
        cur.get("spate_parked_reads", ""),
    ));
    // Appends that had to wait before staging, by what for: where backpressure comes from.
    let waits: Vec<String> = spate_engine::store::WaitReason::ALL
        .iter()
        .map(|w| w.name())
        .map(|why| format!("{why} {:.0}", rate("spate_append_waits_total", why)))
        .collect();
    out.push_str(&format!(
        "WAITS   appends waiting/s  {}\n",
        waits.join("  ")
    ));
    let flush = p99(
        prev.histograms
            .get(&("spate_flush_latency".to_string(), String::new())),
        cur.histograms
            .get(&("spate_flush_latency".to_string(), String::new())),
    )
    .map_or("-".to_string(), |v| format!("{v}"));
    let mut cores: Vec<(u64, f64)> = cur
        .values
        .keys()
        .filter(|(m, _)| m == "spate_core_requests_total")
        .filter_map(|(_, c)| c.parse::<u64>().ok())
        .map(|c| (c, rate("spate_core_requests_total", &c.to_string())))
        .collect();
    cores.sort_by_key(|(c, _)| *c);
    let per_core: Vec<String> = cores
        .iter()
        .map(|(c, r)| format!("core {c} {r:.0} req/s"))
        .collect();
    out.push_str(&format!(
        "CORES   {}  flush p99 ms {flush}\n",
        per_core.join("  ")
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_of_what_came_between_two_scrapes() {
        let prev = vec![(1.0, 10.0), (5.0, 10.0), (f64::INFINITY, 10.0)];
        let cur = vec![(1.0, 10.0), (5.0, 109.0), (f64::INFINITY, 110.0)];
        // 100 new observations: 99 at most 5 ms, one above.
        assert_eq!(p99(Some(&prev), Some(&cur)), Some(5.0));
        assert_eq!(p99(Some(&cur), Some(&cur)), None);
        assert_eq!(p99(None, None), None);
    }

    #[test]
    fn appends_waiting_are_shown_per_second_by_reason() {
        let sample = |secs: u64, journal: f64| {
            let mut s = Sample {
                at: Some(Instant::now() + std::time::Duration::from_secs(secs)),
                ..Sample::default()
            };
            for (why, n) in [("round", 0.0), ("memory", 3.0), ("journal", journal)] {
                s.values
                    .insert(("spate_append_waits_total".into(), why.into()), n);
            }
            s
        };
        let (prev, cur) = (sample(0, 10.0), sample(2, 50.0));
        let frame = render("s:7400", "s:7480", &prev, &cur);
        let line = frame
            .lines()
            .find(|l| l.starts_with("WAITS"))
            .expect(&frame);
        // 40 more journal waits over 2 s; memory did not move; no extent waits exposed.
        assert!(line.contains("journal 20"), "{line}");
        assert!(
            line.contains("memory 0") && line.contains("extent 0"),
            "{line}"
        );
    }

    #[test]
    fn throttled_answers_are_not_counted_as_errors() {
        let sample = |secs: u64, read_throttled: f64, unknown: f64| {
            let mut s = Sample {
                at: Some(Instant::now() + std::time::Duration::from_secs(secs)),
                ..Sample::default()
            };
            for (code, n) in [
                ("ReadThrottled", read_throttled),
                ("UnknownStream", unknown),
            ] {
                s.values
                    .insert(("spate_errors_total".into(), code.into()), n);
            }
            s
        };
        let (prev, cur) = (sample(0, 0.0, 0.0), sample(2, 10.0, 4.0));
        let frame = render("s:7400", "s:7480", &prev, &cur);
        let line = frame
            .lines()
            .find(|l| l.starts_with("ENGINE"))
            .expect(&frame);
        assert!(line.contains("errors/s 2 "), "{line}");
        assert!(line.contains("throttled/s 5 "), "{line}");
    }

    #[test]
    fn unspecified_hosts_become_the_servers() {
        assert_eq!(reachable("0.0.0.0:7480", "db1:7400"), "db1:7480");
        assert_eq!(reachable("10.0.0.1:7480", "db1:7400"), "10.0.0.1:7480");
    }
}
