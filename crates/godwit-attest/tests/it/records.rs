use godwit_attest::{AttestError, Opened, RECORD_PAYLOAD_BYTES_MAX, RecordBuf, RecordType};

use crate::support::*;

#[test]
fn records_flow_and_close_in_order() {
    let (mut a, mut b) = channels();
    for i in 0..10u8 {
        let mut rec = a.sender().seal_bytes(&[i; 100]).unwrap();
        assert_eq!(b.receiver().open(&mut rec), Ok(Opened::Data(&[i; 100][..])));
    }
    let mut close = a.sender().close().unwrap();
    assert_eq!(b.receiver().open(&mut close), Ok(Opened::Close));
    b.receiver().finish().unwrap();
    assert_eq!(
        a.sender().seal_bytes(b"more"),
        Err(AttestError::SessionClosed)
    );
    assert_eq!(a.sender().records_sent(), 11);
}

#[test]
fn a_flipped_bit_anywhere_is_refused_and_fails_the_session() {
    let (mut a, _) = channels();
    let rec = a.sender().seal_bytes(b"attack at dawn").unwrap();
    for bit in 0..rec.len() * 8 {
        let (mut a2, mut b2) = channels();
        let mut good = a2.sender().seal_bytes(b"attack at dawn").unwrap();
        good[bit / 8] ^= 1 << (bit % 8);
        assert!(b2.receiver().open(&mut good).is_err(), "bit {bit} accepted");
        // The failed session neither accepts nor sends again.
        let mut next = a2.sender().seal_bytes(b"next").unwrap();
        assert_eq!(
            b2.receiver().open(&mut next),
            Err(AttestError::SessionFailed)
        );
        assert_eq!(
            b2.sender().seal_bytes(b"reply"),
            Err(AttestError::SessionFailed)
        );
    }
}

#[test]
fn a_replayed_record_is_refused() {
    let (mut a, mut b) = channels();
    let rec = a.sender().seal_bytes(b"pay 10").unwrap();
    b.receiver().open(&mut rec.clone()).unwrap();
    assert_eq!(
        b.receiver().open(&mut rec.clone()),
        Err(AttestError::UnexpectedSequence {
            expected: 1,
            presented: 0
        })
    );
}

#[test]
fn reordered_records_are_refused() {
    let (mut a, mut b) = channels();
    let _first = a.sender().seal_bytes(b"one").unwrap();
    let mut second = a.sender().seal_bytes(b"two").unwrap();
    assert_eq!(
        b.receiver().open(&mut second),
        Err(AttestError::UnexpectedSequence {
            expected: 0,
            presented: 1
        })
    );
}

#[test]
fn a_dropped_record_followed_by_the_next_is_refused() {
    let (mut a, mut b) = channels();
    let mut r0 = a.sender().seal_bytes(b"zero").unwrap();
    let _dropped = a.sender().seal_bytes(b"one").unwrap();
    let mut r2 = a.sender().seal_bytes(b"two").unwrap();
    b.receiver().open(&mut r0).unwrap();
    assert!(matches!(
        b.receiver().open(&mut r2),
        Err(AttestError::UnexpectedSequence {
            expected: 1,
            presented: 2
        })
    ));
}

#[test]
fn a_record_with_a_forged_sequence_number_is_refused() {
    // Renumbering a later record to fill the gap breaks its authentication.
    let (mut a, mut b) = channels();
    let _dropped = a.sender().seal_bytes(b"zero").unwrap();
    let mut r1 = a.sender().seal_bytes(b"one").unwrap();
    r1[1..9].copy_from_slice(&0u64.to_be_bytes());
    assert_eq!(b.receiver().open(&mut r1), Err(AttestError::BadRecord));
}

#[test]
fn a_truncated_stream_is_refused() {
    // A record cut short.
    let (mut a, mut b) = channels();
    let rec = a.sender().seal_bytes(&[1; 64]).unwrap();
    for cut in [0, 5, 13, rec.len() - 1] {
        let (mut a2, mut b2) = channels();
        let mut r = a2.sender().seal_bytes(&[1; 64]).unwrap();
        assert_eq!(
            b2.receiver().open(&mut r[..cut]),
            Err(AttestError::Truncated),
            "cut {cut}"
        );
    }
    // A stream that simply stops: the records that arrived were fine, but without the
    // authenticated close the receiver refuses to treat it as complete.
    let mut r = rec;
    b.receiver().open(&mut r).unwrap();
    assert_eq!(b.receiver().finish(), Err(AttestError::Truncated));
    // The last records dropped, Close included: same refusal.
    let (mut a, mut b) = channels();
    let mut r0 = a.sender().seal_bytes(b"data").unwrap();
    let _lost_close = a.sender().close().unwrap();
    b.receiver().open(&mut r0).unwrap();
    assert_eq!(b.receiver().finish(), Err(AttestError::Truncated));
}

#[test]
fn a_record_reflected_back_to_its_sender_is_refused() {
    let (mut a, _b) = channels();
    let mut rec = a.sender().seal_bytes(b"to beta").unwrap();
    assert_eq!(a.receiver().open(&mut rec), Err(AttestError::BadRecord));
}

#[test]
fn oversize_records_are_refused_before_any_work() {
    let (mut a, mut b) = channels();
    let mut buf = RecordBuf::new();
    buf.payload_mut(RECORD_PAYLOAD_BYTES_MAX + 1);
    assert!(matches!(
        a.sender().seal(RecordType::Data, &mut buf),
        Err(AttestError::RecordTooLarge { .. })
    ));
    let mut header = [0u8; 13];
    header[0] = 1;
    header[9..].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        godwit_attest::Receiver::record_len(&header),
        Err(AttestError::RecordTooLarge { .. })
    ));
    header[0] = 7;
    assert!(matches!(
        godwit_attest::Receiver::record_len(&header),
        Err(AttestError::MalformedRecord(_))
    ));
    // The largest allowed record works.
    let mut buf = RecordBuf::new();
    buf.payload_mut(RECORD_PAYLOAD_BYTES_MAX).fill(3);
    a.sender().seal(RecordType::Data, &mut buf).unwrap();
    let mut bytes = buf.as_bytes().to_vec();
    assert!(
        matches!(b.receiver().open(&mut bytes), Ok(Opened::Data(d)) if d.len() == RECORD_PAYLOAD_BYTES_MAX)
    );
}
