//! `troupe chat`: a chat client in the terminal, for trying the system in two
//! terminals (`troupe chat --as alice`, `troupe chat --as bob`). It speaks the
//! WebSocket of `docs/chat.md` as the user whose API key `api-keys.toml` holds
//! (`--service`: the service token with X-User-Id, as a proxy would), keeps its
//! cursors and, when its gateway goes away, reconnects to the next node and resumes
//! from them.
//!
//! Lines typed are sent to the current conversation; commands start with `/`:
//! `/dm <user>`, `/to <conv>`, `/create <conv> <user>...`, `/add <user>...`,
//! `/remove <user>...`, `/who <user>...` (presence), `/read`, `/quit`.

use anyhow::Context;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use troupe_chat::EventBody;
use troupe_chat::frames::{ClientFrame, ServerFrame};
use troupe_client::ws::{WsClient, WsFrame, connect_with};

#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    /// The user to chat as.
    #[arg(long = "as", value_name = "USER")]
    pub user: String,
    /// The cluster file.
    #[arg(long, default_value = "cluster.toml")]
    pub cluster: PathBuf,
    /// The node whose gateway to use first (default: the first with `ports.chat`).
    #[arg(long)]
    pub node: Option<String>,
    /// The conversation to start in.
    #[arg(long)]
    pub conv: Option<String>,
    /// Speak as an authenticating proxy: the service token with X-User-Id (for users
    /// without an API key).
    #[arg(long)]
    pub service: bool,
}

/// The gateways of a cluster file (node name, address) and its key file.
fn gateways(cluster: &Path, system: &str) -> anyhow::Result<(Vec<(String, SocketAddr)>, PathBuf)> {
    let text = std::fs::read_to_string(cluster).with_context(|| format!("reading {}", cluster.display()))?;
    let doc: toml::Table = text.parse().with_context(|| format!("{} is not TOML", cluster.display()))?;
    let base = cluster.parent().unwrap_or(Path::new("."));
    let key_file =
        doc.get("cluster").and_then(|c| c.get("key_file")).and_then(|k| k.as_str()).unwrap_or(".troupe/cluster.key");
    let mut out = Vec::new();
    for n in doc.get("nodes").and_then(|n| n.as_array()).into_iter().flatten() {
        let (Some(name), Some(addr)) = (n.get("name").and_then(|v| v.as_str()), n.get("addr").and_then(|v| v.as_str()))
        else {
            continue;
        };
        let Some(port) = n.get("ports").and_then(|p| p.get(system)).and_then(|p| p.as_integer()) else { continue };
        let ip: SocketAddr = addr.parse().with_context(|| format!("node {name}: addr {addr}"))?;
        out.push((name.to_string(), SocketAddr::new(ip.ip(), port as u16)));
    }
    anyhow::ensure!(
        !out.is_empty(),
        "no node of {} has ports.{system}: is the chat system enabled?",
        cluster.display()
    );
    Ok((out, base.join(key_file)))
}

/// `text` with control characters shown as `\u{..}`: another member's message must
/// not move the cursor, clear the screen or write the clipboard (ANSI/OSC sequences).
fn printable(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { c.escape_unicode().to_string() } else { c.to_string() }).collect()
}

