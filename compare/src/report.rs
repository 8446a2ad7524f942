//! Helpers shared by the comparison binaries: padded Markdown tables, the livepool commit a
//! run was built from, error texts, percentiles and figures, the options, and the common
//! `main`.
// Each binary includes this module and uses only part of it.
#![allow(dead_code)]

/// A Markdown table with padded columns: the first `left` columns left-aligned, the others
/// right-aligned.
pub fn markdown(header: &[&str], rows: &[Vec<String>], left: usize) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
    let pad = |i: usize, c: &str| {
        if i < left {
            format!("{c:<w$}", w = width[i])
        } else {
            format!("{c:>w$}", w = width[i])
        }
    };
    let mut out = line(header.iter().enumerate().map(|(i, h)| pad(i, h)).collect());
    out += &line(
        width
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let dashes = "-".repeat(w.saturating_sub(1).max(2));
                if i < left {
                    format!("{dashes}-")
                } else {
                    format!("{dashes}:")
                }
            })
            .collect(),
    );
    for r in rows {
        out += &line(r.iter().enumerate().map(|(i, c)| pad(i, c)).collect());
    }
    out
}

/// `git rev-parse --short HEAD` of the livepool checkout this was built from, marked when any
/// of `paths` (relative to the repository root) has uncommitted changes: they are compiled in.
pub fn livepool_commit(paths: &[&str]) -> String {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let head = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let mut status = vec!["status", "--porcelain", "--"];
    status.extend_from_slice(paths);
    match git(&status) {
        Some(s) if !s.is_empty() => {
            let files: Vec<&str> = s
                .lines()
                .filter_map(|l| l.split_whitespace().last())
                .collect();
            format!("{head} + uncommitted changes in {}", files.join(", "))
        }
        _ => head,
    }
}

/// An error with its chain of sources, each cause once.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    chain(e.to_string(), e)
}

/// `text` followed by the sources of `e` that it does not already say.
pub fn chain(mut text: String, e: &(dyn std::error::Error + 'static)) -> String {
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    text
}

/// How [`error_class`] folds an error text: each binary keeps its own way.
#[derive(Clone, Copy, Debug)]
pub struct ErrorClass {
    /// A `.` between digits belongs to the number: `1.5` and `127.0.0.1` are one `#` each
    /// (otherwise `#.#` and `#.#.#.#`).
    pub dotted_numbers: bool,
    /// At most this many characters, then `…`.
    pub max_chars: usize,
}

/// Numbers (runs of digits) to `#`, whitespace folded, cut as `how` says: errors that differ
/// only in numbers (ports, pids, durations) count as one.
pub fn error_class(e: &str, how: ErrorClass) -> String {
    let mut out = String::new();
    let mut chars = e.chars().peekable();
    while let Some(c) = chars.next() {
        let digit_dot = how.dotted_numbers
            && c == '.'
            && out.ends_with('#')
            && chars.peek().is_some_and(char::is_ascii_digit);
        if c.is_ascii_digit() || digit_dot {
            if !out.ends_with('#') {
                out.push('#');
            }
        } else if c.is_whitespace() {
            if !out.ends_with(' ') {
                out.push(' ');
            }
        } else {
            out.push(c);
        }
        if out.chars().count() >= how.max_chars {
            out.push('…');
            break;
        }
    }
    out
}

/// The median (NaN for no values).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The nearest-rank `q` percentile of sorted nanosecond samples, in microseconds (NaN for
/// no samples).
pub fn percentile_us(v: &[u64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1] as f64 / 1000.0
}

/// Microseconds for a table: one decimal below 100, "–" for none.
pub fn fmt_us(us: f64) -> String {
    if us.is_nan() {
        "–".into()
    } else if us < 100.0 {
        format!("{us:.1}")
    } else {
        format!("{us:.0}")
    }
}

/// Requests/s for a table: a whole number.
pub fn fmt_rate(r: f64) -> String {
    format!("{r:.0}")
}

/// A ratio for a table: two decimals.
pub fn fmt_ratio(r: f64) -> String {
    format!("{r:.2}")
}

/// The median and the range of per-round ratios, the range formatted.
pub fn ratio_stats(per_round: Vec<f64>) -> (f64, String) {
    let lo = per_round.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = per_round.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (median(per_round), format!("{lo:.2}–{hi:.2}"))
}

/// The ratio of two sets of sorted nanosecond samples at percentile `q`, formatted.
pub fn latency_ratio(a: &[u64], b: &[u64], q: f64) -> String {
    fmt_ratio(percentile_us(a, q) / percentile_us(b, q))
}

/// "N tokio worker threads on M CPUs": where the figures were measured.
pub fn threads() -> String {
    format!(
        "{} tokio worker threads on {} CPUs",
        tokio::runtime::Handle::current().metrics().num_workers(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    )
}

/// The options from the command line: `defaults` changed by each `FLAG VALUE` pair in turn,
/// which `set` takes, saying whether it knows the flag. `None` when `-h` or `--help` comes
/// first.
pub fn options<O>(
    mut o: O,
    mut set: impl FnMut(&mut O, &str, &str) -> Result<bool, String>,
) -> Result<Option<O>, String> {
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value (see --help)"))?;
        if !set(&mut o, &flag, &value)? {
            return Err(format!("unknown option {flag:?} (see --help)"));
        }
    }
    Ok(Some(o))
}

/// `value` of `flag` as a whole number.
pub fn num(flag: &str, value: &str) -> Result<u64, String> {
    value
        .trim()
        .parse::<u64>()
        .map_err(|_| format!("{flag}: {value:?} is not a whole number"))
}

/// `value` of `flag`, one of two words: what `choices` pairs it with.
pub fn choice<T>(flag: &str, value: &str, choices: [(&str, T); 2]) -> Result<T, String> {
    let [(a, x), (b, y)] = choices;
    match value {
        v if v == a => Ok(x),
        v if v == b => Ok(y),
        other => Err(format!("{flag}: {other:?} is not {a} or {b}")),
    }
}

/// `--pools LIST`: the pools `names` gives for the comma-separated names, each once, in the
/// order given.
pub fn pools<T: Copy + PartialEq>(
    flag: &str,
    value: &str,
    names: &[(&str, T)],
) -> Result<Vec<T>, String> {
    let mut pools = Vec::new();
    for p in value.split(',') {
        let &(_, which) = names
            .iter()
            .find(|(name, _)| *name == p.trim())
            .ok_or_else(|| format!("{flag}: unknown pool {:?}", p.trim()))?;
        if !pools.contains(&which) {
            pools.push(which);
        }
    }
    Ok(pools)
}

/// The `main` of every comparison binary: parse the options (print `usage` when asked for
/// it), run until done or interrupted, and say how it ended. `run` returns whether every
/// reply was right; `failure` says where to look when one was not.
pub async fn main<O, F>(
    parsed: Result<Option<O>, String>,
    usage: &str,
    run: impl FnOnce(O) -> F,
    failure: &str,
) -> std::process::ExitCode
where
    F: std::future::Future<Output = Result<bool, String>>,
{
    let o = match parsed {
        Ok(Some(o)) => o,
        Ok(None) => {
            print!("{usage}");
            return std::process::ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let res = tokio::select! {
        r = run(o) => r,
        _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
    };
    match res {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("error: {failure}");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
