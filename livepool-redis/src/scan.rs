//! Where one RESP frame ends, without building it.
//!
//! The redis crate builds values ([`redis::parse_redis_value`]); what it cannot do is say, for
//! bytes still arriving, whether a whole frame is there yet and whether that frame is a RESP3
//! push. The pool needs exactly that to count replies owed, to tell a push on an idle member
//! from an unsolicited reply, to drain a cancelled reply (even a large one) without holding
//! it as a value, and to refuse an absurd length from its header before allocating. So this
//! scanner stays: it walks headers and skips payloads, resumes where it stopped, and hands
//! the frame's bytes to the redis crate.

/// The longest bulk string accepted (Redis' own `proto-max-bulk-len` default).
pub(crate) const MAX_BULK: usize = 512 << 20;
/// The deepest nesting of aggregates accepted.
const MAX_DEPTH: usize = 64;
/// The most elements one aggregate may announce.
const MAX_ELEMENTS: usize = 1 << 24;
/// The longest header or simple line (`+`, `-`, `:`, …) accepted.
const MAX_LINE: usize = 1 << 20;

/// One complete top-level frame found in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame {
    /// Where it starts and just after where it ends.
    pub(crate) start: usize,
    pub(crate) end: usize,
    /// A RESP3 push (`>`), not a reply.
    pub(crate) push: bool,
}

/// An aggregate whose elements are still arriving.
#[derive(Debug)]
struct Open {
    remaining: usize,
    /// An attribute (`|`): it describes the element after it and is no element itself.
    attribute: bool,
}

/// A resumable scan over a buffer whose bytes before `start` are consumed.
#[derive(Debug, Default)]
pub(crate) struct Scanner {
    /// Where the frame being scanned starts.
    start: usize,
    /// Where the next element header starts.
    pos: usize,
    /// The open aggregates, outermost first.
    stack: Vec<Open>,
    /// The outermost aggregate is a push.
    push: bool,
    /// How many bytes from `pos + 1` are known to hold no `\n` (a long line is scanned once).
    scanned: usize,
}

/// A short, printable excerpt of bad bytes for an error message.
pub(crate) fn excerpt(b: &[u8]) -> String {
    let cut = &b[..b.len().min(32)];
    let mut s = String::from_utf8_lossy(cut).escape_debug().to_string();
    if b.len() > cut.len() {
        s.push('…');
    }
    s
}

fn parse_int(line: &[u8]) -> Option<i64> {
    std::str::from_utf8(line)
        .ok()
        .filter(|s| !s.is_empty() && !s.starts_with('+'))
        .and_then(|s| s.parse::<i64>().ok())
}

/// A length header: `-1` gives `None` (only where `null_ok`); negative or too large, an error.
fn parse_len(line: &[u8], null_ok: bool, max: usize, what: &str) -> Result<Option<usize>, String> {
    let n = parse_int(line).ok_or_else(|| format!("bad {what} length \"{}\"", excerpt(line)))?;
    if n == -1 && null_ok {
        return Ok(None);
    }
    match usize::try_from(n) {
        Ok(n) if n <= max => Ok(Some(n)),
        _ => Err(format!("{what} length {n} out of range (0..={max})")),
    }
}

impl Scanner {
    /// Between frames: nothing of a frame has been seen.
    pub(crate) fn is_idle(&self) -> bool {
        self.stack.is_empty() && self.pos == self.start
    }

    /// Where the unconsumed bytes start.
    pub(crate) fn start(&self) -> usize {
        self.start
    }

    /// The buffer dropped its first `n` bytes (all before `start`).
    pub(crate) fn shift(&mut self, n: usize) {
        debug_assert!(n <= self.start);
        self.start -= n;
        self.pos -= n;
    }

