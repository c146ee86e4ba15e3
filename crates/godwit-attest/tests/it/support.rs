use std::sync::Arc;

use godwit_attest::{AttestError, Channel, Initiator, Policy, Responder, Session};
use godwit_hw::{Hardware, Manufacturer, SimHardware};
use godwit_wire::{HostId, Measurement};

pub const SM: Measurement = Measurement([0x5a; 32]);

pub struct Side {
    pub hw: Arc<dyn Hardware>,
    pub policy: Arc<Policy>,
}

pub fn manufacturer(seed: u8) -> Manufacturer {
    Manufacturer::from_seed([seed; 32])
}

/// A host `name` made by manufacturer `m`, running SM `sm`, trusting `policy`.
pub fn side_with(
    m: &Manufacturer,
    name: &str,
    secret: u8,
    sm: Measurement,
    policy: Policy,
) -> Side {
    let id = m.provision_from_secret(HostId::new(name).unwrap(), [secret; 32].into());
    let (hw, _) = SimHardware::new(id, sm, u64::from(secret) * 1000);
    Side {
        hw: Arc::new(hw),
        policy: Arc::new(policy),
    }
}

pub fn default_policy(m: &Manufacturer) -> Policy {
    Policy {
        roots: vec![m.root()],
        allowed_sm: vec![SM],
        allowed_hosts: None,
    }
}

/// Two hosts of one manufacturer running the allowed SM.
pub fn pair() -> (Side, Side) {
    let m = manufacturer(1);
    (
        side_with(&m, "alpha", 1, SM, default_policy(&m)),
        side_with(&m, "beta", 2, SM, default_policy(&m)),
    )
}

pub fn host(name: &str) -> HostId {
    HostId::new(name).unwrap()
}

/// Runs a whole handshake, `i` dialling `r` expecting host `expected`.
pub fn handshake(i: &Side, r: &Side, expected: &str) -> Result<(Session, Session), AttestError> {
    let (wait_sh, ch) = Initiator::start(i.hw.clone(), i.policy.clone(), host(expected));
    let (wait_cf, sh) = Responder::respond(r.hw.clone(), r.policy.clone(), &ch)?;
    let (si, cf) = wait_sh.receive(&sh)?;
    let sr = wait_cf.receive(&cf)?;
    Ok((si, sr))
}

pub fn channels() -> (Channel, Channel) {
    let (a, b) = pair();
    let (si, sr) = handshake(&a, &b, "beta").unwrap();
    (si.into_channel(), sr.into_channel())
}
