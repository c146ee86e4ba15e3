use godwit_attest::{HandshakeMessage, Initiator, Receiver, Responder};
use proptest::prelude::*;

use crate::support::*;

proptest! {
    /// Arbitrary bytes at every entry point that reads a peer's bytes: a typed error or
    /// success, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic_any_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let (a, b) = pair();
        let _ = HandshakeMessage::decode(&bytes);
        let _ = Responder::respond(b.hw.clone(), b.policy.clone(), &bytes);
        let (wait, ch) = Initiator::start(a.hw.clone(), a.policy.clone(), host("beta"));
        let _ = wait.receive(&bytes);
        let (wait_cf, _) = Responder::respond(b.hw.clone(), b.policy.clone(), &ch).unwrap();
        let _ = wait_cf.receive(&bytes);
        if bytes.len() >= 13 {
            let _ = Receiver::record_len(bytes[..13].try_into().unwrap());
        }
        let (_, mut cb) = channels();
        let mut copy = bytes.clone();
        let _ = cb.receiver().open(&mut copy);
    }

    /// Any mutation of a valid record is refused.
    #[test]
    fn mutated_records_are_refused(payload in proptest::collection::vec(any::<u8>(), 0..200),
                                   pos in any::<usize>(), mask in 1u8..) {
        let (mut ca, mut cb) = channels();
        let mut rec = ca.sender().seal_bytes(&payload).unwrap();
        let len = rec.len();
        rec[pos % len] ^= mask;
        prop_assert!(cb.receiver().open(&mut rec).is_err());
    }
}
