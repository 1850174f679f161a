//! The parts of a Chat Completions request the gateway reads, and the program's input built
//! from its messages.

use loopai_core::{Error, ErrorKind, InputMapping, InputMode, Pick, Result};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The fields of a Chat Completions request that the gateway reads; the others are
/// passed through untouched when the call is forwarded.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct ChatRequest {
    /// `model`.
    #[serde(default)]
    pub model: Option<String>,
    /// `messages`.
    pub messages: Vec<ChatMessage>,
    /// `stream`.
    #[serde(default)]
    pub stream: Option<bool>,
    /// `stream_options`.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
#[non_exhaustive]
pub struct StreamOptions {
    /// `include_usage`: a last chunk carries the usage.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// One message of a request.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct ChatMessage {
    /// `role`.
    pub role: String,
    /// `content`: a string, an array of parts, or null.
    #[serde(default)]
    pub content: Option<Content>,
}

/// A message's `content`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Parts; the text of `{"type": "text", "text": ...}` parts is read.
    Parts(Vec<Part>),
}

/// One content part.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct Part {
    /// `type`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `text`, for text parts.
    #[serde(default)]
    pub text: Option<String>,
}

impl ChatMessage {
    /// The message's text: a string content, or its text parts joined by a newline.
    pub fn text(&self) -> String {
        match &self.content {
            None => String::new(),
            Some(Content::Text(s)) => s.clone(),
            Some(Content::Parts(parts)) => {
                let texts: Vec<&str> = parts
                    .iter()
                    .filter(|p| p.kind == "text")
                    .filter_map(|p| p.text.as_deref())
                    .collect();
                texts.join("\n")
            }
        }
    }
}

impl ChatRequest {
    /// Parses a request body. Errors ([`ErrorKind::InvalidInput`]) name the field:
    /// `request body: messages[2].role: missing field`.
    pub fn parse(body: &[u8]) -> Result<ChatRequest> {
        let de = &mut serde_json::Deserializer::from_slice(body);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                invalid(format!("request body: {inner}"))
            } else {
                invalid(format!("request body: {path}: {inner}"))
            }
        })
    }

    /// Whether the answer is to be streamed.
    pub fn is_stream(&self) -> bool {
        self.stream == Some(true)
    }

    /// Whether a streamed answer ends with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// The text of the first system (or developer) message.
    pub fn system_text(&self) -> Option<String> {
        self.messages
            .iter()
            .find(|m| m.role == "system" || m.role == "developer")
            .map(ChatMessage::text)
    }
}

fn invalid(message: String) -> Error {
    Error::new(ErrorKind::InvalidInput, message)
}

/// Builds the program's input from the request's messages.
pub(crate) fn build_input(mapping: &InputMapping, request: &ChatRequest) -> Result<Value> {
    let last_user = || {
        request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .ok_or_else(|| invalid("messages: no message with role \"user\"".to_string()))
    };
    match mapping.mode {
        InputMode::Text => {
            let mut map = Map::new();
            map.insert("text".to_string(), Value::String(last_user()?.text()));
            Ok(Value::Object(map))
        }
        InputMode::Json => {
            let text = last_user()?.text();
            match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(map)) => Ok(Value::Object(map)),
                Ok(other) => Err(invalid(format!(
                    "messages: the last user message must be a JSON object (input mode json), got {}",
                    kind_of(&other)
                ))),
                Err(e) => Err(invalid(format!(
                    "messages: the last user message is not JSON (input mode json): {e}"
                ))),
            }
        }
        InputMode::Fields => {
            let mut map = Map::new();
            for (name, pick) in &mapping.fields {
                let mut of_role = request.messages.iter().filter(|m| m.role == pick.role);
                let text = match pick.pick {
                    Pick::First => of_role.next().map(ChatMessage::text),
                    Pick::Last => of_role.next_back().map(ChatMessage::text),
                    Pick::All => {
                        let all: Vec<String> = of_role.map(ChatMessage::text).collect();
                        (!all.is_empty()).then(|| all.join("\n"))
                    }
                    _ => None,
                };
                let text = text.ok_or_else(|| {
                    invalid(format!(
                        "messages: no message with role {:?} for input field {name:?}",
                        pick.role
                    ))
                })?;
                map.insert(name.clone(), Value::String(text));
            }
            Ok(Value::Object(map))
        }
        _ => Err(invalid("input mode: not supported".to_string())),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The label an upstream answer names: exact, then trimmed of whitespace, quotes,
