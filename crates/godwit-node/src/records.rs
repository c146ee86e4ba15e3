//! The host's copy of its SM's store records: sealed bytes it keeps durable, in order, and
//! hands back at the next start. Nothing here is trusted: the SM authenticates every record,
//! checks that they chain, and checks the last against its component's counter. This only
//! has to lose nothing the SM was told is durable.
//!
//! Layout: `DIR/<number>.seg`, one segment per base record (named by its number, 20 digits),
//! holding the base and the records after it, each framed as `len (u32 BE) ‖ crc32 (u32 BE)
//! ‖ bytes`. A record is durable once its segment is synced (`fdatasync`; a new segment's
//! directory entry too). Segments before the newest durable base are deleted. The CRC only
//! tells a torn tail (a crash mid-append) from a record: the SM's authentication is what
//! protects the bytes.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use godwit_monitor::StoreWrite;

/// Bytes of a record's frame header.
const HEADER_BYTES: usize = 8;

/// The host's record files for one SM.
pub(crate) struct RecordLog {
    dir: PathBuf,
    /// The segment being appended to, and its base's number.
    current: Option<(u64, File)>,
    /// Held for the life of the log: a second daemon on the same directory is refused.
    _lock: File,
}

/// What [`RecordLog::open`] found.
pub(crate) struct Found {
    /// The records of the newest complete segment, oldest first.
    pub(crate) records: Vec<Vec<u8>>,
    /// Bytes dropped from the end of that segment (a torn append).
    pub(crate) torn_bytes: u64,
}

fn segment_name(number: u64) -> String {
    format!("{number:020}.seg")
}

fn segment_number(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20).then(|| digits.parse().ok()).flatten()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads the complete records of a segment: returns them and the length of the prefix
/// they span.
fn read_segment(path: &Path) -> std::io::Result<(Vec<Vec<u8>>, u64, u64)> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let mut records = Vec::new();
    let mut at = 0usize;
    while let Some(header) = bytes.get(at..at + HEADER_BYTES) {
        let len = u32::from_be_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_be_bytes(header[4..].try_into().expect("4 bytes"));
        if len > godwit_store::RECORD_BYTES_MAX {
            break;
        }
        let Some(body) = bytes.get(at + HEADER_BYTES..at + HEADER_BYTES + len) else {
            break;
        };
        if crc32fast::hash(body) != crc {
            break;
        }
        records.push(body.to_vec());
        at += HEADER_BYTES + len;
    }
    Ok((records, at as u64, bytes.len() as u64))
}

