//! End-to-end encryption's server side: each user's devices, their public keys and a
//! mailbox per device for to-device messages. The server stores public keys and
//! ciphertext only — the clients (`troupe-chat-e2e`, vodozemac's Olm and Megolm) make
//! and read everything secret.
//!
//! Per device: the Curve25519 identity key, the Ed25519 signing key, the device's
//! signature over both (`signed_identity`), unclaimed one-time keys (each handed out
//! once) and a fallback key (handed out when none is left, until replaced). A revoked
//! device is listed no more, its keys are dropped and its mailbox emptied.
//!
//! Invariants: only the user writes or revokes the user's devices and reads their
//! mailboxes; a one-time key is claimed at most once; a full mailbox (`MAILBOX_MAX`
//! messages to a device, `USER_MAILBOX_BYTES_MAX` bytes to a user) refuses new
//! messages with the reason instead of dropping old ones, so a flood can neither push
//! out a real room key nor grow the user's state past a frame; messages are numbered
//! in order.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// Devices of one user at most.
pub const DEVICES_MAX: usize = 32;
/// One-time keys kept per device at most.
pub const ONE_TIME_KEYS_MAX: usize = 100;
/// Messages waiting in one device's mailbox at most.
pub const MAILBOX_MAX: usize = 256;
/// Bytes waiting in all of one user's mailboxes at most (they are part of the user's
/// snapshot, which must fit a frame).
pub const USER_MAILBOX_BYTES_MAX: usize = 2 << 20;
/// Bytes of one key, signature or id at most (base64 of 32 or 64 bytes is ~88).
pub const KEY_BYTES_MAX: usize = 128;
/// Bytes of one to-device message at most (an Olm message carrying a room key is
/// under 1 KiB).
pub const TO_DEVICE_BYTES_MAX: usize = 4 << 10;

/// What a device publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceKeys {
    pub device: String,
    /// Curve25519 identity key (base64).
    pub curve25519: String,
    /// Ed25519 signing key (base64).
    pub ed25519: String,
    /// Ed25519 signature by `ed25519` over [`signed_identity`].
    pub signature: String,
}

/// The text a device signs to bind its keys to its user and id.
pub fn signed_identity(user: &str, device: &str, curve25519: &str, ed25519: &str) -> String {
    format!("troupe-chat-device\n{user}\n{device}\n{curve25519}\n{ed25519}")
}

/// A one-time or fallback key, with its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneTimeKey {
    pub id: String,
    pub key: String,
}

/// One message for one device (an Olm message, opaque here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToDevice {
    /// Its number in the mailbox (1, 2, …).
    pub seq: u64,
    pub from_user: String,
    pub from_device: String,
    pub body: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub keys: Option<DeviceKeys>,
    pub one_time: BTreeMap<String, String>,
    pub fallback: Option<OneTimeKey>,
    pub mailbox: VecDeque<ToDevice>,
    pub next_seq: u64,
    /// Messages dropped from a full mailbox.
    pub dropped: u64,
}

/// One user's devices (the `keys` entity's state).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserKeys {
    pub devices: BTreeMap<String, Device>,
}

/// A change to a user's keys (the `keys` entity's log entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeysOp {
    Publish {
        keys: DeviceKeys,
        one_time: Vec<OneTimeKey>,
        fallback: Option<OneTimeKey>,
    },
    /// A one-time key handed out (or the fallback, when `one_time` is false).
    Claimed {
        device: String,
        id: String,
    },
    Revoke {
        device: String,
    },
    Deliver {
        device: String,
        from_user: String,
        from_device: String,
        body: String,
    },
    Acked {
        device: String,
        upto: u64,
    },
}

fn check_key(what: &str, v: &str) -> Result<(), String> {
    if v.is_empty()
        || v.len() > KEY_BYTES_MAX
        || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=_-:.".contains(&b))
    {
        return Err(format!("{what} must be 1..={KEY_BYTES_MAX} base64 characters"));
    }
    Ok(())
}

