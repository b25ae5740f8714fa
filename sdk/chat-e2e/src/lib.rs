//! End-to-end encrypted chat for troupe's chat system (system 08), with vodozemac's
//! Olm and Megolm — the Matrix scheme:
//!
//! - each device has an Olm account: a Curve25519 identity key, an Ed25519 signing key
//!   (which signs both, with the user and device id: `keys::signed_identity`),
//!   one-time keys and a fallback key, published to the server (`POST /v1/keys`);
//! - a device that writes to a conversation keeps one Megolm session for it and hands
//!   its key to every device of every member (its own other devices too) over a
//!   pairwise Olm session, as a to-device message through the server's mailbox; an
//!   Olm session starts from a claimed one-time key (X3DH-style), then ratchets;
//! - a message's `text` on the server is `{"alg":"megolm.v1",…,"ciphertext":…}`: the
//!   server stores and relays ciphertext and public keys only;
//! - a device that is revoked or a member who leaves is no longer in the set, so the
//!   writer starts a new Megolm session that they never receive.
//!
//! Trust is on first use: a device's keys are pinned the first time they are seen and
//! a changed key for the same device is refused. Verification of devices between
//! people (SAS, cross-signing) is not here, so the server could add a device of its
//! own to a user (or a member to a group) and be sent later keys: that is the limit of
//! trust on first use. State lives in memory (no pickles on disk).
//!
//! Invariants: a Megolm session is known by its sender's Curve25519 key and its id, and
//! the first key for it stays (another member cannot replace it and pass its messages
//! off as theirs); a message index decrypts once (a replayed message is refused); a
//! replayed Olm pre-key message starts no second session; a device that cannot be
//! reached is skipped, not fatal; a mailbox message that could not be read for lack of
//! the server is kept for the next read; sessions kept are bounded.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;
use troupe_chat::keys::{DeviceKeys, OneTimeKey, ToDevice, signed_identity};
use vodozemac::megolm::{GroupSession, InboundGroupSession, MegolmMessage, SessionConfig as MegolmConfig, SessionKey};
use vodozemac::olm::{Account, OlmMessage, Session, SessionConfig as OlmConfig};
use vodozemac::{Curve25519PublicKey, Ed25519PublicKey, Ed25519Signature};

/// One-time keys a device publishes at a time.
pub const ONE_TIME_KEYS: usize = 20;
/// How long one HTTP request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum E2eError {
    #[error("HTTP {status} from {what}: {body}")]
    Http { what: String, status: u16, body: String },
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Crypto(String),
    #[error("not an encrypted message: {0}")]
    NotEncrypted(String),
    #[error("no key for session {0} (not shared with this device)")]
    NoKey(String),
}

/// The chat gateway's HTTP API as one user.
#[derive(Debug, Clone)]
pub struct Api {
    pub addr: SocketAddr,
    /// The user's credentials: `authorization` (an API key, or the service token with
    /// `x-user-id`).
    pub headers: Vec<(String, String)>,
}

impl Api {
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, E2eError> {
        let mut h: Vec<(&str, &str)> = self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        h.push(("content-type", "application/json"));
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let r = troupe_common::http::request_within(self.addr, method, path, &h, bytes.as_bytes(), REQUEST_TIMEOUT)
            .map_err(|e| E2eError::Io(format!("{method} {path}: {e}")))?;
        if r.status / 100 != 2 {
            return Err(E2eError::Http { what: format!("{method} {path}"), status: r.status, body: r.body });
        }
        Ok(r.json())
    }
}

/// A message's `text` on the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Encrypted {
    pub alg: String,
    /// The Megolm session id.
    pub session: String,
    /// The sending device's Curve25519 key.
    pub sender_key: String,
    pub device: String,
    pub ciphertext: String,
}

/// A to-device message's body on the server: an Olm message.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OlmEnvelope {
    sender_key: String,
    #[serde(rename = "type")]
    kind: usize,
    body: String,
}

