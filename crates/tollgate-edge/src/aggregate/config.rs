//! The aggregated endpoint's configuration, checked at start: the upstreams' prefixes and
//! the separator (so that every aggregated name splits one way only), the session and
//! cursor sealer, and the fan-out bounds.

use std::sync::Arc;
use std::time::Duration;

use crate::EdgeError;
use crate::sealed::Sealer;
use crate::settings::{AggregateSettings, UpstreamSettings};

pub(crate) struct Aggregation {
    pub(super) sealer: Sealer,
    pub(super) separator: String,
    pub(super) fanout_timeout: Duration,
    /// How often one upstream's resource lists may be read to find an unknown URI.
    pub(super) lookup_interval: Duration,
    /// (prefix, upstream name), in configuration order: the order of merged lists.
    pub(super) prefixes: Vec<(Arc<str>, String)>,
}

/// Letters, digits and `_ - . /`: what may stand in an aggregated name.
fn name_chars(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'))
}

/// Whether `{prefix}{separator}{name}` splits back into `prefix` at the first separator,
/// whatever `name` is: the first separator in `{prefix}{separator}` is the one after the
/// prefix (`a_` with `__` fails: `a___x` would split as `a` and `_x`).
pub(super) fn splits_cleanly(prefix: &str, separator: &str) -> bool {
    let joined = format!("{prefix}{separator}");
    joined.find(separator) == Some(prefix.len())
}

impl Aggregation {
    pub(crate) fn new(settings: &AggregateSettings, upstreams: &[UpstreamSettings]) -> Result<Aggregation, EdgeError> {
        let bad = |why: String| EdgeError::Config(format!("edge.aggregate: {why}"));
        if !name_chars(&settings.separator) {
            return Err(bad(format!(
                "separator \"{}\" must be letters, digits, '_', '-', '.' or '/' (it becomes part of tool names)",
                settings.separator
            )));
        }
        let mut prefixes: Vec<(Arc<str>, String)> = Vec::new();
        for u in upstreams {
            let prefix = u.prefix.clone().unwrap_or_else(|| u.name.clone());
            if !name_chars(&prefix) || !splits_cleanly(&prefix, &settings.separator) {
                return Err(bad(format!(
                    "upstream \"{}\": prefix \"{prefix}\" must be letters, digits, '_', '-', '.' or '/', and neither \
                     contain the separator \"{}\" nor end with its start (a name would split at another place; set \
                     [[upstreams]] prefix)",
                    u.name, settings.separator
                )));
            }
            if let Some((_, other)) = prefixes.iter().find(|(p, _)| **p == *prefix) {
                return Err(bad(format!(
                    "upstreams \"{other}\" and \"{}\" have the same prefix \"{prefix}\": set [[upstreams]] prefix",
                    u.name
                )));
            }
            prefixes.push((prefix.into(), u.name.clone()));
        }
        Ok(Aggregation {
            sealer: Sealer::new(&settings.session_keys)?,
            separator: settings.separator.clone(),
            fanout_timeout: Duration::from_millis(settings.fanout_timeout_ms),
            lookup_interval: Duration::from_millis(settings.lookup_interval_ms),
            prefixes,
        })
    }

    /// Whether the session keys are this process's own (nothing configured).
    pub(crate) fn has_configured_keys(settings: &AggregateSettings) -> bool {
        !settings.session_keys.is_empty()
    }

    pub(super) fn prefix_of(&self, server: &str) -> Arc<str> {
        self.prefixes
            .iter()
            .find(|(_, s)| s == server)
            .map_or_else(|| Arc::from(server), |(p, _)| p.clone())
    }

    /// The upstream a prefix names.
    pub(super) fn server_of(&self, prefix: &str) -> Option<&str> {
        self.prefixes
            .iter()
            .find(|(p, _)| &**p == prefix)
            .map(|(_, s)| s.as_str())
    }

    /// `k8s__rollout_pause` → (`k8s`'s upstream, `rollout_pause`). Prefixes split cleanly
    /// (checked at start), so the first separator is the only place a name can split.
    pub(super) fn split<'n>(&self, name: &'n str) -> Option<(&str, &'n str)> {
        let (prefix, rest) = name.split_once(self.separator.as_str())?;
        let server = self.server_of(prefix)?;
        (!rest.is_empty()).then_some((server, rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(name: &str, prefix: Option<&str>) -> UpstreamSettings {
        UpstreamSettings {
            name: name.into(),
            url: "http://127.0.0.1:1/mcp".into(),
            prefix: prefix.map(str::to_owned),
            ..Default::default()
        }
    }

    #[test]
    fn a_prefix_ending_in_part_of_the_separator_is_refused_at_start() {
        let settings = AggregateSettings::default();
        for prefix in ["a_", "a__b", "__", "_"] {
            let refused = Aggregation::new(&settings, &[upstream("a", Some(prefix))]);
            assert!(refused.is_err(), "prefix {prefix:?} with separator __");
        }
        for prefix in ["a", "_a", "a-b", "a.b"] {
            assert!(
                Aggregation::new(&settings, &[upstream("a", Some(prefix))]).is_ok(),
                "{prefix}"
            );
        }
        let dash = AggregateSettings {
            separator: "-x-".into(),
            ..Default::default()
        };
        assert!(Aggregation::new(&dash, &[upstream("a", Some("a-x"))]).is_err());
        assert!(
            Aggregation::new(&dash, &[upstream("a", Some("a-"))]).is_ok(),
            "a--x-t splits as a- and t"
        );
    }

    #[test]
    fn names_split_at_the_prefix_they_were_made_with() {
        let agg = Aggregation::new(
            &AggregateSettings::default(),
            &[upstream("k8s", None), upstream("public", Some("pub"))],
        )
        .expect("valid");
        assert_eq!(agg.split("k8s__scale"), Some(("k8s", "scale")));
        assert_eq!(agg.split("k8s___scale"), Some(("k8s", "_scale")));
        assert_eq!(agg.split("pub__a__b"), Some(("public", "a__b")));
        assert_eq!(agg.split("public__a"), None, "by prefix, not by name");
        assert_eq!(agg.split("k8s__"), None);
        assert_eq!(agg.split("nothing"), None);
    }
}
