//! The `gateway` and `learn` sections: the OpenAI-compatible gateway of `loopai serve` and
//! the background learning of its tasks (see `docs/gateway.md`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Error, ErrorKind, Result};

/// The `gateway` section: where the upstream LLM is, which calls go to which task, how
/// each task's input is built and how much disagreement with the upstream it may have.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// `gateway.upstream` (required): the LLM the gateway forwards to.
    pub upstream: UpstreamConfig,
    /// `gateway.max_disagreement` (default 0.02): the disagreement budget of every task.
    #[serde(default = "default_max_disagreement")]
    pub max_disagreement: f64,
    /// `gateway.routes` (default none): task by request `model` (and system message).
    #[serde(default)]
    pub routes: Vec<GatewayRoute>,
    /// `gateway.tasks` (default none): per-task settings.
    #[serde(default)]
    pub tasks: BTreeMap<String, GatewayTaskConfig>,
}

fn default_max_disagreement() -> f64 {
    0.02
}

/// `gateway.upstream`.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `base_url` (required): the upstream's base URL with its `/v1` prefix, as OpenAI
    /// clients write it (`https://api.openai.com/v1`).
    pub base_url: String,
    /// `api_key_env` (optional): the variable holding the upstream key, sent as
    /// `Authorization: Bearer`; without it the client's own `Authorization` is forwarded.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// `timeout_ms` (default 60000): the whole upstream request.
    #[serde(default = "default_upstream_timeout_ms")]
    pub timeout_ms: u64,
    /// `connect_timeout_ms` (default 5000).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// `ca_file` (optional): a PEM file of CA certificates that alone are trusted for the
    /// upstream's HTTPS certificate (an upstream behind a private CA); without it,
    /// Mozilla's root certificates.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

fn default_upstream_timeout_ms() -> u64 {
    60_000
}

fn default_connect_timeout_ms() -> u64 {
    5_000
}

/// One entry of `gateway.routes`.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayRoute {
    /// `task`: the task the matching calls belong to.
    pub task: String,
    /// `model`: the request's `model` must equal this.
    pub model: String,
    /// `system_contains` (optional): the first system message must contain this.
    #[serde(default)]
    pub system_contains: Option<String>,
}

/// `gateway.tasks.<task>`.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayTaskConfig {
    /// `max_disagreement` (default: `gateway.max_disagreement`).
    pub max_disagreement: Option<f64>,
    /// `input` (default `mode: text`): how the program's input is built.
    pub input: InputMapping,
}

/// How the program's input object is built from the chat messages.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputMapping {
    /// `mode`: `text`, `json` or `fields`.
    pub mode: InputMode,
    /// `fields` (for `mode: fields`): input field → which message(s).
    pub fields: BTreeMap<String, MessagePick>,
}

/// `input.mode`.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputMode {
    /// `{"text": <content of the last user message>}` (the default).
    #[default]
    Text,
    /// The last user message, parsed as a JSON object.
    Json,
    /// Several messages to fields (`input.fields`).
    Fields,
}

/// `input.fields.<name>`: which messages become that field.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagePick {
    /// `role`: `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// `pick` (default `last`): `first`, `last`, or `all` (joined by a newline).
    #[serde(default)]
    pub pick: Pick,
}

/// `input.fields.<name>.pick`.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pick {
    /// The first message of the role.
    First,
    /// The last message of the role (the default).
    #[default]
    Last,
    /// Every message of the role, joined by a newline.
    All,
}

/// The `learn` section: when and how gateway tasks learn a program from the labels.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LearnConfig {
    /// `min_examples` (default 200): labels before the first program.
    pub min_examples: usize,
    /// `growth` (default 0.5): re-learn each time the labels grow by this share.
    pub growth: f64,
    /// `folds` (default 3): cross-fitting folds; each fold of the oracle's labels is scored
    /// by a program learnt without it, to calibrate the threshold out of sample.
    pub folds: usize,
    /// `seed` (default 42): every random choice of learning.
    pub seed: u64,
}