/// What an Olm message carries: a conversation's Megolm key.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RoomKey {
    conv: String,
    session_id: String,
    session_key: String,
    sender_user: String,
    sender_device: String,
}

struct Outbound {
    session: GroupSession,
    shared: BTreeSet<(String, String)>,
}

struct Inbound {
    session: InboundGroupSession,
    conv: String,
    sender_user: String,
    sender_device: String,
    /// Message indexes already decrypted (a repeat is a replay).
    seen: BTreeSet<u32>,
}

/// Megolm sessions a device keeps at most (the oldest go first).
pub const INBOUND_MAX: usize = 10_000;
/// Olm sessions kept per peer device (the newest).
pub const OLM_PER_PEER_MAX: usize = 4;

/// One device of one user.
pub struct Device {
    pub user: String,
    pub device: String,
    account: Account,
    /// Olm sessions by the peer's Curve25519 key (newest last).
    olm: HashMap<String, Vec<Session>>,
    outbound: HashMap<String, Outbound>,
    /// By (the sending device's Curve25519 key, session id): a session is only ever
    /// the device's that sent its key, so nobody else's key can replace it.
    inbound: HashMap<(String, String), Inbound>,
    /// Insertion order of `inbound`, for the bound.
    inbound_order: std::collections::VecDeque<(String, String)>,
    /// (user, device) → (curve25519, ed25519) first seen.
    pinned: HashMap<(String, String), (String, String)>,
    mailbox_cursor: u64,
    skipped: Vec<String>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").field("user", &self.user).field("device", &self.device).finish_non_exhaustive()
    }
}

fn crypto(e: impl std::fmt::Display) -> E2eError {
    E2eError::Crypto(e.to_string())
}

impl Device {
    /// A new device with a fresh account (nothing published yet).
    pub fn new(user: &str, device: &str) -> Device {
        Device {
            user: user.into(),
            device: device.into(),
            account: Account::new(),
            olm: HashMap::new(),
            outbound: HashMap::new(),
            inbound: HashMap::new(),
            inbound_order: std::collections::VecDeque::new(),
            pinned: HashMap::new(),
            mailbox_cursor: 0,
            skipped: Vec::new(),
        }
    }

    /// Keeps a Megolm session; false when the sender already had one of that id (the
    /// first one stays).
    fn keep_inbound(&mut self, sender_key: String, inbound: Inbound) -> bool {
        let k = (sender_key, inbound.session.session_id());
        if self.inbound.contains_key(&k) {
            return false;
        }
        while self.inbound.len() >= INBOUND_MAX {
            match self.inbound_order.pop_front() {
                Some(old) => {
                    self.inbound.remove(&old);
                }
                None => break,
            }
        }
        self.inbound_order.push_back(k.clone());
        self.inbound.insert(k, inbound);
        true
    }

    /// This device's Curve25519 identity key.
    pub fn identity_key(&self) -> String {
        self.account.curve25519_key().to_base64()
    }

    /// Publishes the device's identity, fresh one-time keys and a fallback key.
    pub fn publish(&mut self, api: &Api) -> Result<(), E2eError> {
        self.account.generate_one_time_keys(ONE_TIME_KEYS);
        self.account.generate_fallback_key();
        let ids = self.account.identity_keys();
        let (curve, ed) = (ids.curve25519.to_base64(), ids.ed25519.to_base64());
        let signature = self.account.sign(signed_identity(&self.user, &self.device, &curve, &ed)).to_base64();
        let otk: Vec<OneTimeKey> = self
            .account
            .one_time_keys()
            .into_iter()
            .map(|(id, k)| OneTimeKey { id: id.to_base64(), key: k.to_base64() })
            .collect();
        let fallback = self
            .account
            .fallback_key()
            .into_iter()
            .next()
            .map(|(id, k)| OneTimeKey { id: id.to_base64(), key: k.to_base64() });
        let body = json!({
            "device": self.device, "curve25519": curve, "ed25519": ed, "signature": signature,
            "one_time_keys": otk, "fallback_key": fallback,
        });
        api.call("POST", "/v1/keys", Some(&body))?;
        self.account.mark_keys_as_published();
        Ok(())
    }

