//! The OpenAI-compatible surface (pure: JSON in, typed requests or errors out; typed
//! results in, JSON out). Parsing is strict and says what is wrong: an unknown field, a
//! value out of range or a feature this server does not have is a 400 naming the
//! parameter, in OpenAI's error format `{"error":{"message","type","param","code"}}`.
//!
//! Supported: `/v1/chat/completions` (messages with string or text-part content),
//! `/v1/completions` (a prompt string, a one-string array, or token ids), `stream` with
//! `stream_options.include_usage`, `max_tokens`/`max_completion_tokens`, `temperature`,
//! `top_p`, `seed`, `stop`, `user`, `n = 1`; extensions `top_k` and `ignore_eos`. Refused
//! with a clear 400: `n > 1`, tools, logprobs, non-zero penalties, `logit_bias`, `echo`,
//! `best_of > 1`, `suffix`, JSON response formats.

use serde_json::{Map, Value, json};

/// An API error: status and OpenAI's error object.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> ApiError {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
            retry_after: None,
        }
    }
    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }
    pub fn status(status: u16, kind: &'static str, code: Option<&'static str>, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), kind, param: None, code, retry_after: None }
    }
    pub fn unavailable(message: impl Into<String>, retry_after: u64) -> ApiError {
        ApiError {
            retry_after: Some(retry_after.max(1)),
            ..ApiError::status(503, "server_error", Some("service_unavailable"), message)
        }
    }
    pub fn body(&self) -> Value {
        json!({ "error": { "message": self.message, "type": self.kind, "param": self.param, "code": self.code } })
    }
}

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

/// A chat message (roles: system, developer → system, user, assistant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    Chat(Vec<ChatMessage>),
    Text(String),
    Tokens(Vec<u32>),
}

/// A parsed, validated request.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiRequest {
    pub endpoint: Endpoint,
    pub model: String,
    pub prompt: Prompt,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: f32,
    pub top_k: u32,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub ignore_eos: bool,
    pub user: Option<String>,
}

/// Bounds applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub messages_max: usize,
    pub max_tokens_max: u32,
}

/// Stop sequences per request (OpenAI's limit).
pub const STOP_MAX: usize = 4;
/// Bytes per stop sequence.
pub const STOP_BYTES_MAX: usize = 256;
/// Token ids in a `prompt` array.
pub const PROMPT_TOKENS_MAX: usize = 1 << 20;

const CHAT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "stream",
    "stream_options",
    "stop",
    "seed",
    "user",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",
    "function_call",
    "top_k",
    "ignore_eos",
    "metadata",
    "store",
    "service_tier",
    "modalities",
    "reasoning_effort",
];
const COMPLETION_FIELDS: &[&str] = &[
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "stream",
    "stream_options",
    "stop",
    "seed",
    "user",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "logit_bias",
    "echo",
    "best_of",
    "suffix",
    "top_k",
    "ignore_eos",
];

fn is_null(v: Option<&Value>) -> bool {
    v.is_none_or(Value::is_null)
}

fn num(obj: &Map<String, Value>, name: &str, lo: f64, hi: f64) -> Result<Option<f64>, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(x) if (lo..=hi).contains(&x) => Ok(Some(x)),
            _ => Err(ApiError::invalid(format!("`{name}` must be between {lo} and {hi}, got {n}"), Some(name))),
        },
        Some(other) => Err(ApiError::invalid(format!("`{name}` must be a number, got {other}"), Some(name))),
    }
}

fn int(obj: &Map<String, Value>, name: &str, lo: u64, hi: u64) -> Result<Option<u64>, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(x) if (lo..=hi).contains(&x) => Ok(Some(x)),
            _ => Err(ApiError::invalid(
                format!("`{name}` must be an integer between {lo} and {hi}, got {n}"),
                Some(name),
            )),
        },
        Some(other) => Err(ApiError::invalid(format!("`{name}` must be an integer, got {other}"), Some(name))),
    }
}

fn boolean(obj: &Map<String, Value>, name: &str) -> Result<bool, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(ApiError::invalid(format!("`{name}` must be a boolean, got {other}"), Some(name))),
    }
}

fn unsupported(name: &str, why: &str) -> ApiError {
    ApiError::invalid(format!("`{name}` is not supported by this server: {why}"), Some(name))
        .with_code("unsupported_parameter")
}

