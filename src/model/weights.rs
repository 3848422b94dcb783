//! Read-only weight buffers that are either owned or a slice of one shared, read-only
//! memory map, and the file format that lets every process of a host map the same
//! packed weights.
//!
//! Packing the encoder (transposing, rounding to bf16, quantising to int8, laying out
//! panels) happens once per model, precision and kernel. [`super::packed`] writes the
//! result to a cache file and maps it back, so the page cache holds one copy, shared by
//! every worker process that maps the same file (the `processes` pool's children), and a
//! later process maps it without reading the safetensors file at all.
//!
//! The file: a 16-byte magic, a little-endian `u64` format version, the key (its length
//! then its bytes: what the packing depended on), the scalar fields (`u64` each), the
//! buffer table (`(offset, bytes)` pairs) and the buffers, each at a 64-byte aligned
//! offset. The same visitor ([`Codec`]) writes and reads it, so the two cannot disagree
//! on the order of fields.

use std::fs::File;
use std::io::Write;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

/// Values for which every bit pattern is valid and that have no padding, so a slice of
/// them can be read from a file's bytes.
///
/// # Safety
/// Implement only for such types.
pub unsafe trait Plain: Copy + Send + Sync + 'static {}
// SAFETY: plain numbers: every bit pattern is a value, no padding.
unsafe impl Plain for f32 {}
// SAFETY: as above.
unsafe impl Plain for u32 {}
// SAFETY: as above.
unsafe impl Plain for i8 {}

/// A read-only buffer: owned, or a slice of a shared memory map.
pub struct Buf<T: Plain>(Inner<T>);

enum Inner<T> {
    Owned(Vec<T>),
    Mapped {
        map: Arc<memmap2::Mmap>,
        offset: usize,
        len: usize,
    },
}

impl<T: Plain> Deref for Buf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match &self.0 {
            Inner::Owned(v) => v,
            // SAFETY: `Codec for Reader` checked that `offset..offset + len * size_of<T>`
            // is inside the map and aligned for `T`; `T: Plain` makes any bytes a value;
            // the map is read-only and kept alive by the `Arc`.
            Inner::Mapped { map, offset, len } => unsafe {
                std::slice::from_raw_parts(map.as_ptr().add(*offset).cast::<T>(), *len)
            },
        }
    }
}

impl<T: Plain> From<Vec<T>> for Buf<T> {
    fn from(v: Vec<T>) -> Self {
        Buf(Inner::Owned(v))
    }
}

impl<T: Plain> Default for Buf<T> {
    fn default() -> Self {
        Buf(Inner::Owned(Vec::new()))
    }
}

impl<T: Plain> Buf<T> {
    /// Whether it lives in a shared map.
    pub fn is_mapped(&self) -> bool {
        matches!(self.0, Inner::Mapped { .. })
    }
}

/// Visits every field of a packed model in one fixed order: [`Writer`] records them,
/// [`Reader`] fills them back in.
pub trait Codec {
    /// A buffer.
    fn buf<T: Plain>(&mut self, b: &mut Buf<T>) -> Result<(), String>;
    /// A count, size or tag.
    fn usize(&mut self, v: &mut usize) -> Result<(), String>;
    /// A scalar parameter.
    fn f32(&mut self, v: &mut f32) -> Result<(), String> {
        let mut bits = v.to_bits() as usize;
        self.usize(&mut bits)?;
        *v = f32::from_bits(bits as u32);
        Ok(())
    }
}

const MAGIC: &[u8; 16] = b"celeriac-packed\0";
const VERSION: u64 = 1;
const ALIGN: usize = 64;

/// Records a model's fields for [`Writer::write`].
#[derive(Default)]
pub struct Writer {
    scalars: Vec<u64>,
    table: Vec<(u64, u64)>,
    data: Vec<u8>,
}

impl Codec for Writer {
    fn buf<T: Plain>(&mut self, b: &mut Buf<T>) -> Result<(), String> {
        let start = self.data.len().next_multiple_of(ALIGN);
        self.data.resize(start, 0);
        let bytes = std::mem::size_of_val::<[T]>(b);
        // SAFETY: `T: Plain` has no padding, so its slice is `bytes` initialised bytes.
        let raw = unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<u8>(), bytes) };
        self.data.extend_from_slice(raw);
        self.table.push((start as u64, bytes as u64));
        Ok(())
    }

    fn usize(&mut self, v: &mut usize) -> Result<(), String> {
        self.scalars.push(*v as u64);
        Ok(())
    }
}

