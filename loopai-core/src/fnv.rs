//! The one FNV-1a (64-bit) of the crate, finished with MurmurHash3's `fmix64`: n-gram
//! buckets of programs ([`ngram_hash`](crate::ngram_hash)), canary routing, the sampler's
//! draw and the label tables of the daily statistics. Part of the `loopai.program/1`
//! format: stored programs hold weights by bucket, so these values never change. A leaf
//! module: it imports nothing from the crate.
//!
//! `loopai-synth` reaches it through `loopai_core::__private::fnv` so that the generator
//! buckets n-grams exactly as the runtime does.

use std::io;

/// FNV-1a 64-bit offset basis.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Streaming FNV-1a (64-bit), seeded by XOR-ing the seed into the offset basis.
/// [`Fnv::finish`] applies [`fmix64`] so that the top bits are well mixed; a bucket is
/// the top `bits` bits of the finished hash.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Fnv {
    /// A hash seeded with `seed` (0: plain FNV-1a).
    #[inline]
    pub fn new(seed: u64) -> Fnv {
        Fnv(FNV_OFFSET ^ seed)
    }

    /// Hashes `bytes`.
    #[inline]
    pub fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(FNV_PRIME);
        }
        self.0 = h;
    }

    /// Hashes one byte.
    #[inline]
    pub fn write_u8(&mut self, b: u8) {
        self.0 = (self.0 ^ u64::from(b)).wrapping_mul(FNV_PRIME);
    }

    /// The finished hash: `fmix64` of the FNV-1a state. The hash can go on after it.
    #[inline]
    pub fn finish(self) -> u64 {
        fmix64(self.0)
    }
}

impl io::Write for Fnv {
    /// Hashes `buf` (for serializers that write into an `io::Write`); never fails.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Fnv::write(self, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// MurmurHash3 64-bit finalizer.
#[inline]
pub fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// `fmix64(fnv1a64(seed, bytes))`.
#[inline]
pub fn hash(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = Fnv::new(seed);
    h.write(bytes);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_the_reference_vectors() {
        // FNV-1a 64 of "" and "a" (the published test vectors), before the finalizer.
        let mut h = Fnv::new(0);
        assert_eq!(h.0, FNV_OFFSET);
        h.write(b"a");
        assert_eq!(h.0, 0xaf63_dc4c_8601_ec8c);
        let mut h = Fnv::new(0);
        h.write(b"foobar");
        assert_eq!(h.0, 0x8594_4171_f739_67e8);
        assert_eq!(hash(0, b""), fmix64(FNV_OFFSET));
    }

    #[test]
    fn streaming_bytes_and_io_write_agree() {
        let mut a = Fnv::new(9);
        a.write(b"free");
        a.write_u8(b' ');
        a.write(b"prize");
        let mut b = Fnv::new(9);
        io::Write::write_all(&mut b, b"free prize").unwrap();
        assert_eq!(a.finish(), b.finish());
        assert_eq!(a.finish(), hash(9, b"free prize"));
    }
}