/// Parses a request body for `endpoint`.
pub fn parse(endpoint: Endpoint, body: &[u8], limits: &Limits) -> Result<ApiRequest, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("the request body is not valid JSON: {e}"), None))?;
    let Value::Object(obj) = v else {
        return Err(ApiError::invalid("the request body must be a JSON object", None));
    };
    let allowed = if endpoint == Endpoint::Chat { CHAT_FIELDS } else { COMPLETION_FIELDS };
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::invalid(format!("Unrecognized request argument supplied: {k}"), Some(k)));
    }
    let model = match obj.get("model") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => s.clone(),
        _ => return Err(ApiError::invalid("`model` is required: a model name from GET /v1/models", Some("model"))),
    };
    if let Some(n) = int(&obj, "n", 0, u64::MAX)?
        && n != 1
    {
        return Err(unsupported("n", "only n = 1 (one choice per request); send several requests instead"));
    }
    for p in ["presence_penalty", "frequency_penalty"] {
        if num(&obj, p, -2.0, 2.0)?.is_some_and(|x| x != 0.0) {
            return Err(unsupported(p, "penalties are not implemented; send 0 or omit it"));
        }
    }
    if obj.get("logprobs").is_some_and(|v| !(v.is_null() || v == &Value::Bool(false)))
        || !is_null(obj.get("top_logprobs"))
    {
        return Err(unsupported("logprobs", "log probabilities are not returned"));
    }
    if obj.get("logit_bias").is_some_and(|v| !(v.is_null() || v.as_object().is_some_and(Map::is_empty))) {
        return Err(unsupported("logit_bias", "no logit bias"));
    }
    for t in ["tools", "functions"] {
        if obj.get(t).is_some_and(|v| !(v.is_null() || v.as_array().is_some_and(Vec::is_empty))) {
            return Err(unsupported(t, "no tool calling"));
        }
    }
    if let Some(rf) = obj.get("response_format").filter(|v| !v.is_null())
        && rf.get("type").and_then(Value::as_str) != Some("text")
    {
        return Err(unsupported("response_format", "only {\"type\": \"text\"}"));
    }
    if boolean(&obj, "echo")? {
        return Err(unsupported("echo", "the prompt is not echoed"));
    }
    if int(&obj, "best_of", 0, u64::MAX)?.is_some_and(|b| b != 1) {
        return Err(unsupported("best_of", "only best_of = 1"));
    }
    if !is_null(obj.get("suffix")) {
        return Err(unsupported("suffix", "no insertion (suffix)"));
    }
    let prompt = match endpoint {
        Endpoint::Chat => Prompt::Chat(parse_messages(obj.get("messages"), limits.messages_max)?),
        Endpoint::Completions => parse_prompt(obj.get("prompt"))?,
    };
    let mt = int(&obj, "max_tokens", 1, u64::from(limits.max_tokens_max))?;
    let mct = int(&obj, "max_completion_tokens", 1, u64::from(limits.max_tokens_max))?;
    let max_tokens = mct.or(mt).map(|x| x as u32);
    let temperature = num(&obj, "temperature", 0.0, 2.0)?.map(|x| x as f32);
    let top_p = num(&obj, "top_p", 0.0, 1.0)?.map_or(1.0, |x| x as f32);
    if top_p <= 0.0 {
        return Err(ApiError::invalid("`top_p` must be greater than 0 and at most 1", Some("top_p")));
    }
    let top_k = int(&obj, "top_k", 0, 65_536)?.unwrap_or(0) as u32;
    let seed = match obj.get("seed") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .or_else(|| n.as_i64().map(|i| i as u64))
                .ok_or_else(|| ApiError::invalid(format!("`seed` must be an integer, got {n}"), Some("seed")))?,
        ),
        Some(other) => return Err(ApiError::invalid(format!("`seed` must be an integer, got {other}"), Some("seed"))),
    };
    let stop = match obj.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::invalid("`stop` must be a string or an array of strings", Some("stop")))?,
        Some(_) => return Err(ApiError::invalid("`stop` must be a string or an array of strings", Some("stop"))),
    };
    if stop.len() > STOP_MAX || stop.iter().any(|s| s.is_empty() || s.len() > STOP_BYTES_MAX) {
        return Err(ApiError::invalid(
            format!("`stop` takes at most {STOP_MAX} non-empty sequences of at most {STOP_BYTES_MAX} bytes"),
            Some("stop"),
        ));
    }
    let stream = boolean(&obj, "stream")?;
    let include_usage = match obj.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => {
            if !stream {
                return Err(ApiError::invalid(
                    "`stream_options` is only allowed with `stream: true`",
                    Some("stream_options"),
                ));
            }
            if let Some(k) = o.keys().find(|k| !["include_usage", "continuous_usage_stats"].contains(&k.as_str())) {
                return Err(ApiError::invalid(format!("Unrecognized stream option: {k}"), Some("stream_options")));
            }
            boolean(o, "include_usage")?
        }
        Some(_) => return Err(ApiError::invalid("`stream_options` must be an object", Some("stream_options"))),
    };
    let user = match obj.get("user") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= 256 => Some(s.clone()),
        Some(_) => return Err(ApiError::invalid("`user` must be a string of at most 256 bytes", Some("user"))),
    };
    Ok(ApiRequest {
        endpoint,
        model,
        prompt,
        max_tokens,
        temperature,
        top_p,
        top_k,
        seed,
        stop,
        stream,
        include_usage,
        ignore_eos: boolean(&obj, "ignore_eos")?,
        user,
    })
}