impl Default for LearnConfig {
    fn default() -> Self {
        LearnConfig {
            min_examples: 200,
            growth: 0.5,
            folds: 3,
            seed: 42,
        }
    }
}

const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

fn invalid(message: String) -> Error {
    Error::new(ErrorKind::Config, message)
}

fn check_budget(value: f64, key: &str) -> Result<()> {
    if value.is_finite() && value > 0.0 && value < 1.0 {
        Ok(())
    } else {
        Err(invalid(format!(
            "{key}: must be between 0 and 1 (exclusive), got {value}"
        )))
    }
}

impl GatewayConfig {
    /// The disagreement budget of `task`.
    pub fn max_disagreement_of(&self, task: &str) -> f64 {
        self.tasks
            .get(task)
            .and_then(|t| t.max_disagreement)
            .unwrap_or(self.max_disagreement)
    }

    /// The input mapping of `task`.
    pub fn input_of(&self, task: &str) -> InputMapping {
        self.tasks
            .get(task)
            .map(|t| t.input.clone())
            .unwrap_or_default()
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let url = self.upstream.base_url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
            return Err(invalid(format!(
                "gateway.upstream.base_url: expected an http:// or https:// URL, got {:?}",
                self.upstream.base_url
            )));
        }
        if let Some(env) = &self.upstream.api_key_env {
            if env.is_empty() || env.contains('=') || env.contains('\0') {
                return Err(invalid(format!(
                    "gateway.upstream.api_key_env: not a variable name: {env:?}"
                )));
            }
        }
        if self.upstream.timeout_ms == 0 {
            return Err(invalid(
                "gateway.upstream.timeout_ms: must be at least 1".into(),
            ));
        }
        if self.upstream.connect_timeout_ms == 0 {
            return Err(invalid(
                "gateway.upstream.connect_timeout_ms: must be at least 1".into(),
            ));
        }
        check_budget(self.max_disagreement, "gateway.max_disagreement")?;
        for (i, route) in self.routes.iter().enumerate() {
            crate::validate_task_id(&route.task)
                .map_err(|e| invalid(format!("gateway.routes[{i}].task: {e}")))?;
            if route.model.is_empty() {
                return Err(invalid(format!(
                    "gateway.routes[{i}].model: must not be empty"
                )));
            }
            if route.system_contains.as_deref() == Some("") {
                return Err(invalid(format!(
                    "gateway.routes[{i}].system_contains: must not be empty (omit it)"
                )));
            }
        }
        for (task, cfg) in &self.tasks {
            crate::validate_task_id(task)
                .map_err(|e| invalid(format!("gateway.tasks.{task}: {e}")))?;
            if let Some(budget) = cfg.max_disagreement {
                check_budget(budget, &format!("gateway.tasks.{task}.max_disagreement"))?;
            }
            let input = &cfg.input;
            match input.mode {
                InputMode::Fields if input.fields.is_empty() => {
                    return Err(invalid(format!(
                        "gateway.tasks.{task}.input.fields: mode fields needs at least one field"
                    )))
                }
                InputMode::Text | InputMode::Json if !input.fields.is_empty() => {
                    return Err(invalid(format!(
                        "gateway.tasks.{task}.input.fields: only used with mode: fields"
                    )))
                }
                _ => {}
            }
            for (name, pick) in &input.fields {
                if name.is_empty() {
                    return Err(invalid(format!(
                        "gateway.tasks.{task}.input.fields: a field name is empty"
                    )));
                }
                if !ROLES.contains(&pick.role.as_str()) {
                    return Err(invalid(format!(
                        "gateway.tasks.{task}.input.fields.{name}.role: expected one of {}, got {:?}",
                        ROLES.join(", "),
                        pick.role
                    )));
                }
            }
        }
        Ok(())
    }
}

