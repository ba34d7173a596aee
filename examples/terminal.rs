//! An interactive terminal chat client for a running server.
//!
//! ```sh
//! cargo run --release -p chat-server --features full -- --data-dir ./chat-data   # terminal 1
//! cargo run --example terminal -- --user alice --signup             # terminal 2
//! cargo run --example terminal -- --user bob --signup               # terminal 3
//! ```
//!
//! Type `/help` for commands; any other line is sent to the current channel.
//! The device id and its sync cursor are kept in `--state-dir`, so a restarted
//! client picks up exactly where it left off.
//!
//! Everything another user wrote (names, group names, messages) and every
//! text from the server is printed through `chat_core::text::printable`
//! (re-exported as `chat_client::chat_core`):
//! control characters and bidirectional overrides show as escapes instead
//! of moving the cursor, clearing the screen or reordering the line.

use std::path::PathBuf;
use std::sync::Arc;

use chat_client::chat_core::text::printable;
use chat_client::{
    Change, Channel, ChannelKind, DeviceId, ErrorCode, FriendStatus, Invitation, Message,
    UpdatePrivacyRequest, UserId, WhoMayAdd,
};
use chat_client::{
    ChatClient, ClientEvent, ConnectOptions, ConnectionHandle, FileCursorStore, Session,
};
use clap::Parser;
use tokio::io::{AsyncBufReadExt, BufReader};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Terminal chat client.
#[derive(Debug, Parser)]
struct Args {
    /// The server's HTTP base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Your username.
    #[arg(long)]
    user: String,
    /// Your password (default: CHAT_PASSWORD, or "<user>-password").
    #[arg(long, env = "CHAT_PASSWORD")]
    password: Option<String>,
    /// Create the account first.
    #[arg(long)]
    signup: bool,
    /// Where to keep this device's id and cursor.
    #[arg(long, default_value = "./chat-client-state")]
    state_dir: PathBuf,
}

const HELP: &str = "\
commands:
  /dm USER            open the direct channel with USER and switch to it
  /group NAME USER..  create a group with these users (or invite them) and switch to it
  /channels           list your channels, with unread counts
  /switch N           switch to channel N of /channels
  /history            the last 20 messages of the current channel, with their ids
  /reply ID TEXT      answer message ID of the current channel
  /typing             tell the current channel you are typing
  /read               mark the current channel read (up to its last message)
  /edit ID TEXT       replace the text of your message ID of the current channel
  /delete ID          delete message ID (yours, or any in a group you own)
  /react ID EMOJI     react to message ID with EMOJI
  /unreact ID EMOJI   take your reaction EMOJI back
  /send-file PATH [TEXT]  upload a file and send it (with TEXT) to the current channel
  /download ID PATH   save attachment ID (shown with its message) to PATH
  /search WORDS       your messages holding every word, newest first (/more for older)
  /friend USER        ask USER to be friends, or accept their request
  /unfriend USER      end a friendship, decline or cancel a request
  /block USER         USER can no longer message you directly or see your presence
  /unblock USER       undo /block
  /requests           pending friend requests
  /invites            pending group invitations
  /join N             accept invitation N of /invites
  /decline N          decline invitation N of /invites
  /privacy WHO        who may add you without asking: everyone, friends or nobody
  /presence USER..    show whether users are online
  /logout             end this session on the server and leave
  /quit               leave
anything else is sent to the current channel";

/// Channel list and name cache the prompt loop keeps.
struct Ui {
    session: Session,
    conn: ConnectionHandle,
    channels: Vec<Channel>,
    invitations: Vec<Invitation>,
    current: Option<Channel>,
    names: std::collections::HashMap<UserId, String>,
    /// The last search and where its next page starts.
    search: Option<(String, chat_client::SearchCursor)>,
}

impl Ui {
    async fn name(&mut self, id: UserId) -> String {
        if let Some(n) = self.names.get(&id) {
            return n.clone();
        }
        let name = match self.session.get_user(id).await {
            Ok(u) => printable(&u.username).into_owned(),
            Err(_) => id.to_string(),
        };
        self.names.insert(id, name.clone());
        name
    }

