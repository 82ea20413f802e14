//! Keyset paging: a listing fetches one row more than the page, and the
//! token of the next page is the position of the page's last row, bound to
//! the listing and its filter.

use crate::domain::{Error, Result, quoted};

/// One page request of one listing.
pub(super) struct Paging {
    /// The listing and a fingerprint of its filter, which every token of
    /// this listing starts with.
    scope: String,
    page_size: u32,
}

impl Paging {
    /// A page of `page_size` rows of `listing` under `filter`. A token of
    /// another listing, or of the same listing with another filter, is
    /// refused instead of silently paging from the wrong place.
    pub(super) fn new(listing: &str, filter: &impl std::fmt::Debug, page_size: u32) -> Self {
        use sha2::Digest as _;
        let hash = sha2::Sha256::digest(format!("{filter:?}").as_bytes());
        let short: String = hash[..4].iter().map(|byte| format!("{byte:02x}")).collect();
        Paging {
            scope: format!("{listing}:{short}:"),
            page_size,
        }
    }

    /// The position the page starts after; `None` for the first page.
    pub(super) fn position<T: std::str::FromStr>(&self, token: &str) -> Result<Option<T>> {
        if token.is_empty() {
            return Ok(None);
        }
        token
            .strip_prefix(&self.scope)
            .and_then(|position| position.parse().ok())
            .map(Some)
            .ok_or_else(|| {
                Error::invalid(
                    "page_token",
                    format!(
                        "{} is not a page token of this listing and filter: pass the \
                         next_page_token of the previous page of the same request",
                        quoted(token)
                    ),
                )
            })
    }

    /// How many rows to fetch: one more than the page, to learn whether
    /// another page follows.
    pub(super) fn limit(&self) -> u64 {
        u64::from(self.page_size) + 1
    }

    /// Trims the extra row; returns the token of the next page, made from
    /// the position of the page's last row.
    pub(super) fn finish<R>(
        &self,
        rows: &mut Vec<R>,
        position: impl Fn(&R) -> String,
    ) -> Option<String> {
        if rows.len() <= self.page_size as usize {
            return None;
        }
        rows.truncate(self.page_size as usize);
        rows.last()
            .map(|last| format!("{}{}", self.scope, position(last)))
    }
}