impl Writer {
    /// Writes the file atomically (a temporary file renamed over `path`).
    pub fn write(&self, path: &Path, key: &str) -> std::io::Result<()> {
        let mut head = Vec::new();
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&VERSION.to_le_bytes());
        head.extend_from_slice(&(key.len() as u64).to_le_bytes());
        head.extend_from_slice(key.as_bytes());
        head.extend_from_slice(&(self.scalars.len() as u64).to_le_bytes());
        for s in &self.scalars {
            head.extend_from_slice(&s.to_le_bytes());
        }
        head.extend_from_slice(&(self.table.len() as u64).to_le_bytes());
        let base = (head.len() + self.table.len() * 16).next_multiple_of(ALIGN);
        for (offset, bytes) in &self.table {
            head.extend_from_slice(&(base as u64 + offset).to_le_bytes());
            head.extend_from_slice(&bytes.to_le_bytes());
        }
        head.resize(base, 0);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut f = File::create(&tmp)?;
        f.write_all(&head)?;
        f.write_all(&self.data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}

/// Fills a model's fields from a mapped file written by [`Writer::write`].
pub struct Reader {
    map: Arc<memmap2::Mmap>,
    scalars: std::vec::IntoIter<u64>,
    table: std::vec::IntoIter<(u64, u64)>,
}

impl Reader {
    /// Maps `path`; `None` when it is missing or was written for another key or format.
    pub fn open(path: &Path, key: &str) -> Result<Option<Reader>, String> {
        let Ok(file) = File::open(path) else {
            return Ok(None);
        };
        // SAFETY: celeriac only ever replaces a cache file by rename (or unlinks it), never
        // writes or truncates it in place, so the mapped bytes do not change under us.
        // (Something else truncating it, or a cache on a network file system, could
        // still fault a read: keep the cache on a local disk.)
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| e.to_string())?;
        let mut at = 0usize;
        let mut take = |n: usize| -> Option<&[u8]> {
            let s = map.get(at..at.checked_add(n)?)?;
            at += n;
            Some(s)
        };
        let u64_at = |s: &[u8]| u64::from_le_bytes(s.try_into().unwrap_or([0; 8]));
        if take(16) != Some(MAGIC) || take(8).map(u64_at) != Some(VERSION) {
            return Ok(None);
        }
        let key_len = take(8).map(u64_at).unwrap_or(u64::MAX) as usize;
        if take(key_len) != Some(key.as_bytes()) {
            return Ok(None);
        }
        let bad = || format!("{}: truncated packed-weights file", path.display());
        let n = take(8).map(u64_at).ok_or_else(bad)? as usize;
        let scalars = (0..n)
            .map(|_| take(8).map(u64_at).ok_or_else(bad))
            .collect::<Result<Vec<_>, _>>()?;
        let n = take(8).map(u64_at).ok_or_else(bad)? as usize;
        let table = (0..n)
            .map(|_| {
                Ok((
                    take(8).map(u64_at).ok_or_else(bad)?,
                    take(8).map(u64_at).ok_or_else(bad)?,
                ))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Some(Reader {
            map: Arc::new(map),
            scalars: scalars.into_iter(),
            table: table.into_iter(),
        }))
    }

    /// Whether every field was read (a file with more is for another layout).
    pub fn finished(&self) -> bool {
        self.scalars.len() == 0 && self.table.len() == 0
    }
}

impl Codec for Reader {
    fn buf<T: Plain>(&mut self, b: &mut Buf<T>) -> Result<(), String> {
        let (offset, bytes) = self
            .table
            .next()
            .ok_or("fewer buffers than the model has")?;
        let (offset, bytes) = (offset as usize, bytes as usize);
        let size = std::mem::size_of::<T>();
        let inside = offset
            .checked_add(bytes)
            .is_some_and(|end| end <= self.map.len());
        let aligned =
            (self.map.as_ptr() as usize + offset).is_multiple_of(std::mem::align_of::<T>());
        if !inside || !aligned || !bytes.is_multiple_of(size) {
            return Err(format!(
                "buffer at {offset} ({bytes} bytes) is out of place"
            ));
        }
        *b = Buf(Inner::Mapped {
            map: self.map.clone(),
            offset,
            len: bytes / size,
        });
        Ok(())
    }

    fn usize(&mut self, v: &mut usize) -> Result<(), String> {
        *v = self
            .scalars
            .next()
            .ok_or("fewer scalars than the model has")? as usize;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_file_reads_back_mapped_and_refuses_another_key() {
        let dir = std::env::temp_dir().join(format!("celeriac-weights-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.packed");
        let mut w = Writer::default();
        let mut a: Buf<f32> = vec![1.5f32, -2.0, 3.25].into();
        let mut b: Buf<i8> = vec![-7i8, 8].into();
        let (mut n, mut x) = (42usize, 0.125f32);
        w.buf(&mut a).unwrap();
        w.usize(&mut n).unwrap();
        w.buf(&mut b).unwrap();
        w.f32(&mut x).unwrap();
        w.write(&path, "key-1").unwrap();
        assert!(Reader::open(&path, "key-2").unwrap().is_none());
        let mut r = Reader::open(&path, "key-1").unwrap().unwrap();
        let (mut a, mut b): (Buf<f32>, Buf<i8>) = (Buf::default(), Buf::default());
        let (mut n, mut x) = (0usize, 0f32);
        r.buf(&mut a).unwrap();
        r.usize(&mut n).unwrap();
        r.buf(&mut b).unwrap();
        r.f32(&mut x).unwrap();
        assert!(r.finished() && a.is_mapped() && b.is_mapped());
        assert_eq!(
            (&a[..], &b[..], n, x),
            (&[1.5f32, -2.0, 3.25][..], &[-7i8, 8][..], 42, 0.125)
        );
        assert!(r.buf(&mut a).is_err(), "reading past the table is an error");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