    async fn label(&mut self, channel: &Channel) -> String {
        match channel.kind {
            ChannelKind::Group => format!("#{}", printable(&channel.name)),
            _ => {
                let me = self.session.user_id();
                let other = channel
                    .members
                    .iter()
                    .copied()
                    .find(|m| *m != me)
                    .unwrap_or(me);
                format!("@{}", self.name(other).await)
            }
        }
    }

    async fn show(&mut self, m: &Message) {
        let who = self.name(m.sender).await;
        let here = self.current.as_ref().is_some_and(|c| c.id == m.channel_id);
        let place = if here {
            String::new()
        } else {
            match self.session.channel(m.channel_id).await {
                Ok(c) => format!("{} ", self.label(&c).await),
                Err(_) => String::new(),
            }
        };
        let quote = match m.reply_to {
            Some(to) => format!(" (reply to {to})"),
            None => String::new(),
        };
        if m.deleted {
            println!("{place}[{}] {who}{quote}: (deleted)", m.id);
            return;
        }
        let edited = if m.edited_at.is_some() {
            " (edited)"
        } else {
            ""
        };
        let reactions: String = m
            .reactions
            .iter()
            .map(|r| format!(" {}×{}", printable(&r.emoji), r.count))
            .collect();
        println!(
            "{place}[{}] {who}{quote}{edited}: {}{reactions}",
            m.id,
            printable(&m.content)
        );
        for a in &m.attachments {
            let size = match (a.width, a.height) {
                (Some(w), Some(h)) => format!("{} bytes, {w}x{h}", a.size),
                _ => format!("{} bytes", a.size),
            };
            println!(
                "    file {} {} ({}, {size}) — /download {} PATH",
                a.id,
                printable(&a.name),
                printable(&a.content_type),
                a.id
            );
        }
    }

    async fn switch(&mut self, channel: Channel) {
        println!("now in {}", self.label(&channel).await);
        self.current = Some(channel);
    }

