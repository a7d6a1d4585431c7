//! Provider dialects: which API shape a request/response speaks, from the route or from config.
//!
//! Owns: [`Dialect`], its config names ([`Dialect::from_str`], [`Dialect::name`]) and
//! [`detect`] (method + path → dialect).
//!
//! vLLM, llama.cpp's server, TGI's Messages API (`/v1/chat/completions`) and Ollama's
//! OpenAI-compatible routes (`/v1/...`) all speak the OpenAI dialects: there is no separate vLLM
//! dialect, `vllm` is accepted as a config alias for `openai_chat`.
//!
//! Detection matches on the path *suffix* (query string ignored) so that prefixes such as
//! `/openai/v1/...`, `/openai/deployments/{name}/chat/completions` (Azure) or a gateway mount
//! point are tolerated. Only `POST` is inspected: `GET /v1/models` and friends yield `None`.

use std::fmt;
use std::str::FromStr;

/// An API shape whose requests and responses the inspector understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// OpenAI `/v1/chat/completions` (also vLLM, llama.cpp, TGI Messages API, Ollama `/v1`).
    OpenAiChat,
    /// OpenAI legacy `/v1/completions`.
    OpenAiCompletions,
    /// OpenAI `/v1/embeddings`.
    OpenAiEmbeddings,
    /// OpenAI Responses API `/v1/responses`.
    OpenAiResponses,
    /// Anthropic Messages API `/v1/messages`.
    Anthropic,
    /// Hugging Face Text Generation Inference native `/generate`, `/generate_stream`.
    Tgi,
    /// Ollama native `/api/chat`, `/api/generate` (NDJSON streams).
    Ollama,
}

/// Error of [`Dialect::from_str`]: the name is not a known dialect or alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownDialect(pub String);

impl fmt::Display for UnknownDialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown dialect {:?} (expected one of: openai_chat, openai_completions, \
             openai_embeddings, openai_responses, anthropic, tgi, ollama; aliases: openai, vllm)",
            self.0
        )
    }
}

impl std::error::Error for UnknownDialect {}

impl Dialect {
    /// All dialects, in declaration order.
    pub const ALL: [Dialect; 7] = [
        Dialect::OpenAiChat,
        Dialect::OpenAiCompletions,
        Dialect::OpenAiEmbeddings,
        Dialect::OpenAiResponses,
        Dialect::Anthropic,
        Dialect::Tgi,
        Dialect::Ollama,
    ];

    /// Canonical config name, also used as a metric label.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::OpenAiChat => "openai_chat",
            Dialect::OpenAiCompletions => "openai_completions",
            Dialect::OpenAiEmbeddings => "openai_embeddings",
            Dialect::OpenAiResponses => "openai_responses",
            Dialect::Anthropic => "anthropic",
            Dialect::Tgi => "tgi",
            Dialect::Ollama => "ollama",
        }
    }

    /// True when streamed responses are newline-delimited JSON rather than SSE.
    pub fn stream_is_ndjson(self) -> bool {
        self == Dialect::Ollama
    }

    /// True for the OpenAI chat/completions dialects, which accept `stream_options`.
    pub fn supports_include_usage(self) -> bool {
        matches!(self, Dialect::OpenAiChat | Dialect::OpenAiCompletions)
    }

    /// Pick the dialect of a request: the path wins when it is recognised (so a route
    /// configured `openai` still inspects `/v1/embeddings` as embeddings), else the configured
    /// dialect.
    pub fn resolve(configured: Option<Dialect>, method: &str, path: &str) -> Option<Dialect> {
        detect(method, path).or(configured)
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dialect {
    type Err = UnknownDialect;

    /// Case-insensitive; `-` and `_` are interchangeable. Canonical names are those of
    /// [`Dialect::name`]; aliases: `openai`, `vllm`, `chat` → `openai_chat`;
    /// `completions`, `vllm_completions` → `openai_completions`; `embeddings` →
    /// `openai_embeddings`; `responses` → `openai_responses`; `claude` → `anthropic`;
    /// `text_generation_inference`, `huggingface` → `tgi`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm: String = s
            .trim()
            .chars()
            .map(|c| match c {
                '-' => '_',
                c => c.to_ascii_lowercase(),
            })
            .collect();
        Ok(match norm.as_str() {
            "openai_chat" | "openai" | "vllm" | "chat" => Dialect::OpenAiChat,
            "openai_completions" | "completions" | "vllm_completions" => Dialect::OpenAiCompletions,
            "openai_embeddings" | "embeddings" => Dialect::OpenAiEmbeddings,
            "openai_responses" | "responses" => Dialect::OpenAiResponses,
            "anthropic" | "claude" => Dialect::Anthropic,
            "tgi" | "text_generation_inference" | "huggingface" => Dialect::Tgi,
            "ollama" => Dialect::Ollama,
            _ => return Err(UnknownDialect(s.to_owned())),
        })
    }
}