    /// Revokes one of this user's devices (this one or another).
    pub fn revoke(api: &Api, device: &str) -> Result<(), E2eError> {
        api.call("DELETE", &format!("/v1/keys/devices/{device}"), None).map(|_| ())
    }

    /// `user`'s devices whose signature checks out and whose keys match what was pinned.
    pub fn devices_of(&mut self, api: &Api, user: &str) -> Result<Vec<DeviceKeys>, E2eError> {
        let v = api.call("GET", &format!("/v1/keys/{user}"), None)?;
        let list: Vec<DeviceKeys> = serde_json::from_value(v["devices"].clone()).map_err(crypto)?;
        let mut out = Vec::new();
        for d in list {
            let Ok(ed) = Ed25519PublicKey::from_base64(&d.ed25519) else { continue };
            let Ok(sig) = Ed25519Signature::from_base64(&d.signature) else { continue };
            if ed.verify(signed_identity(user, &d.device, &d.curve25519, &d.ed25519).as_bytes(), &sig).is_err() {
                continue;
            }
            let pin = self
                .pinned
                .entry((user.to_string(), d.device.clone()))
                .or_insert((d.curve25519.clone(), d.ed25519.clone()));
            if *pin != (d.curve25519.clone(), d.ed25519.clone()) {
                continue;
            }
            out.push(d);
        }
        Ok(out)
    }

    /// An Olm session to `user`'s `device` (claiming one of its keys for a new one).
    fn olm_to(&mut self, api: &Api, user: &str, device: &DeviceKeys) -> Result<&mut Session, E2eError> {
        if self.olm.get(&device.curve25519).is_none_or(|v| v.is_empty()) {
            let v = api.call("POST", &format!("/v1/keys/{user}/{}/claim", device.device), None)?;
            let key: OneTimeKey = serde_json::from_value(v["key"].clone()).map_err(crypto)?;
            let identity = Curve25519PublicKey::from_base64(&device.curve25519).map_err(crypto)?;
            let otk = Curve25519PublicKey::from_base64(&key.key).map_err(crypto)?;
            let s = self.account.create_outbound_session(OlmConfig::version_1(), identity, otk).map_err(crypto)?;
            self.olm.entry(device.curve25519.clone()).or_default().push(s);
        }
        self.olm
            .get_mut(&device.curve25519)
            .and_then(|v| v.last_mut())
            .ok_or_else(|| E2eError::Crypto("no Olm session".into()))
    }

    /// Encrypts `plaintext` for conversation `conv` whose members are `members`,
    /// handing the conversation's Megolm key to any member device that lacks it. The
    /// result is the `text` to send.
    pub fn encrypt(&mut self, api: &Api, conv: &str, members: &[String], plaintext: &str) -> Result<String, E2eError> {
        let mut targets: Vec<(String, DeviceKeys)> = Vec::new();
        for m in members {
            for d in self.devices_of(api, m)? {
                if !(m == &self.user && d.device == self.device) {
                    targets.push((m.clone(), d));
                }
            }
        }
        let now: BTreeSet<(String, String)> = targets.iter().map(|(u, d)| (u.clone(), d.device.clone())).collect();
        // A device that is gone (revoked, or its user left) must not read what follows.
        let rotate = self.outbound.get(conv).is_none_or(|o| !o.shared.is_subset(&now));
        if rotate {
            let session = GroupSession::new(MegolmConfig::version_1());
            let mine = InboundGroupSession::new(&session.session_key(), MegolmConfig::version_1());
            let own = Inbound {
                session: mine,
                conv: conv.to_string(),
                sender_user: self.user.clone(),
                sender_device: self.device.clone(),
                seen: BTreeSet::new(),
            };
            self.keep_inbound(self.identity_key(), own);
            self.outbound.insert(conv.to_string(), Outbound { session, shared: BTreeSet::new() });
        }
        let (session_id, session_key) = {
            let o = &self.outbound[conv];
            (o.session.session_id(), o.session.session_key().to_base64())
        };
        let me = self.identity_key();
        for (user, d) in &targets {
            if self.outbound[conv].shared.contains(&(user.clone(), d.device.clone())) {
                continue;
            }
            // A device that cannot be reached (no key left, a key that does not parse)
            // is skipped: one bad device must not stop the conversation.
            match self.share(api, conv, user, d, &session_id, &session_key, &me) {
                Ok(()) => {
                    if let Some(o) = self.outbound.get_mut(conv) {
                        o.shared.insert((user.clone(), d.device.clone()));
                    }
                }
                Err(e) => self.skipped.push(format!("{user}/{}: {e}", d.device)),
            }
        }
        let o = self.outbound.get_mut(conv).ok_or_else(|| E2eError::Crypto("no session".into()))?;
        let ciphertext = o.session.encrypt(plaintext).to_base64();
        let e = Encrypted {
            alg: "megolm.v1".into(),
            session: session_id,
            sender_key: me,
            device: self.device.clone(),
            ciphertext,
        };
        serde_json::to_string(&e).map_err(crypto)
    }