/// backticks and a final period, then case-insensitively.
pub(crate) fn normalize_label<'l>(content: &str, labels: &'l [String]) -> Option<&'l str> {
    if let Some(l) = labels.iter().find(|l| l.as_str() == content) {
        return Some(l);
    }
    let trimmed = content
        .trim_matches(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`'))
        .trim_end_matches(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '.'));
    labels
        .iter()
        .find(|l| l.as_str() == trimmed)
        .or_else(|| labels.iter().find(|l| l.eq_ignore_ascii_case(trimmed)))
        .or_else(|| {
            let lower = trimmed.to_lowercase();
            labels.iter().find(|l| l.to_lowercase() == lower)
        })
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use loopai_core::DeploymentConfig;

    fn mapping(yaml: &str) -> InputMapping {
        let c = DeploymentConfig::from_yaml_str(
            &format!("gateway:\n  upstream: {{base_url: http://127.0.0.1:9/v1}}\n  tasks:\n    t:\n      input: {yaml}\n"),
            "test",
        )
        .unwrap();
        c.gateway.unwrap().input_of("t")
    }

    fn request(json: &str) -> ChatRequest {
        ChatRequest::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn the_default_input_is_the_last_user_message() {
        let r = request(
            r#"{"model":"m","messages":[{"role":"system","content":"classify"},{"role":"user","content":"first"},{"role":"assistant","content":"x"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"u"}},{"type":"text","text":"b"}]}]}"#,
        );
        let input = build_input(&InputMapping::default(), &r).unwrap();
        assert_eq!(input, serde_json::json!({"text": "a\nb"}));
        assert_eq!(r.system_text().as_deref(), Some("classify"));
    }

    #[test]
    fn json_and_fields_modes_build_objects_or_say_why_not() {
        let r = request(r#"{"messages":[{"role":"user","content":"{\"order\": \"A1\"}"}]}"#);
        let input = build_input(&mapping("{mode: json}"), &r).unwrap();
        assert_eq!(input, serde_json::json!({"order": "A1"}));
        let r2 = request(r#"{"messages":[{"role":"user","content":"[1]"}]}"#);
        let err = build_input(&mapping("{mode: json}"), &r2).unwrap_err();
        assert!(err.to_string().contains("must be a JSON object"), "{err}");
        let r3 = request(
            r#"{"messages":[{"role":"system","content":"s1"},{"role":"user","content":"u1"},{"role":"user","content":"u2"}]}"#,
        );
        let m = mapping("{mode: fields, fields: {ctx: {role: system}, all: {role: user, pick: all}, first: {role: user, pick: first}}}");
        assert_eq!(
            build_input(&m, &r3).unwrap(),
            serde_json::json!({"ctx": "s1", "all": "u1\nu2", "first": "u1"})
        );
        let m = mapping("{mode: fields, fields: {a: {role: assistant}}}");
        let err = build_input(&m, &r3).unwrap_err();
        assert!(err.to_string().contains("role \"assistant\""), "{err}");
        let r4 = request(r#"{"messages":[{"role":"system","content":"s"}]}"#);
        let err = build_input(&InputMapping::default(), &r4).unwrap_err();
        assert!(err.to_string().contains("no message with role \"user\""));
    }

    #[test]
    fn malformed_requests_name_the_field() {
        let err = ChatRequest::parse(br#"{"model":"m"}"#).unwrap_err();
        assert!(
            err.to_string().contains("missing field `messages`"),
            "{err}"
        );
        let err = ChatRequest::parse(br#"{"messages":[{"content":"x"}]}"#).unwrap_err();
        assert!(err.to_string().contains("messages[0]"), "{err}");
        let err = ChatRequest::parse(br#"{"messages":[],"stream":"yes"}"#).unwrap_err();
        assert!(err.to_string().contains("stream"), "{err}");
        assert!(ChatRequest::parse(b"not json").is_err());
    }

    #[test]
    fn upstream_answers_are_normalised_to_the_labels() {
        let labels = vec!["spam".to_string(), "ham".to_string(), "Billing".to_string()];
        assert_eq!(normalize_label("spam", &labels), Some("spam"));
        assert_eq!(normalize_label("  Spam.\n", &labels), Some("spam"));
        assert_eq!(normalize_label("\"ham\"", &labels), Some("ham"));
        assert_eq!(normalize_label("`billing`", &labels), Some("Billing"));
        assert_eq!(normalize_label(" \"SPAM.\"\n", &labels), Some("spam"));
        assert_eq!(normalize_label("'ham'.", &labels), Some("ham"));
        assert_eq!(normalize_label("maybe spam", &labels), None);
        assert_eq!(normalize_label("", &labels), None);
    }
}
