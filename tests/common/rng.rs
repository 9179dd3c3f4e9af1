//! A small random generator (xorshift64) for tests that make up traffic: the same seed gives
//! the same choices, so a run's mix is repeatable (its timing is not).

/// Xorshift64 state; never seed it with 0.
pub struct Rng(pub u64);

impl Rng {
    /// A number below `below`.
    pub fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}
