//! The command line: options, their defaults and `--help`.

use std::time::Duration;

use crate::faults::Fault;

const MAX_ENDPOINTS: usize = 8;

pub(crate) const USAGE: &str = "usage: chaos [--duration SECS] [--rate REQS_PER_SEC] [--tasks N] \
[--fault-every MS] [--faults fin,rst,garbage,stall,late,restart] [--seed N] [--endpoints N]
  defaults: --duration 20 --rate 2000 --tasks 32 --fault-every 200 --faults all --endpoints 1
  --endpoints N (1..=8): N servers on 127.0.0.2.. behind a Balancer; restart = a 3 s outage";

#[derive(Clone)]
pub(crate) struct Opts {
    pub(crate) duration: Duration,
    pub(crate) rate: u64,
    pub(crate) tasks: u64,
    pub(crate) fault_every: Duration,
    pub(crate) faults: Vec<Fault>,
    pub(crate) seed: u64,
    pub(crate) endpoints: usize,
}

pub(crate) fn parse_args() -> Result<Option<Opts>, String> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let mut o = Opts {
        duration: Duration::from_secs(20),
        rate: 2000,
        tasks: 32,
        fault_every: Duration::from_millis(200),
        faults: Fault::ALL.to_vec(),
        seed,
        endpoints: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Ok(None);
        }
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let num = |what: &str| -> Result<u64, String> {
            value.parse::<u64>().ok().filter(|&n| n > 0).ok_or(format!(
                "{what}: expected a positive integer, got {value:?}"
            ))
        };
        match flag.as_str() {
            "--duration" => o.duration = Duration::from_secs(num("--duration")?),
            "--rate" => o.rate = num("--rate")?,
            "--tasks" => o.tasks = num("--tasks")?,
            "--fault-every" => o.fault_every = Duration::from_millis(num("--fault-every")?),
            "--seed" => o.seed = num("--seed")?,
            "--endpoints" => {
                o.endpoints = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_ENDPOINTS).contains(n))
                    .ok_or(format!(
                        "--endpoints: expected 1 to {MAX_ENDPOINTS}, got {value:?}"
                    ))?;
            }
            "--faults" if value == "all" => o.faults = Fault::ALL.to_vec(),
            "--faults" if value == "none" => o.faults.clear(),
            "--faults" => {
                o.faults = value
                    .split(',')
                    .map(|n| {
                        Fault::ALL
                            .into_iter()
                            .find(|f| f.name() == n.trim())
                            .ok_or(format!("unknown fault {n:?}"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            _ => return Err(format!("unknown flag {flag:?}")),
        }
    }
    Ok(Some(o))
}