    /// Sends the conversation's Megolm key to one device over Olm.
    #[allow(clippy::too_many_arguments)]
    fn share(
        &mut self,
        api: &Api,
        conv: &str,
        user: &str,
        d: &DeviceKeys,
        session_id: &str,
        session_key: &str,
        me: &str,
    ) -> Result<(), E2eError> {
        let key = RoomKey {
            conv: conv.to_string(),
            session_id: session_id.to_string(),
            session_key: session_key.to_string(),
            sender_user: self.user.clone(),
            sender_device: self.device.clone(),
        };
        let payload = serde_json::to_string(&key).map_err(crypto)?;
        let msg = self.olm_to(api, user, d)?.encrypt(payload).map_err(crypto)?;
        let (kind, bytes) = msg.to_parts();
        let envelope = OlmEnvelope { sender_key: me.to_string(), kind, body: vodozemac::base64_encode(bytes) };
        let body = json!({ "from_device": self.device, "body": serde_json::to_string(&envelope).map_err(crypto)? });
        api.call("POST", &format!("/v1/keys/{user}/{}/inbox", d.device), Some(&body))?;
        Ok(())
    }

    /// Devices a key could not be shared with (and why), since the last call.
    pub fn take_skipped(&mut self) -> Vec<String> {
        std::mem::take(&mut self.skipped)
    }

    /// Reads this device's mailbox: every Megolm key sent to it over Olm.
    pub fn receive_keys(&mut self, api: &Api) -> Result<usize, E2eError> {
        let v = api.call("GET", &format!("/v1/keys/inbox/{}?after={}", self.device, self.mailbox_cursor), None)?;
        let list: Vec<ToDevice> = serde_json::from_value(v["messages"].clone()).map_err(crypto)?;
        let mut got = 0;
        let mut done = None;
        for m in &list {
            match self.open(api, m) {
                Ok(()) => got += 1,
                // The server could not be asked (the sender's devices): keep this
                // message for the next read.
                Err(E2eError::Io(_) | E2eError::Http { .. }) => break,
                // Not readable by this device (not for its sessions, forged, a
                // replay): dropped.
                Err(_) => {}
            }
            done = Some(m.seq);
        }
        if let Some(upto) = done {
            self.mailbox_cursor = self.mailbox_cursor.max(upto);
            api.call("POST", &format!("/v1/keys/inbox/{}/ack", self.device), Some(&json!({ "upto": upto })))?;
        }
        Ok(got)
    }