fn parse_messages(v: Option<&Value>, max: usize) -> Result<Vec<ChatMessage>, ApiError> {
    let p = Some("messages");
    let Some(Value::Array(items)) = v else {
        return Err(ApiError::invalid("`messages` is required: an array of {role, content}", p));
    };
    if items.is_empty() || items.len() > max {
        return Err(ApiError::invalid(format!("`messages` must hold 1 to {max} messages, got {}", items.len()), p));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let at = format!("messages[{i}]");
            let role = match m.get("role").and_then(Value::as_str) {
                Some("system" | "developer") => "system",
                Some(r @ ("user" | "assistant")) => r,
                Some(r @ ("tool" | "function")) => {
                    return Err(unsupported(&format!("{at}.role"), &format!("no tool calling (role `{r}`)")));
                }
                Some(r) => {
                    return Err(ApiError::invalid(
                        format!("{at}.role `{r}` is not one of system, developer, user, assistant"),
                        Some(&at),
                    ));
                }
                None => return Err(ApiError::invalid(format!("{at} needs a string `role`"), Some(&at))),
            };
            if m.get("tool_calls").is_some_and(|t| !t.is_null()) {
                return Err(unsupported(&format!("{at}.tool_calls"), "no tool calling"));
            }
            let content = match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None if role == "assistant" => String::new(),
                Some(Value::Array(parts)) => {
                    let mut text = String::new();
                    for part in parts {
                        match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                            (Some("text"), Some(t)) => text.push_str(t),
                            (ty, _) => {
                                return Err(unsupported(
                                    &format!("{at}.content"),
                                    &format!("only text content parts (got {})", ty.unwrap_or("a part without a type")),
                                ));
                            }
                        }
                    }
                    text
                }
                _ => {
                    return Err(ApiError::invalid(
                        format!("{at}.content must be a string or an array of text parts"),
                        Some(&at),
                    ));
                }
            };
            Ok(ChatMessage { role: role.to_string(), content })
        })
        .collect()
}

fn parse_prompt(v: Option<&Value>) -> Result<Prompt, ApiError> {
    let p = Some("prompt");
    match v {
        Some(Value::String(s)) => Ok(Prompt::Text(s.clone())),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            Ok(Prompt::Text(a[0].as_str().unwrap_or("").to_string()))
        }
        Some(Value::Array(a)) if !a.is_empty() && a.len() <= PROMPT_TOKENS_MAX && a.iter().all(Value::is_u64) => {
            Ok(Prompt::Tokens(
                a.iter()
                    .map(|x| x.as_u64().and_then(|t| u32::try_from(t).ok()))
                    .collect::<Option<Vec<u32>>>()
                    .ok_or_else(|| ApiError::invalid("token ids in `prompt` must fit in 32 bits", p))?,
            ))
        }
        Some(Value::Array(a)) if a.len() > 1 => {
            Err(unsupported("prompt", "one prompt per request (batch prompts need n > 1)"))
        }
        _ => Err(ApiError::invalid("`prompt` is required: a string, a one-string array, or an array of token ids", p)),
    }
}

/// Token counts of a finished request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

impl Usage {
    pub fn json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }
}