fn show(conv: &str, seq: u64, at_ms: u64, body: &EventBody) -> String {
    let t = at_ms / 1000 % 86_400;
    let at = format!("{:02}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60);
    match body {
        EventBody::Message { from, text, .. } => format!("[{conv} #{seq} {at}] {from}: {}", printable(text)),
        EventBody::Created { by, members } => {
            format!("[{conv} #{seq} {at}] {by} created it with {}", members.join(", "))
        }
        EventBody::Joined { by, users } => format!("[{conv} #{seq} {at}] {by} added {}", users.join(", ")),
        EventBody::Left { by, users } => format!("[{conv} #{seq} {at}] {by} removed {}", users.join(", ")),
    }
}

async fn say(ws: &mut WsClient, f: &ClientFrame) -> bool {
    match serde_json::to_string(f) {
        Ok(t) => ws.send_text(t).await.is_ok(),
        Err(_) => false,
    }
}

pub fn run(a: ChatArgs) -> anyhow::Result<()> {
    troupe_chat::ids::check_user(&a.user).map_err(troupe_system::UsageError)?;
    let (mut nodes, key_file) = gateways(&a.cluster, "chat")?;
    if let Some(first) = &a.node {
        let i = nodes.iter().position(|(n, _)| n == first).ok_or_else(|| {
            troupe_system::UsageError(format!("no node {first} with ports.chat in {}", a.cluster.display()))
        })?;
        nodes.rotate_left(i);
    }
    let headers: Vec<(String, String)> = if a.service {
        let token =
            troupe_runtime::cluster::tokens::for_client(troupe_runtime::cluster::tokens::Role::Service, &key_file)
                .map_err(anyhow::Error::msg)?;
        vec![("authorization".into(), format!("Bearer {token}")), ("x-user-id".into(), a.user.clone())]
    } else {
        let key = troupe_runtime::cluster::api_keys::for_client(&a.user, &key_file)
            .map_err(|e| anyhow::anyhow!("{e} (or chat as a proxy with --service)"))?;
        vec![("authorization".into(), format!("Bearer {key}"))]
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(session(a.user, a.conv, nodes, headers))
}

async fn session(
    user: String,
    mut current: Option<String>,
    nodes: Vec<(String, SocketAddr)>,
    headers: Vec<(String, String)>,
) -> anyhow::Result<()> {
    let mut cursors: BTreeMap<String, u64> = BTreeMap::new();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut next = 0usize;
    let mut sent = 0u64;
    let mut input_open = true;
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    'connect: loop {
        let (name, addr) = &nodes[next % nodes.len()];
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut ws = match connect_with(&format!("ws://{addr}/v1/ws"), &h, Duration::from_secs(5)).await {
            Ok(ws) => ws,
            Err(troupe_client::ws::WsError::Refused { status, body }) if status == 401 || status == 403 => {
                anyhow::bail!("the gateway on {name} refused {user}: {body}");
            }
            Err(e) => {
                eprintln!("(chat: {name} ({addr}) is not answering: {e}; trying the next node)");
                next += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        eprintln!("(chat: connected to {name} as {user})");
        if !say(&mut ws, &ClientFrame::Hello { cursors: cursors.clone() }).await {
            next += 1;
            continue;
        }
        loop {
            tokio::select! {
                f = ws.next() => match f {
                    Some(Ok(WsFrame::Text(t))) => match serde_json::from_str::<ServerFrame>(&t) {
                        Ok(ServerFrame::Event { conv, seq, at_ms, body }) => {
                            if seq > *cursors.get(&conv).unwrap_or(&0) {
                                cursors.insert(conv.clone(), seq);
                                println!("{}", show(&conv, seq, at_ms, &body));
                                let _ = say(&mut ws, &ClientFrame::Ack { conv, seq }).await;
                            }
                        }
                        Ok(ServerFrame::Ready { conversations, more: false, .. }) if current.is_none() => {
                            current = conversations.first().cloned();
                            if let Some(c) = &current {
                                eprintln!("(chat: writing to {c}; /to <conv> or /dm <user> to change)");
                            }
                        }
                        Ok(ServerFrame::Accepted { .. } | ServerFrame::Ready { .. } | ServerFrame::Receipts { .. }) => {}
                        Ok(ServerFrame::Done { conv, .. }) => eprintln!("(chat: done in {conv})"),
                        Ok(ServerFrame::Presence { users }) => {
                            for p in users {
                                let seen = p.last_seen_ms.map(|t| {
                                    let t = t / 1000 % 86_400;
                                    format!(", last seen {:02}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60)
                                });
                                let state = if p.online { "online" } else { "offline" };
                                println!("{}: {state}{}", p.user, if p.online { String::new() } else { seen.unwrap_or_default() });
                            }
                        }
                        Ok(ServerFrame::Rejected { reason, .. }) => eprintln!("(chat: refused: {})", printable(&reason)),
                        Ok(ServerFrame::Error { reason }) => eprintln!("(chat: {})", printable(&reason)),
                        Ok(ServerFrame::Gap { conv, from, to }) => eprintln!("(chat: {conv} #{from}..#{to} are no longer kept)"),
                        Ok(ServerFrame::TooBig { conv, seq, bytes }) => eprintln!("(chat: {conv} #{seq} is too big to show here: {bytes} bytes)"),
                        Err(e) => eprintln!("(chat: an unreadable frame: {e})"),
                    },
                    Some(Ok(WsFrame::Closed { code, reason })) => {
                        eprintln!("(chat: {name} closed the session ({code} {reason}); reconnecting)");
                        next += 1;
                        continue 'connect;
                    }
                    Some(Ok(WsFrame::Binary(_))) => {}
                    None | Some(Err(_)) => {
                        eprintln!("(chat: lost {name}; reconnecting)");
                        next += 1;
                        continue 'connect;
                    }
                },
                line = lines.next_line(), if input_open => {
                    let Ok(Some(line)) = line else {
                        // Input closed (a pipe): keep printing until interrupted.
                        input_open = false;
                        continue;
                    };
                    let line = line.trim().to_string();
                    if line.is_empty() {
                        continue;
                    }
                    let mut words = line.split_whitespace();
                    let frame = match words.next() {
                        Some("/quit") => {
                            let _ = ws.close().await;
                            return Ok(());
                        }
                        Some("/dm") => match words.next() {
                            Some(other) => {
                                current = Some(troupe_chat::ids::direct(&user, other));
                                eprintln!("(chat: writing to {})", current.as_deref().unwrap_or(""));
                                None
                            }
                            None => { eprintln!("(chat: /dm <user>)"); None }
                        },
                        Some("/to") => {
                            current = words.next().map(str::to_string);
                            None
                        }
                        Some("/create") => match words.next() {
                            Some(conv) => {
                                current = Some(conv.to_string());
                                Some(ClientFrame::Create { id: format!("r{sent}"), conv: conv.into(), members: words.map(str::to_string).collect() })
                            }
                            None => { eprintln!("(chat: /create <conv> <user>...)"); None }
                        },
                        Some(cmd @ ("/add" | "/remove")) => current.clone().map(|conv| {
                            let users: Vec<String> = words.map(str::to_string).collect();
                            let (add, remove) = if cmd == "/add" { (users, vec![]) } else { (vec![], users) };
                            ClientFrame::Members { id: format!("r{sent}"), conv, add, remove }
                        }),
                        Some("/who") => Some(ClientFrame::Presence { users: words.map(str::to_string).collect() }),
                        Some("/read") => current.clone().map(|conv| {
                            let seq = *cursors.get(&conv).unwrap_or(&0);
                            ClientFrame::Read { conv, seq }
                        }),
                        Some(w) if w.starts_with('/') => {
                            eprintln!("(chat: commands: /dm <user>, /to <conv>, /create <conv> <user>..., /add, /remove, /who <user>..., /read, /quit)");
                            None
                        }
                        _ => match &current {
                            Some(conv) => Some(ClientFrame::Send { conv: conv.clone(), id: format!("{nonce:x}-{sent}"), text: line.clone() }),
                            None => { eprintln!("(chat: no conversation yet: /dm <user> or /create <conv> <user>...)"); None }
                        },
                    };
                    sent += 1;
                    if let Some(f) = frame && !say(&mut ws, &f).await {
                        eprintln!("(chat: lost {name} while sending; reconnecting)");
                        next += 1;
                        continue 'connect;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_are_shown_not_obeyed() {
        let shown = super::printable("hi\x1b]52;c;ZXZpbA==\x07\rbob: fake");
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert!(shown.contains("\\u{1b}") && shown.contains("bob: fake"), "{shown}");
    }
}
