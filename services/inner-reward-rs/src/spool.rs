//! Bounded on-disk spool for telemetry records that Kafka cannot take right now.
//!
//! Only the telemetry worker thread touches it (never a gRPC handler). Records are appended to
//! numbered segment files (`<seq:020>.seg`) as frames `[u32 LE key len][u32 LE payload len][key]
//! [payload]` and read back oldest first, so replay preserves order. A segment is deleted once
//! every record in it has been read back (handed to the producer); records handed over but not
//! acknowledged at shutdown come back through the producer's purge and are written to a segment
//! *in front of* all others ([`Spool::prepend`]), and the read position inside a partly replayed
//! segment is saved in `cursor`, so a restart continues exactly where this run stopped.
//!
//! The spool holds at most `max_bytes` (frames); [`Spool::append`] refuses more with
//! [`SpoolError::Full`]. A `LOCK` file (an exclusive advisory lock held while open) keeps two
//! scorers from sharing a directory. A torn final frame (crash mid-write) is detected by its
//! length and skipped with a warning.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Bytes of a frame header.
const HEADER: u64 = 8;
/// Largest key or payload accepted in a frame (guards against reading garbage lengths).
const MAX_FIELD: u32 = 16 * 1024 * 1024;

/// Errors of the spool.
#[derive(Debug, Error)]
pub enum SpoolError {
    #[error("spool is full ({max_bytes} bytes)")]
    Full { max_bytes: u64 },
    #[error("spool directory {dir} is in use by another process")]
    Locked { dir: PathBuf },
    #[error("spool i/o on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One spooled record: Kafka key and payload.
pub type Frame = (Vec<u8>, Vec<u8>);

struct Segment {
    seq: u64,
    /// Frame bytes / records not yet read back.
    bytes: u64,
    records: u64,
    /// File offset of the next frame to read.
    start: u64,
}

struct Active {
    seq: u64,
    out: BufWriter<File>,
    bytes: u64,
    records: u64,
}

struct Reader {
    seq: u64,
    input: BufReader<File>,
}

/// The spool. See the module documentation.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    _lock: File,
    /// Closed segments, oldest first (the one being read is the front).
    sealed: VecDeque<Segment>,
    active: Option<Active>,
    reader: Option<Reader>,
    /// Frame bytes / records not yet read back.
    bytes: u64,
    records: u64,
    next_seq: u64,
}

/// First sequence number of a fresh spool; leaves room below for [`Spool::prepend`].
const FIRST_SEQ: u64 = 1 << 40;

fn seg_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.seg"))
}

fn read_u32(r: &mut impl Read) -> io::Result<Option<u32>> {
    let mut b = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut b[got..])? {
            0 if got == 0 => return Ok(None),
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    Ok(Some(u32::from_le_bytes(b)))
}

/// Reads one frame; `Ok(None)` at a clean end of file, `Err(UnexpectedEof/InvalidData)` for a
/// torn or corrupt frame.
fn read_frame(r: &mut impl Read) -> io::Result<Option<Frame>> {
    let Some(klen) = read_u32(r)? else {
        return Ok(None);
    };
    let plen = read_u32(r)?.ok_or(io::ErrorKind::UnexpectedEof)?;
    if klen > MAX_FIELD || plen > MAX_FIELD {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "frame too long"));
    }
    let mut key = vec![0u8; klen as usize];
    r.read_exact(&mut key)?;
    let mut payload = vec![0u8; plen as usize];
    r.read_exact(&mut payload)?;
    Ok(Some((key, payload)))
}

fn frame_len(key: &[u8], payload: &[u8]) -> u64 {
    HEADER + key.len() as u64 + payload.len() as u64
}

/// Counts the frames of a segment from `offset` on: (records, bytes).
fn scan(path: &Path, offset: u64) -> io::Result<(u64, u64)> {
    let mut input = BufReader::new(File::open(path)?);
    input.seek(SeekFrom::Start(offset))?;
    let (mut records, mut bytes) = (0u64, 0u64);
    loop {
        match read_frame(&mut input) {
            Ok(Some((k, p))) => {
                records += 1;
                bytes += frame_len(&k, &p);
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "torn frame at the end of a spool segment; ignoring the rest");
                break;
            }
        }
    }
    Ok((records, bytes))
}

