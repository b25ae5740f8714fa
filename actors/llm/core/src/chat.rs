//! ChatML rendering for the GGUF's `tokenizer.chat_template`.
//!
//! SmolLM2's template is a fixed Jinja program: a default system message when the
//! first message is not a system one, then `<|im_start|>{role}\n{content}<|im_end|>\n`
//! per message, then `<|im_start|>assistant\n` for generation. Rather than embed a
//! Jinja interpreter we recognise that shape, pull the default system prompt out
//! of the template text, and render it faithfully; a template of another shape is
//! refused (`ChatError::Unsupported`) instead of rendered wrongly. The rendering is
//! checked against jinja2's output of the real template in the fixture test.

use crate::gguf::GgufFile;
use std::ops::Range;

/// Most messages in one conversation.
pub const CHAT_MESSAGES_MAX: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChatError {
    #[error("chat template is not ChatML; cannot render it: {0:.120}")]
    Unsupported(String),
    #[error("{0} messages, over CHAT_MESSAGES_MAX")]
    TooMany(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message { role: role.into(), content: content.into() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTemplate {
    /// Inserted when the first message is not from "system".
    pub default_system: Option<String>,
}

const SYSTEM_OPEN: &str = "<|im_start|>system\n";

impl ChatTemplate {
    /// Recognise a ChatML template (the raw Jinja source from the GGUF).
    pub fn parse(template: &str) -> Result<ChatTemplate, ChatError> {
        // Jinja string literals may spell a newline either raw or as `\n`.
        let normalized = template.replace("\\n", "\n");
        let template = normalized.as_str();
        let chatml = template.contains("'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'")
            && template.contains("{{ '<|im_start|>assistant\n' }}");
        if !chatml {
            return Err(ChatError::Unsupported(template.to_string()));
        }
        // The default system prompt is the literal between "<|im_start|>system\n" and
        // "<|im_end|>" inside the `messages[0]['role'] != 'system'` branch.
        let default_system = template.find(SYSTEM_OPEN).and_then(|at| {
            let rest = &template[at + SYSTEM_OPEN.len()..];
            rest.find("<|im_end|>").map(|end| rest[..end].to_string())
        });
        if default_system.is_some() && !template.contains("messages[0]['role'] != 'system'") {
            return Err(ChatError::Unsupported(template.to_string()));
        }
        Ok(ChatTemplate { default_system })
    }

    pub fn from_gguf(f: &GgufFile) -> Result<ChatTemplate, ChatError> {
        match f.get_str("tokenizer.chat_template") {
            Ok(t) => ChatTemplate::parse(t),
            // No template: plain ChatML without a default system prompt.
            Err(_) => Ok(ChatTemplate { default_system: None }),
        }
    }

    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, ChatError> {
        Ok(self.render_marked(messages, add_generation_prompt)?.0)
    }

    /// `render`, with the byte ranges of the template's own text (its control tokens,
    /// newlines and default system prompt) — everything but the messages' roles and
    /// contents. Tokenize it with `Tokenizer::encode_trusted`, so that `<|im_start|>`
    /// written by a user stays text instead of opening a turn of its own.
    pub fn render_marked(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<(String, Vec<Range<usize>>), ChatError> {
        if messages.len() > CHAT_MESSAGES_MAX {
            return Err(ChatError::TooMany(messages.len()));
        }
        let mut s = String::new();
        let mut trusted = Vec::new();
        let mut template = |s: &mut String, text: &str| {
            trusted.push(s.len()..s.len() + text.len());
            s.push_str(text);
        };
        if let Some(sys) = &self.default_system
            && messages.first().is_none_or(|m| m.role != "system")
            && !messages.is_empty()
        {
            template(&mut s, &format!("<|im_start|>system\n{sys}<|im_end|>\n"));
        }
        for m in messages {
            template(&mut s, "<|im_start|>");
            s.push_str(&m.role);
            template(&mut s, "\n");
            s.push_str(&m.content);
            template(&mut s, "<|im_end|>\n");
        }
        if add_generation_prompt {
            template(&mut s, "<|im_start|>assistant\n");
        }
        Ok((s, trusted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_smollm2_with_default_system() {
        let t = ChatTemplate::parse(SMOLLM2).expect("chatml");
        assert_eq!(
            t.default_system.as_deref(),
            Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        );
        let s = t.render(&[Message::new("user", "hi")], true).expect("render");
        assert_eq!(
            s,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        let s = t.render(&[Message::new("system", "S"), Message::new("user", "u")], false).expect("render");
        assert_eq!(s, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nu<|im_end|>\n");
    }

    #[test]
    fn refuses_other_templates() {
        assert!(ChatTemplate::parse("{{ bos_token }}[INST] {{ message }} [/INST]").is_err());
    }
}
