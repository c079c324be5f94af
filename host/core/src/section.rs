//! Config sections that tool packs own: `[tools.<pack>]` in `capgate.toml`.
//!
//! Invariant: a pack's section is a typed struct of the pack's own, parsed by capgate with the
//! rest of the file's rules (unknown keys refused, errors naming the file and the dotted key);
//! the pack then resolves its paths and checks what serde cannot in [`Section::finish`].

use std::path::Path;

/// A tool pack's config section. Derive `Deserialize` with `#[serde(deny_unknown_fields,
/// default)]` so that a typo is refused and a missing key takes its default.
pub trait Section: serde::de::DeserializeOwned + Default {
    /// Resolves relative paths against `base` (the config file's directory) and checks what
    /// serde cannot. Each problem is (key within the section, what was expected).
    fn finish(&mut self, base: &Path) -> Vec<(String, String)> {
        let _ = base;
        Vec::new()
    }
}
