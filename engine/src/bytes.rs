//! [`Reader`]: bounds-checked little-endian reads, the one byte decoder behind everything the
//! engine reads back (log store records, transactions, checkpoint files). A read past the
//! end is an error naming the offset, never a panic.

/// Reads little-endian values from a byte slice, front to back.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader::at(bytes, 0)
    }

    /// A reader at byte `at` of `bytes` (which may be past the end: every read then fails).
    pub(crate) fn at(bytes: &'a [u8], at: usize) -> Reader<'a> {
        Reader { bytes, at }
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.at)
    }

    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| format!("truncated at byte {}", self.at))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    /// The next `N` bytes as an array.
    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// One byte.
    pub(crate) fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    /// A little-endian u32.
    pub(crate) fn u32(&mut self) -> Result<u32, String> {
        self.array().map(u32::from_le_bytes)
    }

    /// A little-endian u64.
    pub(crate) fn u64(&mut self) -> Result<u64, String> {
        self.array().map(u64::from_le_bytes)
    }

    /// A u32 length followed by that many bytes.
    pub(crate) fn bytes(&mut self) -> Result<Vec<u8>, String> {
        let n = usize::try_from(self.u32()?).map_err(|e| e.to_string())?;
        Ok(self.take(n)?.to_vec())
    }

    /// A u32 count of items, each at least `min_item_bytes` long: bounded by what is left,
    /// so a corrupt count cannot make the decoder reserve huge amounts of memory.
    pub(crate) fn count(&mut self, min_item_bytes: usize) -> Result<usize, String> {
        let n = usize::try_from(self.u32()?).map_err(|e| e.to_string())?;
        if n.saturating_mul(min_item_bytes) > self.remaining() {
            return Err(format!("count {n} exceeds the record"));
        }
        Ok(n)
    }

    /// Everything not read yet.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let s = self.bytes.get(self.at..).unwrap_or(&[]);
        self.at = self.at.max(self.bytes.len());
        s
    }

    /// Checks that everything was read.
    pub(crate) fn finish(&self) -> Result<(), String> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(format!("{n} trailing bytes")),
        }
    }
}
