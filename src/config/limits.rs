//! Size limits on requests, with defaults that keep one request cheap.

use serde::{Deserialize, Serialize};

use crate::domain::{Error, Result, refuse_nul};

/// Configurable request limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest policy body or schema, in bytes of canonical JSON.
    pub max_body_bytes: usize,
    /// Page size when a request gives none.
    pub default_page_size: u32,
    /// Largest page size; larger requests are capped to it.
    pub max_page_size: u32,
    /// Longest change note or reason, in bytes.
    pub max_text_bytes: usize,
    /// Most targets in one Activate request.
    pub max_activation_targets: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 1024 * 1024,
            default_page_size: 50,
            max_page_size: 500,
            max_text_bytes: 4096,
            max_activation_targets: 100,
        }
    }
}

impl Limits {
    /// Largest encoded gRPC message: a body at the limit plus room for the
    /// rest of the request and protobuf's overhead on JSON. A larger message
    /// is refused by the transport before it is decoded.
    pub fn max_message_bytes(&self) -> usize {
        self.max_body_bytes * 2 + 64 * 1024
    }

    /// The page size to use for a request's `page_size`.
    pub fn page_size(&self, requested: u32) -> u32 {
        match requested {
            0 => self.default_page_size,
            requested => requested.min(self.max_page_size),
        }
    }

    /// Refuses free text over the limit, or holding U+0000, which
    /// PostgreSQL cannot store (refused on SQLite too, so both backends
    /// answer alike).
    pub fn text(&self, field: &str, text: String) -> Result<String> {
        refuse_nul(field, &text)?;
        if text.len() > self.max_text_bytes {
            return Err(Error::invalid(
                field,
                format!(
                    "is {} bytes, at most {} are allowed",
                    text.len(),
                    self.max_text_bytes
                ),
            ));
        }
        Ok(text)
    }
}