/// Identity of one response (shared by all its chunks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseId {
    pub endpoint: Endpoint,
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl ResponseId {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completions, _) => "text_completion",
        }
    }

    /// The whole (non-streamed) response.
    pub fn full(&self, text: &str, finish: &str, usage: Usage) -> Value {
        let choice = match self.endpoint {
            Endpoint::Chat => json!({
                "index": 0,
                "message": { "role": "assistant", "content": text },
                "logprobs": null,
                "finish_reason": finish,
            }),
            Endpoint::Completions => json!({ "index": 0, "text": text, "logprobs": null, "finish_reason": finish }),
        };
        json!({
            "id": self.id,
            "object": self.object(false),
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [choice],
            "usage": usage.json(),
        })
    }

    /// One streamed chunk: `role` opens a chat stream; `text` is a delta; `finish` closes
    /// the choice. With `include_usage` every chunk carries `"usage": null`.
    pub fn chunk(&self, role: bool, text: Option<&str>, finish: Option<&str>, include_usage: bool) -> Value {
        let choice = match self.endpoint {
            Endpoint::Chat => {
                let mut delta = Map::new();
                if role {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(t) = text {
                    delta.insert("content".into(), json!(t));
                }
                json!({ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish })
            }
            Endpoint::Completions => {
                json!({ "index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish })
            }
        };
        let mut v = json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [choice],
        });
        if include_usage && let Value::Object(o) = &mut v {
            o.insert("usage".into(), Value::Null);
        }
        v
    }

    /// The final usage chunk of a stream with `include_usage` (no choices).
    pub fn usage_chunk(&self, usage: Usage) -> Value {
        json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [],
            "usage": usage.json(),
        })
    }
}

/// One SSE event line pair.
pub fn sse(v: &Value) -> String {
    format!("data: {v}\n\n")
}

/// The stream terminator.
pub const SSE_DONE: &str = "data: [DONE]\n\n";

