//! Output helpers shared by the comparison binaries: padded Markdown tables and the livepool
//! commit a run was built from.

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
