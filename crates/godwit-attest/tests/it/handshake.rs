use godwit_attest::{AttestError, HandshakeMessage, Initiator, Opened, Policy, Refusal, Responder};
use godwit_wire::{Measurement, decode, encode};

use crate::support::*;

fn refusal(r: Result<impl Sized, AttestError>) -> Refusal {
    match r {
        Err(AttestError::Refused(refusal)) => refusal,
        Err(other) => panic!("expected a refusal, got {other:?}"),
        Ok(_) => panic!("expected a refusal, got success"),
    }
}

#[test]
fn mutual_handshake_yields_the_same_key_and_verified_peers() {
    let (a, b) = pair();
    let (si, sr) = handshake(&a, &b, "beta").unwrap();
    assert_eq!(si.peer().host().as_str(), "beta");
    assert_eq!(sr.peer().host().as_str(), "alpha");
    assert_eq!(si.peer().sm_measurement(), SM);
    assert_eq!(si.transcript_hash(), sr.transcript_hash());
    let (mut ci, mut cr) = (si.into_channel(), sr.into_channel());
    // Both directions carry data: both sides derived the same K.
    let mut rec = ci.sender().seal_bytes(b"ping").unwrap();
    assert_eq!(cr.receiver().open(&mut rec), Ok(Opened::Data(b"ping")));
    let mut rec = cr.sender().seal_bytes(b"pong").unwrap();
    assert_eq!(ci.receiver().open(&mut rec), Ok(Opened::Data(b"pong")));
}

#[test]
fn each_handshake_has_fresh_keys() {
    let (a, b) = pair();
    let (s1, _) = handshake(&a, &b, "beta").unwrap();
    let (s2, _) = handshake(&a, &b, "beta").unwrap();
    assert_ne!(s1.transcript_hash(), s2.transcript_hash());
}

#[test]
fn an_unknown_manufacturer_root_is_refused_on_both_sides() {
    let trusted = manufacturer(1);
    let rogue = manufacturer(66);
    let a = side_with(&trusted, "alpha", 1, SM, default_policy(&trusted));
    let b = side_with(&rogue, "beta", 2, SM, default_policy(&trusted));
    // The initiator refuses the responder's chain.
    let r = refusal(handshake(&a, &b, "beta"));
    match &r {
        Refusal::UntrustedRoot {
            expected,
            presented,
        } => {
            assert_eq!(presented, &rogue.root().to_hex());
            assert!(expected.contains(&trusted.root().to_hex()));
        }
        other => panic!("unexpected {other:?}"),
    }
    // The responder refuses the initiator's chain.
    let r = refusal(handshake(&b, &a, "alpha"));
    assert!(matches!(r, Refusal::UntrustedRoot { .. }), "{r:?}");
}

#[test]
fn an_sm_measurement_not_allowed_is_refused_and_named() {
    let m = manufacturer(1);
    let modified = Measurement([0x66; 32]);
    let a = side_with(&m, "alpha", 1, SM, default_policy(&m));
    let b = side_with(&m, "beta", 2, modified, default_policy(&m));
    let r = refusal(handshake(&a, &b, "beta"));
    assert_eq!(
        r,
        Refusal::SmNotAllowed {
            expected: SM.to_string(),
            presented: modified
        }
    );
    assert!(r.to_string().contains(&modified.to_string()));
    assert!(matches!(
        refusal(handshake(&b, &a, "alpha")),
        Refusal::SmNotAllowed { .. }
    ));
}

#[test]
fn hosts_outside_the_allow_list_and_the_wrong_peer_are_refused() {
    let m = manufacturer(1);
    let only_gamma = Policy {
        allowed_hosts: Some(vec![host("gamma")]),
        ..default_policy(&m)
    };
    let a = side_with(&m, "alpha", 1, SM, only_gamma);
    let b = side_with(&m, "beta", 2, SM, default_policy(&m));
    assert!(matches!(
        refusal(handshake(&a, &b, "beta")),
        Refusal::HostNotAllowed { .. }
    ));
    // Dialling gamma but reaching beta.
    let a = side_with(&m, "alpha", 1, SM, default_policy(&m));
    assert_eq!(
        refusal(handshake(&a, &b, "gamma")),
        Refusal::WrongPeer {
            expected: host("gamma"),
            presented: host("beta")
        }
    );
}

#[test]
fn a_signature_over_another_transcript_is_refused() {
    let (a, b) = pair();
    // Session 1 gives a genuine signature by beta, over session 1's transcript.
    let (_, ch1) = Initiator::start(a.hw.clone(), a.policy.clone(), host("beta"));
    let (_, sh1) = Responder::respond(b.hw.clone(), b.policy.clone(), &ch1).unwrap();
    let HandshakeMessage::ServerHello {
        signature: old_sig, ..
    } = HandshakeMessage::decode(&sh1).unwrap()
    else {
        unreachable!()
    };
    // Session 2: graft session 1's signature into beta's ServerHello.
    let (wait, ch2) = Initiator::start(a.hw.clone(), a.policy.clone(), host("beta"));
    let (_, sh2) = Responder::respond(b.hw.clone(), b.policy.clone(), &ch2).unwrap();
    let HandshakeMessage::ServerHello {
        nonce,
        ephemeral,
        chain,
        confirm,
        ..
    } = HandshakeMessage::decode(&sh2).unwrap()
    else {
        unreachable!()
    };
    let forged = encode(&HandshakeMessage::ServerHello {
        nonce,
        ephemeral,
        chain,
        signature: old_sig,
        confirm,
    });
    assert_eq!(refusal(wait.receive(&forged)), Refusal::TranscriptSignature);
}

