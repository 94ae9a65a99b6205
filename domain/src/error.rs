//! Bad input: a value that does not parse into a domain type. The other
//! kind of domain failure, a command the order's state forbids, is
//! `order::DomainError`, beside the rules that raise it. The write API maps
//! both to HTTP in one place, `write-api/src/error.rs`.

/// A value that could not be parsed into a domain type. The message says
/// what was wrong and what is expected; the caller adds the field path.
/// HTTP: `400` with the field as `invalid_params[].name`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

impl ParseError {
    pub fn new(message: impl Into<String>) -> Self {
        ParseError(message.into())
    }

    pub fn message(&self) -> &str {
        &self.0
    }
}
