//! The frame around each record in the log: the body's length and its CRC-32 (the
//! [`FRAME_HEADER`]), then the body. Submitters frame without the CRC-32 and the writer thread
//! seals a whole commit before it appends it.

use super::record::FRAME_HEADER;

/// Appends a frame to `out`: header (length, CRC-32), then the body `write_body` appends.
pub(super) fn frame(out: &mut Vec<u8>, write_body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    frame_unsealed(out, write_body);
    seal_frames(&mut out[start..]);
}

/// Appends a frame to `out` as [`frame`] does, but with its CRC-32 left zero: a Session frames
/// its records this way into the writer's queue, and the writer thread fills the CRCs in with
/// [`seal_frames`] before it appends them, off the worker that serves the connections.
pub(super) fn frame_unsealed(out: &mut Vec<u8>, write_body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    write_body(out);
    let body_len = out.len() - start - FRAME_HEADER;
    out[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
}

/// The body's length and its CRC-32, as a frame's `header` holds them (what the log's readers
/// check a frame against).
pub(super) fn header_fields(header: &[u8; FRAME_HEADER]) -> (usize, u32) {
    let [l0, l1, l2, l3, c0, c1, c2, c3] = *header;
    (
        u32::from_le_bytes([l0, l1, l2, l3]) as usize,
        u32::from_le_bytes([c0, c1, c2, c3]),
    )
}

/// Fills in the CRC-32 of each frame in `frames`, a run of whole frames as [`frame_unsealed`]
/// appends them. A length that runs past the end (never framed so) stops the walk there.
pub(super) fn seal_frames(frames: &mut [u8]) {
    let mut at = 0;
    while let Some(len) = frames.get(at..at + 4) {
        let body_len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let end = at + FRAME_HEADER + body_len;
        let Some(body) = frames.get(at + FRAME_HEADER..end) else {
            return;
        };
        let crc = crc32fast::hash(body);
        frames[at + 4..at + FRAME_HEADER].copy_from_slice(&crc.to_le_bytes());
        at = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persistence::Record;

    #[test]
    fn frames_sealed_in_one_run_are_the_frames_made_one_by_one() {
        let records = [
            Record::RetainClear("gate/1AB/state".into()),
            Record::Done {
                client_id: "gate-1AB".into(),
                id: 7,
            },
            Record::WillClear("radar-2".into()),
        ];
        let mut run = Vec::new();
        for record in &records {
            record.write_unsealed_frame(&mut run);
        }
        let one_by_one: Vec<u8> = records.iter().flat_map(Record::to_frame).collect();
        assert_ne!(run, one_by_one, "not sealed yet");
        seal_frames(&mut run);
        assert_eq!(run, one_by_one);
        // A length running past the end (never framed so) stops the walk, without a panic.
        let mut cut = one_by_one[..one_by_one.len() - 1].to_vec();
        seal_frames(&mut cut);
        assert_eq!(cut, one_by_one[..one_by_one.len() - 1]);
    }
}