    fn open(&mut self, api: &Api, m: &ToDevice) -> Result<(), E2eError> {
        let env: OlmEnvelope = serde_json::from_str(&m.body).map_err(crypto)?;
        let bytes = vodozemac::base64_decode(&env.body).map_err(crypto)?;
        let msg = OlmMessage::from_parts(env.kind, &bytes).map_err(crypto)?;
        // The sender's key must be that of the device the server says sent it.
        let sender = self
            .devices_of(api, &m.from_user)?
            .into_iter()
            .find(|d| d.device == m.from_device && d.curve25519 == env.sender_key)
            .ok_or_else(|| E2eError::Crypto(format!("{}'s device {} has another key", m.from_user, m.from_device)))?;
        let mut plaintext = None;
        if let Some(sessions) = self.olm.get_mut(&sender.curve25519) {
            for s in sessions.iter_mut().rev() {
                if let Ok(p) = s.decrypt(&msg) {
                    plaintext = Some(p);
                    break;
                }
            }
        }
        let plaintext = match (plaintext, &msg) {
            (Some(p), _) => p,
            (None, OlmMessage::PreKey(pre)) => {
                // A pre-key message of a session we have, that the session cannot
                // decrypt, is a replay (the fallback key would start it again).
                let known = self
                    .olm
                    .get(&sender.curve25519)
                    .is_some_and(|v| v.iter().any(|s| s.session_id() == pre.session_id()));
                if known {
                    return Err(E2eError::Crypto("a replayed pre-key message".into()));
                }
                let identity = Curve25519PublicKey::from_base64(&sender.curve25519).map_err(crypto)?;
                let r = self.account.create_inbound_session(OlmConfig::version_1(), identity, pre).map_err(crypto)?;
                let sessions = self.olm.entry(sender.curve25519.clone()).or_default();
                sessions.push(r.session);
                if sessions.len() > OLM_PER_PEER_MAX {
                    sessions.remove(0);
                }
                r.plaintext
            }
            (None, _) => return Err(E2eError::Crypto("no Olm session for a normal message".into())),
        };
        let key: RoomKey = serde_json::from_slice(&plaintext).map_err(crypto)?;
        if key.sender_user != m.from_user || key.sender_device != m.from_device {
            return Err(E2eError::Crypto("a room key that names another sender".into()));
        }
        let sk = SessionKey::from_base64(&key.session_key).map_err(crypto)?;
        let session = InboundGroupSession::new(&sk, MegolmConfig::version_1());
        if session.session_id() != key.session_id {
            return Err(E2eError::Crypto("a room key whose id does not match".into()));
        }
        let inbound = Inbound {
            session,
            conv: key.conv,
            sender_user: key.sender_user,
            sender_device: key.sender_device,
            seen: BTreeSet::new(),
        };
        self.keep_inbound(sender.curve25519, inbound);
        Ok(())
    }

    /// Decrypts the `text` of a message `from` sent in `conv` (reading the mailbox
    /// when its key is not here yet).
    pub fn decrypt(&mut self, api: &Api, conv: &str, from: &str, text: &str) -> Result<String, E2eError> {
        let e: Encrypted =
            serde_json::from_str(text).map_err(|_| E2eError::NotEncrypted(text.chars().take(40).collect()))?;
        let k = (e.sender_key.clone(), e.session.clone());
        if !self.inbound.contains_key(&k) {
            self.receive_keys(api)?;
        }
        let inbound = self.inbound.get_mut(&k).ok_or_else(|| E2eError::NoKey(e.session.clone()))?;
        if inbound.conv != conv || inbound.sender_user != from || inbound.sender_device != e.device {
            return Err(E2eError::Crypto(format!(
                "session {} is {}/{}'s in {}, not {from}/{}'s in {conv}",
                e.session, inbound.sender_user, inbound.sender_device, inbound.conv, e.device
            )));
        }
        let m = MegolmMessage::from_base64(&e.ciphertext).map_err(crypto)?;
        let d = inbound.session.decrypt(&m).map_err(crypto)?;
        if !inbound.seen.insert(d.message_index) {
            return Err(E2eError::Crypto(format!("message {} of session {} replayed", d.message_index, e.session)));
        }
        String::from_utf8(d.plaintext).map_err(crypto)
    }
}