impl LearnConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.min_examples < 2 {
            return Err(invalid(format!(
                "learn.min_examples: must be at least 2, got {}",
                self.min_examples
            )));
        }
        if !(self.growth.is_finite() && self.growth > 0.0 && self.growth <= 100.0) {
            return Err(invalid(format!(
                "learn.growth: must be above 0 and at most 100, got {}",
                self.growth
            )));
        }
        if !(2..=10).contains(&self.folds) {
            return Err(invalid(format!(
                "learn.folds: must be 2 to 10, got {}",
                self.folds
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{DeploymentConfig, InputMode, Pick};

    fn parse(yaml: &str) -> crate::Result<DeploymentConfig> {
        DeploymentConfig::from_yaml_str(yaml, "deployment.yaml")
    }

    #[test]
    fn gateway_section_parses_with_defaults() {
        let c = parse(
            "gateway:\n  upstream:\n    base_url: http://127.0.0.1:9/v1\n  routes:\n    - {task: spam, model: gpt-4o-mini}\n  tasks:\n    spam:\n      max_disagreement: 0.05\n      input: {mode: fields, fields: {text: {role: user}, ctx: {role: system, pick: first}}}\n",
        )
        .unwrap();
        let g = c.gateway.as_ref().unwrap();
        assert_eq!(g.max_disagreement, 0.02);
        assert_eq!(g.max_disagreement_of("spam"), 0.05);
        assert_eq!(g.max_disagreement_of("other"), 0.02);
        assert_eq!(g.upstream.timeout_ms, 60_000);
        assert_eq!(g.upstream.api_key_env, None);
        let input = g.input_of("spam");
        assert_eq!(input.mode, InputMode::Fields);
        assert_eq!(input.fields["ctx"].pick, Pick::First);
        assert_eq!(input.fields["text"].pick, Pick::Last);
        assert_eq!(g.input_of("other").mode, InputMode::Text);
        assert_eq!(c.learn.min_examples, 200);
        assert_eq!(c.learn.growth, 0.5);
        assert!(parse("").unwrap().gateway.is_none());
    }

    #[test]
    fn gateway_errors_name_the_key() {
        let cases = [
            ("gateway:\n  upstream: {}\n", "gateway.upstream: missing field `base_url`"),
            (
                "gateway:\n  upstream: {base_url: localhost/v1}\n",
                "gateway.upstream.base_url: expected an http:// or https:// URL",
            ),
            (
                "gateway:\n  upstream: {base_url: http://127.0.0.1:9/v1}\n  max_disagreement: 1.5\n",
                "gateway.max_disagreement: must be between 0 and 1",
            ),
            (
                "gateway:\n  upstream: {base_url: http://127.0.0.1:9/v1}\n  routes: [{task: spam, model: ''}]\n",
                "gateway.routes[0].model: must not be empty",
            ),
            (
                "gateway:\n  upstream: {base_url: http://127.0.0.1:9/v1}\n  tasks: {spam: {input: {mode: fields, fields: {t: {role: bot}}}}}\n",
                "gateway.tasks.spam.input.fields.t.role: expected one of",
            ),
            (
                "gateway:\n  upstream: {base_url: http://127.0.0.1:9/v1}\n  tasks: {spam: {input: {mode: fields}}}\n",
                "gateway.tasks.spam.input.fields: mode fields needs at least one field",
            ),
            ("learn: {min_examples: 1}\n", "learn.min_examples: must be at least 2"),
            ("learn: {growth: 0}\n", "learn.growth: must be above 0"),
            ("learn: {seeed: 3}\n", "learn.seeed: unknown field"),
            (
                "gateway:\n  upstream: {base_url: http://127.0.0.1:9/v1}\nprivacy: {hash_inputs: true}\n",
                "gateway: cannot run with privacy.hash_inputs: true",
            ),
        ];
        for (yaml, expect) in cases {
            let msg = parse(yaml).unwrap_err().to_string();
            assert!(
                msg.starts_with(&format!("deployment.yaml: {expect}")),
                "{yaml}: {msg}"
            );
        }
    }
}