impl Spool {
    /// Opens (creating) the spool in `dir`, picking up segments a previous run left.
    pub fn open(dir: &Path, max_bytes: u64, segment_bytes: u64) -> Result<Self, SpoolError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(SpoolError::Locked {
                    dir: dir.to_path_buf(),
                })
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }
        let mut seqs: Vec<u64> = fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".seg")?.parse::<u64>().ok()
            })
            .collect();
        seqs.sort_unstable();
        // Where the previous run stopped reading: "<seq> <offset>".
        let cursor_path = dir.join("cursor");
        let cursor: Option<(u64, u64)> = fs::read_to_string(&cursor_path).ok().and_then(|s| {
            let mut it = s.split_whitespace();
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        });
        let mut spool = Self {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes: segment_bytes.max(4096),
            _lock: lock,
            sealed: VecDeque::new(),
            active: None,
            reader: None,
            bytes: 0,
            records: 0,
            next_seq: seqs.last().map_or(FIRST_SEQ, |s| s + 1),
        };
        for seq in seqs {
            let path = seg_path(dir, seq);
            let offset = match cursor {
                Some((cseq, off)) if cseq == seq => off,
                _ => 0,
            };
            let (records, bytes) = scan(&path, offset).map_err(io_err(&path))?;
            if records == 0 {
                let _ = fs::remove_file(&path);
                continue;
            }
            spool.bytes += bytes;
            spool.records += records;
            spool.sealed.push_back(Segment {
                seq,
                bytes,
                records,
                start: offset,
            });
        }
        let _ = fs::remove_file(&cursor_path);
        Ok(spool)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Frame bytes waiting to be replayed.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Records waiting to be replayed.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// True when nothing waits to be replayed.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Appends one record (buffered; see [`Spool::flush`]).
    pub fn append(&mut self, key: &[u8], payload: &[u8]) -> Result<(), SpoolError> {
        let len = frame_len(key, payload);
        if self.bytes + len > self.max_bytes {
            return Err(SpoolError::Full {
                max_bytes: self.max_bytes,
            });
        }
        if self
            .active
            .as_ref()
            .is_some_and(|a| a.bytes + len > self.segment_bytes)
        {
            self.seal()?;
        }
        if self.active.is_none() {
            let seq = self.next_seq;
            self.next_seq += 1;
            let path = seg_path(&self.dir, seq);
            let file = OpenOptions::new()
                .create_new(true)
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            self.active = Some(Active {
                seq,
                out: BufWriter::with_capacity(256 * 1024, file),
                bytes: 0,
                records: 0,
            });
        }
        let Some(a) = self.active.as_mut() else {
            unreachable!("active segment was just created")
        };
        let path = seg_path(&self.dir, a.seq);
        write_frame(&mut a.out, key, payload).map_err(io_err(&path))?;
        a.bytes += len;
        a.records += 1;
        self.bytes += len;
        self.records += 1;
        Ok(())
    }

    /// Writes buffered frames to the file (page cache; no fsync).
    pub fn flush(&mut self) -> Result<(), SpoolError> {
        if let Some(a) = self.active.as_mut() {
            let path = seg_path(&self.dir, a.seq);
            a.out.flush().map_err(io_err(&path))?;
        }
        Ok(())
    }

    /// Closes the active segment so it can be read back.
    fn seal(&mut self) -> Result<(), SpoolError> {
        if let Some(mut a) = self.active.take() {
            let path = seg_path(&self.dir, a.seq);
            a.out.flush().map_err(io_err(&path))?;
            if a.records == 0 {
                let _ = fs::remove_file(&path);
                return Ok(());
            }
            self.sealed.push_back(Segment {
                seq: a.seq,
                bytes: a.bytes,
                records: a.records,
                start: 0,
            });
        }
        Ok(())
    }

    /// Reads up to `max` records, oldest first, into `out`; deletes segments read to the end.
    /// Returns how many were read (0: the spool is empty).
    pub fn read(&mut self, max: usize, out: &mut VecDeque<Frame>) -> Result<usize, SpoolError> {
        let mut n = 0;
        while n < max {
            if self.sealed.is_empty() {
                if self.active.as_ref().is_some_and(|a| a.records > 0) {
                    self.seal()?;
                } else {
                    break;
                }
            }
            let Some(front) = self.sealed.front() else {
                break;
            };
            let (seq, start) = (front.seq, front.start);
            let path = seg_path(&self.dir, seq);
            if self.reader.as_ref().is_none_or(|r| r.seq != seq) {
                let mut input =
                    BufReader::with_capacity(256 * 1024, File::open(&path).map_err(io_err(&path))?);
                input.seek(SeekFrom::Start(start)).map_err(io_err(&path))?;
                self.reader = Some(Reader { seq, input });
            }
            let Some(reader) = self.reader.as_mut() else {
                unreachable!("reader was just opened")
            };
            let frame = match read_frame(&mut reader.input) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    tracing::warn!(path = %path.display(), "torn frame at the end of a spool segment; skipping it");
                    None
                }
                Err(e) => return Err(io_err(&path)(e)),
            };
            match frame {
                Some((k, p)) => {
                    let len = frame_len(&k, &p);
                    self.bytes = self.bytes.saturating_sub(len);
                    self.records = self.records.saturating_sub(1);
                    if let Some(front) = self.sealed.front_mut() {
                        front.records = front.records.saturating_sub(1);
                        front.bytes = front.bytes.saturating_sub(len);
                        front.start += len;
                    }
                    out.push_back((k, p));
                    n += 1;
                }
                None => {
                    // End of the segment: everything in it has been handed over (what is
                    // left in the counts is a torn tail).
                    if let Some(front) = self.sealed.pop_front() {
                        self.bytes = self.bytes.saturating_sub(front.bytes);
                        self.records = self.records.saturating_sub(front.records);
                    }
                    self.reader = None;
                    fs::remove_file(&path).map_err(io_err(&path))?;
                }
            }
        }
        Ok(n)
    }

    /// Writes `frames` into a new segment read before every other one (for records that were
    /// handed to Kafka but came back unacknowledged at shutdown). Ignores the size bound: these
    /// records were accepted already.
    pub fn prepend(&mut self, frames: &[Frame]) -> Result<(), SpoolError> {
        if frames.is_empty() {
            return Ok(());
        }
        let first = self
            .sealed
            .front()
            .map(|s| s.seq)
            .or(self.active.as_ref().map(|a| a.seq))
            .unwrap_or(self.next_seq);
        let seq = first.saturating_sub(1);
        let path = seg_path(&self.dir, seq);
        let tmp = self.dir.join(format!("{seq:020}.tmp"));
        let mut out = BufWriter::new(File::create(&tmp).map_err(io_err(&tmp))?);
        let mut bytes = 0;
        for (k, p) in frames {
            write_frame(&mut out, k, p).map_err(io_err(&tmp))?;
            bytes += frame_len(k, p);
        }
        let file = out.into_inner().map_err(|e| io_err(&tmp)(e.into_error()))?;
        file.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        // The old front keeps its read position (`start`); the new segment is read first.
        self.sealed.push_front(Segment {
            seq,
            bytes,
            records: frames.len() as u64,
            start: 0,
        });
        self.bytes += bytes;
        self.records += frames.len() as u64;
        Ok(())
    }

    /// Lifts the size bound (at shutdown: accepted records must not be refused).
    pub fn unbounded(&mut self) {
        self.max_bytes = u64::MAX;
    }

    /// Flushes and fsyncs the active segment and saves the read position, so that a later
    /// [`Spool::open`] of the same directory continues where this one stopped. The last call.
    pub fn close(&mut self) -> Result<(), SpoolError> {
        if let Some(a) = self.active.as_mut() {
            let path = seg_path(&self.dir, a.seq);
            a.out.flush().map_err(io_err(&path))?;
            a.out.get_ref().sync_all().map_err(io_err(&path))?;
        }
        self.seal()?;
        let cursor_path = self.dir.join("cursor");
        match self.sealed.iter().find(|s| s.start > 0) {
            Some(s) => {
                fs::write(&cursor_path, format!("{} {}\n", s.seq, s.start))
                    .map_err(io_err(&cursor_path))?;
            }
            _ => {
                let _ = fs::remove_file(&cursor_path);
            }
        }
        Ok(())
    }
}

