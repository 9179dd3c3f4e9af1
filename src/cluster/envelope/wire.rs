//! The fields of an envelope: big-endian integers, byte strings and strings with a u32 length,
//! lists of strings with a u32 count. A read past the end is [`EnvelopeError::Short`], never a
//! panic.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::EnvelopeError;

/// A string: its length (u32) and its UTF-8 bytes.
pub(super) fn put_str(out: &mut BytesMut, s: &str) {
    put_bytes(out, s.as_bytes());
}

/// A byte string: its length (u32) and the bytes.
pub(super) fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32(b.len() as u32);
    out.put_slice(b);
}

/// A byte.
pub(super) fn get_u8(bytes: &mut Bytes) -> Result<u8, EnvelopeError> {
    bytes.try_get_u8().map_err(|_| EnvelopeError::Short)
}

/// A big-endian u32.
pub(super) fn get_u32(bytes: &mut Bytes) -> Result<u32, EnvelopeError> {
    bytes.try_get_u32().map_err(|_| EnvelopeError::Short)
}

/// A big-endian u64.
pub(super) fn get_u64(bytes: &mut Bytes) -> Result<u64, EnvelopeError> {
    bytes.try_get_u64().map_err(|_| EnvelopeError::Short)
}

/// A byte string written by [`put_bytes`].
pub(super) fn get_bytes(bytes: &mut Bytes) -> Result<Bytes, EnvelopeError> {
    let len = get_u32(bytes)? as usize;
    if bytes.len() < len {
        return Err(EnvelopeError::Short);
    }
    Ok(bytes.split_to(len))
}

/// A list of strings: a count (u32), then each as [`put_str`] writes it.
pub(super) fn get_list(bytes: &mut Bytes) -> Result<Vec<String>, EnvelopeError> {
    let count = get_u32(bytes)?;
    // Each string takes 4 bytes at least: a count beyond that is damage, not an allocation.
    if count as usize > bytes.len() / 4 {
        return Err(EnvelopeError::Short);
    }
    (0..count).map(|_| get_str(bytes)).collect()
}

/// A string written by [`put_str`]; not UTF-8 is [`EnvelopeError::Utf8`].
pub(super) fn get_str(bytes: &mut Bytes) -> Result<String, EnvelopeError> {
    let raw = get_bytes(bytes)?;
    String::from_utf8(raw.to_vec()).map_err(|_| EnvelopeError::Utf8)
}
