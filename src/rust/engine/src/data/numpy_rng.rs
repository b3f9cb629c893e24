//! numpy's legacy `RandomState(seed).permutation(n)`: MT19937 seeded by `init_genrand`, then a
//! Fisher-Yates shuffle drawing bounded integers by masked rejection. scvi-tools' DataSplitter
//! permutes cells this way, so the same seed selects the same train / validation cells here.

const N: usize = 624;
const M: usize = 397;

pub struct Mt19937 {
    state: [u32; N],
    pos: usize,
}

impl Mt19937 {
    pub fn new(seed: u32) -> Self {
        let mut state = [0u32; N];
        state[0] = seed;
        for i in 1..N {
            state[i] = 1812433253u32.wrapping_mul(state[i - 1] ^ (state[i - 1] >> 30)).wrapping_add(i as u32);
        }
        Mt19937 { state, pos: N }
    }

    fn twist(&mut self) {
        for i in 0..N {
            let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % N] & 0x7fff_ffff);
            let mut v = self.state[(i + M) % N] ^ (y >> 1);
            if y & 1 != 0 {
                v ^= 0x9908_b0df;
            }
            self.state[i] = v;
        }
        self.pos = 0;
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.pos >= N {
            self.twist();
        }
        let mut y = self.state[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// Uniform integer in [0, max] by masked rejection (numpy's `random_interval`, 32-bit case).
    fn interval(&mut self, max: u32) -> u32 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        mask |= mask >> 1;
        mask |= mask >> 2;
        mask |= mask >> 4;
        mask |= mask >> 8;
        mask |= mask >> 16;
        loop {
            let v = self.next_u32() & mask;
            if v <= max {
                return v;
            }
        }
    }
}

/// `numpy.random.RandomState(seed).permutation(n)` for n < 2^32.
pub fn permutation(n: usize, seed: u32) -> Vec<usize> {
    let mut rng = Mt19937::new(seed);
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.interval(i as u32) as usize;
        v.swap(i, j);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference values printed by numpy 2.4 (RandomState is frozen legacy behaviour).
    #[test]
    fn mt19937_matches_numpy() {
        let mut r = Mt19937::new(0);
        assert_eq!([r.next_u32(), r.next_u32(), r.next_u32()], [2357136044, 2546248239, 3071714933]);
    }

    #[test]
    fn permutation_matches_numpy() {
        assert_eq!(permutation(10, 0), vec![2, 8, 4, 9, 1, 6, 7, 3, 0, 5]);
        assert_eq!(permutation(7, 12345), vec![6, 3, 4, 0, 1, 5, 2]);
        let p = permutation(2638, 0);
        assert_eq!(&p[..5], &[1271, 880, 776, 2307, 2423]);
        assert_eq!(&p[2635..], &[835, 1653, 2607]);
    }
}