    async fn command(&mut self, line: &str) -> Result<bool, Error> {
        let mut words = line.split_whitespace();
        match words.next().unwrap_or("") {
            "/help" => println!("{HELP}"),
            "/quit" => return Ok(false),
            "/dm" => {
                let Some(name) = words.next() else {
                    println!("usage: /dm USER");
                    return Ok(true);
                };
                let user = self.session.user_by_name(name).await?;
                let channel = self.session.open_direct(user.id).await?;
                self.switch(channel).await;
            }
            "/group" => {
                let Some(name) = words.next() else {
                    println!("usage: /group NAME USER..");
                    return Ok(true);
                };
                let mut members = Vec::new();
                for user in words {
                    members.push(self.session.user_by_name(user).await?.id);
                }
                let group = self.session.create_group(name, &members).await?;
                for id in &group.invited {
                    println!(
                        "{} is invited (they join when they accept)",
                        self.name(*id).await
                    );
                }
                for id in &group.refused {
                    println!("{} could not be added or invited", self.name(*id).await);
                }
                self.switch(group.channel).await;
            }
            "/channels" => {
                let list = self.session.channel_summaries().await?;
                self.channels = list.iter().map(|(c, _)| c.clone()).collect();
                for (i, (c, summary)) in list.iter().enumerate() {
                    let unread = match summary.unread {
                        0 => String::new(),
                        n => format!(" ({n} unread)"),
                    };
                    println!("  {i}: {}{unread}", self.label(c).await);
                }
            }
            "/switch" => {
                let picked = words
                    .next()
                    .and_then(|n| n.parse::<usize>().ok())
                    .and_then(|i| self.channels.get(i).cloned());
                match picked {
                    Some(c) => self.switch(c).await,
                    None => println!("usage: /switch N (see /channels)"),
                }
            }
            "/history" => match self.current.clone() {
                Some(c) => {
                    let query = chat_client::HistoryQuery {
                        limit: Some(20),
                        ..Default::default()
                    };
                    for m in self.conn.history(c.id, &query).await?.messages {
                        self.show(&m).await;
                    }
                }
                None => println!("no channel yet: /dm USER or /group NAME USER.."),
            },
            "/reply" => {
                let id = words.next().and_then(|w| w.parse::<u64>().ok());
                let text = words.collect::<Vec<_>>().join(" ");
                match (self.current.clone(), id) {
                    (Some(c), Some(id)) if !text.is_empty() => {
                        let to = chat_client::MessageId(id);
                        self.conn.send_reply(c.id, to, text).await?;
                    }
                    (None, _) => println!("no channel yet: /dm USER or /group NAME USER.."),
                    _ => println!("usage: /reply ID TEXT (ids are shown in /history)"),
                }
            }
            "/read" => match self.current.clone() {
                Some(c) => {
                    let query = chat_client::HistoryQuery {
                        limit: Some(1),
                        ..Default::default()
                    };
                    match self.conn.history(c.id, &query).await?.messages.last() {
                        Some(last) => {
                            let state = self.conn.mark_read(c.id, last.id).await?;
                            println!("read up to {} ({} unread)", state.message, state.unread);
                        }
                        None => println!("nothing to read yet"),
                    }
                }
                None => println!("no channel yet: /dm USER or /group NAME USER.."),
            },
            cmd @ ("/edit" | "/delete" | "/react" | "/unreact") => {
                let id = words.next().and_then(|w| w.parse::<u64>().ok());
                let rest = words.collect::<Vec<_>>().join(" ");
                let Some(c) = self.current.clone() else {
                    println!("no channel yet: /dm USER or /group NAME USER..");
                    return Ok(true);
                };
                let Some(id) = id.map(chat_client::MessageId) else {
                    println!("usage: {cmd} ID ... (ids are shown in /history)");
                    return Ok(true);
                };
                let done = match cmd {
                    "/edit" if !rest.is_empty() => self.conn.edit(c.id, id, rest).await?,
                    "/delete" => self.conn.delete(c.id, id).await?,
                    "/react" if !rest.is_empty() => self.conn.react(c.id, id, rest).await?,
                    "/unreact" if !rest.is_empty() => self.conn.unreact(c.id, id, rest).await?,
                    _ => {
                        println!(
                            "usage: /edit ID TEXT, /delete ID, /react ID EMOJI, /unreact ID EMOJI"
                        );
                        return Ok(true);
                    }
                };
                if done.unchanged {
                    println!("* nothing to change");
                }
            }
            "/send-file" => {
                let Some(path) = words.next() else {
                    println!("usage: /send-file PATH [TEXT]");
                    return Ok(true);
                };
                let Some(c) = self.current.clone() else {
                    println!("no channel yet: /dm USER or /group NAME USER..");
                    return Ok(true);
                };
                let text = words.collect::<Vec<_>>().join(" ");
                let path = std::path::Path::new(path);
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("file")
                    .to_owned();
                let bytes = tokio::fs::read(path).await?;
                let file = self
                    .session
                    .upload(&name, content_type_of(&name), bytes)
                    .await?;
                self.conn
                    .send_with_attachments(c.id, text, vec![file.id])
                    .await?;
            }
            "/download" => {
                let id = words
                    .next()
                    .and_then(|w| w.parse::<chat_client::AttachmentId>().ok());
                match (id, words.next()) {
                    (Some(id), Some(path)) => {
                        let bytes = self.session.download(id, 1 << 30).await?;
                        tokio::fs::write(path, &bytes).await?;
                        println!("saved {} bytes to {path}", bytes.len());
                    }
                    _ => println!("usage: /download ID PATH (ids are shown with messages)"),
                }
            }
            cmd @ ("/search" | "/more") => {
                let (query, after) = if cmd == "/search" {
                    (words.collect::<Vec<_>>().join(" "), None)
                } else {
                    match self.search.take() {
                        Some((q, next)) => (q, Some(next)),
                        None => {
                            println!("nothing more: /search WORDS first");
                            return Ok(true);
                        }
                    }
                };
                if query.is_empty() {
                    println!("usage: /search WORDS");
                    return Ok(true);
                }
                let page = self.session.search(&query, after, Some(20)).await?;
                if page.messages.is_empty() {
                    println!("no message holds every word of {}", printable(&query));
                }
                for m in &page.messages {
                    self.show(m).await;
                }
                if let Some(next) = page.next {
                    println!("older results: /more");
                    self.search = Some((query, next));
                }
            }
            "/typing" => match self.current.clone() {
                Some(c) => self.conn.typing(c.id).await?,
                None => println!("no channel yet: /dm USER or /group NAME USER.."),
            },
            "/friend" => {
                for name in words {
                    let user = self.session.user_by_name(name).await?;
                    match self.session.add_friend(user.id).await? {
                        FriendStatus::Friends => println!("{name} is your friend"),
                        _ => println!("asked {name}; you are friends once they accept"),
                    }
                }
            }
            "/unfriend" => {
                for name in words {
                    let user = self.session.user_by_name(name).await?;
                    self.session.remove_friend(user.id).await?;
                    println!("nothing pending between you and {name} any more");
                }
            }
            cmd @ ("/block" | "/unblock") => {
                for name in words {
                    let user = self.session.user_by_name(name).await?;
                    if cmd == "/block" {
                        self.session.block(user.id).await?;
                        println!("blocked {name}");
                    } else {
                        self.session.unblock(user.id).await?;
                        println!("unblocked {name}");
                    }
                }
            }
            "/requests" => {
                let requests = self.session.friend_requests().await?;
                for r in requests.incoming {
                    println!(
                        "  {} asks you (/friend to accept)",
                        printable(&r.user.username)
                    );
                }
                for r in requests.outgoing {
                    println!("  you asked {}", printable(&r.user.username));
                }
            }
            "/invites" => {
                self.invitations = self.session.invitations().await?.incoming;
                for (i, inv) in self.invitations.clone().iter().enumerate() {
                    let by = self.name(inv.inviter).await;
                    println!("  {i}: #{} from {by}", printable(&inv.group_name));
                }
            }
            cmd @ ("/join" | "/decline") => {
                let picked = words
                    .next()
                    .and_then(|n| n.parse::<usize>().ok())
                    .and_then(|i| self.invitations.get(i).cloned());
                match picked {
                    Some(inv) if cmd == "/join" => {
                        let channel = self.session.accept_invitation(inv.channel).await?;
                        self.switch(channel).await;
                    }
                    Some(inv) => {
                        self.session.decline_invitation(inv.channel).await?;
                        println!("declined");
                    }
                    None => println!("usage: {cmd} N (see /invites)"),
                }
            }
            "/privacy" => {
                let who = match words.next() {
                    Some("everyone") => WhoMayAdd::Everyone,
                    Some("friends") => WhoMayAdd::Friends,
                    Some("nobody") => WhoMayAdd::Nobody,
                    _ => {
                        println!("usage: /privacy everyone|friends|nobody");
                        return Ok(true);
                    }
                };
                let update = UpdatePrivacyRequest {
                    who_may_add: Some(who),
                    hide_last_seen: None,
                };
                let now = self.session.update_privacy(&update).await?;
                println!("who may add you: {:?}", now.who_may_add);
            }
            "/logout" => {
                self.session.logout().await?;
                println!("logged out");
                return Ok(false);
            }
            "/presence" => {
                let mut ids = Vec::new();
                for name in words {
                    ids.push(self.session.user_by_name(name).await?.id);
                }
                for p in self.conn.presence(&ids).await? {
                    let name = self.name(p.user).await;
                    println!(
                        "  {name}: {:?} (last active {:?})",
                        p.status, p.last_active_at
                    );
                }
            }
            other => println!("unknown command {other}; /help lists them"),
        }
        Ok(true)
    }
}