    /// Scans on: `Ok(None)` when more bytes are needed; a frame (consumed) when one is whole.
    pub(crate) fn next(&mut self, buf: &[u8]) -> Result<Option<Frame>, String> {
        loop {
            let pos = self.pos;
            if pos >= buf.len() {
                return Ok(None);
            }
            let ty = buf[pos];
            if !b"+-:$!=_#,(*~%|>".contains(&ty) {
                return Err(match ty {
                    b'?' | b';' | b'.' => "streamed RESP3 types are not supported".to_string(),
                    _ => format!(
                        "unexpected type byte {ty:#04x} (\"{}\")",
                        excerpt(&buf[pos..])
                    ),
                });
            }
            let from = pos + 1 + self.scanned;
            let Some(rel) = buf[from.min(buf.len())..].iter().position(|&b| b == b'\n') else {
                self.scanned = buf.len() - pos - 1;
                if self.scanned > MAX_LINE {
                    return Err(format!("line longer than {MAX_LINE} bytes"));
                }
                return Ok(None);
            };
            let nl = from + rel;
            if nl - pos > MAX_LINE {
                return Err(format!("line longer than {MAX_LINE} bytes"));
            }
            if nl < pos + 2 || buf[nl - 1] != b'\r' {
                return Err(format!(
                    "line not ended by CRLF (\"{}\")",
                    excerpt(&buf[pos..=nl])
                ));
            }
            let line = &buf[pos + 1..nl - 1];
            let mut next = nl + 1;
            // Elements this header opens (0 for a scalar).
            let mut opens = 0;
            match ty {
                b':' => {
                    parse_int(line).ok_or_else(|| format!("bad integer \"{}\"", excerpt(line)))?;
                }
                b'_' if !line.is_empty() => {
                    return Err(format!("bad null \"{}\"", excerpt(line)));
                }
                b'#' if line != b"t" && line != b"f" => {
                    return Err(format!("bad boolean \"{}\"", excerpt(line)));
                }
                b',' if std::str::from_utf8(line)
                    .ok()
                    .and_then(|s| s.parse::<f64>().ok())
                    .is_none() =>
                {
                    return Err(format!("bad double \"{}\"", excerpt(line)));
                }
                b'(' => {
                    let digits = line.strip_prefix(b"-").unwrap_or(line);
                    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                        return Err(format!("bad big number \"{}\"", excerpt(line)));
                    }
                }
                b'$' | b'!' | b'=' => {
                    if let Some(n) = parse_len(line, ty == b'$', MAX_BULK, "bulk")? {
                        if buf.len() < next + n + 2 {
                            // Wait for the payload; the short header is read again.
                            self.scanned = 0;
                            return Ok(None);
                        }
                        if &buf[next + n..next + n + 2] != b"\r\n" {
                            return Err("bulk payload not followed by CRLF".to_string());
                        }
                        if ty == b'=' && (n < 4 || buf[next + 3] != b':') {
                            return Err(format!(
                                "bad verbatim string \"{}\"",
                                excerpt(&buf[next..next + n])
                            ));
                        }
                        next += n + 2;
                    }
                }
                b'*' | b'~' | b'%' | b'|' | b'>' => {
                    if ty == b'>' && (!self.stack.is_empty() || pos != self.start) {
                        return Err("push frame inside another reply".to_string());
                    }
                    if let Some(n) = parse_len(line, ty == b'*', MAX_ELEMENTS, "aggregate")? {
                        opens = if matches!(ty, b'%' | b'|') { n * 2 } else { n };
                    }
                    if ty == b'>' {
                        self.push = true;
                    }
                }
                _ => {}
            }
            self.pos = next;
            self.scanned = 0;
            if opens > 0 {
                if self.stack.len() >= MAX_DEPTH {
                    return Err(format!("replies nested deeper than {MAX_DEPTH}"));
                }
                self.stack.push(Open {
                    remaining: opens,
                    attribute: ty == b'|',
                });
                continue;
            }
            // An empty attribute describes the element after it: nothing finished yet.
            if ty != b'|' && self.finish_one() {
                let frame = Frame {
                    start: self.start,
                    end: self.pos,
                    push: std::mem::take(&mut self.push),
                };
                self.start = self.pos;
                return Ok(Some(frame));
            }
        }
    }

    /// One element finished: closes every aggregate it completes and says whether the
    /// top-level frame is whole. A completed attribute is no element of its own (the
    /// element it describes follows).
    fn finish_one(&mut self) -> bool {
        loop {
            let Some(top) = self.stack.last_mut() else {
                return true;
            };
            top.remaining -= 1;
            if top.remaining > 0 {
                return false;
            }
            if self.stack.pop().is_some_and(|o| o.attribute) {
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scans `input` whole: the frame must use every byte.
    fn one(input: &[u8]) -> Result<Option<Frame>, String> {
        let mut s = Scanner::default();
        let f = s.next(input)?;
        if let Some(f) = f {
            assert_eq!(
                (f.start, f.end),
                (0, input.len()),
                "frame should use every byte"
            );
        }
        Ok(f)
    }

    fn err(input: &[u8]) -> String {
        match one(input) {
            Err(e) => e,
            other => panic!(
                "{:?} should fail: {other:?}",
                String::from_utf8_lossy(input)
            ),
        }
    }

    /// Fed one byte at a time, the frame is found only at the last byte, and the redis
    /// crate builds the same value from it.
    fn bytewise(input: &[u8]) {
        let mut s = Scanner::default();
        for n in 1..input.len() {
            assert!(
                s.next(&input[..n]).unwrap().is_none(),
                "complete early at {n}"
            );
        }
        let f = s.next(input).unwrap().expect("complete");
        assert_eq!(f.end, input.len());
        redis::parse_redis_value(input).expect("the redis crate reads it too");
    }

    #[test]
    fn whole_frames_of_every_type() {
        for input in [
            &b"+OK\r\n"[..],
            b"-ERR bad\r\n",
            b":-42\r\n",
            b"$5\r\nh\r\nlo\r\n",
            b"$0\r\n\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"*3\r\n:1\r\n*1\r\n+x\r\n$-1\r\n",
            b"_\r\n",
            b"#t\r\n",
            b",3.25\r\n",
            b",-inf\r\n",
            b"(-3492890328409238509324850943850943825024385\r\n",
            b"!21\r\nSYNTAX invalid syntax\r\n",
            b"=15\r\ntxt:Some string\r\n",
            b"%2\r\n+first\r\n:1\r\n$6\r\nsecond\r\n#f\r\n",
            b"~3\r\n+a\r\n:2\r\n_\r\n",
            b"%0\r\n",
            b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*2\r\n:2\r\n:3\r\n",
            b"*2\r\n:1\r\n|1\r\n+a\r\n+b\r\n:2\r\n",
            b"|0\r\n:7\r\n",
        ] {
            let f = one(input).unwrap().expect("whole");
            assert!(!f.push);
            bytewise(input);
        }
    }

    #[test]
    fn push_frames_are_flagged() {
        let f = one(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n")
            .unwrap()
            .unwrap();
        assert!(f.push);
        assert!(one(b">0\r\n").unwrap().unwrap().push);
        assert!(err(b"*1\r\n>0\r\n").contains("push"));
    }

    #[test]
    fn several_frames_in_one_buffer() {
        let buf = b"+A\r\n>1\r\n+p\r\n:3\r\n";
        let mut s = Scanner::default();
        let a = s.next(buf).unwrap().unwrap();
        assert_eq!((a.start, a.end, a.push), (0, 4, false));
        let b = s.next(buf).unwrap().unwrap();
        assert_eq!((b.start, b.end, b.push), (4, 12, true));
        let c = s.next(buf).unwrap().unwrap();
        assert_eq!((c.start, c.end), (12, buf.len()));
        assert!(s.next(buf).unwrap().is_none());
        assert!(s.is_idle());
    }

    #[test]
    fn garbage_is_a_clean_error() {
        assert!(err(b"hello world\r\n").contains("unexpected type byte 0x68"));
        assert!(err(b"\x00\x01\x02").contains("type byte"));
        assert!(err(b":12a\r\n").contains("bad integer"));
        assert!(err(b":\r\n").contains("bad integer"));
        assert!(err(b":99999999999999999999999\r\n").contains("bad integer"));
        assert!(err(b"+OK\n").contains("CRLF"));
        assert!(err(b"$3\r\nabcXY").contains("CRLF"));
        assert!(err(b"#x\r\n").contains("boolean"));
        assert!(err(b",pi\r\n").contains("double"));
        assert!(err(b"(12x\r\n").contains("big number"));
        assert!(err(b"_x\r\n").contains("null"));
        assert!(err(b"=2\r\nab\r\n").contains("verbatim"));
        assert!(err(b"$-2\r\n").contains("out of range"));
        assert!(err(b"!-1\r\n").contains("out of range"));
        assert!(err(b"~-1\r\n").contains("out of range"));
        assert!(err(b"$?\r\n").contains("length"));
        assert!(err(b";4\r\n").contains("streamed"));
    }

    #[test]
    fn limits_are_enforced_from_the_header() {
        assert!(err(b"$536870913\r\n").contains("out of range"));
        assert!(
            one(b"$536870912\r\n").unwrap().is_none(),
            "512 MiB is allowed"
        );
        assert!(err(b"*99999999999999999\r\n").contains("out of range"));
        assert!(err(b"%9223372036854775807\r\n").contains("out of range"));
        let deep = b"*1\r\n".repeat(MAX_DEPTH + 1);
        assert!(err(&deep).contains("nested deeper"));
        let mut ok = b"*1\r\n".repeat(MAX_DEPTH - 1);
        ok.extend_from_slice(b":1\r\n");
        assert!(one(&ok).unwrap().is_some());
        let mut s = Scanner::default();
        let mut long = b"+".to_vec();
        long.resize(MAX_LINE + 2, b'a');
        assert!(s.next(&long).unwrap_err().contains("longer"));
    }

    #[test]
    fn long_line_scanned_once_then_completed() {
        let mut s = Scanner::default();
        let mut buf = b"+".to_vec();
        buf.extend(std::iter::repeat_n(b'x', 5000));
        assert!(s.next(&buf).unwrap().is_none());
        assert_eq!(s.scanned, 5000);
        buf.extend_from_slice(b"\r\n");
        assert_eq!(s.next(&buf).unwrap().unwrap().end, buf.len());
    }

    #[test]
    fn shift_keeps_a_partial_frame() {
        let mut s = Scanner::default();
        let mut buf = b":1\r\n*2\r\n:2\r\n".to_vec();
        assert_eq!(s.next(&buf).unwrap().unwrap().end, 4);
        assert!(s.next(&buf).unwrap().is_none());
        buf.drain(..4);
        s.shift(4);
        buf.extend_from_slice(b":3\r\n");
        let f = s.next(&buf).unwrap().unwrap();
        assert_eq!((f.start, f.end), (0, buf.len()));
    }
}
