//! Fuzz-style test of `decode_msg`: random byte strings and mutations of valid encodings
//! (seeded, reproducible) must always give `Ok` or a clean `Err`, never a panic.

mod common;
use common::*;
use referee_transport::messages::{ClientMsg, FrameHeader, ServerMsg};
use referee_transport::{decode_msg, encode_msg, TransportError};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn try_all(bytes: &[u8], counts: &mut [u32; 3]) {
    let max = 1 << 16;
    for r in [
        decode_msg::<ClientMsg>(bytes, max).map(|_| ()),
        decode_msg::<ServerMsg>(bytes, max).map(|_| ()),
        decode_msg::<FrameHeader>(bytes, max).map(|_| ()),
    ] {
        match r {
            Ok(()) => counts[0] += 1,
            Err(TransportError::Truncated { .. } | TransportError::TooLarge { .. }) => {
                counts[1] += 1
            }
            Err(TransportError::Malformed { .. }) => counts[2] += 1,
            Err(other) => panic!("unexpected error kind from decode_msg: {other:?}"),
        }
    }
}

#[test]
fn random_bytes_and_mutations_never_panic() {
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let mut counts = [0u32; 3];
    // 1. Pure random strings, with a plausible length prefix half of the time.
    for _ in 0..20_000 {
        let len = rng.below(300);
        let mut v: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if v.len() >= 4 && rng.next().is_multiple_of(2) {
            let n = (v.len() - 4) as u32;
            v[..4].copy_from_slice(&n.to_le_bytes());
        }
        try_all(&v, &mut counts);
    }
    // 2. Mutations of every valid encoding.
    let mut valid: Vec<Vec<u8>> = all_client_msgs()
        .iter()
        .map(|m| encode_msg(m).unwrap())
        .collect();
    valid.extend(all_server_msgs().iter().map(|m| encode_msg(m).unwrap()));
    valid.push(encode_msg(&header(5, 150_000)).unwrap());
    for base in &valid {
        for _ in 0..2_000 {
            let mut v = base.clone();
            match rng.below(5) {
                0 => {
                    let i = rng.below(v.len());
                    v[i] ^= 1 << rng.below(8);
                }
                1 => {
                    let i = rng.below(v.len());
                    v[i] = rng.next() as u8;
                }
                2 => v.truncate(rng.below(v.len())),
                3 => {
                    let i = rng.below(v.len());
                    v.insert(i, rng.next() as u8);
                }
                _ => {
                    // Mutate the body but keep the prefix consistent, so postcard sees it.
                    let i = 4 + rng.below(v.len() - 4);
                    v[i] = rng.next() as u8;
                }
            }
            try_all(&v, &mut counts);
        }
    }
    println!(
        "decode results: ok {}, truncated/too large {}, malformed {}",
        counts[0], counts[1], counts[2]
    );
    assert!(
        counts.iter().all(|c| *c > 0),
        "every outcome should occur: {counts:?}"
    );
    // Valid encodings still decode exactly.
    for m in all_client_msgs() {
        let b = encode_msg(&m).unwrap();
        let (d, used) = decode_msg::<ClientMsg>(&b, 1 << 20).unwrap();
        assert_eq!((d, used), (m, b.len()));
    }
}