/// The content type of a file, by its extension (the server checks the
/// bytes of images against it).
fn content_type_of(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("pdf") => "application/pdf",
        Some("txt" | "md") => "text/plain",
        Some("zip") => "application/zip",
        Some("mp3") => "audio/mpeg",
        Some("ogg") => "audio/ogg",
        Some("mp4") => "video/mp4",
        _ => "application/octet-stream",
    }
}

/// This installation's device id, created once and kept in the state dir.
fn device_id(state_dir: &std::path::Path, user: &str) -> Result<DeviceId, Error> {
    std::fs::create_dir_all(state_dir)?;
    let path = state_dir.join(format!("{user}.device"));
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(id) = text.trim().parse() {
            return Ok(id);
        }
    }
    let id = DeviceId::new_random();
    std::fs::write(&path, id.to_string())?;
    Ok(id)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let password = args
        .password
        .clone()
        .unwrap_or_else(|| format!("{}-password", args.user));
    let http = ChatClient::new(&args.server)?;
    let session = if args.signup {
        match http.signup(&args.user, &password, None).await {
            Ok(s) => s,
            Err(e) if e.code() == Some(ErrorCode::AlreadyExists) => {
                http.login(&args.user, &password).await?
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        http.login(&args.user, &password).await?
    };
    let device = device_id(&args.state_dir, &args.user)?;
    let store = Arc::new(FileCursorStore::new(args.state_dir.join("cursors")));
    let mut conn = session
        .connect(device, store, ConnectOptions::default())
        .await?;
    println!("logged in as {} — /help for commands", args.user);

    let mut ui = Ui {
        session,
        conn: conn.handle(),
        channels: Vec::new(),
        invitations: Vec::new(),
        current: None,
        names: Default::default(),
        search: None,
    };
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            event = conn.next_event() => match event {
                Some(ClientEvent::Message(d)) => ui.show(&d.message).await,
                Some(ClientEvent::Presence(p)) => {
                    let name = ui.name(p.user).await;
                    println!("* {name} is {:?}", p.status);
                }
                Some(ClientEvent::FriendRequest(from)) => {
                    let name = printable(&from.username);
                    println!("* {name} asks to be your friend: /friend {name} to accept");
                }
                Some(ClientEvent::FriendAccepted(friend)) => {
                    println!("* {} accepted: you are friends", printable(&friend.username));
                }
                Some(ClientEvent::Invitation(inv)) => {
                    let by = ui.name(inv.inviter).await;
                    println!("* {by} invites you to #{}: /invites", printable(&inv.group_name));
                }
                Some(ClientEvent::Typing { channel, user, .. }) => {
                    let name = ui.name(user).await;
                    let here = ui.current.as_ref().is_some_and(|c| c.id == channel);
                    if here {
                        println!("* {name} is typing");
                    }
                }
                Some(ClientEvent::Read { channel, user, message }) => {
                    let here = ui.current.as_ref().is_some_and(|c| c.id == channel);
                    if user == ui.session.user_id() {
                        println!("* read up to {message} on another device");
                    } else if here {
                        let name = ui.name(user).await;
                        println!("* {name} has read up to {message}");
                    }
                }
                Some(ClientEvent::Delivered { channel, message, .. }) => {
                    if ui.current.as_ref().is_some_and(|c| c.id == channel) {
                        println!("* delivered up to {message}");
                    }
                }
                Some(ClientEvent::Connected { server_id }) => {
                    println!("* connected to {}", printable(&server_id));
                }
                Some(ClientEvent::Disconnected { reason, .. }) => {
                    println!("* disconnected ({}); reconnecting", printable(&reason));
                }
                Some(ClientEvent::Error(e)) => println!("* error: {}", printable(&e.to_string())),
                Some(ClientEvent::Changed { change, delivery }) => match &change {
                    Change::Reacted { user, emoji } | Change::Unreacted { user, emoji } => {
                        let name = ui.name(*user).await;
                        let verb = if matches!(change, Change::Reacted { .. }) {
                            "reacted"
                        } else {
                            "took back"
                        };
                        println!(
                            "* {name} {verb} {} on [{}]",
                            printable(emoji),
                            delivery.message.id
                        );
                    }
                    _ => ui.show(&delivery.message).await,
                },
                Some(_) => {}
                None => {
                    println!("* connection closed");
                    return Ok(());
                }
            },
            line = lines.next_line() => {
                let Some(line) = line? else { break };
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                if line.starts_with('/') {
                    match ui.command(line).await {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(e) => println!("* {}", printable(&e.to_string())),
                    }
                } else if let Some(channel) = ui.current.clone() {
                    if let Err(e) = ui.conn.send(channel.id, line).await {
                        println!("* not sent: {}", printable(&e.to_string()));
                    }
                } else {
                    println!("* no channel yet: /dm USER or /group NAME USER..");
                }
            }
        }
    }
    conn.close().await;
    Ok(())
}
