//! OpenAI request bodies (`/v1/chat/completions`, `/v1/completions`) all the way to
//! tokens, as the gateway handles them: parse (a typed request or a 400 naming the
//! parameter, in OpenAI's error shape), render the chat template with the template's
//! own text marked, tokenize with only that text trusted. Control tokens in the result
//! come only from the template: a user cannot open a turn of their own.
//!
//! Input: the first byte picks the endpoint, the rest is the body.

use troupe_llm::Message;
use troupe_llm::serving::openai::{Endpoint, Limits, Prompt, parse};

const LIMITS: Limits = Limits { messages_max: 64, max_tokens_max: 4096 };
const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

pub fn run(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else { return };
    let endpoint = if which % 2 == 0 { Endpoint::Chat } else { Endpoint::Completions };
    let req = match parse(endpoint, body, &LIMITS) {
        Ok(r) => r,
        Err(e) => {
            assert!((400..600).contains(&e.status), "status {}", e.status);
            let shown = e.body();
            assert!(shown["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "an error without a message");
            return;
        }
    };
    assert!(req.max_tokens.is_none_or(|n| n <= LIMITS.max_tokens_max));
    let Prompt::Chat(msgs) = req.prompt else { return };
    assert!(msgs.len() <= LIMITS.messages_max);
    let msgs: Vec<Message> = msgs.iter().map(|m| Message::new(&m.role, &m.content)).collect();
    let (tok, chat) = super::tokenizer::tiny();
    let Ok((text, trusted)) = chat.render_marked(&msgs, true) else { return };
    let Ok(ids) = tok.encode_trusted(&text, &trusted) else { return };
    let from_template: usize =
        trusted.iter().map(|r| SPECIALS.iter().map(|s| text[r.clone()].matches(s).count()).sum::<usize>()).sum();
    let specials = ids.iter().filter(|&&id| tok.is_special(id) && Some(id) != tok.bos.filter(|_| tok.add_bos)).count();
    assert_eq!(specials, from_template, "control tokens outside the template's own text");
}