#[test]
fn handshake_messages_replayed_from_an_earlier_session_are_refused() {
    let (a, b) = pair();
    let (wait1, ch1) = Initiator::start(a.hw.clone(), a.policy.clone(), host("beta"));
    let (wait_cf1, sh1) = Responder::respond(b.hw.clone(), b.policy.clone(), &ch1).unwrap();
    let (_, cf1) = wait1.receive(&sh1).unwrap();
    wait_cf1.receive(&cf1).unwrap();

    // An old ServerHello offered to a new initiator.
    let (wait2, _) = Initiator::start(a.hw.clone(), a.policy.clone(), host("beta"));
    assert!(matches!(wait2.receive(&sh1), Err(AttestError::Refused(_))));
    // An old ClientHello replayed to the responder, then the old ClientFinish: the
    // responder's fresh nonce and ephemeral key make the old signature worthless.
    let (wait_cf2, _) = Responder::respond(b.hw.clone(), b.policy.clone(), &ch1).unwrap();
    assert_eq!(
        refusal(wait_cf2.receive(&cf1)),
        Refusal::TranscriptSignature
    );
}

#[test]
fn a_man_in_the_middle_substituting_an_ephemeral_key_is_refused() {
    let (a, b) = pair();
    // Towards the responder.
    let (wait, ch) = Initiator::start(a.hw.clone(), a.policy.clone(), host("beta"));
    let HandshakeMessage::ClientHello { version, nonce, .. } =
        HandshakeMessage::decode(&ch).unwrap()
    else {
        unreachable!()
    };
    let mitm_key = x25519_public([9; 32]);
    let ch_swapped = encode(&HandshakeMessage::ClientHello {
        version,
        nonce,
        ephemeral: mitm_key,
    });
    let (_, sh) = Responder::respond(b.hw.clone(), b.policy.clone(), &ch_swapped).unwrap();
    assert_eq!(refusal(wait.receive(&sh)), Refusal::TranscriptSignature);
    // Towards the initiator.
    let (wait, ch) = Initiator::start(a.hw.clone(), a.policy.clone(), host("beta"));
    let (_, sh) = Responder::respond(b.hw.clone(), b.policy.clone(), &ch).unwrap();
    let HandshakeMessage::ServerHello {
        nonce,
        chain,
        signature,
        confirm,
        ..
    } = HandshakeMessage::decode(&sh).unwrap()
    else {
        unreachable!()
    };
    let sh_swapped = encode(&HandshakeMessage::ServerHello {
        nonce,
        ephemeral: mitm_key,
        chain,
        signature,
        confirm,
    });
    assert_eq!(
        refusal(wait.receive(&sh_swapped)),
        Refusal::TranscriptSignature
    );
}

fn x25519_public(secret: [u8; 32]) -> [u8; 32] {
    x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(secret)).to_bytes()
}

#[test]
fn reflection_of_a_sides_own_messages_is_refused() {
    let (a, _) = pair();
    // Alpha dials "beta", but the attacker loops the ClientHello into alpha's own responder
    // and reflects its answer back.
    let (wait, ch) = Initiator::start(a.hw.clone(), a.policy.clone(), host("beta"));
    let (wait_cf, sh) = Responder::respond(a.hw.clone(), a.policy.clone(), &ch).unwrap();
    assert_eq!(refusal(wait.receive(&sh)), Refusal::Reflection);
    // Even if it dialled itself by name, the own device is refused.
    let (wait, ch) = Initiator::start(a.hw.clone(), a.policy.clone(), host("alpha"));
    let (_, sh) = Responder::respond(a.hw.clone(), a.policy.clone(), &ch).unwrap();
    assert_eq!(refusal(wait.receive(&sh)), Refusal::Reflection);
    // Reflecting a message of the wrong role is a protocol error, not a success.
    assert!(matches!(
        wait_cf.receive(&sh),
        Err(AttestError::UnexpectedMessage {
            expected: "ClientFinish",
            got: "ServerHello"
        })
    ));
}

#[test]
fn a_version_mismatch_and_a_weak_ephemeral_key_are_refused() {
    let (_, b) = pair();
    let other_version = encode(&HandshakeMessage::ClientHello {
        version: 99,
        nonce: [0; 32],
        ephemeral: x25519_public([1; 32]),
    });
    assert_eq!(
        refusal(Responder::respond(
            b.hw.clone(),
            b.policy.clone(),
            &other_version
        )),
        Refusal::Version {
            expected: 1,
            presented: 99
        }
    );
    let low_order = encode(&HandshakeMessage::ClientHello {
        version: 1,
        nonce: [0; 32],
        ephemeral: [0; 32],
    });
    assert_eq!(
        refusal(Responder::respond(
            b.hw.clone(),
            b.policy.clone(),
            &low_order
        )),
        Refusal::WeakKeyExchange
    );
}

#[test]
fn an_altered_key_confirmation_is_refused() {
    let (a, b) = pair();
    let (wait, ch) = Initiator::start(a.hw.clone(), a.policy.clone(), host("beta"));
    let (wait_cf, sh) = Responder::respond(b.hw.clone(), b.policy.clone(), &ch).unwrap();
    let (_, cf) = wait.receive(&sh).unwrap();
    let HandshakeMessage::ClientFinish {
        chain,
        signature,
        mut confirm,
    } = decode(&cf, 4096).unwrap()
    else {
        unreachable!()
    };
    confirm[0] ^= 1;
    let bad = encode(&HandshakeMessage::ClientFinish {
        chain,
        signature,
        confirm,
    });
    assert_eq!(refusal(wait_cf.receive(&bad)), Refusal::KeyConfirmation);
}
