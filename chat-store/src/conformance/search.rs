//! Conformance of [`MessageSearch`].

use chat_core::search::SearchCursor;
use chat_core::{ChannelId, Directory, Message, MessageId, MessageSearch, MessageStore};
use uuid::Uuid;

use super::messages::{group, new_message, users};
use super::{ok, Ids};

/// Checks every clause of the [`MessageSearch`] contract, on messages the
/// suite commits (and appends) through `store`, which `search` must see:
///
/// * only the channels asked are searched;
/// * every word must be there, whole, in any case; a query of no word and
///   a limit of 0 find nothing;
/// * newest first by `(id, channel)`, paged by the cursor of the last
///   result (also across channels sharing an id), each match once, with
///   `has_more`;
/// * committed and appended messages are found as soon as stored.
///
/// # Panics
///
/// On the first contract violation, naming it.
pub async fn search_suite(
    search: &dyn MessageSearch,
    store: &dyn MessageStore,
    directory: &dyn Directory,
) {
    // A word no other run uses, so the suite can run again on the same data.
    let tag = format!("t{}", &Uuid::new_v4().simple().to_string()[..12]);
    let [a, b, c] = users::<3>(directory).await;
    let g1 = group(directory, &[a, b]).await;
    let g2 = group(directory, &[a, c]).await;
    let g3 = group(directory, &[b, c]).await;
    let ids = Ids::fresh();
    let send = |channel: ChannelId, k: u64, text: String| {
        let sender = if channel == g3.id { b } else { a };
        async move {
            ok(
                store
                    .commit(new_message(channel, sender, ids.at(k), text))
                    .await,
                "commit",
            )
            .message
        }
    };
    let m1 = send(g1.id, 1, format!("{tag} apple banana")).await;
    let m2 = send(g1.id, 2, format!("{tag}: Apple!")).await;
    send(g1.id, 3, format!("{tag} pear")).await;
    let m4 = send(g2.id, 4, format!("APPLE pie, {}", tag.to_uppercase())).await;
    send(g3.id, 5, format!("{tag} apple in a channel not searched")).await;
    let mut appended = super::message(g2.id, c, ids.at(6), format!("{tag} apple appended"));
    appended.created_at = 6;
    ok(store.append(appended.clone()).await, "append");

    let both = [g1.id, g2.id];
    let found = |r: chat_core::Result<chat_core::Paged<Message>>| -> (Vec<MessageId>, bool) {
        let page = ok(r, "search");
        (page.items.iter().map(|m| m.id).collect(), page.has_more)
    };
    assert_eq!(
        found(
            search
                .search(&both, &format!("apple {tag}"), None, 10)
                .await
        ),
        (vec![appended.id, m4.id, m2.id, m1.id], false),
        "every word, any case, only the channels asked, newest first, appended ones too"
    );
    let page = ok(search.search(&both, &tag, None, 10).await, "search");
    assert_eq!(
        page.items.len(),
        5,
        "one word: five messages of the two channels"
    );
    assert!(
        page.items.iter().all(|m| m.channel_id != g3.id),
        "never a message of a channel not asked"
    );
    assert_eq!(page.items[0], appended, "results are whole messages");
    assert_eq!(
        found(
            search
                .search(&both, &format!("{tag} BANANA"), None, 10)
                .await
        ),
        (vec![m1.id], false),
        "all words must be there"
    );
    assert_eq!(
        found(search.search(&both, &format!("{tag} appl"), None, 10).await),
        (vec![], false),
        "whole words only"
    );
    assert_eq!(
        found(search.search(&both, "  ?! ", None, 10).await),
        (vec![], false),
        "a query of no word finds nothing"
    );
    assert_eq!(
        found(search.search(&both, &tag, None, 0).await),
        (vec![], false),
        "a limit of 0 finds nothing"
    );
    assert_eq!(
        found(search.search(&[], &tag, None, 10).await),
        (vec![], false),
        "no channel, nothing"
    );

    // Paging one by one visits each match once, newest first.
    let mut after: Option<SearchCursor> = None;
    let mut visited = Vec::new();
    loop {
        let page = ok(
            search
                .search(&both, &format!("{tag} apple"), after, 1)
                .await,
            "search",
        );
        assert!(page.items.len() <= 1, "at most limit results");
        let Some(last) = page.items.last() else {
            assert!(!page.has_more, "an empty page has nothing more");
            break;
        };
        visited.push(last.id);
        after = Some(SearchCursor::after(last));
        if !page.has_more {
            break;
        }
    }
    assert_eq!(
        visited,
        vec![appended.id, m4.id, m2.id, m1.id],
        "paging visits each once"
    );

    // Two channels with the same id: the channel breaks the tie.
    let tie = format!("{tag}tie");
    let x = send(g1.id, 10, format!("{tie} one")).await;
    let y = send(g2.id, 10, format!("{tie} two")).await;
    let (first, second) = if x.channel_id > y.channel_id {
        (x, y)
    } else {
        (y, x)
    };
    let p1 = ok(search.search(&both, &tie, None, 1).await, "search");
    assert_eq!((p1.items.clone(), p1.has_more), (vec![first.clone()], true));
    let p2 = ok(
        search
            .search(&both, &tie, Some(SearchCursor::after(&first)), 1)
            .await,
        "search",
    );
    assert_eq!(
        (p2.items, p2.has_more),
        (vec![second], false),
        "the cursor orders by (id, channel)"
    );

    // The index follows edits and deletions: an edited message is found by
    // its new words only, a deleted one (a tombstone) by none.
    let change = |id: MessageId, action: chat_core::Action| chat_core::NewChange {
        channel_id: g1.id,
        message_id: id,
        actor: a,
        action,
        at: 100,
        timeout: std::time::Duration::from_secs(30),
    };
    let edited = format!("{tag}edited");
    ok(
        store
            .change(change(
                m1.id,
                chat_core::Action::Edit {
                    content: format!("{edited} cherry"),
                },
            ))
            .await,
        "edit",
    );
    assert_eq!(
        found(
            search
                .search(&both, &format!("{tag} banana"), None, 10)
                .await
        ),
        (vec![], false),
        "an edited message is not found by its old words"
    );
    let after_edit = ok(search.search(&both, &edited, None, 10).await, "search");
    assert_eq!(
        after_edit.items.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![m1.id],
        "an edited message is found by its new words"
    );
    assert_eq!(
        after_edit.items[0].content,
        format!("{edited} cherry"),
        "and shown as it is now"
    );
    ok(
        store.change(change(m2.id, chat_core::Action::Delete)).await,
        "delete",
    );
    assert_eq!(
        found(
            search
                .search(&both, &format!("apple {tag}"), None, 10)
                .await
        ),
        (vec![appended.id, m4.id], false),
        "a deleted message is found by no word (and the edited one lost apple)"
    );
}