/// `GET /v1/models`.
pub fn models(names: &[(String, u64)]) -> Value {
    json!({
        "object": "list",
        "data": names.iter().map(|(n, created)| json!({ "id": n, "object": "model", "created": created, "owned_by": "troupe" })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits { messages_max: 8, max_tokens_max: 1000 };

    fn chat(body: &str) -> Result<ApiRequest, ApiError> {
        parse(Endpoint::Chat, body.as_bytes(), &L)
    }

    #[test]
    fn a_typical_chat_request() {
        let r = chat(
            r#"{"model":"m","messages":[{"role":"developer","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"}]}],
               "max_tokens":20,"temperature":0.5,"stream":true,"stream_options":{"include_usage":true},"stop":"\n","seed":-1,"n":1}"#,
        )
        .expect("valid");
        assert_eq!(
            r.prompt,
            Prompt::Chat(vec![
                ChatMessage { role: "system".into(), content: "be brief".into() },
                ChatMessage { role: "user".into(), content: "hi".into() },
            ])
        );
        assert_eq!((r.max_tokens, r.temperature, r.stream, r.include_usage), (Some(20), Some(0.5), true, true));
        assert_eq!(r.stop, vec!["\n".to_string()]);
        assert_eq!(r.seed, Some(u64::MAX));
    }

    #[test]
    fn refusals_name_the_parameter() {
        let cases = [
            (r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":2}"#, "n"),
            (r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":3}"#, "temperature"),
            (r#"{"model":"m","messages":[{"role":"user","content":"x"}],"top_p":0}"#, "top_p"),
            (r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":0}"#, "max_tokens"),
            (r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":1001}"#, "max_tokens"),
            (r#"{"model":"m","messages":[{"role":"user","content":"x"}],"bogus":1}"#, "bogus"),
            (r#"{"model":"m","messages":[]}"#, "messages"),
            (r#"{"model":"m","messages":[{"role":"tool","content":"x"}]}"#, "messages[0].role"),
            (r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]}"#, "tools"),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":true}}"#,
                "stream_options",
            ),
            (r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stop":["a","b","c","d","e"]}"#, "stop"),
            (r#"{"model":"m","messages":[{"role":"user","content":"x"}],"presence_penalty":1}"#, "presence_penalty"),
            (r#"{"messages":[{"role":"user","content":"x"}]}"#, "model"),
        ];
        for (body, param) in cases {
            let e = chat(body).expect_err(body);
            assert_eq!((e.status, e.param.as_deref()), (400, Some(param)), "{body}: {}", e.message);
            assert_eq!(e.body()["error"]["type"], "invalid_request_error");
        }
        assert_eq!(chat("{").expect_err("bad json").status, 400);
        assert_eq!(chat("[1]").expect_err("not an object").status, 400);
    }

    #[test]
    fn completion_prompts() {
        let p = |b: &str| parse(Endpoint::Completions, b.as_bytes(), &L).map(|r| r.prompt);
        assert_eq!(p(r#"{"model":"m","prompt":"hi"}"#), Ok(Prompt::Text("hi".into())));
        assert_eq!(p(r#"{"model":"m","prompt":["hi"]}"#), Ok(Prompt::Text("hi".into())));
        assert_eq!(p(r#"{"model":"m","prompt":[1,2,3]}"#), Ok(Prompt::Tokens(vec![1, 2, 3])));
        assert_eq!(p(r#"{"model":"m","prompt":["a","b"]}"#).map_err(|e| e.param), Err(Some("prompt".into())));
        assert_eq!(p(r#"{"model":"m","prompt":"x","echo":true}"#).map_err(|e| e.param), Err(Some("echo".into())));
        assert!(p(r#"{"model":"m","messages":[]}"#).is_err(), "chat fields are not completion fields");
    }

    #[test]
    fn responses_have_openais_shape() {
        let id = ResponseId { endpoint: Endpoint::Chat, id: "chatcmpl-1".into(), created: 5, model: "m".into() };
        let full = id.full("hello", "stop", Usage { prompt_tokens: 3, completion_tokens: 2 });
        assert_eq!(full["choices"][0]["message"]["content"], "hello");
        assert_eq!(full["usage"]["total_tokens"], 5);
        let first = id.chunk(true, Some(""), None, true);
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        assert!(first["usage"].is_null() && first.get("usage").is_some());
        let last = id.chunk(false, None, Some("length"), false);
        assert_eq!(last["choices"][0]["finish_reason"], "length");
        assert!(last.get("usage").is_none());
        assert_eq!(id.usage_chunk(Usage::default())["choices"].as_array().map(Vec::len), Some(0));
        assert!(sse(&last).starts_with("data: {") && sse(&last).ends_with("\n\n"));
        let e = ApiError::unavailable("down", 0);
        assert_eq!((e.status, e.retry_after), (503, Some(1)));
    }

    /// Hostile bodies: each is refused with a 400 that names what is wrong, never a
    /// panic or a 500.
    #[test]
    fn hostile_bodies_get_a_clear_400() {
        let deep = "[".repeat(100_000);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (deep.into_bytes(), "not valid JSON"),
            (b"\xff\xfe{\"model\":1}".to_vec(), "not valid JSON"),
            (br#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":-5}"#.to_vec(), "max_tokens"),
            (br#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":1e400}"#.to_vec(), "JSON"),
            (
                br#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":18446744073709551616}"#
                    .to_vec(),
                "max_tokens",
            ),
            (br#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":-1}"#.to_vec(), "temperature"),
            (br#"{"model":"m","messages":"hi"}"#.to_vec(), "messages"),
            (br#"{"model":"m","messages":[{"role":"root","content":"x"}]}"#.to_vec(), "role"),
            (br#"[1,2,3]"#.to_vec(), "JSON object"),
        ];
        for (body, says) in cases {
            let e = parse(Endpoint::Chat, &body, &L).expect_err("refused");
            assert_eq!(e.status, 400, "{e:?}");
            assert!(e.message.contains(says) || e.param.as_deref() == Some(says), "{says}: {e:?}");
        }
    }

    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        /// Any bytes: a request or a 4xx, never a panic.
        #[test]
        fn any_bytes_parse_or_get_a_4xx(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            for ep in [Endpoint::Chat, Endpoint::Completions] {
                if let Err(e) = parse(ep, &body, &L) {
                    proptest::prop_assert!((400..500).contains(&e.status) && !e.message.is_empty(), "{:?}", e);
                }
            }
        }

        /// Chat bodies with fields of random JSON values: a request or a 400 naming a reason.
        #[test]
        fn random_field_values_parse_or_get_a_400(
            field in proptest::sample::select(vec!["model", "messages", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream", "n", "user"]),
            value in proptest::prop_oneof![
                proptest::prelude::any::<i64>().prop_map(|v| v.to_string()),
                proptest::prelude::any::<f64>().prop_map(|v| if v.is_finite() { v.to_string() } else { "null".into() }),
                "\\PC{0,20}".prop_map(|s| serde_json::Value::String(s).to_string()),
                proptest::strategy::Just("[]".to_string()),
                proptest::strategy::Just("{}".to_string()),
                proptest::strategy::Just("true".to_string()),
            ],
        ) {
            let body = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"{field}":{value}}}"#);
            if let Err(e) = parse(Endpoint::Chat, body.as_bytes(), &L) {
                proptest::prop_assert!(e.status == 400 && !e.message.is_empty(), "{:?}", e);
            }
        }
    }
}
