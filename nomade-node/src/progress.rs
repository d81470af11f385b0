//! Progress of long operations, for the library's callers: a reader that
//! reports how much went through it, and byte counts written for people.
//! (The `nomade` program draws them: a bar on a terminal, plain lines
//! elsewhere.)

use std::io::{Read, Seek, SeekFrom};

/// `n` bytes for people: `512 B`, `12.5 KiB`, `1.0 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A reader that reports how much has been read through it (`total` is
/// what the caller expects to read in all, passed back to `progress`).
/// A seek keeps the count: a reader read twice counts twice.
pub struct CountingReader<R, F> {
    inner: R,
    done: u64,
    total: u64,
    progress: F,
}

impl<R, F: FnMut(u64, u64)> CountingReader<R, F> {
    /// Wraps `inner`.
    pub fn new(inner: R, total: u64, progress: F) -> Self {
        CountingReader {
            inner,
            done: 0,
            total,
            progress,
        }
    }
}

impl<R: Read, F: FnMut(u64, u64)> Read for CountingReader<R, F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done = self.done.saturating_add(n as u64);
        (self.progress)(self.done.min(self.total), self.total);
        Ok(n)
    }
}

impl<R: Seek, F> Seek for CountingReader<R, F> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counting_reader_reports_both_passes() {
        let mut seen = Vec::new();
        let mut r = CountingReader::new(std::io::Cursor::new(vec![1u8; 10]), 20, |d, t| {
            seen.push((d, t))
        });
        let mut buf = Vec::new();
        r.read_to_end(&mut buf).expect("read");
        r.seek(SeekFrom::Start(0)).expect("seek");
        r.read_to_end(&mut buf).expect("read");
        drop(r);
        assert_eq!(seen.iter().map(|s| s.0).max(), Some(20));
        assert!(seen.iter().all(|s| s.1 == 20));
    }

    #[test]
    fn bytes_are_written_for_people() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(1 << 30), "1.0 GiB");
    }
}
