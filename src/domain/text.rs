//! Rules every stored text obeys.

use super::{Error, Result};

/// Refuses text holding U+0000: PostgreSQL's text types cannot store it, so
/// every backend refuses it alike.
pub fn refuse_nul(field: &str, text: &str) -> Result<()> {
    match text.find('\0') {
        Some(at) => Err(Error::invalid(
            field,
            format!("holds U+0000 (NUL) at byte {at}, which is not allowed in text"),
        )),
        None => Ok(()),
    }
}