impl RecordLog {
    /// Opens (creating, mode 0700) the record directory, takes its lock, and reads the
    /// records to hand the SM: those of the newest segment whose base is complete. A torn
    /// tail is cut off, so that appends follow the last complete record; segments before
    /// the chosen one are deleted (a crash after a base was durable left them).
    pub(crate) fn open(dir: &Path) -> std::io::Result<(Self, Found)> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let lock = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join("LOCK"))?;
        lock.try_lock().map_err(|e| {
            std::io::Error::other(format!(
                "{}: in use by another process ({e})",
                dir.display()
            ))
        })?;
        let mut segments: Vec<(u64, PathBuf)> = fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter_map(|p| segment_number(&p).map(|n| (n, p)))
            .collect();
        segments.sort();
        let mut found = Found {
            records: Vec::new(),
            torn_bytes: 0,
        };
        let mut current = None;
        while let Some((number, path)) = segments.pop() {
            let (records, good, total) = read_segment(&path)?;
            if records.is_empty() {
                // A base whose write never completed: it was never reported durable.
                tracing::warn!(segment = %path.display(), "an incomplete segment; removed");
                fs::remove_file(&path)?;
                continue;
            }
            if good < total {
                tracing::warn!(
                    segment = %path.display(),
                    bytes = total - good,
                    "a torn record at the end of the store's records; cut off"
                );
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(good)?;
                f.sync_all()?;
            }
            found = Found {
                records,
                torn_bytes: total - good,
            };
            let file = OpenOptions::new().append(true).open(&path)?;
            current = Some((number, file));
            break;
        }
        for (_, older) in segments {
            fs::remove_file(older)?;
        }
        sync_dir(dir)?;
        Ok((
            Self {
                dir: dir.to_owned(),
                current,
                _lock: lock,
            },
            found,
        ))
    }

    /// Writes `writes` in order and makes them durable. A base starts a new segment; once
    /// it is durable, the segments before it are deleted.
    pub(crate) fn write(&mut self, writes: &[StoreWrite]) -> std::io::Result<()> {
        let mut new_segment = false;
        for w in writes {
            if w.base || self.current.is_none() {
                if let Some((_, f)) = &self.current {
                    f.sync_data()?;
                }
                let path = self.dir.join(segment_name(w.number));
                let f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&path)?;
                self.current = Some((w.number, f));
                new_segment = true;
            }
            let (_, f) = self.current.as_mut().expect("set above");
            let len = u32::try_from(w.bytes.len()).map_err(std::io::Error::other)?;
            let mut frame = Vec::with_capacity(HEADER_BYTES + w.bytes.len());
            frame.extend_from_slice(&len.to_be_bytes());
            frame.extend_from_slice(&crc32fast::hash(&w.bytes).to_be_bytes());
            frame.extend_from_slice(&w.bytes);
            f.write_all(&frame)?;
        }
        if let Some((base, f)) = &self.current {
            f.sync_data()?;
            if new_segment {
                sync_dir(&self.dir)?;
                self.drop_before(*base)?;
            }
        }
        Ok(())
    }

    /// Deletes the segments before the one of base `base`.
    fn drop_before(&self, base: u64) -> std::io::Result<()> {
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if segment_number(&path).is_some_and(|n| n < base) {
                fs::remove_file(path)?;
            }
        }
        Ok(())
    }

    /// Moves every segment into a new `refused-N` directory (the SM refused them: kept for
    /// the operator to look at); the log starts over empty.
    pub(crate) fn set_aside(&mut self) -> std::io::Result<PathBuf> {
        self.current = None;
        let aside = (1u32..)
            .map(|n| self.dir.join(format!("refused-{n}")))
            .find(|p| !p.exists())
            .expect("some name is free");
        fs::DirBuilder::new().mode(0o700).create(&aside)?;
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if segment_number(&path).is_some()
                && let Some(name) = path.file_name()
            {
                fs::rename(&path, aside.join(name))?;
            }
        }
        sync_dir(&self.dir)?;
        Ok(aside)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(number: u64, base: bool) -> StoreWrite {
        StoreWrite {
            number,
            bytes: format!("record {number}").into_bytes(),
            base,
        }
    }

    fn reopen(dir: &Path) -> Vec<Vec<u8>> {
        RecordLog::open(dir).unwrap().1.records
    }

    #[test]
    fn records_come_back_from_the_newest_base_on() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        {
            let (mut log, found) = RecordLog::open(&dir).unwrap();
            assert!(found.records.is_empty());
            log.write(&[w(1, true), w(2, false)]).unwrap();
            log.write(&[w(3, false), w(4, true), w(5, false)]).unwrap();
        }
        assert_eq!(reopen(&dir), vec![w(4, true).bytes, w(5, false).bytes]);
        let segments = fs::read_dir(&dir)
            .unwrap()
            .filter(|e| segment_number(&e.as_ref().unwrap().path()).is_some())
            .count();
        assert_eq!(segments, 1, "the segment before the base is gone");
    }

    #[test]
    fn a_torn_append_is_cut_off_and_appends_follow_the_last_record() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        {
            let (mut log, _) = RecordLog::open(&dir).unwrap();
            log.write(&[w(1, true), w(2, false)]).unwrap();
        }
        let seg = dir.join(segment_name(1));
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[0, 0, 0, 40, 1, 2]).unwrap();
        drop(f);
        {
            let (mut log, found) = RecordLog::open(&dir).unwrap();
            assert_eq!(found.torn_bytes, 6);
            assert_eq!(found.records.len(), 2);
            log.write(&[w(3, false)]).unwrap();
        }
        assert_eq!(reopen(&dir).len(), 3);
    }

    #[test]
    fn an_incomplete_base_falls_back_to_the_segment_before() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        {
            let (mut log, _) = RecordLog::open(&dir).unwrap();
            log.write(&[w(1, true), w(2, false)]).unwrap();
        }
        fs::write(dir.join(segment_name(3)), [0u8, 0, 1]).unwrap();
        assert_eq!(reopen(&dir).len(), 2);
    }

    #[test]
    fn a_second_process_on_the_same_records_is_refused_and_set_aside_empties() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let (mut log, _) = RecordLog::open(&dir).unwrap();
        assert!(RecordLog::open(&dir).is_err());
        log.write(&[w(1, true)]).unwrap();
        let aside = log.set_aside().unwrap();
        assert!(aside.join(segment_name(1)).exists());
        log.write(&[w(7, true)]).unwrap();
        drop(log);
        assert_eq!(reopen(&dir), vec![w(7, true).bytes]);
    }
}