fn write_frame(out: &mut impl Write, key: &[u8], payload: &[u8]) -> io::Result<()> {
    let klen = u32::try_from(key.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
    let plen = u32::try_from(payload.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
    out.write_all(&klen.to_le_bytes())?;
    out.write_all(&plen.to_le_bytes())?;
    out.write_all(key)?;
    out.write_all(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(i: u32) -> Frame {
        (
            format!("u-{}", i % 7).into_bytes(),
            format!("{{\"event_id\":\"e-{i}\"}}").into_bytes(),
        )
    }

    fn drain(s: &mut Spool) -> Vec<Frame> {
        let mut out = VecDeque::new();
        while s.read(100, &mut out).expect("read") > 0 {}
        out.into_iter().collect()
    }

    #[test]
    fn replays_in_order_across_segments_and_deletes_them() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = Spool::open(dir.path(), 1 << 30, 4096).expect("open");
        for i in 0..1000 {
            s.append(&frame(i).0, &frame(i).1).expect("append");
        }
        s.flush().expect("flush");
        assert_eq!(s.records(), 1000);
        let got = drain(&mut s);
        assert_eq!(got, (0..1000).map(frame).collect::<Vec<_>>());
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0);
        let segs = fs::read_dir(dir.path())
            .expect("ls")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".seg"))
            })
            .count();
        assert_eq!(segs, 0, "read segments are deleted");
    }

    #[test]
    fn bounded() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = Spool::open(dir.path(), 100, 4096).expect("open");
        let (k, p) = frame(1);
        let mut n = 0;
        while s.append(&k, &p).is_ok() {
            n += 1;
        }
        assert!(n > 0 && s.bytes() <= 100);
        assert!(matches!(s.append(&k, &p), Err(SpoolError::Full { .. })));
    }

    #[test]
    fn reopen_continues_at_cursor_with_prepended_first() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let mut s = Spool::open(dir.path(), 1 << 30, 1 << 20).expect("open");
            assert!(matches!(
                Spool::open(dir.path(), 1 << 30, 1 << 20),
                Err(SpoolError::Locked { .. })
            ));
            for i in 10..30 {
                s.append(&frame(i).0, &frame(i).1).expect("append");
            }
            let mut out = VecDeque::new();
            assert_eq!(s.read(5, &mut out).expect("read"), 5); // 10..15 handed over
            assert_eq!(s.records(), 15);
            // 0..10 came back from Kafka unacknowledged, plus 10..15 read but not sent.
            let back: Vec<Frame> = (0..15).map(frame).collect();
            s.prepend(&back).expect("prepend");
            s.close().expect("close");
        }
        let mut s = Spool::open(dir.path(), 1 << 30, 1 << 20).expect("reopen");
        assert_eq!(s.records(), 30);
        let got = drain(&mut s);
        assert_eq!(got, (0..30).map(frame).collect::<Vec<_>>());
    }

    #[test]
    fn torn_tail_is_skipped() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let mut s = Spool::open(dir.path(), 1 << 30, 1 << 20).expect("open");
            for i in 0..3 {
                s.append(&frame(i).0, &frame(i).1).expect("append");
            }
            s.close().expect("close");
        }
        let seg = fs::read_dir(dir.path())
            .expect("ls")
            .filter_map(|e| e.ok())
            .find(|e| e.file_name().to_string_lossy().ends_with(".seg"))
            .expect("segment")
            .path();
        let mut f = OpenOptions::new()
            .append(true)
            .open(&seg)
            .expect("open seg");
        f.write_all(&[5, 0, 0, 0, 9]).expect("torn");
        drop(f);
        let mut s = Spool::open(dir.path(), 1 << 30, 1 << 20).expect("reopen");
        assert_eq!(s.records(), 3);
        assert_eq!(drain(&mut s), (0..3).map(frame).collect::<Vec<_>>());
    }
}