impl UserKeys {
    /// Checks a publication by the device's own user.
    pub fn check_publish(
        &self,
        keys: &DeviceKeys,
        one_time: &[OneTimeKey],
        fallback: &Option<OneTimeKey>,
    ) -> Result<(), String> {
        crate::ids::check_user(&keys.device).map_err(|e| format!("device id: {e}"))?;
        check_key("curve25519", &keys.curve25519)?;
        check_key("ed25519", &keys.ed25519)?;
        check_key("signature", &keys.signature)?;
        for k in one_time.iter().chain(fallback) {
            check_key("a key id", &k.id)?;
            check_key("a one-time key", &k.key)?;
        }
        if one_time.len() > ONE_TIME_KEYS_MAX {
            return Err(format!("at most {ONE_TIME_KEYS_MAX} one-time keys at once"));
        }
        if let Some(d) = self.devices.get(&keys.device).and_then(|d| d.keys.as_ref())
            && (d.curve25519 != keys.curve25519 || d.ed25519 != keys.ed25519)
        {
            return Err(format!("device {} has other identity keys: revoke it first", keys.device));
        }
        let live = self.devices.values().filter(|d| d.keys.is_some()).count();
        if self.devices.get(&keys.device).is_none_or(|d| d.keys.is_none()) && live >= DEVICES_MAX {
            return Err(format!("a user has at most {DEVICES_MAX} devices: revoke one first"));
        }
        Ok(())
    }

    /// The live devices' keys.
    pub fn devices(&self) -> Vec<DeviceKeys> {
        self.devices.values().filter_map(|d| d.keys.clone()).collect()
    }

    /// The key to hand out for a new session with `device`: a one-time key, else the
    /// fallback (None: no such device, or it published neither).
    pub fn claimable(&self, device: &str) -> Option<(DeviceKeys, OneTimeKey)> {
        let d = self.devices.get(device)?;
        let keys = d.keys.clone()?;
        let key = match d.one_time.iter().next() {
            Some((id, key)) => OneTimeKey { id: id.clone(), key: key.clone() },
            None => d.fallback.clone()?,
        };
        Some((keys, key))
    }

    /// Checks a to-device message for `device`.
    pub fn check_deliver(&self, device: &str, body: &str) -> Result<(), String> {
        if self.devices.get(device).is_none_or(|d| d.keys.is_none()) {
            return Err(format!("no device {device}"));
        }
        if body.is_empty() || body.len() > TO_DEVICE_BYTES_MAX {
            return Err(format!("a to-device message is 1..={TO_DEVICE_BYTES_MAX} bytes"));
        }
        if self.devices.get(device).is_some_and(|d| d.mailbox.len() >= MAILBOX_MAX) {
            return Err(format!(
                "the mailbox of device {device} is full ({MAILBOX_MAX} messages): it must read them first"
            ));
        }
        let bytes: usize = self.devices.values().flat_map(|d| &d.mailbox).map(|m| m.body.len() + 64).sum();
        if bytes + body.len() + 64 > USER_MAILBOX_BYTES_MAX {
            return Err(format!(
                "this user's mailboxes are full ({USER_MAILBOX_BYTES_MAX} bytes): their devices must read them first"
            ));
        }
        Ok(())
    }

    /// Messages for `device` after `after`, at most `max`.
    pub fn mailbox(&self, device: &str, after: u64, max: usize) -> Vec<ToDevice> {
        self.devices
            .get(device)
            .map(|d| d.mailbox.iter().filter(|m| m.seq > after).take(max).cloned().collect())
            .unwrap_or_default()
    }