/// Detect the dialect of a request from its method and path (query string ignored).
///
/// Recognised suffixes: `/chat/completions`, `/completions`, `/embeddings`, `/responses`,
/// `/messages`, `/api/chat`, `/api/generate`, `/generate`, `/generate_stream`. Returns `None`
/// for other paths and for non-`POST` methods.
pub fn detect(method: &str, path: &str) -> Option<Dialect> {
    if !method.eq_ignore_ascii_case("POST") {
        return None;
    }
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let path = path.trim_end_matches('/');
    // Order matters: longer suffixes sharing a tail first.
    const TABLE: [(&str, Dialect); 9] = [
        ("/chat/completions", Dialect::OpenAiChat),
        ("/completions", Dialect::OpenAiCompletions),
        ("/embeddings", Dialect::OpenAiEmbeddings),
        ("/responses", Dialect::OpenAiResponses),
        ("/messages", Dialect::Anthropic),
        ("/api/chat", Dialect::Ollama),
        ("/api/generate", Dialect::Ollama),
        ("/generate_stream", Dialect::Tgi),
        ("/generate", Dialect::Tgi),
    ];
    TABLE
        .iter()
        .find(|(suffix, _)| path.ends_with(suffix))
        .map(|&(_, d)| d)
}

/// True when the path alone asks for a stream (TGI `/generate_stream`).
pub fn path_forces_stream(path: &str) -> bool {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    path.trim_end_matches('/').ends_with("/generate_stream")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detect_paths() {
        let cases = [
            ("/v1/chat/completions", Some(Dialect::OpenAiChat)),
            ("/chat/completions", Some(Dialect::OpenAiChat)),
            ("/openai/v1/chat/completions?x=1", Some(Dialect::OpenAiChat)),
            (
                "/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21",
                Some(Dialect::OpenAiChat),
            ),
            ("/v1/completions", Some(Dialect::OpenAiCompletions)),
            ("/v1/embeddings", Some(Dialect::OpenAiEmbeddings)),
            ("/v1/responses", Some(Dialect::OpenAiResponses)),
            ("/v1/messages", Some(Dialect::Anthropic)),
            ("/v1/messages/count_tokens", None),
            ("/generate", Some(Dialect::Tgi)),
            ("/generate_stream", Some(Dialect::Tgi)),
            ("/api/chat", Some(Dialect::Ollama)),
            ("/api/generate", Some(Dialect::Ollama)),
            ("/v1/models", None),
            ("/", None),
        ];
        for (path, want) in cases {
            assert_eq!(detect("POST", path), want, "{path}");
        }
        assert_eq!(detect("GET", "/v1/chat/completions"), None);
        assert!(path_forces_stream("/generate_stream"));
        assert!(!path_forces_stream("/generate"));
    }

    #[test]
    fn names_round_trip_and_aliases() {
        for d in Dialect::ALL {
            assert_eq!(d.name().parse::<Dialect>(), Ok(d));
        }
        assert_eq!("vLLM".parse::<Dialect>(), Ok(Dialect::OpenAiChat));
        assert_eq!("openai".parse::<Dialect>(), Ok(Dialect::OpenAiChat));
        assert_eq!(
            "openai-responses".parse::<Dialect>(),
            Ok(Dialect::OpenAiResponses)
        );
        assert!("gemini".parse::<Dialect>().is_err());
        assert_eq!(
            Dialect::resolve(Some(Dialect::OpenAiChat), "POST", "/v1/embeddings"),
            Some(Dialect::OpenAiEmbeddings)
        );
        assert_eq!(
            Dialect::resolve(Some(Dialect::Tgi), "POST", "/"),
            Some(Dialect::Tgi)
        );
    }
}