    pub fn apply(&mut self, op: &KeysOp) {
        match op {
            KeysOp::Publish { keys, one_time, fallback } => {
                let d = self.devices.entry(keys.device.clone()).or_default();
                d.keys = Some(keys.clone());
                for k in one_time {
                    if d.one_time.len() < ONE_TIME_KEYS_MAX {
                        d.one_time.insert(k.id.clone(), k.key.clone());
                    }
                }
                if fallback.is_some() {
                    d.fallback = fallback.clone();
                }
            }
            KeysOp::Claimed { device, id } => {
                if let Some(d) = self.devices.get_mut(device) {
                    d.one_time.remove(id);
                }
            }
            KeysOp::Revoke { device } => {
                self.devices.remove(device);
            }
            KeysOp::Deliver { device, from_user, from_device, body } => {
                if let Some(d) = self.devices.get_mut(device).filter(|d| d.keys.is_some()) {
                    d.next_seq += 1;
                    let seq = d.next_seq;
                    d.mailbox.push_back(ToDevice {
                        seq,
                        from_user: from_user.clone(),
                        from_device: from_device.clone(),
                        body: body.clone(),
                    });
                    while d.mailbox.len() > MAILBOX_MAX {
                        d.mailbox.pop_front();
                        d.dropped += 1;
                    }
                }
            }
            KeysOp::Acked { device, upto } => {
                if let Some(d) = self.devices.get_mut(device) {
                    while d.mailbox.front().is_some_and(|m| m.seq <= *upto) {
                        d.mailbox.pop_front();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(device: &str, c: &str) -> DeviceKeys {
        DeviceKeys { device: device.into(), curve25519: c.into(), ed25519: "ed".into(), signature: "sig".into() }
    }
    fn otk(id: &str) -> OneTimeKey {
        OneTimeKey { id: id.into(), key: format!("k{id}") }
    }

    #[test]
    fn one_time_keys_go_once_then_the_fallback() {
        let mut u = UserKeys::default();
        u.check_publish(&keys("d1", "c1"), &[otk("1")], &Some(otk("f"))).unwrap();
        u.apply(&KeysOp::Publish { keys: keys("d1", "c1"), one_time: vec![otk("1")], fallback: Some(otk("f")) });
        let (_, k) = u.claimable("d1").unwrap();
        assert_eq!(k.id, "1");
        u.apply(&KeysOp::Claimed { device: "d1".into(), id: k.id });
        assert_eq!(u.claimable("d1").unwrap().1.id, "f", "the fallback when none is left");
        assert!(u.check_publish(&keys("d1", "other"), &[], &None).unwrap_err().contains("revoke it first"));
        u.apply(&KeysOp::Revoke { device: "d1".into() });
        assert!(u.claimable("d1").is_none());
        assert!(u.devices().is_empty());
    }

    #[test]
    fn a_mailbox_is_ordered_acked_and_bounded() {
        let mut u = UserKeys::default();
        u.apply(&KeysOp::Publish { keys: keys("d1", "c1"), one_time: vec![], fallback: None });
        assert!(u.check_deliver("d2", "x").unwrap_err().contains("no device"));
        for i in 0..MAILBOX_MAX {
            u.check_deliver("d1", "x").unwrap();
            let body = i.to_string();
            u.apply(&KeysOp::Deliver { device: "d1".into(), from_user: "a".into(), from_device: "x".into(), body });
        }
        assert!(u.check_deliver("d1", "x").unwrap_err().contains("full"), "a full mailbox refuses");
        let m = u.mailbox("d1", 0, 3);
        assert_eq!(m.iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2, 3], "nothing was pushed out");
        u.apply(&KeysOp::Acked { device: "d1".into(), upto: 10 });
        assert_eq!(u.mailbox("d1", 0, 1)[0].seq, 11);
        assert!(u.check_deliver("d1", "x").is_ok(), "room again once read");
        assert!(u.check_deliver("d1", &"x".repeat(TO_DEVICE_BYTES_MAX + 1)).is_err());
        assert!(u.check_publish(&keys("bad id", "c"), &[], &None).is_err());
        assert!(u.check_publish(&keys("d3", "c c"), &[], &None).unwrap_err().contains("base64"));
    }
}
